"""Choosing the OK/NG threshold from reference (good) images, and applying it to results.

The rule (image level, ``calibrate_threshold``)::

    q         = quantile(reference_scores, quantile)     # numpy "linear" interpolation
    spread    = q - median(reference_scores)
    threshold = q + margin * spread

``reference_scores`` should be leave-one-out scores: each good image scored against the
other references, so that its score is what an unseen good part would get. ``q`` bounds the
good parts' scores; the margin is a fraction of how far that tail reaches above the typical
good score, so it scales with the score's units and does not depend on their offset (scores
of some methods are negative). ``q - median`` rather than ``max - min`` or the IQR because one
abnormally low reference should not widen the margin, and the IQR of a handful of scores is
often near zero. If the spread is zero (identical scores, or a single reference) the
threshold is ``q`` itself.

Pixel level (``pixel_threshold_from_maps``): the same rule over the pixel values pooled from
the reference images' anomaly maps (again leave-one-out maps, where the method has them). With
no reference maps, the pixel threshold is the image threshold, which is right for methods
whose image score is the maximum (or a top-k mean) of their map and a reasonable start for
the others; pass ``--pixel-threshold`` to set it explicitly.

Decision: a score strictly above the threshold is "NG"; a NaN score is "NG" too, because
a part that could not be scored must not pass inspection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np

from anomalens.results import AnomalyResult
from anomalens.threshold_rule import (
    CONFIDENCE,
    RateEstimate,
    describe_rate,
    describe_target_rule,
    false_reject_at,
    pixel_rank_for_target,
    threshold_for_target,
    threshold_with_defects,
    too_few_warning,
)

# Pooling every pixel of many large maps would cost gigabytes; a fixed-seed random sample of
# this many values gives quantiles accurate to well under 0.1 percentile point.
MAX_CALIBRATION_PIXELS = 2_000_000

# The rule's defaults, declared once (the CLI's --quantile/--margin and Detector.calibrate use them).
DEFAULT_QUANTILE = 0.99
DEFAULT_MARGIN = 0.1


@dataclass(frozen=True)
class Threshold:
    """A decision threshold and how it was obtained.

    ``method`` is "given" (set by the user) or "auto" (calibrated). For "auto", ``quantile``,
    ``margin`` and ``n_images`` (the number of reference images) record the inputs of the rule,
    ``basis`` what the quantile was taken over, and ``spread`` the ``q - median`` it used.
    """

    value: float
    method: Literal["given", "auto"] = "given"
    quantile: float | None = None
    margin: float | None = None
    n_images: int | None = None
    basis: str = ""
    spread: float | None = None
    # What the threshold means (anomalens.threshold_rule): the false-reject target asked for
    # (None: the quantile rule), k (the threshold is at or above the k-th largest of n_scores
    # good scores), the expected false-reject rate on new good parts and its one-sided upper
    # bound at `confidence`; with known defects, how many of them escape and that rate's bound.
    max_false_reject: float | None = None
    n_scores: int | None = None
    rank: int | None = None
    expected_false_reject: float | None = None
    false_reject_bound: float | None = None
    confidence: float | None = None
    defects: int | None = None
    escapes: int | None = None
    escape_bound: float | None = None
    warning: str = ""

    def __post_init__(self) -> None:
        # Fail closed: a NaN threshold makes every comparison False (every part OK).
        from .errors import UsageError

        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"threshold must be a finite number, got {value!r}")
        for name, low, high in (("quantile", 0.0, 1.0), ("margin", 0.0, math.inf), ("max_false_reject", 0.0, 1.0)):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and low <= v <= high):
                raise UsageError(f"threshold {name} must be a finite number in [{low:g}, {high:g}], got {v!r}")

    @classmethod
    def given(cls, value: float) -> Threshold:
        """A threshold set by the user. No method here scores below 0, so a negative one (every
        part NG) is refused as a mistake."""
        threshold = cls(value=float(value), method="given")
        if threshold.value < 0:
            from .errors import UsageError

            raise UsageError(f"threshold must be >= 0 (anomaly scores are never negative), got {value!r}")
        return threshold

    def description(self) -> str:
        """Human text for reports, e.g. "auto: 99th percentile of 10 leave-one-out reference
        scores + 10% of (p99 - median) = 0.4213"."""
        if self.method == "given":
            return f"given: {self.value:.6g}"
        if self.max_false_reject is not None:
            return describe_target_rule(self)
        if self.quantile is None:
            return f"auto: {self.basis} = {self.value:.6g}"
        pct = _percentile_name(self.quantile)
        margin_pct = f"{(self.margin or 0.0) * 100:g}%"
        short = f"p{self.quantile * 100:g}"
        text = (
            f"auto: {pct} percentile of {self.n_images} {self.basis} "
            f"+ {margin_pct} of ({short} - median) = {self.value:.6g}"
        )
        return text + describe_rate(self, at_most=True)

    def to_dict(self) -> dict:
        """JSON-serialisable fields plus the description, for settings.json and reports."""
        return {**asdict(self), "description": self.description()}

    @classmethod
    def from_dict(cls, data: dict) -> Threshold:
        """Rebuild a threshold from `to_dict`'s form (extra keys such as the description ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def as_threshold(value: Threshold | float | dict | None) -> Threshold | None:
    """The one conversion to `Threshold`: a number is a given threshold, a dict a saved one."""
    if value is None or isinstance(value, Threshold):
        return value
    if isinstance(value, dict):
        return Threshold.from_dict(value)
    return Threshold.given(float(value))


def _percentile_name(quantile: float) -> str:
    """0.99 -> "99th", 0.5 -> "50th", 0.995 -> "99.5th", 0.01 -> "1st"."""
    pct = round(quantile * 100, 6)
    text = f"{pct:g}"
    if pct != int(pct):
        return f"{text}th"
    n = int(pct)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _quantile_rule(values: np.ndarray, quantile: float, margin: float) -> tuple[float, float]:
    """Return (threshold, spread) of the rule in the module docstring."""
    q = float(np.quantile(values, quantile))
    spread = max(0.0, q - float(np.median(values)))
    return q + margin * spread, spread


def _check_rule_args(quantile: float, margin: float) -> None:
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {quantile}")
    if not (math.isfinite(margin) and margin >= 0.0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")


def calibrate_threshold(
    reference_scores: Sequence[float] | np.ndarray,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    confidence: float = CONFIDENCE,
) -> Threshold:
    """Image threshold from the (leave-one-out) scores of good reference images.

    threshold = q + margin * (q - median), q = the `quantile` of the scores. Raises ValueError
    for no scores or non-finite scores (a NaN would silently poison the quantile).
    """
    _check_rule_args(quantile, margin)
    scores = np.asarray(reference_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("cannot calibrate a threshold from zero reference scores")
    if not np.isfinite(scores).all():
        raise ValueError("reference scores contain NaN or infinite values")
    value, spread = _quantile_rule(scores, quantile, margin)
    meaning = false_reject_at(scores, value, confidence)
    implied = 1.0 - float(quantile)  # the rate the quantile asks for
    warning = too_few_warning(scores.size, implied, "leave-one-out reference scores", confidence) if implied > 0 else ""
    if warning:
        warning += f" (--quantile {quantile:g} asks for {implied:.3g})"
    return Threshold(
        value=value,
        method="auto",
        quantile=float(quantile),
        margin=float(margin),
        n_images=int(scores.size),
        basis="leave-one-out reference scores",
        spread=spread,
        **_meaning_fields(meaning),
        warning=warning,
    )


def _meaning_fields(meaning: RateEstimate) -> dict:
    return {
        "n_scores": meaning.n,
        "rank": meaning.rank,
        "expected_false_reject": meaning.expected,
        "false_reject_bound": meaning.bound,
        "confidence": meaning.confidence,
    }


def calibrate_for_target(
    reference_scores: Sequence[float] | np.ndarray,
    max_false_reject: float,
    defect_scores: Sequence[float] | np.ndarray | None = None,
    confidence: float = CONFIDENCE,
) -> Threshold:
    """Image threshold for a false-reject target (the order-statistic rule, anomalens.threshold_rule).

    Without defects: the k-th largest leave-one-out score, k the largest with k/(N+1) <=
    target. With `defect_scores` (known-bad images scored by the fitted detector): the
    threshold that keeps the target and catches the most of them. Raises ValueError for a
    target outside (0, 1), no scores or non-finite scores.
    """
    if defect_scores is None:
        chosen = threshold_for_target(reference_scores, max_false_reject, confidence)
    else:
        chosen = threshold_with_defects(reference_scores, defect_scores, max_false_reject, confidence)
    return Threshold(
        value=chosen.value,
        method="auto",
        n_images=chosen.estimate.n,
        basis="leave-one-out reference scores",
        max_false_reject=float(max_false_reject),
        **_meaning_fields(chosen.estimate),
        defects=chosen.defects,
        escapes=chosen.escapes,
        escape_bound=chosen.escape_bound,
        warning=chosen.warning,
    )


def pixel_threshold_from_maps(
    reference_maps: Iterable[np.ndarray] | None,
    image_threshold: Threshold | float | None = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    max_pixels: int = MAX_CALIBRATION_PIXELS,
    seed: int = 0,
    max_false_reject: float | None = None,
) -> Threshold:
    """Pixel threshold for the binary mask: the image rule over pooled reference-map pixels.

    With `max_false_reject`, the k-th largest pixel instead, k the largest with k/(M+1) <=
    the target (M pixels): the expected fraction of a good part's pixels above it is the target.
    Non-finite pixels are ignored. With no reference maps (None or empty) it falls back to
    `image_threshold`, and raises ValueError if that is missing too.
    """
    _check_rule_args(quantile, margin)
    maps = [np.asarray(m, dtype=np.float32).ravel() for m in (reference_maps or [])]
    n_images = len(maps)
    pixels = np.concatenate(maps) if maps else np.empty(0, dtype=np.float32)
    pixels = pixels[np.isfinite(pixels)]
    if pixels.size == 0:
        if image_threshold is None:
            raise ValueError("no reference maps and no image threshold to derive a pixel threshold from")
        value = image_threshold.value if isinstance(image_threshold, Threshold) else float(image_threshold)
        return Threshold(value=float(value), method="auto", basis="same as the image threshold")
    if pixels.size > max_pixels:
        pixels = np.random.default_rng(seed).choice(pixels, size=max_pixels, replace=False)
    if max_false_reject is not None:
        rank = pixel_rank_for_target(int(pixels.size), max_false_reject)
        value = float(np.partition(pixels, pixels.size - rank)[pixels.size - rank])
        above = int(np.count_nonzero(pixels > value))  # ties at the value are not marked
        return Threshold(
            value=value,
            method="auto",
            n_images=n_images,
            basis="reference maps' pixels",
            max_false_reject=float(max_false_reject),
            n_scores=int(pixels.size),
            rank=rank,
            expected_false_reject=(above + 1) / (pixels.size + 1),
        )
    value, spread = _quantile_rule(pixels.astype(np.float64), quantile, margin)
    return Threshold(
        value=value,
        method="auto",
        quantile=float(quantile),
        margin=float(margin),
        n_images=n_images,
        basis="reference maps' pixels",
        spread=spread,
    )


def _value(t: Threshold | float | None) -> float | None:
    t = as_threshold(t)
    return None if t is None else float(t.value)


def apply_decision(
    result: AnomalyResult,
    threshold: Threshold | float | None,
    pixel_threshold: Threshold | float | None = None,
    empty_mask_when_ok: bool = True,
) -> AnomalyResult:
    """Fill `decision`, `threshold`, `pixel_threshold` and `mask` of a result (in place; returned).

    NG when score > threshold (or the score is NaN). The mask is ``anomaly_map > pixel
    threshold``; the pixel threshold defaults to the image threshold. OK images get an all-False
    mask by default, so an accepted part shows no "defect" outline. With no threshold the
    decision, thresholds and mask are cleared (None); with only a pixel threshold there is no
    decision, and the mask is ``anomaly_map > pixel threshold`` for every image. With an inspection
    region (`result.inspected`) no mask pixel lies where nothing counts.
    """
    thr = _value(threshold)
    pix = _value(pixel_threshold)
    if thr is None:
        result.decision, result.threshold, result.pixel_threshold, result.mask = None, None, pix, None
        if pix is not None:
            with np.errstate(invalid="ignore"):
                result.mask = _counted(np.asarray(result.anomaly_map) > pix, result)
        return result
    pix = thr if pix is None else pix
    score = float(result.score)
    result.decision = "NG" if (math.isnan(score) or score > thr) else "OK"
    result.threshold = thr
    result.pixel_threshold = pix
    amap = np.asarray(result.anomaly_map)
    if result.decision == "OK" and empty_mask_when_ok:
        result.mask = np.zeros(amap.shape, dtype=bool)
    else:
        with np.errstate(invalid="ignore"):
            result.mask = _counted(amap > pix, result)
    return result


def _counted(mask: np.ndarray, result: AnomalyResult) -> np.ndarray:
    """The mask where the result's pixels count (all of it without an inspection region)."""
    inspected = getattr(result, "inspected", None)
    return mask if inspected is None else mask & inspected
