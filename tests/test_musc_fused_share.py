"""musc's `knn_fused`: its patchknn share and a second recipe fused, in the first recipe's units. Checked
against the two shares built apart and fused by hand (zero-shot: levels from the pseudo-references' own
maps; with references: patchknn's own `fused_recipe`), off = the share as before, a saved model, leave-one-out
and a resumed command-line run (the order of the batch: tests/test_musc_pseudo_references.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_musc_run_resumes_identically
from synthetic import planted_batch

from anomalens import Detector, load_detector
from anomalens.errors import SettingsError
from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.musc.pseudo_references import pseudo_reference_settings
from anomalens.methods.patchknn import PatchKnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the plain share, whatever the default; one pick of the pseudo-references (the mutual score's): the later
# rounds are tests/test_musc_pseudo_references.py
FAST = {"image_size": 64, "progress": False, "knn_fused": "none", "pseudo_reference_rounds": 1}
FUSED = {**FAST, "knn_fused": "textured-surface"}
RECIPE = "textured-surface"


def _images(seeds, prefix: str = "q", defect: int | None = None) -> list[LoadedImage]:
    return planted_batch(seeds, prefix, defect=defect)


def _level(maps: list[np.ndarray]) -> tuple[float, float]:
    """Median and MAD of every fourth pixel of normal maps, with numpy here."""
    pixels = np.concatenate([m[::4, ::4].ravel() for m in maps]).astype(np.float64)
    median = float(np.median(pixels))
    return median, float(np.median(np.abs(pixels - median)))


def _fused_by_hand(a: np.ndarray | float, b: np.ndarray | float, first, second):
    """Both standardised, the larger, back in the first's units."""
    z = np.maximum(
        (np.asarray(a, np.float64) - first[0]) / first[1], (np.asarray(b, np.float64) - second[0]) / second[1]
    )
    return z * first[1] + first[0]


@pytest.mark.parametrize("with_references", [False, True])
def test_the_fused_share_is_the_two_shares_fused_by_hand_on_the_pseudo_references_levels(with_references):
    images = _images(range(16), defect=5)
    refs = _images([40, 41], "r") if with_references else []
    # the share alone (weight 1): each image's output is patchknn's, the mutual score only picks the references
    alone = {**FAST, "pseudo_reference_weight": 1.0, "reference_knn_weight": 1.0}
    runs = {}
    for name, extra in {"default": {}, "recipe": {"knn_recipe": RECIPE}, "fused": {"knn_fused": RECIPE}}.items():
        method = create_method("musc", **{**alone, **extra}).fit(refs)
        runs[name] = (method.predict(images), method.last_batch["pseudo_references"])
    chosen = runs["default"][1]
    assert len(chosen) == 2 and runs["recipe"][1] == chosen and runs["fused"][1] == chosen
    own = [i for i, img in enumerate(images) if img.path in chosen]
    first = _level([runs["default"][0][i].anomaly_map for i in own])
    second = _level([runs["recipe"][0][i].anomaly_map for i in own])
    recipe_wins = 0
    for a, b, got in zip(runs["default"][0], runs["recipe"][0], runs["fused"][0], strict=True):
        want = _fused_by_hand(a.anomaly_map, b.anomaly_map, first, second)
        np.testing.assert_allclose(got.anomaly_map, want, rtol=1e-4, atol=1e-4)
        assert got.score == pytest.approx(float(_fused_by_hand(a.score, b.score, first, second)), abs=1e-4)
        recipe_wins += int(np.any(np.abs(got.anomaly_map - a.anomaly_map) > 1e-3))
    assert recipe_wins > 0  # the second recipe takes some pixels: the fusion is not the default share
    assert int(np.argmax([o.score for o in runs["fused"][0]])) == 5


def test_off_leaves_the_share_as_it_was():
    images = _images(range(16), defect=5)
    method = create_method("musc", **FAST).fit([])  # knn_fused none
    outputs = method.predict(images)
    chosen = method.last_batch["pseudo_references"]
    mutual = create_method("musc", **FAST, pseudo_reference_share=0.0).fit([]).predict(images)
    by_path = {img.path: img for img in images}
    knn = PatchKnn(pseudo_reference_settings()).fit([by_path[p] for p in chosen])
    assert knn.partner is None
    w = method.settings.pseudo_reference_weight
    for img, out, m in zip(images, outputs, mutual, strict=True):
        if img.path in chosen:
            continue  # scored without its own patches (test_musc_pseudo_references)
        k = knn.predict([img])[0]
        assert out.score == (1.0 - w) * m.score + w * k.score  # the same arithmetic: bit-identical
        assert np.array_equal(out.anomaly_map, ((1.0 - w) * m.anomaly_map + w * k.anomaly_map).astype(np.float32))


