"""`musc` steps outside the paper: photometric standardisation, map smoothing, image score rules,
mixing in the single-image score (all off by default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens import Detector
from anomalens.images import LoadedImage
from anomalens.methods.musc.postprocess import (
    TARGET_MEAN,
    TARGET_STD,
    image_scores,
    smooth_maps,
    standardise_photometry,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_standardisation_moves_mean_and_spread_and_is_off_by_default():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, :2] = 20
    rgb[:, 2:] = 60  # mean 40/255, std 20/255
    out = standardise_photometry(rgb, "standardise").astype(np.float64) / 255
    assert out.mean() == pytest.approx(TARGET_MEAN, abs=2 / 255)
    assert out.std() == pytest.approx(TARGET_STD, abs=2 / 255)
    # A brighter, higher-contrast copy of the same pattern becomes the same image.
    brighter = (rgb.astype(np.int32) * 3 + 10).astype(np.uint8)
    assert np.array_equal(standardise_photometry(brighter, "standardise"), standardise_photometry(rgb, "standardise"))
    assert standardise_photometry(rgb) is rgb
    with pytest.raises(ValueError, match="photometric"):
        standardise_photometry(rgb, "histogram")


def test_smoothing_keeps_a_constant_map_and_spreads_a_spike():
    maps = torch.full((2, 8, 8), 3.0)
    assert torch.allclose(smooth_maps(maps, 16.0, 64), maps)
    spike = torch.zeros(1, 9, 9)
    spike[0, 4, 4] = 1.0
    out = smooth_maps(spike, 8.0, 72)  # 8 input px = 1 grid cell at 72 px / 9 cells
    g = torch.exp(torch.tensor(-0.5))  # a neighbour one sigma away, relative to the centre
    assert out[0, 4, 5] / out[0, 4, 4] == pytest.approx(g.item(), rel=1e-4)
    assert out[0, 4, 3] == pytest.approx(out[0, 4, 5].item()) and out[0, 3, 4] == pytest.approx(out[0, 5, 4].item())
    assert smooth_maps(spike, 0.0, 72) is spike


def test_image_score_rules_by_hand():
    m = torch.zeros(1, 3, 3)
    m[0, 0, 0] = 9.0  # corner
    m[0, 1, 1] = 6.0  # centre
    m[0, 1, 2] = 3.0
    box = [(0, 0, 30, 30)]
    assert image_scores(m, box, 30).item() == pytest.approx(9.0)
    # Top 2 of 9 cells (ceil(0.2 * 9) = 2): (9 + 6) / 2.
    assert image_scores(m, box, 30, top_fraction=0.2).item() == pytest.approx(7.5)
    # 3 x 3 edge weights on a 3 x 3 grid: corner 4/9, centre 9/9, edge 6/9.
    assert image_scores(m, box, 30, edge_neighbourhood=3).item() == pytest.approx(6.0)
    m[0, 1, 1] = 2.0
    assert image_scores(m, box, 30, edge_neighbourhood=3).item() == pytest.approx(4.0)  # 9 * 4/9


def _batch(n: int = 5) -> list[LoadedImage]:
    rng = np.random.default_rng(0)
    return [LoadedImage(path=f"i{i}.png", rgb=rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)) for i in range(n)]


def test_self_weight_mixes_mutual_and_single_image_scores_linearly():
    batch = _batch()
    det = Detector("musc", image_size=64, progress=False, rscin=False)
    feats = det.method.features(batch)
    mutual, _ = det.method.score_features(feats, feats.paths)
    det.method.settings.self_weight = 1.0
    own, _ = det.method.score_features(feats, feats.paths)
    det.method.settings.self_weight = 0.25
    mixed, scores = det.method.score_features(feats, feats.paths)
    assert torch.allclose(mixed, 0.75 * mutual + 0.25 * own, atol=1e-5)
    assert torch.allclose(scores, mixed.flatten(1).amax(dim=1))
    assert not torch.allclose(mutual, own)


def test_median_baseline_is_subtracted_per_image_inside_its_box():
    from anomalens.methods.musc.postprocess import subtract_baseline

    maps = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], [[2.0] * 3] * 3])
    boxes = [(0, 0, 30, 30), (0, 10, 30, 10)]  # image 2 occupies the middle column only
    out = subtract_baseline(maps, boxes, 30, "median")
    assert torch.allclose(out[0], maps[0] - 5.0)  # median of 1..9
    assert torch.allclose(out[1], torch.zeros(3, 3))
    assert subtract_baseline(maps, boxes, 30) is maps
    with pytest.raises(ValueError, match="baseline"):
        subtract_baseline(maps, boxes, 30, "mean")
