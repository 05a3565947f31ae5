"""The fast leave-one-out of memory-bank methods: equal to refitting without each reference while the
bank is below patchknn's coreset size; above it, the documented scheme (one coreset over all
references, the held-out reference's patches dropped from it) keeps its invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.base import Method


def _images(n: int, seed: int = 0) -> list[LoadedImage]:
    rng = np.random.default_rng(seed)
    return [LoadedImage(f"r{i}.png", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        # the recipe alone: a fused recipe's levels come from all references (tests/test_method_contract.py)
        ("patchknn", {"image_size": 64, "fused_recipe": "none"}),
        # flips, two tiles per 48 x 40 reference (aspect 1.2 > 1.1), the bank (512) just below the coreset size
        (
            "patchknn",
            {"image_size": 32, "augment": "flips", "coreset_size": 512, "tile_above_aspect": 1.1, "fused_recipe": "none"},
        ),
        ("fade", {"backbone": "test-tiny", "classification_size": 32, "segmentation_sizes": (32, 64)}),
    ],
)
def test_fast_leave_one_out_equals_refitting(name, settings):
    torch.manual_seed(0)
    method = create_method(name, **settings)
    refs = _images(4)
    fast = method.leave_one_out(refs, [0, 2, 3])
    slow = Method._leave_one_out(method, refs, [0, 2, 3])  # the generic refit-per-image version
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    # afterwards the method is fitted on all references: a reference scores (near) zero vision distance
    again = method.predict(refs[:1])[0]
    assert again.anomaly_map.min() <= fast[0].anomaly_map.min() + 1e-6


def test_leave_one_out_above_the_coreset_size_drops_the_held_out_patches_from_one_coreset():
    torch.manual_seed(0)
    # the kNN alone: the bank's Gaussian differs between banks, so sub-banks are not monotone with it
    # (test_patch_gaussian checks leave-one-out with it)
    settings = {
        "image_size": 32,
        "augment": "flips",
        "coreset_size": 40,
        "tile_above_aspect": 1.1,
        "gaussian_weight": 0,
        "fused_recipe": "none",
    }
    method = create_method("patchknn", **settings)
    refs = _images(4)
    loo = method.leave_one_out(refs, [0, 2, 3])
    bank = method.bank_.banks["patches"]
    assert bank.shape[0] == 40  # 4 x 2 tiles x 4 flips x 16 patches = 512, reduced once
    # the method ends fitted as fit(refs) fits it (the same coreset)
    assert torch.equal(bank, create_method("patchknn", **settings).fit(refs).bank_.banks["patches"])
    # every coreset patch is labelled with the reference it came from
    per_reference = [method.reference_patches(r) for r in refs]  # unit directions and lengths: not normalised
    _, origin = method.bank_with_origin(per_reference)
    for row, r in zip(bank, origin.tolist()):
        assert (per_reference[r] - row).norm(dim=1).min() < 1e-5
    whole = create_method("patchknn", **{**settings, "coreset_size": 0})
    for out, i in zip(loo, [0, 2, 3]):
        assert 0 < (origin == i).sum() < 40  # the held-out reference had patches in the coreset
        # a sub-bank of the coreset: never closer than the whole coreset, and a sub-bank of the
        # other references' patches: never closer than refitting on them without a coreset
        with_r = method.score(*_features_of(method, refs[i]), bank)
        refit = whole.fit(refs[:i] + refs[i + 1 :]).predict([refs[i]])[0]
        assert np.all(out.anomaly_map >= with_r.anomaly_map - 1e-6)
        assert np.all(out.anomaly_map >= refit.anomaly_map - 1e-6)
        assert out.score > with_r.score  # r's own patches no longer vouch for it


def _features_of(method, image):
    feats, layouts = method._features([image])
    return feats[0], layouts[0]


def test_leave_one_out_after_fit_on_the_same_references_reuses_the_bank(monkeypatch):
    import pickle

    torch.manual_seed(0)
    settings = {"image_size": 32, "coreset_size": 40}
    refs = _images(3)
    fresh = create_method("patchknn", **settings).leave_one_out(refs, [0, 1, 2])
    method = create_method("patchknn", **settings).fit(refs)
    copy = pickle.loads(pickle.dumps(method))  # a copy does not carry the reference images
    assert copy._bank_source is None and torch.equal(copy.bank_.banks["patches"], method.bank_.banks["patches"])
    calls = []
    monkeypatch.setattr(method, "_encoded_reference", lambda img, *a, **k: calls.append(img) or 1 / 0)
    monkeypatch.setattr(method, "_encode", lambda inputs: calls.append(inputs) or 1 / 0)
    again = method.leave_one_out(refs, [0, 1, 2])  # no backbone pass (fit kept the features), no second coreset
    assert calls == []
    for a, b in zip(fresh, again):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    with pytest.raises(ZeroDivisionError):  # other reference objects: features are computed again
        method.leave_one_out(_images(3), [0])


def test_kept_leave_one_out_maps_follow_the_settings_and_are_handed_out_as_copies():
    from dataclasses import replace

    torch.manual_seed(0)
    refs = _images(3)
    method = create_method("patchknn", image_size=32, fused_recipe="none").fit(refs)
    first = method.leave_one_out(refs, [0, 1])
    first[0].anomaly_map[:] = 0  # a caller changing its map does not change what is kept
    assert method.leave_one_out(refs, [0])[0].anomaly_map.max() > 0
    method.settings = replace(method.settings, smoothing_sigma=0.0)  # e.g. a benchmark's variant on a fitted method
    unsmoothed = method.leave_one_out(refs, [1])[0]
    fresh = create_method("patchknn", image_size=32, fused_recipe="none", smoothing_sigma=0.0).fit(refs)
    np.testing.assert_allclose(unsmoothed.anomaly_map, fresh.leave_one_out(refs, [1])[0].anomaly_map, atol=1e-6)
    assert not np.allclose(unsmoothed.anomaly_map, first[1].anomaly_map, atol=1e-4)
