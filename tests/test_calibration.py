"""Threshold calibration and OK/NG decisions, checked against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anomalens.calibration import (
    Threshold,
    _percentile_name,
    apply_decision,
    calibrate_threshold,
    pixel_threshold_from_maps,
)
from anomalens.results import AnomalyResult


def test_threshold_hand_computed():
    # scores 1..10: q90 (linear) = 9 + 0.1 * (10 - 9) = 9.1; median 5.5; spread 3.6; + 0.1 * 3.6
    t = calibrate_threshold(list(range(1, 11)), quantile=0.9, margin=0.1)
    assert t.value == pytest.approx(9.46)
    assert t.spread == pytest.approx(3.6)
    assert (t.method, t.quantile, t.margin, t.n_images) == ("auto", 0.9, 0.1, 10)


def test_threshold_defaults_hand_computed():
    # q99 = 9 + 0.91 = 9.91; median 5.5; spread 4.41; threshold = 9.91 + 0.441 = 10.351
    t = calibrate_threshold(np.arange(1, 11, dtype=np.float32))
    assert t.value == pytest.approx(10.351)


def test_threshold_is_offset_and_scale_invariant():
    base = calibrate_threshold([0.1, 0.2, 0.25, 0.3, 0.5]).value
    shifted = calibrate_threshold([-0.9, -0.8, -0.75, -0.7, -0.5]).value
    scaled = calibrate_threshold([1.0, 2.0, 2.5, 3.0, 5.0]).value
    assert shifted == pytest.approx(base - 1.0)
    assert scaled == pytest.approx(base * 10)


def test_threshold_zero_spread_and_margin():
    assert calibrate_threshold([0.4, 0.4, 0.4]).value == pytest.approx(0.4)
    assert calibrate_threshold([0.7]).value == pytest.approx(0.7)
    assert calibrate_threshold([1, 2, 3, 4], quantile=1.0, margin=0.0).value == pytest.approx(4.0)


@pytest.mark.parametrize(
    "scores, kwargs",
    [
        ([], {}),
        ([1.0, float("nan")], {}),
        ([1.0, math.inf], {}),
        ([1.0], {"quantile": 1.5}),
        ([1.0], {"margin": -0.1}),
        ([1.0], {"margin": float("nan")}),
    ],
)
def test_threshold_rejects_bad_input(scores, kwargs):
    with pytest.raises(ValueError):
        calibrate_threshold(scores, **kwargs)


def test_descriptions():
    t = calibrate_threshold(list(range(1, 11)), quantile=0.9, margin=0.1)
    assert t.description() == (
        "auto: 90th percentile of 10 leave-one-out reference scores + 10% of (p90 - median) = 9.46"
        # one score (10) above 9.46: k = 2, expected 2/11, bound Beta(2, 9)'s 95th percentile
        "; expected false-reject rate at most 18.2% (95% bound 39.4%)"
    )
    assert Threshold.given(0.5).description() == "given: 0.5"
    d = t.to_dict()
    assert d["value"] == pytest.approx(9.46) and d["description"] == t.description()


@pytest.mark.parametrize(
    "q, name",
    [
        (0.99, "99th"),
        (0.5, "50th"),
        (0.995, "99.5th"),
        (0.01, "1st"),
        (0.02, "2nd"),
        (0.23, "23rd"),
        (0.11, "11th"),
        (0.12, "12th"),
        (0.13, "13th"),
        (1.0, "100th"),
    ],
)
def test_percentile_names(q, name):
    assert _percentile_name(q) == name


def test_pixel_threshold_from_maps_hand_computed():
    maps = [np.array([[0, 1], [2, 3]], np.float32), np.array([[4, 5], [6, 7]], np.float32)]
    # pooled 0..7: q75 = 5.25, median 3.5, spread 1.75, threshold 5.25 + 0.2 * 1.75 = 5.6
    t = pixel_threshold_from_maps(maps, quantile=0.75, margin=0.2)
    assert t.value == pytest.approx(5.6)
    assert t.n_images == 2 and t.method == "auto"
    assert "2 reference maps' pixels" in t.description()


def test_pixel_threshold_ignores_nan_pixels():
    maps = [np.array([[0, 1, np.nan], [2, 3, np.inf]], np.float32)]
    assert pixel_threshold_from_maps(maps, quantile=0.5, margin=0.0).value == pytest.approx(1.5)


def test_pixel_threshold_subsamples_large_maps():
    rng = np.random.default_rng(1)
    maps = [rng.random((300, 300)) for _ in range(4)]
    exact = pixel_threshold_from_maps(maps, quantile=0.99, margin=0.1).value
    sampled = pixel_threshold_from_maps(maps, quantile=0.99, margin=0.1, max_pixels=50_000).value
    assert sampled == pytest.approx(exact, abs=0.005)


def test_pixel_threshold_falls_back_to_image_threshold():
    image_t = calibrate_threshold([1, 2, 3, 4, 5])
    for maps in (None, []):
        t = pixel_threshold_from_maps(maps, image_threshold=image_t)
        assert t.value == pytest.approx(image_t.value)
        assert "same as the image threshold" in t.description()
    assert pixel_threshold_from_maps(None, image_threshold=0.3).value == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pixel_threshold_from_maps(None)


def _result(score: float) -> AnomalyResult:
    amap = np.array([[0.1, 0.5], [0.9, 0.3]], np.float32)
    return AnomalyResult(path="x.png", score=score, anomaly_map=amap)


def test_apply_decision_ng_with_mask():
    r = apply_decision(_result(0.9), Threshold.given(0.6), pixel_threshold=0.4)
    assert (r.decision, r.threshold, r.pixel_threshold) == ("NG", 0.6, 0.4)
    np.testing.assert_array_equal(r.mask, [[False, True], [True, False]])


def test_apply_decision_ok_is_at_or_below_threshold_with_empty_mask():
    r = apply_decision(_result(0.6), 0.6, 0.4)
    assert r.decision == "OK"
    assert r.mask.shape == (2, 2) and r.mask.dtype == bool and not r.mask.any()
    r = apply_decision(_result(0.2), 0.6, 0.4, empty_mask_when_ok=False)
    np.testing.assert_array_equal(r.mask, [[False, True], [True, False]])


def test_apply_decision_pixel_threshold_defaults_to_image_threshold():
    r = apply_decision(_result(0.9), calibrate_threshold([0.2, 0.4]), None)
    assert r.pixel_threshold == pytest.approx(r.threshold)
    np.testing.assert_array_equal(r.mask, r.anomaly_map > r.threshold)


def test_apply_decision_nan_score_is_ng_and_none_threshold_clears():
    assert apply_decision(_result(float("nan")), 0.5).decision == "NG"
    r = apply_decision(_result(0.9), 0.5)
    apply_decision(r, None)
    assert (r.decision, r.threshold, r.pixel_threshold, r.mask) == (None, None, None, None)
