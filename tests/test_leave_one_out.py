"""The fast leave-one-out of memory-bank methods equals refitting without each reference."""

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
        ("patchknn", {"image_size": 64}),
        # flips, a coreset smaller than the bank, two tiles per 48 x 40 reference (aspect 1.2 > 1.1)
        ("patchknn", {"image_size": 32, "augment": "flips", "coreset_size": 40, "tile_above_aspect": 1.1}),
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