def test_with_references_and_no_pseudo_references_it_is_patchknns_fusion_in_the_first_units():
    refs, queries = _images([40, 41, 42], "r"), _images([3, 4, 5, 6], defect=2)  # 4 images: no pseudo-references
    method = create_method("musc", **FUSED, reference_knn_weight=1.0).fit(refs)
    # as musc builds it (its references unflipped: `reference_augment`)
    knn = create_method("patchknn", gaussian_weight=0, few_shot_k=1, fused_recipe=RECIPE, augment="none").fit(refs)
    first = knn.fusion_levels_[0]
    assert method.reference_knn_.fusion_levels_ == knn.fusion_levels_
    outputs = method.predict(queries)
    assert method.last_batch["pseudo_references"] == []
    for got, fused in zip(outputs, knn.predict(queries), strict=True):
        assert got.score == pytest.approx(fused.score * first.spread + first.median, abs=1e-5)
        # musc fuses at the image's size, patchknn on its 256 px model inputs: the maps differ by the resizing
        want = fused.anomaly_map * first.spread + first.median
        np.testing.assert_allclose(got.anomaly_map, want, atol=0.03 * float(np.ptp(want)))
        assert np.abs(got.anomaly_map - want).mean() < 1e-3 * float(np.ptp(want))
    assert int(np.argmax([o.score for o in outputs])) == 2
    # leave-one-out (calibration) too: patchknn's fused leave-one-out in the first recipe's units
    held_out = method.leave_one_out(refs, [0, 1, 2])
    for got, fused in zip(held_out, knn.leave_one_out(refs, [0, 1, 2]), strict=True):
        assert got.score == pytest.approx(fused.score * first.spread + first.median, abs=1e-5)


def test_with_references_the_pseudo_references_set_the_levels_and_a_saved_model_keeps_the_partner(tmp_path):
    refs, queries = _images([40, 41], "r"), _images(range(16), defect=4)
    det = Detector("musc", **FUSED).fit(refs)
    results = det.predict(queries)
    chosen = det.method.last_batch["pseudo_references"]
    assert len(chosen) == 2 and "q04.png" not in chosen
    assert max(range(16), key=lambda i: results[i].score) == 4
    det.save(tmp_path / "m")
    tensors = det.method.state_dict()
    assert "knn.fusion.levels" in tensors and any(k.startswith("knn.partner.") for k in tensors)
    again = load_detector(tmp_path / "m")
    assert again.method.settings.knn_fused == RECIPE
    assert again.method.reference_knn_.fusion_levels_ == det.method.reference_knn_.fusion_levels_
    for a, b in zip(results, again.predict(queries), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    plain = create_method("musc", **FAST).fit(refs).state_dict()  # off: no partner in the saved model
    assert not any("partner" in k or "fusion" in k for k in plain)


def test_a_model_saved_before_the_setting_loads_without_the_fused_share(tmp_path):
    refs, queries = _images([40, 41], "r"), _images([3, 4], defect=0)
    old = Detector("musc", **FAST).fit(refs)
    old.save(tmp_path / "m")
    config = tmp_path / "m" / "detector.json"
    recorded = json.loads(config.read_text())
    del recorded["settings"]["knn_fused"]  # as written before the setting existed
    config.write_text(json.dumps(recorded))
    again = load_detector(tmp_path / "m")
    assert again.method.settings.knn_fused == "none" and again.method.reference_knn_.partner is None
    for a, b in zip(old.predict(queries), again.predict(queries), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_the_setting_names_a_fused_recipe_and_is_described():
    with pytest.raises(SettingsError):
        create_method("musc", **{**FAST, "knn_fused": "default"})  # the first share already is the default
    same = create_method("musc", **FUSED, knn_recipe=RECIPE).fit(_images([40, 41], "r"))
    assert same.reference_knn_.partner is None  # the recipe beside itself: one share, not two alike
    method = create_method("musc", **FUSED).fit([])
    assert "knn_fused" in method.describe_fit()
    assert "knn_fused" not in create_method("musc", **FAST).fit([]).describe_fit()


def test_auto_fuses_the_texture_recipe_zero_shot_and_with_references(tmp_path):
    images, refs = _images(range(16), defect=5), _images([40, 41], "r")
    auto = {**FAST, "knn_fused": "auto"}
    assert create_method("musc", image_size=64).settings.knn_fused == "auto"  # the default
    zero_shot = create_method("musc", **auto).fit([])
    assert zero_shot.knn_fused() == RECIPE and "knn_fused" in zero_shot.describe_fit()
    named = create_method("musc", **FUSED).fit([])
    for a, b in zip(zero_shot.predict(images), named.predict(images), strict=True):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    # since session 34 with references too (`knn_fused_with_references`)
    with_refs = Detector("musc", **auto).fit(refs)
    assert with_refs.method.knn_fused() == RECIPE and with_refs.method.reference_knn_.partner is not None
    named = create_method("musc", **FUSED).fit(refs)
    expected = with_refs.predict(images)
    for a, b in zip(expected, named.predict(images), strict=True):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    with_refs.save(tmp_path / "m")  # a saved model with references loads with both recipes
    again = load_detector(tmp_path / "m")
    assert again.method.reference_knn_.partner is not None
    for a, b in zip(expected, again.predict(images), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    # sessions 26-33: zero-shot only
    before = Detector("musc", **auto, knn_fused_with_references=False).fit(refs)
    assert before.method.knn_fused() == "none" and before.method.reference_knn_.partner is None
    assert create_method("musc", **auto, knn_fused_with_references=False).fit([]).knn_fused() == RECIPE
    plain = create_method("musc", **FAST).fit(refs)
    for a, b in zip(before.predict(images), plain.predict(images), strict=True):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)


def test_a_fused_command_line_run_resumes_identically(tmp_path):
    out = assert_musc_run_resumes_identically(tmp_path, [f"knn_fused={RECIPE}"], defect=7)
    assert json.loads((out / "settings.json").read_text())["settings"]["knn_fused"] == RECIPE
