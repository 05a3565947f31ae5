"""`musc` with references and `reference_knn_weight`: each image's score and map are the weighted
mean of the mutual score and of patchknn (its defaults without the bank's Gaussian) fitted on the same
references, checked against the two methods run on their own; leave-one-out, saving, streams and older models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from older_models import forget_settings
from synthetic import smooth_texture

from anomalens import Detector, load_detector
from anomalens.images import LoadedImage
from anomalens.methods import create_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the plain share (one patchknn recipe), whatever the default: the fused share is test_musc_fused_share.py
FAST = {"image_size": 64, "progress": False, "knn_fused": "none"}


def _texture(seed: int, size: int = 64) -> np.ndarray:
    return smooth_texture(seed, size, cell=8)


def _images(seeds, prefix: str, size: int = 64, defect: int | None = None) -> list[LoadedImage]:
    out = []
    for k, seed in enumerate(seeds):
        rgb = _texture(seed, size)
        if k == defect:
            rgb[20:34, 36:50] = (255, 0, 0)
        out.append(LoadedImage(path=f"{prefix}{seed}.png", rgb=rgb))
    return out


@pytest.mark.parametrize("weight", [0.5, 0.25, 1.0])
def test_outputs_are_the_weighted_mean_of_the_mutual_score_and_patchknn(weight):
    refs, queries = _images([1, 2], "r"), _images([3, 4, 5], "q", defect=1)
    both = create_method("musc", **FAST, reference_knn_weight=weight).fit(refs)
    mutual = create_method("musc", **FAST, reference_knn_weight=0.0).fit(refs)
    knn = _patchknn_as_musc_builds_it().fit(refs)
    for b, m, k in zip(both.predict(queries), mutual.predict(queries), knn.predict(queries), strict=True):
        assert b.score == pytest.approx((1 - weight) * m.score + weight * k.score, abs=1e-6)
        np.testing.assert_allclose(b.anomaly_map, (1 - weight) * m.anomaly_map + weight * k.anomaly_map, atol=1e-6)
        assert b.anomaly_map.dtype == np.float32


def test_the_default_weight_and_zero_shot_has_no_fitted_patchknn():
    method = create_method("musc", **FAST)
    assert method.settings.reference_knn_weight == 0.5
    method.fit([])
    assert method.reference_knn_ is None and "pseudo_reference_share" in method.describe_fit()
    method.fit(_images([1, 2], "r"))
    assert method.reference_knn_ is not None and method.reference_knn_.num_references == 2
    assert "patchknn (weight 0.5" in method.describe_fit() and "model input: 256 px" in method.describe_fit()


def test_a_planted_defect_is_the_batch_top_and_its_map_peak():
    refs, queries = _images([1, 2], "r"), _images([3, 4, 5, 6], "q", defect=2)
    outputs = create_method("musc", **FAST).fit(refs).predict(queries)
    assert int(np.argmax([o.score for o in outputs])) == 2
    y, x = np.unravel_index(np.argmax(outputs[2].anomaly_map), outputs[2].anomaly_map.shape)
    assert 14 <= y < 40 and 30 <= x < 56  # on the red square (20-33, 36-49), give or take the smoothing


def test_a_stream_of_images_gives_what_a_list_gives():
    refs, queries = _images([1, 2], "r"), _images([3, 4, 5], "q", defect=0)
    method = create_method("musc", **FAST).fit(refs)
    listed = method.predict(queries)
    streamed = list(method.predict_joint(img for img in queries))
    for a, b in zip(listed, streamed, strict=True):
        assert a.score == b.score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_leave_one_out_merges_both_methods_leave_one_out():
    refs = _images([1, 2, 3], "r", defect=1)
    got = create_method("musc", **FAST).leave_one_out(refs, [0, 1])
    mutual = create_method("musc", **FAST, reference_knn_weight=0.0).leave_one_out(refs, [0, 1])
    knn = _patchknn_as_musc_builds_it().leave_one_out(refs, [0, 1])
    for g, m, k in zip(got, mutual, knn, strict=True):
        assert g.score == pytest.approx(0.5 * m.score + 0.5 * k.score, abs=1e-6)
        np.testing.assert_allclose(g.anomaly_map, 0.5 * m.anomaly_map + 0.5 * k.anomaly_map, atol=1e-6)


def test_a_saved_model_keeps_patchknn_and_the_side_it_chose(tmp_path):
    refs = _images([1, 2], "r", size=512)  # 512 px references: patchknn runs at 384 px, not 256
    queries = _images([3, 4], "q", size=512, defect=0)
    det = Detector("musc", **FAST).fit(refs)
    assert det.method.reference_knn_.settings.image_size == 384
    expected = det.predict(queries)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method.reference_knn_.settings.image_size == 384
    for a, b in zip(expected, again.predict(queries), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)


def test_a_model_saved_before_the_setting_loads_without_patchknn(tmp_path):
    refs, queries = _images([1, 2], "r"), _images([3, 4], "q")
    old = Detector("musc", **FAST, reference_knn_weight=0.0).fit(refs)
    old.save(tmp_path / "m")
    settings_file = next(p for p in (tmp_path / "m").rglob("*.json") if "reference_knn_weight" in p.read_text())
    recorded = json.loads(settings_file.read_text())
    _drop_key(recorded, "reference_knn_weight")  # as written before the setting existed
    settings_file.write_text(json.dumps(recorded))
    again = load_detector(tmp_path / "m")
    assert again.method.settings.reference_knn_weight == 0.0 and again.method.reference_knn_ is None
    for a, b in zip(old.predict(queries), again.predict(queries), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_the_references_enter_the_share_as_reference_augment_says():
    refs, banks = _images([1, 2], "r"), {}
    for augment in ("none", "flips"):
        method = create_method("musc", **FAST, reference_augment=augment).fit(refs)
        knn = _patchknn_as_musc_builds_it(augment).fit(refs)
        banks[augment] = method.reference_knn_.bank_.banks["patches"]
        torch.testing.assert_close(banks[augment], knn.bank_.banks["patches"])
    # flipped copies compete for the coreset's places: another bank
    assert banks["none"].shape != banks["flips"].shape or not torch.equal(banks["none"], banks["flips"])


def test_the_default_share_fuses_with_references_and_takes_them_unflipped():
    method = create_method("musc", image_size=64, progress=False).fit(_images([1, 2], "r"))
    assert method.settings.reference_augment == "none" and method.reference_knn_.settings.augment == "none"
    assert method.reference_knn_.partner is not None  # both recipes (test_musc_fused_share.py)


def test_a_model_saved_before_session_34_keeps_its_flipped_unfused_share(tmp_path):
    refs, queries = _images([1, 2], "r"), _images([3, 4, 5], "q", defect=1)
    rule_before = {"knn_fused_with_references": False, "reference_augment": "flips"}
    old = Detector("musc", image_size=64, progress=False, **rule_before).fit(refs)
    assert old.method.reference_knn_.partner is None
    old.save(tmp_path / "m")
    forget_settings(tmp_path / "m", *rule_before)  # as a version before these settings saved it
    again = load_detector(tmp_path / "m")
    assert {k: getattr(again.method.settings, k) for k in rule_before} == rule_before
    assert again.method.reference_knn_.partner is None
    for a, b in zip(old.predict(queries), again.predict(queries), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)


def _patchknn_as_musc_builds_it(augment: str = "none"):
    """patchknn built here as `musc_references_knn_settings` builds it: no bank Gaussian, no second recipe (FAST's
    knn_fused none), the nearest bank patch, the references entering as `reference_augment` says (none by default)."""
    return create_method("patchknn", gaussian_weight=0, few_shot_k=1, fused_recipe="none", augment=augment)


def _drop_key(value, key: str) -> None:
    if isinstance(value, dict):
        value.pop(key, None)
        for v in value.values():
            _drop_key(v, key)
    elif isinstance(value, list):
        for v in value:
            _drop_key(v, key)


def test_moving_musc_moves_its_patchknn():
    """On the 'meta' device (CPU-only machines have it): the patchknn musc holds goes where musc goes."""
    method = create_method("musc", **FAST).fit(_images([1, 2], "r"))
    method.to("meta")
    knn = method.reference_knn_
    assert method.device == knn.device == torch.device("meta")
    assert knn.bank_.banks["patches"].device.type == "meta"
