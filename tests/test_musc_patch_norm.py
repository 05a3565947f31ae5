"""`musc` patch_norm="none" (layer-normalised magnitudes, Euclidean) and score_scale (synthetic, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from older_models import forget_settings
from synthetic import smooth_texture

from anomalens import Detector
from anomalens.images import LoadedImage
from anomalens.methods.musc.lnamd import aggregate, intensity_map, lnamd, weigh_length
from anomalens.methods.musc.msm import (
    choose_partners,
    mutual_scores,
    nearest_patch_distances,
    scale_scores,
    self_distances,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"image_size": 64, "progress": False}


def test_euclidean_nearest_patch_distances_by_hand():
    query = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    partners = torch.tensor([[[0.0, 0.0], [3.0, 0.0]], [[6.0, 8.0], [0.0, -1.0]]])
    # (3, 4): to (0, 0) 5, to (3, 0) 4 -> 4; to (6, 8) 5, to (0, -1) sqrt(9 + 25) -> 5.
    # (0, 1): to (0, 0) 1, to (3, 0) sqrt(10) -> 1; to (6, 8) sqrt(36 + 49), to (0, -1) 2 -> 2.
    expected = torch.tensor([[4.0, 5.0], [1.0, 2.0]])
    got = nearest_patch_distances(query, partners, patch_norm="none")
    assert torch.allclose(got, expected, atol=1e-5)
    # The paper's unit features see only directions: (3, 4) and (6, 8) are the same patch.
    assert nearest_patch_distances(query, partners)[0, 1].item() == pytest.approx(0.0, abs=1e-3)


def test_aggregate_none_keeps_lengths_divided_by_sqrt_channels():
    fmap = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    one = aggregate(fmap, 1, "none")
    assert torch.allclose(one[0, 4], torch.tensor([4.0, 13.0]) / math.sqrt(2))
    three = aggregate(fmap, 3, "none")
    # Corner cell (0, 0): the mean of the 2 x 2 cells inside the map, padding not counted.
    corner = torch.tensor([(0 + 1 + 3 + 4) / 4, (9 + 10 + 12 + 13) / 4]) / math.sqrt(2)
    assert torch.allclose(three[0, 0], corner)
    assert torch.allclose(aggregate(fmap, 3, "l2"), torch.nn.functional.normalize(three, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="patch_norm"):
        aggregate(fmap, 1, "unit")


def test_l2_length_is_direction_plus_weighted_length_difference():
    fmap = torch.tensor([[3.0, 6.0], [4.0, 8.0]]).view(1, 2, 1, 2)  # patches (3, 4) and (6, 8)
    z = aggregate(fmap, 1, "l2_length")
    assert torch.allclose(z[0], torch.tensor([[0.6, 0.8, 5 / math.sqrt(2)], [0.6, 0.8, 10 / math.sqrt(2)]]))
    # Same direction: the distance is sqrt(w) times the length difference 5 / sqrt(2).
    for w in (1.0, 4.0):
        zw = weigh_length(z, w)
        d = nearest_patch_distances(zw[0, :1], zw[:, 1:], patch_norm="l2_length")
        assert d.item() == pytest.approx(math.sqrt(w * 12.5), rel=1e-5)
    assert torch.equal(z[0, 0, -1], torch.tensor(5 / math.sqrt(2)))  # weigh_length copies


def test_layer_normalised_patches_have_unit_mean_square_length_in_every_layer():
    torch.manual_seed(0)
    maps = [torch.randn(2, 16, 8, 8) * 7 + 3, torch.randn(2, 320, 4, 4) * 0.1]
    feats = lnamd(maps, (1,), "none")
    for layer in range(2):
        assert (feats[(layer, 1)] ** 2).sum(-1).mean().item() == pytest.approx(1.0, abs=0.05)


def test_euclidean_chunked_equals_unchunked_and_brute_force():
    torch.manual_seed(1)
    z = torch.randn(7, 12, 5) * torch.rand(7, 12, 1) * 3
    partners = choose_partners([f"k{i}" for i in range(7)], 0)
    whole = mutual_scores(z, partners, chunk_elements=1 << 30, patch_norm="none", interval=(0.0, 1.0))
    tiny = mutual_scores(z, partners, chunk_elements=12, patch_norm="none", interval=(0.0, 1.0))
    assert torch.allclose(whole, tiny, atol=1e-6)
    brute = torch.stack(
        [
            torch.stack([torch.cdist(z[i], z[j]).min(dim=1).values for j in partners[i]], dim=1).mean(dim=1)
            for i in range(7)
        ]
    )
    assert torch.allclose(whole, brute, atol=1e-4)


def test_euclidean_self_distances_exclude_the_patch_itself():
    torch.manual_seed(2)
    z = torch.randn(9, 4) * 2
    brute = torch.cdist(z, z) + torch.diag(torch.full((9,), float("inf")))
    for chunk in (1 << 20, 9):
        assert torch.allclose(self_distances(z, chunk, "none"), brute.min(dim=1).values, atol=1e-4)
    assert torch.allclose(self_distances(z[:1], patch_norm="none"), torch.zeros(1))


def _maps_with_a_brighter_patch(gain: float) -> torch.Tensor:
    """8 images of one texture: every cell one of 3 channel patterns plus a little noise; image 3's
    cell (2, 2) has the pattern of its neighbours times `gain` (brighter, same direction). The
    patterns have zero channel mean, so the layer norm's mean shift keeps the direction."""
    torch.manual_seed(3)
    patterns = torch.randn(3, 16)
    patterns -= patterns.mean(dim=1, keepdim=True)
    kinds = torch.arange(36).view(6, 6) % 3
    maps = patterns[kinds].permute(2, 0, 1).repeat(8, 1, 1, 1) + 0.05 * torch.randn(8, 16, 6, 6)
    maps[3, :, 2, 2] *= gain
    return maps


