"""One contract, run over every registered method on tiny random models (as timm runs one test
over list_models()): fit / predict / state round trip, shapes, determinism, leave-one-out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from anomalens.errors import NotFittedError
from anomalens.images import LoadedImage
from anomalens.methods import available_methods, create_method
from anomalens.methods.base import Method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Tiny random models per method; a new method must add itself here (checked below).
TINY = {
    "patchknn": {"image_size": 64},
    "fade": {"backbone": "test-tiny", "classification_size": 32, "segmentation_sizes": (32, 64)},
    "winclip": {"backbone": "test-tiny", "image_size": 32},
    "filo": {"backbone": "test-tiny-24", "image_size": 28},
    # musc's patchknn term with references (patchknn's own defaults, checked against its parts in
    # tests/test_musc_reference_knn.py) is off here: its coreset makes patchknn's documented fast
    # leave-one-out differ from refitting, which this contract asks for exactly
    "musc": {"image_size": 64, "progress": False, "reference_knn_weight": 0.0},
}


def _images(n: int, seed: int, shape=(40, 52)) -> list[LoadedImage]:
    rng = np.random.default_rng(seed)
    return [LoadedImage(f"i{seed}_{k}.png", rng.integers(0, 256, (*shape, 3), dtype=np.uint8)) for k in range(n)]


# patchknn's fused recipe standardises by levels taken from all the references' leave-one-out maps, so its
# fast leave-one-out is not a refit (which would take them from the others); it is checked against its two
# recipes' leave-one-out in tests/test_patchknn_fusion.py, and the refit contract holds for the recipe alone
LEAVE_ONE_OUT_AS_REFIT = {"patchknn": {"fused_recipe": "none"}}


def _make(name: str, **extra) -> Method:
    torch.manual_seed(0)  # the same random tiny weights every time
    return create_method(name, **TINY[name], **extra)


def _assert_same(a, b, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.score == pytest.approx(y.score, abs=atol)
        np.testing.assert_allclose(x.anomaly_map, y.anomaly_map, atol=atol)
        assert [t for t, _ in x.descriptions] == [t for t, _ in y.descriptions]


def test_every_registered_method_is_covered():
    assert sorted(TINY) == available_methods()


@pytest.fixture(scope="module", params=sorted(TINY))
def method_name(request) -> str:
    return request.param


def test_predict_before_fit_is_not_fitted_error(method_name):
    with pytest.raises(NotFittedError, match="fit"):
        _make(method_name).predict(_images(1, seed=1))


@pytest.mark.parametrize("shots", [0, 2])
def test_outputs_have_the_image_shape_and_are_deterministic(method_name, shots):
    method = _make(method_name)
    assert method.fit(_images(shots, seed=2)) is method and method.fitted_
    queries = _images(2, seed=3) + _images(1, seed=4, shape=(33, 47))
    first = method.predict(queries)
    assert len(first) == len(queries)
    for img, out in zip(queries, first):
        assert np.isfinite(out.score) and isinstance(out.score, float)
        assert out.anomaly_map.shape == img.size_hw and np.isfinite(out.anomaly_map).all()
        top = getattr(method.settings, "top_descriptions", 0)
        assert len(out.descriptions) <= top and (len(out.descriptions) > 0) == method.uses_text
    _assert_same(first, method.predict(queries), atol=0)


def test_state_round_trip_gives_the_same_predictions(method_name):
    method = _make(method_name).fit(_images(2, seed=5))
    queries = _images(2, seed=6)
    expected = method.predict(queries)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    restored = _make(method_name)
    restored.load_state_dict(state)
    assert restored.fitted_
    _assert_same(expected, restored.predict(queries))


def test_fast_leave_one_out_equals_refitting(method_name):
    refs = _images(3, seed=7)
    extra = LEAVE_ONE_OUT_AS_REFIT.get(method_name, {})
    method = _make(method_name, **extra)
    fast = method.leave_one_out(refs, [0, 2])
    slow = Method._leave_one_out(_make(method_name, **extra), refs, [0, 2])  # the generic refit per image
    _assert_same(fast, slow, atol=1e-5)
    # afterwards fitted on all references, as after fit(refs)
    _assert_same(method.predict(refs[:1]), _make(method_name, **extra).fit(refs).predict(refs[:1]), atol=1e-5)
    whole = _make(method_name)  # the default, fused or not, ends fitted on all references too
    whole.leave_one_out(refs, [0, 2])
    _assert_same(whole.predict(refs[:1]), _make(method_name).fit(refs).predict(refs[:1]), atol=1e-5)


def test_set_category_is_recorded_in_the_settings(method_name):
    method = _make(method_name)
    method.set_category("metal_nut")
    has_category = "category" in {f.name for f in dataclasses.fields(method.settings)}
    assert (getattr(method.settings, "category", None) == "metal_nut") == has_category
