"""The order-statistic threshold rule: stated false-reject rates hold over many seeded draws.

Good scores are drawn from a known distribution, so the true false-reject rate of any
threshold t is known exactly (P(X > t)); each draw calibrates as a user would and compares.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from anomalens.calibration import calibrate_for_target, calibrate_threshold, pixel_threshold_from_maps
from anomalens.threshold_rule import (
    CONFIDENCE,
    beta_bound,
    false_reject_at,
    rank_for_target,
    references_needed,
    threshold_with_defects,
    too_few_warning,
)

DRAWS = 2000
# 2,000 draws: the fraction above a 95 % bound has standard error sqrt(.05 * .95 / 2000) = 0.0049;
# 3 standard errors either side.
COVERAGE_TOLERANCE = 0.015


def _draws(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((DRAWS, n))


@pytest.mark.parametrize("n, target", [(19, 0.1), (99, 0.02), (200, 0.01), (40, 0.05)])
def test_target_rule_meets_its_expectation_and_bound_over_many_draws(n, target):
    thresholds = [calibrate_for_target(scores, target) for scores in _draws(n, seed=n)]
    true_rates = norm.sf([t.value for t in thresholds])  # P(good score > threshold), exactly
    k = rank_for_target(n, target)
    assert k >= 1 and all(t.rank == k for t in thresholds)  # continuous scores: no ties
    expected = k / (n + 1)
    assert all(t.expected_false_reject == pytest.approx(expected) for t in thresholds)
    assert expected <= target
    # The mean true rate is the stated expectation (Beta(k, n+1-k) mean), within 4 standard errors.
    sd = math.sqrt(expected * (1 - expected) / (n + 2)) / math.sqrt(DRAWS)
    assert abs(true_rates.mean() - expected) < 4 * sd
    # The true rate exceeds the stated 95 % bound in about 5 % of the draws.
    above = np.mean(true_rates > np.array([t.false_reject_bound for t in thresholds]))
    assert abs(above - (1 - CONFIDENCE)) <= COVERAGE_TOLERANCE, above


def test_quantile_rule_bound_is_conservative_over_many_draws():
    # The quantile rule (+ margin) sits at or above the k-th largest: its stated rate is "at most".
    n = 30
    thresholds = [calibrate_threshold(scores, 0.9, 0.1) for scores in _draws(n, seed=7)]
    true_rates = norm.sf([t.value for t in thresholds])
    bounds = np.array([t.false_reject_bound for t in thresholds])
    assert np.mean(true_rates > bounds) <= 1 - CONFIDENCE + COVERAGE_TOLERANCE
    assert true_rates.mean() <= np.mean([t.expected_false_reject for t in thresholds])
    assert "expected false-reject rate at most" in thresholds[0].description()


def test_hand_computed_ranks_bounds_and_needs():
    assert rank_for_target(99, 0.01) == 1 and rank_for_target(98, 0.01) == 0
    assert rank_for_target(19, 0.1) == 2 and rank_for_target(1000, 0.5) == 500
    # Beta(1, N): P(rate <= x) = 1 - (1 - x)^N, so the 95 % bound is 1 - 0.05^(1/N).
    assert beta_bound(1, 8) == pytest.approx(1 - 0.05 ** (1 / 8))
    assert beta_bound(3, 20) == pytest.approx(beta.ppf(0.95, 3, 18))
    # expected 1/(N+1) <= 0.01 from N = 99; bound: N >= ln(0.05) / ln(0.99) = 298.07 -> 299.
    assert references_needed(0.01) == (99, 299)
    assert references_needed(0.05) == (19, 59)
    est = false_reject_at([1, 2, 3, 4, 5, 6, 7, 8], 6.5)  # two scores above: k = 3
    assert (est.rank, est.n, est.expected) == (3, 8, pytest.approx(3 / 9))
    assert false_reject_at([1, 2, 3], 0.5).bound == 1.0  # below every score: nothing known


def test_target_threshold_is_the_kth_largest_hand_computed():
    t = calibrate_for_target(np.arange(1, 20, dtype=float), 0.1)  # N = 19, k = 2
    assert t.value == 18.0 and t.rank == 2 and t.n_scores == 19
    assert t.expected_false_reject == pytest.approx(0.1)
    assert t.false_reject_bound == pytest.approx(beta.ppf(0.95, 2, 18))
    assert t.warning == ""
    assert t.description().startswith(
        "auto: 2nd largest of 19 leave-one-out reference scores, for a false-reject target of 10% = 18; "
        "expected false-reject rate 10% (95% bound"
    )


def test_small_n_warns_and_says_how_many_references_are_needed():
    t = calibrate_for_target([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 0.01)
    assert t.value == 0.8 and t.rank == 1  # the largest: the best 8 scores can do
    assert t.expected_false_reject == pytest.approx(1 / 9)
    assert t.warning == (
        "8 leave-one-out reference scores are too few for a false-reject rate of 1%: even their largest "
        "as threshold expects 11.1% (95% bound 31.2%); 99 good reference images give an expected 1%, "
        "299 a 95% bound of 1%"
    )
    q = calibrate_threshold(np.arange(8.0), quantile=0.99)
    assert q.warning.startswith("8 leave-one-out reference scores are too few") and "--quantile 0.99" in q.warning
    assert calibrate_threshold(np.arange(200.0), quantile=0.99).warning == ""
    assert too_few_warning(99, 0.01, "scores") == ""


def test_defects_choose_the_threshold_that_catches_most_hand_computed():
    good = np.arange(1, 20, dtype=float)  # target 0.1: the lowest allowed threshold is 18
    t = threshold_with_defects(good, [5, 18, 18.5, 25, 30], 0.1)
    # 18.5, 25, 30 caught at 18; midway to the lowest caught (18.5): 18.25, same catch.
    assert t.value == pytest.approx(18.25)
    assert (t.defects, t.escapes, t.escape_rate) == (5, 2, pytest.approx(0.4))
    assert t.escape_bound == pytest.approx(beta.ppf(0.95, 3, 3))  # Clopper-Pearson, 2 of 5
    assert t.estimate.rank == 2 and t.estimate.expected == pytest.approx(0.1)
    # Nothing above the allowed threshold: it stays there, every defect escapes.
    t = threshold_with_defects(good, [1.0, 2.0], 0.1)
    assert t.value == 18.0 and t.escapes == 2 and t.escape_bound == 1.0
    # Through the Threshold: all numbers carried, and the description says them.
    thr = calibrate_for_target(good, 0.1, [5, 18, 18.5, 25, 30])
    assert (thr.value, thr.defects, thr.escapes) == (pytest.approx(18.25), 5, 2)
    assert "escapes 2 of 5 known defects (40%" in thr.description()
    with pytest.raises(ValueError):
        threshold_with_defects(good, [], 0.1)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, float("nan")])
def test_bad_targets_are_refused(target):
    with pytest.raises(ValueError):
        calibrate_for_target([1.0, 2.0], target)


def test_pixel_threshold_for_a_target_hand_computed():
    maps = [np.arange(50, dtype=np.float32).reshape(5, 10), np.arange(50, 100, dtype=np.float32).reshape(5, 10)]
    t = pixel_threshold_from_maps(maps, max_false_reject=0.05)  # M = 100: k = floor(0.05 * 101) = 5
    assert t.value == 95.0 and t.rank == 5 and t.n_scores == 100 and t.n_images == 2
    assert t.expected_false_reject == pytest.approx(5 / 101) and t.false_reject_bound is None
    assert "5th largest of 100 pixels of 2 reference maps" in t.description()


def test_threshold_with_meaning_round_trips_through_its_dict():
    from anomalens.calibration import Threshold

    t = calibrate_for_target(np.arange(1, 20, dtype=float), 0.1, [5, 18, 18.5, 25, 30])
    again = Threshold.from_dict(t.to_dict())
    assert again == t and again.description() == t.description()
