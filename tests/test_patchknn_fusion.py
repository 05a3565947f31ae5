"""patchknn's `fused_recipe`: the levels (median, MAD of normal maps) by hand, the fusion by hand, parity
with two separately fitted detectors, one reference, zero-shot, save/load, calibration and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from older_models import forget_settings
from synthetic import noisy_part

from anomalens.detector import Detector, load_detector
from anomalens.images import LoadedImage
from anomalens.methods.base import MethodOutput
from anomalens.methods.recipe_fusion import (
    MIN_SPREAD,
    MapLevel,
    fuse_inputs,
    levels_from_tensor,
    levels_tensor,
    map_level,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPE = {"magnitudes": True, "blocks": (4, 10, 14)}  # KNN_RECIPES["textured-surface"], restated


image = noisy_part  # the shared synthetic part (tests/synthetic.py)


def test_map_level_is_the_median_and_mad_of_every_fourth_pixel_that_counts():
    a = np.zeros((8, 8), np.float32)
    a[::4, ::4] = [[1.0, 2.0], [3.0, 10.0]]  # the pixels read: 1, 2, 3, 10
    b = np.full((5, 5), 7.0, np.float32)  # read: the 4 pixels (0|4, 0|4), of which the region keeps row 0's
    region = np.zeros((5, 5), bool)
    region[:4, :] = True
    level = map_level([MethodOutput(0.0, a), MethodOutput(0.0, b, inspected=region)])
    # 1, 2, 3, 7, 7, 10: median 5, deviations 4 3 2 2 2 5 -> MAD 2.5
    assert level == MapLevel(5.0, 2.5)
    assert map_level([MethodOutput(0.0, np.ones((4, 4), np.float32))]).spread == MIN_SPREAD
    with pytest.raises(ValueError, match="at least one map"):
        map_level([])


def test_fuse_takes_the_larger_standardised_value_per_pixel_and_score():
    first = (torch.tensor([[[1.0, 3.0], [2.0, 0.0]]]), 2.0)
    second = (torch.tensor([[[0.1, 0.1], [0.9, 0.3]]]), 0.5)
    maps, score = fuse_inputs(first, second, (MapLevel(1.0, 2.0), MapLevel(0.1, 0.2)))
    # first: (m - 1) / 2 = [0, 1], [0.5, -0.5]; second: (m - 0.1) / 0.2 = [0, 0], [4, 1]
    np.testing.assert_allclose(maps.numpy(), [[[0.0, 1.0], [4.0, 1.0]]], atol=1e-6)
    assert score == pytest.approx(max(0.5, 2.0))  # (2 - 1) / 2 against (0.5 - 0.1) / 0.2


def test_levels_survive_a_tensor_and_bad_ones_are_refused():
    levels = (MapLevel(0.5, 0.125), MapLevel(-1.0, 2.0))
    assert levels_from_tensor(levels_tensor(levels)) == levels
    with pytest.raises(ValueError, match="positive spreads"):
        levels_from_tensor(torch.tensor([0.0, 0.0, 1.0, 1.0]))


def _independent_levels(det: Detector, refs: list[LoadedImage]) -> MapLevel:
    """Median and MAD of every fourth pixel of the leave-one-out maps, computed here with numpy."""
    outputs = det.method._leave_one_out(refs, list(range(len(refs))))
    pixels = np.concatenate([o.anomaly_map[::4, ::4].ravel() for o in outputs]).astype(np.float64)
    median = np.median(pixels)
    return MapLevel(float(median), float(np.median(np.abs(pixels - median))))


def test_a_fused_detector_equals_the_two_recipes_fitted_apart_and_fused_by_hand():
    refs, queries = [image(1), image(2), image(5)], [image(3), image(4, defect=True)]
    fused = Detector("patchknn", image_size=64, fused_recipe="textured-surface").fit(refs)
    default = Detector("patchknn", image_size=64, fused_recipe="none").fit(refs)
    recipe = Detector("patchknn", image_size=64, **RECIPE).fit(refs)
    levels = (_independent_levels(default, refs), _independent_levels(recipe, refs))
    for got, want in zip(fused.method.fusion_levels_, levels):
        assert got.median == pytest.approx(want.median, abs=1e-6) and got.spread == pytest.approx(want.spread, abs=1e-6)
    results = fused.predict(queries)
    for result, a, b in zip(results, default.predict(queries), recipe.predict(queries)):
        want = np.maximum(
            (a.anomaly_map - levels[0].median) / levels[0].spread, (b.anomaly_map - levels[1].median) / levels[1].spread
        )
        np.testing.assert_allclose(result.anomaly_map, want, atol=1e-4)
        assert result.score == pytest.approx(
            max((a.score - levels[0].median) / levels[0].spread, (b.score - levels[1].median) / levels[1].spread),
            abs=1e-4,
        )
    assert results[1].score > results[0].score + 3  # the defect stands out in units of the normal spread


def _counting(run, passes: list):
    """`run`, recording the batch size of each call in `passes`."""
    return lambda x: passes.append(len(x)) or run(x)


def test_a_fused_fit_and_its_calibration_pass_each_reference_copy_through_the_backbone_once(monkeypatch):
    refs = [image(1), image(2), image(5)]
    fitted = {}
    for shared in (True, False):
        det = Detector("patchknn", image_size=64, fused_recipe="textured-surface")
        det.method._shared_pass = shared  # False: each recipe its own passes
        passes = []
        for backbone in (det.method.backbone, det.method.partner.backbone):
            counted = _counting(backbone._run_until_last_block, passes)
            monkeypatch.setattr(backbone, "_run_until_last_block", counted)
        det.fit(refs).calibrate()
        fitted[shared] = det, sum(passes)
    (shared, shared_passes), (apart, apart_passes) = fitted[True], fitted[False]
    # 3 references x 4 copies (flips), once: the partner's features, the levels' and the calibration's
    # leave-one-out maps come from that pass (apart: 12 per recipe; before session 37 also 3 per recipe for
    # the levels and 3 more for the calibration, 36)
    assert (shared_passes, apart_passes) == (12, 24)
    for a, b in ((shared.method, apart.method), (shared.method.partner, apart.method.partner)):
        assert torch.equal(a.bank_.banks["patches"], b.bank_.banks["patches"])
    assert shared.method.fusion_levels_ == apart.method.fusion_levels_
    assert shared.threshold.value == apart.threshold.value


@pytest.mark.parametrize(("share", "kept"), [(0.5, 20), (1.0, 40), (0.3, 12)])
def test_the_two_fused_banks_share_the_coreset_size(share, kept):
    refs = [image(i) for i in range(1, 7)]  # 6 x 4 copies x 64 patches at 64 px: both banks far above 40
    settings = {"image_size": 64, "coreset_size": 40, "fused_coreset_share": share}
    det = Detector("patchknn", fused_recipe="textured-surface", **settings).fit(refs)
    method = det.method
    assert method.bank_.banks["patches"].shape[0] == kept  # ceil(share x 40)
    assert method.partner.bank_.banks["patches"].shape[0] == kept
    assert method.partner.settings.coreset_size == kept  # the partner holds its share as its own cap
    alone = Detector("patchknn", fused_recipe="none", **settings).fit(refs)
    assert alone.method.bank_.banks["patches"].shape[0] == 40  # without a partner the share does not apply


def test_one_reference_is_levelled_against_its_own_mirrored_copies():
    ref, queries = image(1), [image(3), image(4, defect=True)]
    det = Detector("patchknn", image_size=64, fused_recipe="textured-surface").fit([ref])
    method = det.method
    inputs, layout = method.model_inputs(ref)
    from anomalens.augment import augment_input

    copies = method._encode([y for x in inputs for y in augment_input(x, "flips")[1:]])
    feats, _ = method._features([ref])
    alone = method.score(feats[0], layout, method.build_bank([copies.reshape(-1, copies.shape[-1])]))
    assert method.fusion_levels_[0] == map_level([alone])
    results = det.predict(queries)
    assert results[1].score > results[0].score


def test_zero_shot_is_not_fused_and_saved_models_keep_the_partner(tmp_path):
    queries = [image(3), image(4, defect=True)]
    zero = Detector("patchknn", image_size=64, fused_recipe="textured-surface").predict(queries)
    plain = Detector("patchknn", image_size=64, fused_recipe="none").predict(queries)
    assert [r.score for r in zero] == pytest.approx([r.score for r in plain], abs=1e-6)
    det = Detector("patchknn", image_size=64, fused_recipe="textured-surface").fit([image(1), image(2)])
    results = det.predict(queries)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method.fusion_levels_ == det.method.fusion_levels_
    for a, b in zip(results, again.predict(queries)):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)


def test_the_any_surface_preset_sets_the_fusion():
    import yaml

    from anomalens.cli.config import PRESETS

    preset = yaml.safe_load((PRESETS / "any-surface.yaml").read_text())
    assert preset == {"method": "patchknn", "set": {"fused_recipe": "textured-surface"}}


def test_calibration_standardises_each_held_out_reference_by_the_other_references_maps():
    refs = [image(1), image(2), image(5)]
    det = Detector("patchknn", image_size=64, fused_recipe="textured-surface").fit(refs)
    held_out = det.method._leave_one_out(refs, [0, 1, 2])
    unfused = det.method._unfused_leave_one_out(refs, [0, 1, 2])
    partner = det.method.partner._unfused_leave_one_out(refs, [0, 1, 2])
    assert (map_level(unfused), map_level(partner)) == det.method.fusion_levels_  # what predict uses
    for i, (got, a, b) in enumerate(zip(held_out, unfused, partner)):
        # levels without reference i's own map: it does not pull the median towards itself
        first = map_level([o for j, o in enumerate(unfused) if j != i])
        second = map_level([o for j, o in enumerate(partner) if j != i])
        assert got.score == pytest.approx(max(first.standardise(a.score), second.standardise(b.score)))
        want = np.maximum(first.standardise(a.anomaly_map), second.standardise(b.anomaly_map))
        np.testing.assert_allclose(got.anomaly_map, want, atol=1e-5)  # 64 px images: inputs = images
    # a subset of the references held out gives the same outputs for them
    subset = det.method._leave_one_out(refs, [2])
    assert subset[0].score == pytest.approx(held_out[2].score)


def test_the_partner_leaves_out_what_the_inspection_region_leaves_out():
    refs = [image(1), image(2)]
    region = np.zeros((64, 64), bool)
    region[:, 32:] = True  # the right half counts
    whole = Detector("patchknn", image_size=64, fused_recipe="textured-surface").fit(refs)
    half = Detector("patchknn", image_size=64, fused_recipe="textured-surface", region=region).fit(refs)
    assert half.method.partner.region is half.method.region
    for method in (half.method, half.method.partner):
        other = whole.method if method is half.method else whole.method.partner
        assert method.bank_.banks["patches"].shape[0] < other.bank_.banks["patches"].shape[0]
    result = half.predict([image(4, defect=True)])[0]
    assert not result.inspected[:, :24].any()
    assert np.all(result.anomaly_map[~result.inspected] == result.anomaly_map.min())


def test_auto_fuses_the_texture_recipe_on_the_embedded_backbone_only():
    from anomalens.methods.patchknn_settings import PatchKnnSettings, fused_partner_recipe

    assert PatchKnnSettings().fused_recipe == "auto"
    assert fused_partner_recipe(PatchKnnSettings()) == "textured-surface"
    # the recipe's own features already, or a backbone it was not measured on: nothing to fuse
    assert fused_partner_recipe(PatchKnnSettings(magnitudes=True)) == "none"
    assert fused_partner_recipe(PatchKnnSettings(backbone="efficientnet-lite2")) == "none"
    # a named recipe that would change nothing is not run twice
    textured = PatchKnnSettings(magnitudes=True, blocks=(4, 10, 14), fused_recipe="textured-surface")
    assert fused_partner_recipe(textured) == "none"
    assert fused_partner_recipe(PatchKnnSettings(fused_recipe="large-defects")) == "large-defects"
    # lengths and the bank's Gaussian belong to unit features: the texture partner has them off
    det = Detector("patchknn", image_size=64, length_weight=16.0, gaussian_weight=0.5)
    partner = det.method.partner.settings
    assert partner.magnitudes and partner.length_weight is None and partner.gaussian_weight is None


def test_a_model_saved_before_the_fusion_loads_without_it(tmp_path):
    queries = [image(3), image(4, defect=True)]
    plain = Detector("patchknn", image_size=64, fused_recipe="none").fit([image(1), image(2)])
    plain.save(tmp_path / "old")
    forget_settings(tmp_path / "old", "fused_recipe")
    old = load_detector(tmp_path / "old")
    assert old.settings["fused_recipe"] == "none" and old.method.partner is None
    assert [r.score for r in old.predict(queries)] == [r.score for r in plain.predict(queries)]
