"""Image- and pixel-level anomaly detection metrics: AUROC, AP, F1-max and AUPRO.

A metric that does not apply (e.g. AUROC on a set without anomalies) is ``None``, never NaN
or 0, so that reports can show "n/a" instead of a misleading number.

Pixel metrics are computed from one ranking of all pixels by score: for each threshold
(from the highest score down) the cumulative counts of anomalous pixels (true positives),
normal pixels (false positives) and the per-region overlap fractions (for PRO). The
``PixelMetricAccumulator`` keeps the pixels exactly while they are few and otherwise switches
to fixed-bin histograms, so that memory stays bounded on large datasets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

DEFAULT_MAX_FPR = 0.3
DEFAULT_EXACT_PIXEL_LIMIT = 50_000_000
DEFAULT_BINS = 2**16
# the names of the image and pixel metrics `image_metrics` and `PixelMetricAccumulator.compute` return
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
# 8-connectivity: diagonal neighbours belong to the same defect region (MVTec definition).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- image level


def _f1_max_from_pr(precision: np.ndarray, recall: np.ndarray) -> float:
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def image_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict:
    """``image_auroc``, ``image_ap`` and ``image_f1max``; all None when ``labels`` has one class."""
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if np.unique(labels).size < 2:
        return {"image_auroc": None, "image_ap": None, "image_f1max": None}
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {
        "image_auroc": float(roc_auc_score(labels, scores)),
        "image_ap": float(average_precision_score(labels, scores)),
        "image_f1max": _f1_max_from_pr(precision, recall),
    }


# ----------------------------------------------------------------------------- curves


@dataclass
class _RankedCounts:
    """Cumulative counts at each threshold, thresholds in decreasing order.

    Entry i counts the pixels whose score is at or above threshold i. ``pro_overlap`` sums,
    over pixels, 1 / (size of the pixel's defect region), so ``pro_overlap / num_regions`` is
    the mean overlap over regions (PRO).
    """

    true_positives: np.ndarray
    false_positives: np.ndarray
    pro_overlap: np.ndarray
    num_regions: int

    @property
    def num_anomalous(self) -> float:
        return float(self.true_positives[-1]) if self.true_positives.size else 0.0

    @property
    def num_normal(self) -> float:
        return float(self.false_positives[-1]) if self.false_positives.size else 0.0


def _ranked_counts_exact(
    scores: np.ndarray, anomalous: np.ndarray, pro_weights: np.ndarray, num_regions: int
) -> _RankedCounts:
    """Counts at every distinct score (ties share a threshold, as in scikit-learn)."""
    return _ranked_counts_sorted(scores, scores[anomalous], pro_weights[anomalous], num_regions)


def _ranked_counts_sorted(
    scores: np.ndarray, anomalous_scores: np.ndarray, anomalous_weights: np.ndarray, num_regions: int
) -> _RankedCounts:
    """`_ranked_counts_exact` from all scores and the anomalous pixels' scores and PRO weights
    (in pixel order). Normal pixels are only counted, so only a sort of their values is needed
    (no argsort, no gathers over all pixels: ~10x faster on 50 million pixels); the PRO sums
    run over the anomalous pixels in the order a stable descending ranking of all pixels
    gives them, so every count and sum is bit-identical to that ranking's cumulative sums.
    """
    if scores.size == 0:
        empty = np.zeros(0)
        return _RankedCounts(empty, empty, empty, num_regions)
    ascending = np.sort(scores)
    run_starts = np.flatnonzero(np.r_[True, ascending[1:] != ascending[:-1]])
    distinct = ascending[run_starts]  # ascending; thresholds are these, highest first
    del ascending
    num_thresholds = distinct.size
    at_or_above = (scores.size - run_starts)[::-1]
    ascending_order = np.argsort(anomalous_scores, kind="stable")
    # Each anomalous pixel's threshold index (0 = the highest score); sorted keys search fast.
    rank = num_thresholds - 1 - np.searchsorted(distinct, anomalous_scores[ascending_order], side="left")
    true_positives = np.cumsum(np.bincount(rank, minlength=num_thresholds), dtype=np.int64)
    # Descending score, ties in reverse pixel order: the order of the reversed stable argsort.
    order = ascending_order[::-1]
    weight_sums = np.cumsum(anomalous_weights[order].astype(np.float64, copy=False))
    pro_overlap = np.zeros(num_thresholds, dtype=np.float64)
    reached = true_positives > 0
    pro_overlap[reached] = weight_sums[true_positives[reached] - 1]
    return _RankedCounts(true_positives, at_or_above - true_positives, pro_overlap, num_regions)


def _ranked_counts_at(
    thresholds: np.ndarray,
    scores: np.ndarray,
    anomalous: np.ndarray,
    pro_weights: np.ndarray,
    num_regions: int,
) -> _RankedCounts:
    """Counts at the given thresholds (any order); returned in decreasing threshold order."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # prefix[i] sums the i lowest-scored pixels, so total - prefix[i] sums those from rank i upwards.
    anomalous_prefix = np.r_[0, np.cumsum(anomalous[order], dtype=np.int64)]
    pro_prefix = np.r_[0.0, np.cumsum(pro_weights[order])]
    first_at_or_above = np.searchsorted(sorted_scores, np.sort(thresholds)[::-1], side="left")
    at_or_above = scores.size - first_at_or_above
    true_positives = anomalous_prefix[-1] - anomalous_prefix[first_at_or_above]
    return _RankedCounts(
        true_positives=true_positives,
        false_positives=at_or_above - true_positives,
        pro_overlap=pro_prefix[-1] - pro_prefix[first_at_or_above],
        num_regions=num_regions,
    )


def _ranked_counts_from_bins(
    normal_counts: np.ndarray, anomalous_counts: np.ndarray, pro_weights: np.ndarray, num_regions: int
) -> _RankedCounts:
    """Counts with the lower edge of each bin as threshold (bins in increasing score order)."""
    return _RankedCounts(
        true_positives=np.cumsum(anomalous_counts[::-1]),
        false_positives=np.cumsum(normal_counts[::-1]),
        pro_overlap=np.cumsum(pro_weights[::-1]),
        num_regions=num_regions,
    )


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _auroc(counts: _RankedCounts) -> float | None:
    if counts.num_anomalous == 0 or counts.num_normal == 0:
        return None
    tpr = np.r_[0.0, counts.true_positives / counts.num_anomalous]
    fpr = np.r_[0.0, counts.false_positives / counts.num_normal]
    return _trapezoid(fpr, tpr)


def _average_precision(counts: _RankedCounts) -> float | None:
    """Step-wise AP as in scikit-learn: sum over thresholds of (recall increase) * precision."""
    if counts.num_anomalous == 0 or counts.num_normal == 0:
        return None
    predicted = (counts.true_positives + counts.false_positives).astype(np.float64)
    precision = np.divide(counts.true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0)
    recall = np.r_[0.0, counts.true_positives / counts.num_anomalous]
    return float(np.sum(np.diff(recall) * precision))


def _f1_max(counts: _RankedCounts) -> float | None:
    if counts.num_anomalous == 0 or counts.num_normal == 0:
        return None
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + all anomalous)
    f1 = 2 * counts.true_positives / (counts.true_positives + counts.false_positives + counts.num_anomalous)
    return float(f1.max())


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Normalised area under a (non-decreasing fpr) curve from 0 to ``max_fpr``.

    The curve must reach ``max_fpr``; the point at exactly ``max_fpr`` is interpolated.
    """
    first_beyond = int(np.searchsorted(fpr, max_fpr, side="left"))  # first index with fpr >= max_fpr
    if first_beyond == 0:  # fpr jumps straight past max_fpr: no area
        return 0.0
    before_fpr, before_pro = fpr[first_beyond - 1], pro[first_beyond - 1]
    after_fpr, after_pro = fpr[first_beyond], pro[first_beyond]
    pro_at_max = before_pro + (after_pro - before_pro) * (max_fpr - before_fpr) / (after_fpr - before_fpr)
    x = np.r_[fpr[:first_beyond], max_fpr]
    y = np.r_[pro[:first_beyond], pro_at_max]
    return _trapezoid(x, y) / max_fpr


def _aupro(counts: _RankedCounts, max_fpr: float) -> float | None:
    if counts.num_regions == 0 or counts.num_normal == 0:
        return None
    fpr = np.r_[0.0, counts.false_positives / counts.num_normal]
    pro = np.r_[0.0, counts.pro_overlap / counts.num_regions]
    return _area_up_to(fpr, pro, max_fpr)


def _pixel_metrics(counts: _RankedCounts, max_fpr: float) -> dict:
    return {
        "pixel_auroc": _auroc(counts),
        "pixel_ap": _average_precision(counts),
        "pixel_f1max": _f1_max(counts),
        "pixel_aupro": _aupro(counts, max_fpr),
    }


# ----------------------------------------------------------------------------- per image


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel 1 / (size of its 8-connected defect region), 0 on normal pixels; and the region count."""
    regions, num_regions = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel())
    inverse_sizes = 1.0 / np.maximum(sizes, 1)
    inverse_sizes[0] = 0.0  # label 0 is the background
    return inverse_sizes[regions], int(num_regions)


