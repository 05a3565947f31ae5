"""What a threshold set on good scores means: the false-reject rate it gives on new good parts.

The order-statistic rule. Let ``s_1 <= ... <= s_N`` be the leave-one-out scores of N good
reference images, and X the score of a new good part, all drawn from one continuous
distribution F. The threshold rejects X when ``X > t``. If t is the k-th largest score,
``t = s_(N+1-k)``, the false-reject rate ``p = 1 - F(t)`` is itself random (it depends on the N
references drawn) and follows ``Beta(k, N+1-k)``, whatever F is:

* its expectation is ``k / (N+1)`` (the fraction reported as "expected");
* with probability ``CONFIDENCE`` (95 %) it is at most the Beta quantile
  ``beta.ppf(CONFIDENCE, k, N+1-k)`` (the one-sided upper bound reported).

For a target rate R the rule takes the largest k with ``k/(N+1) <= R`` (the expected rate meets
the target; the bound says how far one draw of references may miss it). Even k = 1 (the
largest score) expects ``1/(N+1)``: when that is above R, N is too small for R; the threshold
is then the largest score, a warning says so, and ``references_needed`` says how many would do:
``N >= 1/R - 1`` for the expectation, ``N >= ln(1-CONFIDENCE) / ln(1-R)`` for the bound.

Any threshold t, however it was set, carries the same statement with ``k = 1 + (scores above
t)``: t lies at or above the k-th largest score, so its rate is at most that Beta variable
(equality when t is that score). This is how the quantile rule's thresholds are described.

The statement assumes the new good parts come from the same distribution as the references
(same line, lighting, supplier); leave-one-out scores are of a model fitted on N-1 references,
so the deployed model (fitted on N) scores good parts a little lower: the rates are, if
anything, pessimistic.

With known defects (``threshold_with_defects``), every threshold at or above the target's
k-th largest good score keeps the target; the one chosen catches the most given defects and
lies midway between that good score and the lowest caught defect, so neither side sits on
the edge. The escape rate on the defects comes with its own one-sided Clopper-Pearson bound.

Pixel thresholds (``pixel_rank_for_target``) use the k-th largest of the pooled reference
pixels; pixels of one image are not independent, so only the expected fraction of good
pixels marked is stated, no confidence bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# One-sided confidence level of every upper bound reported (false-reject and escape rates).
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RateEstimate:
    """The false-reject rate of a threshold on new good parts, from N good scores.

    ``rank`` is k: the threshold is at or above the k-th largest score (k = N+1: below all
    of them, nothing is known, the rate may be anything up to 1).
    """

    n: int
    rank: int
    expected: float
    bound: float
    confidence: float = CONFIDENCE


def _beta_quantile(q: float, a: float, b: float) -> float:
    """scipy.stats.beta.ppf(q, a, b); imported here, as importing scipy.stats adds ~1 s to every start-up."""
    from scipy.special import betaincinv

    return float(betaincinv(a, b, q))


def beta_bound(rank: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Upper `confidence` quantile of Beta(rank, n+1-rank): the rate's one-sided bound."""
    if rank > n:
        return 1.0
    return float(_beta_quantile(confidence, rank, n + 1 - rank))


def estimate_for_rank(rank: int, n: int, confidence: float = CONFIDENCE) -> RateEstimate:
    expected = 1.0 if rank > n else rank / (n + 1)
    return RateEstimate(n=n, rank=rank, expected=expected, bound=beta_bound(rank, n, confidence), confidence=confidence)


def false_reject_at(
    scores: Sequence[float] | np.ndarray, threshold: float, confidence: float = CONFIDENCE
) -> RateEstimate:
    """The statement for any threshold: k = 1 + number of good scores above it."""
    scores = _finite(scores)
    rank = 1 + int(np.count_nonzero(scores > threshold))
    return estimate_for_rank(rank, int(scores.size), confidence)


def rank_for_target(n: int, target: float) -> int:
    """The largest k with k / (n+1) <= target; 0 when even k = 1 is above it."""
    _check_target(target)
    # A small tolerance so that e.g. target 0.01 with n = 99 gives k = 1, not 0 (1/100 in floats).
    return min(n, math.floor(target * (n + 1) + 1e-9))


def references_needed(target: float, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """(scores for an expected rate <= target, scores for a `confidence` bound <= target)."""
    _check_target(target)
    expected = math.ceil(1.0 / target - 1.0 - 1e-9)
    bounded = math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target) - 1e-9)
    return max(1, expected), max(1, bounded)


def too_few_warning(n: int, target: float, what: str, confidence: float = CONFIDENCE) -> str:
    """The warning when N good scores cannot meet `target` even with the largest as threshold
    ("" when they can). `what` names the scores, e.g. "leave-one-out reference scores"."""
    if rank_for_target(n, target) >= 1:
        return ""
    top = estimate_for_rank(1, n, confidence)
    for_expected, for_bound = references_needed(target, confidence)
    return (
        f"{n} {what} are too few for a false-reject rate of {_pct(target)}: even their largest as "
        f"threshold expects {_pct(top.expected)} ({confidence:.0%} bound {_pct(top.bound)}); "
        f"{for_expected} good reference images give an expected {_pct(target)}, "
        f"{for_bound} a {confidence:.0%} bound of {_pct(target)}"
    )


def kth_largest(scores: np.ndarray, rank: int) -> float:
    """The rank-th largest value (rank >= 1)."""
    return float(np.sort(scores)[scores.size - rank])


