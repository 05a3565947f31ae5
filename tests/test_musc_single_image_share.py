"""musc's single-image share (`single_image_knn_weight`): each zero-shot output joined by patchknn's
single-image zero-shot output, both standardised on the batch's most normal images. Checked by hand (the
join, the level images), against musc and patchknn run apart and joined with numpy, for order, for a defect
kind that many images of the batch share (what it is for), with references (off) and for old saved models."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from cli_helpers import assert_musc_run_resumes_identically
from synthetic import planted_batch, smooth_texture

from anomalens import Detector, load_detector
from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.musc.single_image_share import LEVEL_IMAGES_MINIMUM, gated, joined, level_images
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings
from anomalens.methods.recipe_fusion import MapLevel
from anomalens.metrics import PixelMetricAccumulator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"image_size": 64, "progress": False, "knn_fused": "none"}


def _level(maps: list[np.ndarray]) -> tuple[float, float]:
    """Median and MAD of every fourth pixel of normal maps, with numpy here."""
    pixels = np.concatenate([m[::4, ::4].ravel() for m in maps]).astype(np.float64)
    median = float(np.median(pixels))
    return median, float(np.median(np.abs(pixels - median)))


def test_the_join_is_the_weighted_mean_of_both_standardised_in_musc_units():
    from anomalens.methods.base import MethodOutput

    mutual = MethodOutput(5.0, np.array([[1.0, 3.0], [5.0, 7.0]], np.float32))
    single = MethodOutput(2.0, np.array([[0.0, 0.5], [1.0, 4.0]], np.float32))
    levels = (MapLevel(1.0, 2.0), MapLevel(0.0, 0.5))
    out = joined(mutual, single, levels, 0.25)
    # musc standardised: (x - 1) / 2 = [0, 1, 2, 3], score 2; single: x / 0.5 = [0, 1, 2, 8], score 4
    expected = np.array([[0.0, 1.0], [2.0, 4.25]]) * 2.0 + 1.0  # 0.75 a + 0.25 b, back in musc's units
    np.testing.assert_allclose(out.anomaly_map, expected, atol=1e-6)
    assert out.score == pytest.approx((0.75 * 2.0 + 0.25 * 4.0) * 2.0 + 1.0)
    same = joined(mutual, single, levels, 0.0)  # weight 0: musc's output as it was
    np.testing.assert_allclose(same.anomaly_map, mutual.anomaly_map, atol=1e-6)


def test_the_level_images_are_the_pseudo_references_or_the_lowest_scored_sixteen():
    paths = [f"i{k:02d}" for k in range(40)]
    scores = np.arange(40, 0, -1, dtype=np.float64)  # the last images score lowest
    many = list(range(20))
    assert level_images(scores, paths, many) == many
    lowest = level_images(scores, paths, [39, 38])
    assert sorted(lowest) == list(range(40 - LEVEL_IMAGES_MINIMUM, 40))
    assert sorted(level_images(scores[:5], paths[:5], [])) == [0, 1, 2, 3, 4]  # a small batch: all of it


def test_outputs_are_musc_and_single_image_patchknn_joined_on_the_lowest_scored_images():
    images = planted_batch(range(18), defect=5)
    weight = 0.4
    outputs = create_method("musc", **FAST, single_image_knn_weight=weight).fit([]).predict(images)
    musc = create_method("musc", **FAST).fit([]).predict(images)
    mutual = create_method("musc", **FAST, pseudo_reference_share=0.0).fit([]).predict(images)
    single = PatchKnn(PatchKnnSettings()).fit([]).predict(images)
    # 18 images: two pseudo-references, so the 16 that the mutual score (as it chose them) ranks lowest set the levels
    lowest = sorted(range(18), key=lambda i: (mutual[i].score, images[i].path))[:LEVEL_IMAGES_MINIMUM]
    a = _level([musc[i].anomaly_map for i in lowest])
    b = _level([single[i].anomaly_map for i in lowest])
    for m, s, out in zip(musc, single, outputs, strict=True):
        z = (1 - weight) * (m.anomaly_map - a[0]) / a[1] + weight * (s.anomaly_map - b[0]) / b[1]
        np.testing.assert_allclose(out.anomaly_map, z * a[1] + a[0], atol=1e-4)
        score = (1 - weight) * (m.score - a[0]) / a[1] + weight * (s.score - b[0]) / b[1]
        assert out.score == pytest.approx(score * a[1] + a[0], abs=1e-4)
    assert int(np.argmax([o.score for o in outputs])) == 5


def test_the_order_of_the_batch_does_not_change_the_outputs():
    images = planted_batch(range(20), defect=3)
    method = create_method("musc", **FAST, single_image_knn_weight=0.5).fit([])
    first = {img.path: out for img, out in zip(images, method.predict(images), strict=True)}
    shuffled = images[:]
    random.Random(1).shuffle(shuffled)
    for img, out in zip(shuffled, method.predict(shuffled), strict=True):
        assert out.score == pytest.approx(first[img.path].score, abs=1e-5)
        np.testing.assert_allclose(out.anomaly_map, first[img.path].anomaly_map, atol=1e-5)


def _shared_defect_batch() -> tuple[list[LoadedImage], list[np.ndarray]]:
    """20 textures; 12 carry the same kind of dark blotch, each somewhere else: the other images vouch for it."""
    rng = np.random.default_rng(7)
    images, masks = [], []
    for k in range(20):
        rgb = smooth_texture(100 + k, 64, cell=8)
        mask = np.zeros((64, 64), bool)
        if k < 12:
            r, c = rng.integers(4, 44, size=2)
            mask[r : r + 16, c : c + 16] = True
            rgb[mask] = (40, 40, 40)
        images.append(LoadedImage(path=f"s{k:02d}.png", rgb=rgb))
        masks.append(mask)
    return images, masks


def _pixel_auroc(outputs, masks) -> float:
    pixels = PixelMetricAccumulator(resolution=64)
    for out, mask in zip(outputs, masks, strict=True):
        pixels.update(out.anomaly_map, mask)
    return pixels.compute()["pixel_auroc"]


def test_a_defect_kind_the_batch_shares_is_found_better_with_the_images_own_patches():
    images, masks = _shared_defect_batch()
    settings = {**FAST, "pseudo_reference_share": 0.0}
    alone = _pixel_auroc(create_method("musc", **settings).fit([]).predict(images), masks)
    joined_batch = create_method("musc", **settings, single_image_knn_weight=0.5).fit([]).predict(images)
    assert _pixel_auroc(joined_batch, masks) > alone + 0.02


def test_with_references_the_share_is_off():
    refs, images = planted_batch([40, 41], "r"), planted_batch(range(6), defect=2)
    on = create_method("musc", **FAST, single_image_knn_weight=0.5).fit(refs)
    off = create_method("musc", **FAST).fit(refs)
    for a, b in zip(on.predict(images), off.predict(images), strict=True):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)


def test_a_model_saved_before_the_setting_loads_without_the_share(tmp_path):
    Detector("musc", **FAST, single_image_knn_weight=0.5).fit([]).save(tmp_path / "m")
    config = tmp_path / "m" / "detector.json"
    recorded = json.loads(config.read_text())
    del recorded["settings"]["single_image_knn_weight"]  # as written before the setting existed
    config.write_text(json.dumps(recorded))
    assert load_detector(tmp_path / "m").method.settings.single_image_knn_weight == 0.0


def test_the_gate_is_the_smaller_of_the_single_image_and_share_outputs_standardised():
    from anomalens.methods.base import MethodOutput

    single = MethodOutput(3.0, np.array([[1.0, 5.0]], np.float32))
    share = MethodOutput(0.5, np.array([[4.0, 0.0]], np.float32))
    out = gated(single, share, (MapLevel(1.0, 2.0), MapLevel(0.0, 0.25)))
    # single: (x - 1) / 2 = [0, 2], score 1; share: x / 0.25 = [16, 0], score 2
    np.testing.assert_allclose(out.anomaly_map, [[0.0, 0.0]])
    assert out.score == pytest.approx(1.0)


def _marked_batch() -> tuple[list[LoadedImage], list[np.ndarray]]:
    """20 textures with the same dark mark at the same place (normal); image 4 has a red defect elsewhere."""
    images, masks = [], []
    for k in range(20):
        rgb = smooth_texture(200 + k, 64, cell=8)
        rgb[6:18, 6:18] = (30, 30, 30)
        mask = np.zeros((64, 64), bool)
        if k == 4:
            rgb[40:54, 38:52] = (255, 0, 0)
            mask[40:54, 38:52] = True
        images.append(LoadedImage(path=f"m{k:02d}.png", rgb=rgb))
        masks.append(mask)
    return images, masks


def test_the_gate_keeps_a_mark_every_image_carries_out_of_the_map():
    images, masks = _marked_batch()
    settings = {**FAST, "pseudo_reference_share": 0.2, "single_image_knn_weight": 0.5}
    plain = create_method("musc", **settings).fit([]).predict(images)
    gate = create_method("musc", **settings, single_image_gate="pseudo-references").fit([]).predict(images)
    mark = (slice(6, 18), slice(6, 18))
    # on the normal images the mark stands out less with the gate, and the defect is still found
    ratio = [g.anomaly_map[mark].mean() / p.anomaly_map[mark].mean() for g, p in zip(gate, plain) if g is not gate[4]]
    assert max(ratio) < 1.0
    assert _pixel_auroc(gate, masks) > 0.99
    assert int(np.argmax([o.score for o in gate])) == 4


def test_without_pseudo_references_the_gate_has_nothing_to_read_and_is_off():
    images = planted_batch(range(6), defect=2)  # under 15 images: no pseudo-references
    settings = {**FAST, "single_image_knn_weight": 0.5}
    on = create_method("musc", **settings, single_image_gate="pseudo-references").fit([]).predict(images)
    off = create_method("musc", **settings).fit([]).predict(images)
    for a, b in zip(on, off, strict=True):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)


def test_a_command_line_run_with_the_share_resumes_identically(tmp_path):
    assert_musc_run_resumes_identically(tmp_path, ["knn_fused=none", "single_image_knn_weight=0.5"], defect=6)
