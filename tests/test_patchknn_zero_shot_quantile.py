"""patchknn zero-shot at a quantile (`zero_shot_quantile`): each patch against the image's own patch at that
share of the others, nearest first. The rank by hand, the distances against a sort in numpy, a minority
texture that the nearest neighbour calls normal, and the ONNX graph (rank read at run time) against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import planted_batch

from anomalens import Detector
from anomalens.export.graph import self_distance
from anomalens.methods.patch_distances import patch_scores, window_mask, zero_shot_rank

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "patches, k, quantile, excluded, rank",
    [
        (1024, 2, 0.0, 1, 1),  # the default: the nearest other patch (k = 2 counts the patch itself)
        (1024, 5, 0.0, 1, 4),
        (1025, 2, 0.3, 1, 307),  # round(0.3 x 1024) = round(307.2)
        (1025, 2, 0.5, 1, 512),
        (11, 2, 0.25, 1, 2),  # round(2.5) = 2 (half to even)
        (11, 2, 0.35, 1, 4),  # round(3.5) = 4
        (10, 2, 0.01, 1, 1),  # at least the nearest
        (10, 2, 1.0, 1, 9),  # at most the farthest
        (10, 2, 1.0, 4, 6),  # an exclusion window leaves fewer
        (1, 2, 0.5, 1, 1),  # one patch: nothing else to choose (the caller's k is capped)
    ],
)
def test_the_rank_by_hand(patches, k, quantile, excluded, rank):
    assert zero_shot_rank(patches, k, quantile, excluded) == rank


def _by_sorting(flat: np.ndarray, rank: int, metric: str, excluded: np.ndarray) -> np.ndarray:
    """Each row's distance to the others, sorted, at `rank` (1 = nearest), in float64."""
    if metric == "cosine":
        unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        dist = np.clip(0.5 * (1.0 - unit @ unit.T), 0.0, 1.0)
    else:
        dist = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    dist[excluded] = np.inf
    return np.sort(dist, axis=1)[:, rank - 1]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("exclusion", [0, 1])
@pytest.mark.parametrize("quantile", [0.2, 0.5])
def test_distances_are_the_sorted_others_at_the_rank(metric, exclusion, quantile):
    feats = torch.randn(2, 5, 6, 8, generator=torch.Generator().manual_seed(3)) + 0.5
    got = patch_scores(feats, None, 1, 2, exclusion, metric, quantile).reshape(-1).numpy()
    flat = feats.reshape(-1, 8).double().numpy()
    excluded = window_mask(2, 5, 6, exclusion).numpy() if exclusion else np.eye(60, dtype=bool)
    rank = zero_shot_rank(60, 2, quantile, int(excluded.sum(1).max()))
    np.testing.assert_allclose(got, _by_sorting(flat, rank, metric, excluded), rtol=1e-4, atol=1e-5)


def test_a_minority_texture_scores_high_at_a_quantile_and_normal_at_the_nearest():
    # two textures, each a tight cluster: 80 % of the patches one kind, a band of 20 % the other (as an
    # uneven finish or a large blotch); every patch has close neighbours of its own kind
    gen = torch.Generator().manual_seed(0)
    majority, minority = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    feats = majority + 0.05 * torch.randn(1, 10, 10, 16, generator=gen)
    feats[0, :2] = minority + 0.05 * torch.randn(2, 10, 16, generator=gen)
    nearest = patch_scores(feats, None, 1, 2)[0]
    share = patch_scores(feats, None, 1, 2, zero_shot_quantile=0.3)[0]
    # the nearest neighbour: the band vouches for itself, nothing stands out
    assert nearest[:2].mean() < 2 * nearest[2:].mean()
    # at 30 % of the others the band's patches must reach the other texture, the majority's need not
    assert share[:2].min() > 5 * share[2:].max()


def test_the_image_score_reads_the_nearest_map_or_the_quantile_map():
    from anomalens.methods.patch_distances import score_image
    from anomalens.methods.patchknn_settings import PatchKnnSettings
    from anomalens.scoring import edge_weights, upsample_and_smooth

    feats = torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(2))
    base = PatchKnnSettings(image_size=64, fused_recipe="none", length_weight=0.0)
    weights = edge_weights((8, 8), base.neighbourhood, 64)

    def by_hand(patches):
        return float((upsample_and_smooth(patches, 64, base.smoothing_sigma) * weights).max())

    nearest, share = patch_scores(feats, None, 1, 2), patch_scores(feats, None, 1, 2, zero_shot_quantile=0.3)
    assert abs(by_hand(nearest) - by_hand(share)) > 0.01  # the two choices differ on these features
    for score_from, expected_score in (("nearest", nearest), ("map", share)):
        settings = PatchKnnSettings(**{**base.__dict__, "zero_shot_quantile": 0.3, "zero_shot_score": score_from})
        maps, score = score_image(feats, None, settings)
        torch.testing.assert_close(maps, upsample_and_smooth(share, 64, base.smoothing_sigma))  # the map: always
        assert float(score) == pytest.approx(by_hand(expected_score), rel=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("patches", [30, 61])
def test_the_graph_reads_the_rank_from_its_input(metric, patches):
    query = torch.randn(2, patches, 8, generator=torch.Generator().manual_seed(1))
    got = self_distance(query, 2, metric, quantile=0.3)
    flat = query.double().numpy()
    rank = zero_shot_rank(patches, 2, 0.3)
    for b in range(2):
        expected = _by_sorting(flat[b], rank, metric, np.eye(patches, dtype=bool))
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile_above_aspect", [0.0, 1.5])
@pytest.mark.parametrize("score_from", ["nearest", "map"])
def test_the_onnx_export_gives_the_same_zero_shot_maps(tmp_path, tile_above_aspect, score_from):
    # without tiles several images per call (the rank from each input's patches), with them one image's
    # tiles pooled (the rank from all of them: their number varies with the image)
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_onnx, load_onnx_detector

    det = Detector(
        "patchknn",
        image_size=64,
        tile_above_aspect=tile_above_aspect,
        zero_shot_quantile=0.3,
        zero_shot_score=score_from,
    ).fit([])
    export_onnx(det, tmp_path / "m.onnx")  # verifies the graph against PyTorch too
    exported = load_onnx_detector(tmp_path / "m.onnx")
    queries = [*planted_batch([5, 6], defect=2), *planted_batch([8], "long", size=64)]
    queries[-1].rgb = np.concatenate([queries[-1].rgb, queries[-1].rgb[:, ::-1], queries[-1].rgb], axis=1)
    for a, b in zip(det.predict(queries), exported.predict(queries)):
        assert abs(a.score - b.score) <= 1e-4
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-4


def test_an_exclusion_window_is_refused_by_the_export(tmp_path):
    from anomalens.export import ExportError, export_onnx

    det = Detector("patchknn", image_size=64, zero_shot_exclusion=1).fit([])
    with pytest.raises(ExportError, match="zero_shot_exclusion"):
        export_onnx(det, tmp_path / "m.onnx")
