"""`musc`: LNAMD, mutual scoring, RsCIN and the joint batch (synthetic, offline, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import smooth_texture

from anomalens import Detector, load_detector
from anomalens.images import ImageLoadError, LoadedImage
from anomalens.methods.musc import SingleImageBatchError
from anomalens.methods.musc.lnamd import aggregate, layer_normalise
from anomalens.methods.musc.msm import (
    choose_partners,
    interval_average,
    interval_bounds,
    mutual_scores,
    nearest_patch_distances,
)
from anomalens.methods.musc.rscin import rescore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"image_size": 64, "progress": False}


def _texture(seed: int, size: int = 64) -> np.ndarray:
    return smooth_texture(seed, size, cell=4)


def _batch(n: int = 6, defect: int | None = 2) -> list[LoadedImage]:
    images = []
    for i in range(n):
        rgb = _texture(i)
        if i == defect:
            rgb[24:36, 24:36] = (255, 0, 0)
        images.append(LoadedImage(path=f"img{i}.png", rgb=rgb))
    return images


# ---- interval average ------------------------------------------------------------------------
def test_interval_average_matches_hand_computation():
    scores = torch.tensor([[5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 10.0]])
    # 10 partners, 0 %..30 %: ranks 0, 1, 2 of the sorted scores 1, 2, 3.
    assert interval_average(scores).item() == pytest.approx((1 + 2 + 3) / 3)
    # 10 %..50 %: ranks 1..4 -> 2, 3, 4, 5.
    assert interval_average(scores, (0.1, 0.5)).item() == pytest.approx((2 + 3 + 4 + 5) / 4)
    # Whole range: the plain mean.
    assert interval_average(scores, (0.0, 1.0)).item() == pytest.approx(5.5)


def test_interval_with_few_partners_uses_the_smallest_score():
    assert interval_bounds(2) == (0, 1)  # int(0.3 * 2) = 0 ranks: fall back to the smallest
    assert interval_average(torch.tensor([[4.0, 2.0]])).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="interval"):
        interval_bounds(10, (0.5, 0.2 - 0.3))


def test_nearest_patch_distance_is_euclidean_to_the_nearest_patch():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(7, 5), dim=-1)
    partners = F.normalize(torch.randn(3, 4, 5), dim=-1)
    expected = torch.stack([torch.cdist(q, p).min(dim=1).values for p in partners], dim=1)
    assert torch.allclose(nearest_patch_distances(q, partners), expected, atol=1e-5)


def test_chunked_and_unchunked_scoring_agree():
    torch.manual_seed(1)
    z = F.normalize(torch.randn(9, 16, 8), dim=-1)
    partners = choose_partners([f"k{i}" for i in range(9)], 0)
    whole = mutual_scores(z, partners, chunk_elements=1 << 30)
    tiny = mutual_scores(z, partners, chunk_elements=16)  # one partner image per product
    assert torch.allclose(whole, tiny, atol=1e-6)


def test_partner_sample_excludes_self_and_ignores_order():
    keys = [f"p{i}" for i in range(20)]
    chosen = choose_partners(keys, 5, seed=3)
    assert all(len(c) == 5 and i not in c for i, c in enumerate(chosen))
    perm = list(reversed(range(20)))
    again = choose_partners([keys[i] for i in perm], 5, seed=3)
    for new_index, old_index in enumerate(perm):
        assert sorted(keys[perm[j]] for j in again[new_index]) == sorted(keys[j] for j in chosen[old_index])
    assert choose_partners(keys, 0) == choose_partners(keys, 19)  # all others


# ---- RsCIN -------------------------------------------------------------------------------------
def test_rscin_on_a_hand_built_graph():
    # Images 0 and 1 are alike (cos 0.8), image 2 is orthogonal to both.
    feats = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    scores = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    out = rescore(scores, feats, (1, 2))
    # k=1: own score. k=2: image 0 -> (1*1 + 0.8*0)/1.8, image 1 -> (1*0 + 0.8*1)/1.8,
    # image 2 -> its second neighbour has similarity 0, so its own score.
    expected = torch.tensor([(1.0 + 1 / 1.8) / 2, (0.0 + 0.8 / 1.8) / 2, 0.5], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-9)
    assert torch.allclose(rescore(scores, feats, (1,)), scores)


def test_rscin_is_affine_equivariant_so_min_max_normalisation_only_rescales():
    torch.manual_seed(2)
    feats, scores = torch.randn(12, 6), torch.rand(12, dtype=torch.float64)
    a = rescore(scores, feats)
    b = rescore(3.0 * scores + 2.0, feats)
    assert torch.allclose(b, 3.0 * a + 2.0, atol=1e-9)


# ---- LNAMD -------------------------------------------------------------------------------------
def test_aggregation_equals_the_unfold_mean_of_the_official_formulation():
    torch.manual_seed(3)
    fmap = layer_normalise(torch.randn(2, 6, 7, 7))
    r = 3
    # Independent: unfold r x r zero-padded neighbourhoods, average each channel over them.
    unfolded = F.unfold(fmap, r, padding=r // 2).view(2, 6, r * r, 49).mean(dim=2)
    expected = F.normalize(unfolded.transpose(1, 2), dim=-1)
    assert torch.allclose(aggregate(fmap, r), expected, atol=1e-5)
    normed = layer_normalise(torch.randn(1, 3, 4, 4) * 5 + 2)
    assert normed.mean().abs() < 1e-5 and (normed.std(unbiased=False) - 1).abs() < 1e-3


# ---- the method on image batches ---------------------------------------------------------------
@pytest.fixture(scope="module")
def musc_detector():
    return Detector("musc", **FAST)


def test_planted_defect_scores_highest(musc_detector):
    results = musc_detector.predict(_batch())
    scores = [r.score for r in results]
    assert int(np.argmax(scores)) == 2
    row, col = np.unravel_index(np.argmax(results[2].anomaly_map), results[2].anomaly_map.shape)
    assert 20 <= row <= 40 and 20 <= col <= 40


def test_the_larger_lite_backbones_read_their_own_stage_ends():
    # Lite2's stage ends (10, 14: stride 16; 19: stride 32) play Lite0's 7, 10, 14
    det = Detector("musc", **{**FAST, "backbone": "efficientnet-lite2", "blocks": (10, 14, 19)})
    assert det.method.backbone.net.name == "efficientnet-lite2"
    scores = [r.score for r in det.predict(_batch())]
    assert int(np.argmax(scores)) == 2
    with pytest.raises(ValueError, match="efficientnet-lite0 has blocks 0..15"):
        Detector("musc", **{**FAST, "blocks": (10, 14, 19)})


def test_identical_normal_images_score_zero(musc_detector):
    same = [LoadedImage(path=f"same{i}.png", rgb=_texture(7)) for i in range(4)]
    for r in musc_detector.predict(same):
        assert r.score < 1e-3
        assert float(np.abs(r.anomaly_map).max()) < 1e-3


def test_image_order_does_not_change_scores(musc_detector):
    batch = _batch(7)
    first = {r.path: r for r in musc_detector.predict(batch)}
    second = {r.path: r for r in musc_detector.predict(batch[::-1])}
    for path, r in first.items():
        assert second[path].score == pytest.approx(r.score, abs=1e-5)
        assert np.allclose(second[path].anomaly_map, r.anomaly_map, atol=1e-5)


def test_partner_sample_is_order_independent_too():
    det = Detector("musc", max_partners=3, **FAST)
    batch = _batch(7)
    first = {r.path: r.score for r in det.predict(batch)}
    second = {r.path: r.score for r in det.predict(batch[3:] + batch[:3])}
    assert second == pytest.approx(first, abs=1e-5)


def test_float16_storage_changes_maps_by_less_than_1e_3():
    batch = _batch(5)
    half = Detector("musc", feature_dtype="float16", **FAST).predict(batch)
    full = Detector("musc", feature_dtype="float32", **FAST).predict(batch)
    for a, b in zip(half, full):
        assert abs(a.score - b.score) < 1e-3
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) < 1e-3


def test_single_image_falls_back_with_a_warning_or_raises(musc_detector):
    one = _batch(1, defect=0)
    with pytest.warns(UserWarning, match="batch of one image"):
        (result,) = musc_detector.predict(one)
    assert result.score > 0 and result.anomaly_map.shape == (64, 64)
    with pytest.raises(SingleImageBatchError, match=r"img0\.png"):
        Detector("musc", single_image="error", **FAST).predict(one)


def test_references_join_as_known_normal_and_survive_saving(tmp_path):
    refs = [LoadedImage(path=f"ref{i}.png", rgb=_texture(10 + i)) for i in range(3)]
    det = Detector("musc", **FAST).fit(refs)
    query = _batch(1, defect=0) + [LoadedImage(path="normal.png", rgb=_texture(11))]
    scores = {r.path: r.score for r in det.predict(query)}
    assert scores["img0.png"] > scores["normal.png"]
    # One image with references is a proper batch: no fallback.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (alone,) = det.predict(query[:1])
    det.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    (again,) = loaded.predict(query[:1])
    assert again.score == pytest.approx(alone.score, abs=1e-6)
    assert np.allclose(again.anomaly_map, alone.anomaly_map, atol=1e-6)


def test_leave_one_out_scores_each_reference_against_the_others():
    refs = [LoadedImage(path=f"ref{i}.png", rgb=_texture(20 + i)) for i in range(4)]
    det = Detector("musc", **FAST).fit(refs)
    det.calibrate()
    assert det.threshold is not None and det.threshold.value > 0


def test_joint_batch_reports_corrupt_files_and_goes_on(tmp_path):
    from PIL import Image

    paths = []
    for i, img in enumerate(_batch(4)):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img.rgb).save(path)
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    wide = tmp_path / "wide.png"
    Image.fromarray(np.concatenate([_texture(30), _texture(31)], axis=1)).save(wide)  # other size
    det = Detector("musc", **FAST)
    items = list(det.predict_iter([paths[0], broken, *paths[1:], wide], with_images=True))
    assert isinstance(items[1], ImageLoadError) and "broken.png" in str(items[1])
    good = [i for i in items if not isinstance(i, ImageLoadError)]
    assert len(good) == 5
    assert good[-1][0].anomaly_map.shape == (64, 128) and good[-1][1].size_hw == (64, 128)
    assert det.method.last_batch["images"] == [str(p) for p in [*paths, wide]]


def test_clip_backbone_path_runs_on_a_tiny_random_vit():
    det = Detector("musc", backbone="test-tiny", image_size=32, clip_layers=(2, 4), progress=False)
    results = det.predict(_batch(4))
    assert len(results) == 4 and all(r.anomaly_map.shape == (64, 64) for r in results)
    assert all(np.isfinite(r.score) for r in results)
    assert det.backbone_name.startswith("test-tiny")


@pytest.mark.parametrize(
    "bad", [{"feature_dtype": "int8"}, {"single_image": "ignore"}, {"interval": (0.3, 0.3)}]
)
def test_bad_settings_are_one_line_settings_errors(bad):
    from anomalens.errors import SettingsError

    with pytest.raises(SettingsError, match="musc"):
        Detector("musc", **bad)


def test_clip_layers_build_the_released_tower_away_from_the_native_size(monkeypatch):
    """Released MuSc at 518 px rebuilds ViT-L-14-336 from its config: nn.GELU, plain bicubic positions."""
    from anomalens.backbones import clip as clip_module
    from anomalens.methods.musc.extract import ClipLayers
    from anomalens.methods.musc.settings import MuScSettings

    asked = []
    real = clip_module.create_clip
    monkeypatch.setattr(clip_module, "create_clip", lambda *a, **kw: asked.append(kw["quick_gelu"]) or real(*a, **kw))
    away = ClipLayers("test-tiny-24", None, (5, 11), 49, released=True)  # native side 28
    native = ClipLayers("test-tiny-24", None, (5, 11), 28, released=True)
    plain = ClipLayers("test-tiny-24", None, (5, 11), 49, released=False)
    assert asked == [False, None, None]
    assert away.clip.pos_embed_antialias is False
    assert native.clip.pos_embed_antialias is True and plain.clip.pos_embed_antialias is True
    defaults = MuScSettings()
    assert defaults.clip_layers == (5, 11, 17, 23) and defaults.released_clip is True
    assert MuScSettings.absent_in_older_models["released_clip"] is False