def resize_pair(anomaly_map: np.ndarray, mask: np.ndarray, shape_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``anomaly_map`` (bilinear) and ``mask`` (nearest, stays binary) resized to ``shape_hw``."""
    height, width = shape_hw
    if anomaly_map.shape != (height, width):
        image = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32))  # float32 -> mode "F"
        anomaly_map = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    if mask.shape != (height, width):
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        mask = np.asarray(image.resize((width, height), Image.NEAREST)) != 0
    return anomaly_map, mask


def longer_side_shape(shape_hw: tuple[int, int], resolution: int) -> tuple[int, int]:
    """``shape_hw`` scaled so that its longer side is ``resolution`` (aspect ratio kept)."""
    height, width = shape_hw
    scale = resolution / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _check_pair(anomaly_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    mask = np.asarray(mask).astype(bool)
    if anomaly_map.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"expected 2-D map and mask, got {anomaly_map.shape} and {mask.shape}")
    if not np.isfinite(anomaly_map).all():
        raise ValueError("anomaly map has NaN or infinite values")
    return anomaly_map, mask


def aupro(
    maps: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    max_fpr: float = DEFAULT_MAX_FPR,
    num_thresholds: int | None = None,
) -> float | None:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr``.

    PRO at a threshold is the mean, over all 8-connected defect regions of all images, of the
    fraction of the region scored at or above the threshold; FPR is taken over all normal
    pixels. ``num_thresholds=None`` uses every distinct score (exact); an integer uses that
    many evenly spaced thresholds between the lowest and highest score. None when there is no
    defect region (or no normal pixel).
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    flat_scores, flat_masks, flat_weights, num_regions = [], [], [], 0
    for anomaly_map, mask in zip(maps, masks, strict=True):
        anomaly_map, mask = _check_pair(anomaly_map, mask)
        if anomaly_map.shape != mask.shape:
            raise ValueError(f"map {anomaly_map.shape} and mask {mask.shape} differ in shape")
        weights, regions = region_weights(mask)
        flat_scores.append(anomaly_map.ravel())
        flat_masks.append(mask.ravel())
        flat_weights.append(weights.ravel())
        num_regions += regions
    if not flat_scores:
        return None
    scores, anomalous, weights = map(np.concatenate, (flat_scores, flat_masks, flat_weights))
    if num_thresholds is None:
        counts = _ranked_counts_exact(scores, anomalous, weights, num_regions)
    else:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
        thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)
        counts = _ranked_counts_at(thresholds, scores, anomalous, weights, num_regions)
    return _aupro(counts, max_fpr)


# The streaming accumulator has its own module; it is part of this module's public API.
from .pixel_accumulator import PixelMetricAccumulator  # noqa: E402

__all__ = [
    "DEFAULT_MAX_FPR",
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "PixelMetricAccumulator",
    "aupro",
    "image_metrics",
    "longer_side_shape",
    "region_weights",
    "resize_pair",
]