@dataclass(frozen=True)
class TargetThreshold:
    """A threshold chosen for a false-reject target, with what it means."""

    value: float
    estimate: RateEstimate
    warning: str = ""
    defects: int | None = None  # known-bad images used (None: none given)
    escapes: int | None = None  # of them, at or below the threshold (would pass)
    escape_bound: float | None = None

    @property
    def escape_rate(self) -> float | None:
        return None if not self.defects else self.escapes / self.defects


def threshold_for_target(
    scores: Sequence[float] | np.ndarray, target: float, confidence: float = CONFIDENCE
) -> TargetThreshold:
    """The k-th largest good score for `target` (the largest, with a warning, if N is too small)."""
    scores = _finite(scores, "good scores")
    n = int(scores.size)
    rank = max(1, rank_for_target(n, target))
    value = kth_largest(scores, rank)
    warning = too_few_warning(n, target, "leave-one-out reference scores", confidence)
    return TargetThreshold(value=value, estimate=false_reject_at(scores, value, confidence), warning=warning)


def threshold_with_defects(
    good_scores: Sequence[float] | np.ndarray,
    defect_scores: Sequence[float] | np.ndarray,
    target: float,
    confidence: float = CONFIDENCE,
) -> TargetThreshold:
    """Keep `target` on the good scores, catch the most defects, sit midway in the gap.

    The lowest threshold that keeps the target is the k-th largest good score g; a defect is
    caught when its score is above the threshold, so g catches the most. The threshold is
    moved up to the midpoint between g and the lowest caught defect d (if any): it catches the
    same defects and, being higher, rejects no more good parts.
    """
    base = threshold_for_target(good_scores, target, confidence)
    defects = _finite(defect_scores, "defect scores")
    if defects.size == 0:
        raise ValueError("no defect scores to calibrate with")
    caught = defects[defects > base.value]
    value = base.value if caught.size == 0 else (base.value + float(caught.min())) / 2.0
    good = _finite(good_scores, "good scores")
    escapes = int(np.count_nonzero(defects <= value))
    return TargetThreshold(
        value=value,
        estimate=false_reject_at(good, value, confidence),
        warning=base.warning,
        defects=int(defects.size),
        escapes=escapes,
        escape_bound=clopper_pearson_upper(escapes, int(defects.size), confidence),
    )


def clopper_pearson_upper(events: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound of a rate seen as `events` of `trials`."""
    if trials <= 0:
        return 1.0
    if events >= trials:
        return 1.0
    return float(_beta_quantile(confidence, events + 1, trials - events))


def pixel_rank_for_target(num_pixels: int, target: float) -> int:
    """k for the pixel threshold: the largest k with k / (M+1) <= target, at least 1."""
    return max(1, rank_for_target(num_pixels, target))


def _check_target(target: float) -> None:
    if not (isinstance(target, (int, float)) and math.isfinite(target) and 0.0 < target < 1.0):
        raise ValueError(f"the false-reject target must be a rate in (0, 1), got {target!r}")


def _finite(values: Sequence[float] | np.ndarray, what: str = "scores") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"no {what}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return arr


def _pct(rate: float) -> str:
    """0.0123 -> "1.23%", 0.111 -> "11.1%", 0.5 -> "50%"."""
    return f"{rate * 100:.3g}%"


# ---- text for the console, settings.json and the report (duck-typed on calibration.Threshold)


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def is_pixel_rule(threshold) -> bool:
    return "pixel" in (threshold.basis or "")


def describe_rate(threshold, at_most: bool = False) -> str:
    """ "; expected false-reject rate 1.2% (95% bound 3.4%)" ("" when not known)."""
    if threshold.expected_false_reject is None:
        return ""
    if is_pixel_rule(threshold):
        return (
            f"; expected fraction of good pixels above it {_pct(threshold.expected_false_reject)} "
            "(no confidence bound: pixels of one image are not independent)"
        )
    level = f"{threshold.confidence:.0%}" if threshold.confidence else f"{CONFIDENCE:.0%}"
    text = (
        f"; expected false-reject rate {'at most ' if at_most else ''}{_pct(threshold.expected_false_reject)} "
        f"({level} bound {_pct(threshold.false_reject_bound)})"
    )
    if threshold.defects:
        rate = threshold.escapes / threshold.defects
        text += (
            f"; escapes {threshold.escapes} of {threshold.defects} known defects "
            f"({_pct(rate)}, {level} bound {_pct(threshold.escape_bound)})"
        )
    return text


def describe_target_rule(threshold) -> str:
    """How a threshold for a false-reject target was set, and what it means."""
    target = _pct(threshold.max_false_reject)
    if is_pixel_rule(threshold):
        where = "largest" if threshold.rank == 1 else f"{ordinal(threshold.rank)} largest"
        return (
            f"auto: {where} of {threshold.n_scores} pixels of {threshold.n_images} reference maps, "
            f"for a target of {target} of good pixels = {threshold.value:.6g}" + describe_rate(threshold)
        )
    if threshold.defects:
        how = (
            f"auto: for a false-reject target of {target} over {threshold.n_scores} {threshold.basis}, "
            f"the threshold catching the most of {threshold.defects} known defects"
        )
    else:
        where = "largest" if threshold.rank == 1 else f"{ordinal(threshold.rank)} largest"
        how = f"auto: {where} of {threshold.n_scores} {threshold.basis}, for a false-reject target of {target}"
    return f"{how} = {threshold.value:.6g}" + describe_rate(threshold)
