"""patchknn zero-shot with its `fused_recipe` partner (`zero_shot_fused`): each image's own levels (median and
MAD of its maps) bring the partner's map into the default recipe's values, the pixelwise maximum is kept and
the image score stays the default's. Checked by hand with numpy, against the two recipes run apart, through
a saved model, a model saved before the setting, and the ONNX export (per input and one image's tiles pooled)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from older_models import forget_settings
from synthetic import planted_batch

from anomalens import Detector, load_detector
from anomalens.methods import create_method
from anomalens.methods.patchknn import PatchKnn
from anomalens.methods.patchknn_settings import KNN_RECIPES, PatchKnnSettings
from anomalens.methods.recipe_fusion import LEVEL_PIXEL_STEP, fuse_zero_shot, image_levels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lower_median_and_mad(values: np.ndarray, step: int = LEVEL_PIXEL_STEP) -> tuple[float, float]:
    """Of every `step`-th pixel along the last two axes, with numpy."""
    values = values[..., ::step, ::step]
    v = np.sort(values.ravel())
    median = v[(v.size - 1) // 2]
    d = np.sort(np.abs(values.ravel() - median))
    return float(median), float(d[(d.size - 1) // 2])


def test_image_levels_are_the_lower_median_and_mad_pooled_or_per_input():
    maps = torch.tensor(np.random.default_rng(0).gamma(2.0, size=(3, 21, 18)), dtype=torch.float32)
    median, spread = image_levels(maps, pooled=True)
    assert median.shape == spread.shape == (1, 1, 1)
    assert (float(median), float(spread)) == pytest.approx(_lower_median_and_mad(maps.numpy()), abs=1e-6)
    median, spread = image_levels(maps, pooled=False)
    assert median.shape == (3, 1, 1)
    for i in range(3):
        assert (float(median[i]), float(spread[i])) == pytest.approx(_lower_median_and_mad(maps[i].numpy()), abs=1e-6)
    # a hand-made case: the sampled pixels are 1..9 -> median 5, deviations 4,3,2,1,0,1,2,3,4 -> MAD 2
    grid = torch.full((1, 3 * LEVEL_PIXEL_STEP, 3 * LEVEL_PIXEL_STEP), 100.0)  # the others are never read
    grid[0, ::LEVEL_PIXEL_STEP, ::LEVEL_PIXEL_STEP] = torch.arange(1.0, 10.0).reshape(3, 3)
    median, spread = image_levels(grid)
    assert (float(median), float(spread)) == (5.0, 2.0)
    constant = torch.full((1, 2, 2), 0.3)  # no spread: the floor, no division by zero
    assert float(image_levels(constant)[1]) > 0


def test_the_fused_map_is_the_first_raised_where_the_second_in_its_units_is_larger():
    rng = np.random.default_rng(1)
    first = rng.normal(0.01, 0.002, (2, 16, 16)).astype(np.float32)
    second = rng.normal(0.2, 0.03, (2, 16, 16)).astype(np.float32)
    second[0, 2, 3] = 0.5  # far out in the second recipe's own spread (a pixel the levels do not read)
    fused = fuse_zero_shot(torch.from_numpy(first), torch.from_numpy(second)).numpy()
    (ma, sa), (mb, sb) = _lower_median_and_mad(first), _lower_median_and_mad(second)
    np.testing.assert_allclose(fused, np.maximum(first, (second - mb) / sb * sa + ma), rtol=1e-5, atol=1e-7)
    assert np.all(fused >= first) and fused[0, 2, 3] > first.max()


def test_zero_shot_outputs_are_the_two_recipes_fused_by_hand_and_keep_the_default_score():
    images = planted_batch([3, 4, 5], defect=1)
    fused = create_method("patchknn", image_size=64).fit([])
    assert fused._fuses_zero_shot() and "zero_shot_fused" in fused.describe_fit()
    alone = create_method("patchknn", image_size=64, fused_recipe="none").fit([])
    partner = PatchKnn(replace(PatchKnnSettings(image_size=64), **KNN_RECIPES["textured-surface"])).fit([])
    changed = 0
    for got, a, b in zip(fused.predict(images), alone.predict(images), partner.predict(images)):
        assert got.score == a.score  # the image score is the default recipe's
        (ma, sa), (mb, sb) = _lower_median_and_mad(a.anomaly_map), _lower_median_and_mad(b.anomaly_map)
        want = np.maximum(a.anomaly_map, (b.anomaly_map - mb) / sb * sa + ma)
        # the library takes the levels on the model inputs (64 px), this on the image (64 px too): equal here
        np.testing.assert_allclose(got.anomaly_map, want, rtol=1e-4, atol=1e-6)
        changed += int(np.abs(got.anomaly_map - a.anomaly_map).max() > 1e-4)
    assert changed > 0  # the partner raises some pixels: the fusion is exercised
    off_method = create_method("patchknn", image_size=64, zero_shot_fused=False).fit([])
    assert "zero_shot_fused" not in off_method.describe_fit()
    off = off_method.predict(images)
    for a, b in zip(alone.predict(images), off):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)


def test_a_saved_zero_shot_model_and_one_saved_before_the_setting(tmp_path):
    images = planted_batch([3, 4], defect=0)
    det = Detector("patchknn", image_size=64).fit([])
    expected = det.predict(images)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method._fuses_zero_shot()
    for a, b in zip(expected, again.predict(images)):
        assert a.score == pytest.approx(b.score, abs=1e-7)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-7)
    forget_settings(tmp_path / "m", "zero_shot_fused")  # saved before the setting: zero-shot unfused
    old = load_detector(tmp_path / "m")
    assert not old.method.settings.zero_shot_fused and not old.method._fuses_zero_shot()
    plain = Detector("patchknn", image_size=64, fused_recipe="none").fit([]).predict(images)
    for a, b in zip(plain, old.predict(images)):
        assert a.score == pytest.approx(b.score, abs=1e-7)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-7)


@pytest.mark.parametrize("tile_above_aspect", [0.0, 1.5])
def test_the_onnx_export_fuses_with_the_same_levels(tmp_path, tile_above_aspect):
    # without tiles the runner scores several images per call (levels per input); with them one image's
    # tiles per call (levels pooled over its tiles)
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_onnx, load_onnx_detector

    det = Detector("patchknn", image_size=64, tile_above_aspect=tile_above_aspect).fit([])
    export_onnx(det, tmp_path / "m.onnx")  # verifies the graph against PyTorch too
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert exported.meta["fused_recipe"]["zero_shot"] == "image levels"
    queries = [*planted_batch([5, 6, 7], defect=2), *planted_batch([8], "long", size=64)]
    queries[-1].rgb = np.concatenate([queries[-1].rgb, queries[-1].rgb[:, ::-1]], axis=1)  # 64 x 128: tiles
    for a, b in zip(det.predict(queries), exported.predict(queries)):
        assert abs(a.score - b.score) <= 1e-4
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-4
