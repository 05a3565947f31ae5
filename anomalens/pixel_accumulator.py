"""Pixel metrics over a whole dataset without holding every pixel: the exact ranking while the
pixels are few, growing fixed-count histograms beyond (see `anomalens.metrics` for the metrics).
"""

from __future__ import annotations

import numpy as np

from .metrics import (
    DEFAULT_BINS,
    DEFAULT_EXACT_PIXEL_LIMIT,
    DEFAULT_MAX_FPR,
    _check_pair,
    _pixel_metrics,
    _ranked_counts_from_bins,
    _ranked_counts_sorted,
    _RankedCounts,
    longer_side_shape,
    region_weights,
    resize_pair,
)


class _GrowingHistogram:
    """Fixed-count bins of normal pixels, anomalous pixels and PRO weights by score.

    The range starts at the first values seen; when later values fall outside it, the bin
    width doubles (adjacent bins merge) until they fit, so no value is ever clipped.
    """

    def __init__(self, bins: int):
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.low: float | None = None
        self.width = 0.0
        self.normal = np.zeros(bins, dtype=np.int64)
        self.anomalous = np.zeros(bins, dtype=np.int64)
        self.pro = np.zeros(bins, dtype=np.float64)

    @property
    def high(self) -> float:
        return self.low + self.width * self.bins

    def _merge_pairs(self, into_upper_half: bool) -> None:
        half = self.bins // 2
        offset = half if into_upper_half else 0
        for counts in (self.normal, self.anomalous, self.pro):
            merged = counts[0::2] + counts[1::2]
            counts[:] = 0
            counts[offset : offset + half] = merged

    def _cover(self, lowest: float, highest: float) -> None:
        if self.low is None:
            span = highest - lowest
            if span <= 0:  # constant values: any small positive span will do
                span = max(abs(lowest), 1.0) * 1e-6
            self.low, self.width = lowest, span / self.bins
        while lowest < self.low:  # extend downwards: old bins become the upper half
            self._merge_pairs(into_upper_half=True)
            self.low -= self.width * self.bins
            self.width *= 2
        while highest > self.high:  # extend upwards: old bins become the lower half
            self._merge_pairs(into_upper_half=False)
            self.width *= 2

    def add(self, scores: np.ndarray, anomalous: np.ndarray, pro_weights: np.ndarray) -> None:
        if scores.size == 0:
            return
        self._cover(float(scores.min()), float(scores.max()))
        # Clipping only absorbs floating-point rounding at the edges, values are inside the range.
        index = np.clip(((scores - self.low) / self.width).astype(np.int64), 0, self.bins - 1)
        self.anomalous += np.bincount(index[anomalous], minlength=self.bins)
        self.normal += np.bincount(index[~anomalous], minlength=self.bins)
        self.pro += np.bincount(index[anomalous], weights=pro_weights[anomalous], minlength=self.bins)

    def ranked_counts(self, num_regions: int) -> _RankedCounts:
        return _ranked_counts_from_bins(self.normal, self.anomalous, self.pro, num_regions)


class PixelMetricAccumulator:
    """Streams (anomaly map, mask) pairs and computes pixel AUROC, AP, F1-max and AUPRO.

    ``resolution``: when set, each map (bilinear) and mask (nearest) is resized so that its
    longer side is ``resolution`` before accumulation - faster and lighter, slightly less
    faithful at defect borders. When None, the map is brought to the mask's resolution.

    Up to ``exact_pixel_limit`` pixels are kept (float32 scores, bit-packed masks) and the
    metrics are exact. Beyond it, all pixels move into ``bins`` score bins over the observed
    range (which grows as needed): scores within one bin then count as ties, so AUROC, AP,
    F1-max and AUPRO are those of the scores quantised to about range / ``bins``.
    """

    def __init__(
        self,
        resolution: int | None = None,
        bins: int = DEFAULT_BINS,
        exact_pixel_limit: int = DEFAULT_EXACT_PIXEL_LIMIT,
        max_fpr: float = DEFAULT_MAX_FPR,
    ):
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution
        self.max_fpr = max_fpr
        self.exact_pixel_limit = exact_pixel_limit
        self.num_pixels = 0
        self.num_regions = 0
        # Exact mode: per image, float32 scores, packed mask bits and PRO weights of anomalous pixels.
        self._scores: list[np.ndarray] = []
        self._packed_masks: list[np.ndarray] = []
        self._anomalous_weights: list[np.ndarray] = []
        self._histogram = _GrowingHistogram(bins)
        self._binned = False

    @property
    def is_exact(self) -> bool:
        """Whether ``compute`` will be exact (no binning so far)."""
        return not self._binned

    def update(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        """Add one image: a float HxW anomaly map and its boolean HxW ground-truth mask."""
        anomaly_map, mask = _check_pair(anomaly_map, mask)
        target = mask.shape if self.resolution is None else longer_side_shape(mask.shape, self.resolution)
        anomaly_map, mask = resize_pair(anomaly_map, mask, target)
        weights, regions = region_weights(mask)
        scores, anomalous, weights = anomaly_map.ravel(), mask.ravel(), weights.ravel()
        self.num_pixels += scores.size
        self.num_regions += regions
        if self._binned:
            self._histogram.add(scores, anomalous, weights)
            return
        self._scores.append(scores.copy())
        self._packed_masks.append(np.packbits(anomalous))
        self._anomalous_weights.append(weights[anomalous])
        if self.num_pixels > self.exact_pixel_limit:
            self._move_to_bins()

    def _move_to_bins(self) -> None:
        # Image by image, so the switch itself never needs a second full copy.
        for scores, packed, anomalous_weights in zip(
            self._scores, self._packed_masks, self._anomalous_weights
        ):
            anomalous = np.unpackbits(packed, count=scores.size).astype(bool)
            weights = np.zeros(scores.size, dtype=np.float64)
            weights[anomalous] = anomalous_weights
            self._histogram.add(scores, anomalous, weights)
        self._scores, self._packed_masks, self._anomalous_weights = [], [], []
        self._binned = True

    def compute(self) -> dict:
        """``pixel_auroc``, ``pixel_ap``, ``pixel_f1max``, ``pixel_aupro`` (None where not applicable)."""
        if self._binned:
            counts = self._histogram.ranked_counts(self.num_regions)
        else:
            scores = np.concatenate(self._scores) if self._scores else np.zeros(0, np.float32)
            anomalous_scores = np.concatenate(
                [s[np.unpackbits(p, count=s.size).astype(bool)] for p, s in zip(self._packed_masks, self._scores)]
                or [np.zeros(0, np.float32)]
            )
            weights = np.concatenate(self._anomalous_weights or [np.zeros(0)])
            counts = _ranked_counts_sorted(scores, anomalous_scores, weights, self.num_regions)
        return _pixel_metrics(counts, self.max_fpr)