def test_a_brighter_planted_patch_scores_highest_only_with_its_length():
    maps = _maps_with_a_brighter_patch(3.0)
    partners = choose_partners([f"k{i}" for i in range(8)], 0)
    scores = {}
    for norm in ("none", "l2_length", "l2"):
        z = lnamd([maps], (1,), norm)[(0, 1)]
        scores[norm] = mutual_scores(z, partners, patch_norm=norm)
    planted = 3 * 36 + 2 * 6 + 2
    assert int(scores["none"].flatten().argmax()) == planted
    assert int(scores["l2_length"].flatten().argmax()) == planted
    # Unit vectors see the same direction as the neighbours: an ordinary patch, below the top.
    l2 = scores["l2"].flatten()
    assert l2[planted] < l2.quantile(0.9)


def test_median_score_scale_divides_by_the_batch_median():
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]])
    assert torch.equal(scale_scores(scores, "none"), scores)
    assert torch.allclose(scale_scores(scores, "median"), scores / 3.0)  # torch: the lower middle value
    with pytest.raises(ValueError, match="score_scale"):
        scale_scores(scores, "mean")


def _texture(seed: int, size: int = 64) -> np.ndarray:
    return smooth_texture(seed, size, cell=4)


@pytest.mark.parametrize("norm,scale", [("none", "none"), ("none", "median"), ("l2_length", "none")])
def test_detector_with_magnitudes_finds_a_planted_defect_and_scores_equal_images_zero(norm, scale):
    # the patch features alone: the intensity layer (a default) is tested below, and with
    # score_scale=median its small batch median would magnify these textures' grey-level noise
    det = Detector("musc", patch_norm=norm, score_scale=scale, length_weight=4.0, intensity_weight=0.0, **FAST)
    images = [LoadedImage(path=f"img{i}.png", rgb=_texture(i)) for i in range(6)]
    images[2].rgb[24:36, 24:36] = (255, 0, 0)
    scores = [r.score for r in det.predict(images)]
    assert int(np.argmax(scores)) == 2
    same = [LoadedImage(path=f"same{i}.png", rgb=_texture(7)) for i in range(4)]
    assert max(r.score for r in Detector("musc", patch_norm=norm, **FAST).predict(same)) < 1e-2


def test_magnitude_features_in_float16_change_scores_little():
    images = [LoadedImage(path=f"img{i}.png", rgb=_texture(i)) for i in range(5)]
    half = Detector("musc", patch_norm="none", feature_dtype="float16", **FAST).predict(images)
    full = Detector("musc", patch_norm="none", feature_dtype="float32", **FAST).predict(images)
    for a, b in zip(half, full):
        assert abs(a.score - b.score) < 5e-3 * max(1.0, abs(b.score))


@pytest.mark.parametrize("bad", [{"patch_norm": "unit"}, {"score_scale": "mean"}])
def test_bad_norm_settings_are_settings_errors(bad):
    from anomalens.errors import SettingsError

    with pytest.raises(SettingsError):
        Detector("musc", **bad)


def test_intensity_map_is_the_pooled_grey_level_minus_the_image_median():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    grey = torch.full((1, 1, 8, 8), 0.5)
    grey[..., :4, :4] = 0.1  # a dark quarter: one cell of the 2 x 2 grid
    rgb = grey.expand(1, 3, 8, 8)
    normalised = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    got = intensity_map(normalised, mean, std, (2, 2))
    assert torch.allclose(got, torch.tensor([[[[-0.4, 0.0], [0.0, 0.0]]]]), atol=1e-6)
    # A uniformly brighter image: the same map (relative to its own median).
    brighter = (rgb + 0.2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(intensity_map(brighter, mean, std, (2, 2)), got, atol=1e-6)


@pytest.mark.parametrize("weight", [None, 8.0])  # None: the default (4)
def test_intensity_layer_scores_a_darker_blotch_by_its_grey_offset(weight):
    images = [LoadedImage(path=f"img{i}.png", rgb=_texture(i)) for i in range(6)]
    images[4].rgb[16:48, 16:48] -= 80  # same texture, 80 grey levels darker
    chosen = {} if weight is None else {"intensity_weight": weight}
    det = Detector("musc", image_size=128, progress=False, degrees=(1,), **chosen)
    assert det.method.settings.intensity_weight == (4.0 if weight is None else weight)
    results = det.predict(images)
    assert int(np.argmax([r.score for r in results])) == 4
    without = Detector("musc", image_size=128, progress=False, degrees=(1,), intensity_weight=0.0).predict(images)
    # the CNN's texture features hardly see a grey offset: the layer is what ranks the blotch first
    assert results[4].score - max(r.score for i, r in enumerate(results) if i != 4) > (
        without[4].score - max(r.score for i, r in enumerate(without) if i != 4)
    )
    feats = det.method.features(images)
    assert len(feats.grids) == 4 and feats.patches[(3, 1)].shape[-1] == 1  # blocks 7, 10, 14 + intensity
    z = feats.patches[(3, 1)]  # 8 x 8 grid of 16 input px: the blotch is input 32..96, cells 2..5
    grey = mutual_scores(z, choose_partners([f"k{i}" for i in range(6)], 0), patch_norm="none").view(6, 8, 8)
    # The texture's own grey level spans 90..150, so the nearest partner cell is darker than the
    # median by up to ~30 of the 80 levels: the blotch keeps at least ~50 / 255.
    assert grey[4, 3:5, 3:5].min() > 0.15
    others = torch.cat([grey[:4], grey[5:]])
    assert others.max() < 0.05 and grey[4, 6:, 6:].max() < 0.05


def test_models_saved_before_the_magnitude_settings_load_as_the_paper(tmp_path):

    from anomalens import load_detector

    refs = [LoadedImage(path=f"ref{i}.png", rgb=_texture(10 + i)) for i in range(3)]
    Detector("musc", patch_norm="l2", **FAST).fit(refs).save(tmp_path / "m")
    forget_settings(tmp_path / "m", "patch_norm", "length_weight", "intensity_weight", "score_scale")
    settings = load_detector(tmp_path / "m").method.settings
    assert (settings.patch_norm, settings.intensity_weight, settings.score_scale) == ("l2", 0.0, "none")
