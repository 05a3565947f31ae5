"""Metrics against scikit-learn, brute force and hand-computed AUPRO values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalens.metrics import (
    PixelMetricAccumulator,
    _ranked_counts_exact,
    aupro,
    image_metrics,
    longer_side_shape,
    region_weights,
    resize_pair,
)


def brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = np.sum(predicted & (labels == 1))
        fp = np.sum(predicted & (labels == 0))
        fn = np.sum(~predicted & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def reference_aupro(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """AUPRO straight from the definition: one binary prediction per distinct score."""
    region_list = []
    for image_index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        region_list += [(image_index, labelled == i) for i in range(1, count + 1)]
    num_normal = sum(int((~m).sum()) for m in masks)
    all_scores = np.concatenate([m.ravel() for m in maps])
    points = [(0.0, 0.0)]
    for threshold in np.sort(np.unique(all_scores))[::-1]:
        predictions = [m >= threshold for m in maps]
        fpr = sum(int((p & ~m).sum()) for p, m in zip(predictions, masks)) / num_normal
        pro = np.mean([predictions[i][region].mean() for i, region in region_list])
        points.append((fpr, pro))
    fprs, pros = np.array(points).T
    # Points are produced in increasing fpr order; keep those below max_fpr and interpolate at it.
    below = fprs < max_fpr
    k = int(below.sum())
    pro_at_max = pros[k - 1] + (pros[k] - pros[k - 1]) * (max_fpr - fprs[k - 1]) / (fprs[k] - fprs[k - 1])
    x = np.r_[fprs[:k], max_fpr]
    y = np.r_[pros[:k], pro_at_max]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr)


def random_blob_data(seed: int, count: int = 4, shape: tuple[int, int] = (24, 32)):
    """Smooth-ish maps and masks with a few rectangular defects, scores correlated with the mask."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(count):
        mask = np.zeros(shape, dtype=bool)
        for _ in range(rng.integers(0, 3)):
            top, left = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
            mask[top : top + rng.integers(2, 6), left : left + rng.integers(2, 6)] = True
        noise = ndimage.uniform_filter(rng.random(shape), size=3)
        maps.append((noise + 0.3 * mask + 0.1 * rng.random(shape)).astype(np.float32))
        masks.append(mask)
    masks[0][2:5, 2:5] = True  # at least one defect region
    return maps, masks


# ----------------------------------------------------------------------------- image level


def test_image_metrics_match_sklearn_and_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + 0.5 * labels
    scores[:20] = np.round(scores[:20], 1)  # some ties
    result = image_metrics(labels, scores)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert result["image_f1max"] == pytest.approx(brute_force_f1_max(labels, scores))


@pytest.mark.parametrize("label", [0, 1])
def test_image_metrics_single_class_is_not_applicable(label):
    result = image_metrics([label] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert result == {"image_auroc": None, "image_ap": None, "image_f1max": None}


# ----------------------------------------------------------------------------- pixel level


def test_pixel_exact_matches_sklearn():
    maps, masks = random_blob_data(seed=1)
    maps[1] = np.round(maps[1], 2)  # ties across thresholds
    accumulator = PixelMetricAccumulator()
    for anomaly_map, mask in zip(maps, masks):
        accumulator.update(anomaly_map, mask)
    result = accumulator.compute()
    assert accumulator.is_exact
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([m.ravel() for m in masks])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(brute_force_f1_max(labels, scores), abs=1e-12)
    assert result["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks), abs=1e-9)


def test_pixel_downsampled_matches_sklearn_on_resized_data():
    maps, masks = random_blob_data(seed=2, shape=(40, 60))
    accumulator = PixelMetricAccumulator(resolution=30)
    resized = [resize_pair(m, k, longer_side_shape(k.shape, 30)) for m, k in zip(maps, masks)]
    for anomaly_map, mask in zip(maps, masks):
        accumulator.update(anomaly_map, mask)
    result = accumulator.compute()
    assert resized[0][0].shape == (20, 30) and resized[0][1].dtype == bool
    scores = np.concatenate([m.ravel() for m, _ in resized])
    labels = np.concatenate([k.ravel() for _, k in resized])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["pixel_aupro"] == pytest.approx(
        reference_aupro([m for m, _ in resized], [k for _, k in resized]), abs=1e-9
    )
    # Downsampling is an approximation of the full-resolution value, not a different metric.
    full = PixelMetricAccumulator()
    for anomaly_map, mask in zip(maps, masks):
        full.update(anomaly_map, mask)
    assert result["pixel_auroc"] == pytest.approx(full.compute()["pixel_auroc"], abs=0.05)


def test_map_is_brought_to_mask_resolution():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4] = True
    small_map = np.array([[1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    accumulator = PixelMetricAccumulator()
    accumulator.update(small_map, mask)
    assert accumulator.num_pixels == 64
    assert accumulator.compute()["pixel_auroc"] == pytest.approx(1.0)


@pytest.mark.parametrize("exact_pixel_limit", [0, 1500])
def test_binned_path_approximates_sklearn(exact_pixel_limit):
    maps, masks = random_blob_data(seed=3, count=6)
    maps[4] = maps[4] * 3 - 1  # later images widen the score range: the histogram must grow
    accumulator = PixelMetricAccumulator(exact_pixel_limit=exact_pixel_limit, bins=4096)
    for anomaly_map, mask in zip(maps, masks):
        accumulator.update(anomaly_map, mask)
    assert not accumulator.is_exact
    result = accumulator.compute()
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([m.ravel() for m in masks])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=2e-3)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=5e-3)
    assert result["pixel_f1max"] == pytest.approx(brute_force_f1_max(labels, scores), abs=5e-3)
    assert result["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks), abs=5e-3)


def test_pixel_metrics_not_applicable():
    only_normal = PixelMetricAccumulator()
    only_normal.update(np.random.default_rng(0).random((5, 5)), np.zeros((5, 5), bool))
    assert only_normal.compute() == {
        "pixel_auroc": None,
        "pixel_ap": None,
        "pixel_f1max": None,
        "pixel_aupro": None,
    }
    only_anomalous = PixelMetricAccumulator()
    only_anomalous.update(np.random.default_rng(0).random((5, 5)), np.ones((5, 5), bool))
    assert set(only_anomalous.compute().values()) == {None}
    assert set(PixelMetricAccumulator().compute().values()) == {None}


# ----------------------------------------------------------------------------- AUPRO


def test_aupro_perfect_map_is_one():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    mask[4, 4] = True
    assert aupro([mask.astype(np.float32)], [mask]) == pytest.approx(1.0)


def test_aupro_hand_computed():
    # A 2x7 image: region A = two diagonal pixels (one region under 8-connectivity), region
    # B = two pixels, and ten normal pixels scoring 0.9, 0.8, ..., 0.0 (FPR steps of 0.1).
    #   A scores 1.0 and 0.98: found before any normal pixel.
    #   B scores 0.95 (before any normal pixel) and 0.775 (after the normals 0.9 and 0.8).
    # Going down through the thresholds:
    #   FPR 0.0: A fully found, B half found        -> PRO = (1 + 0.5) / 2 = 0.75
    #   FPR 0.2: B's second pixel, no new normal     -> PRO = 1.0 (vertical step)
    # Area up to FPR 0.3 = 0.75 * 0.2 + 1.0 * 0.1 = 0.25; normalised by 0.3: 5/6.
    truth = np.zeros((2, 7), dtype=bool)
    image = np.zeros((2, 7), dtype=np.float32)
    image[0, 0], image[1, 1] = 1.0, 0.98  # A
    image[0, 5], image[0, 6] = 0.95, 0.775  # B
    truth[0, 0] = truth[1, 1] = truth[0, 5] = truth[0, 6] = True
    image[~truth] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    # (Under 4-connectivity A would be two regions: PRO 2.5 / 3 up to FPR 0.2, AUPRO 8/9.)
    assert aupro([image], [truth]) == pytest.approx(5 / 6)
    assert reference_aupro([image], [truth]) == pytest.approx(5 / 6)


def test_aupro_region_found_only_beyond_max_fpr():
    # Region A (3 pixels) scores 1.0, above all normals; region B (1 pixel) scores below every
    # normal pixel, so it is only found at FPR 1 > 0.3. PRO stays 0.5 on [0, 0.3]: AUPRO = 0.5.
    image = np.linspace(0.0, 0.5, 25, dtype=np.float32).reshape(5, 5)
    truth = np.zeros((5, 5), dtype=bool)
    image[0, :3], truth[0, :3] = 1.0, True
    image[4, 4], truth[4, 4] = -1.0, True
    assert aupro([image], [truth]) == pytest.approx(0.5)


def test_aupro_matches_reference_implementation():
    maps, masks = random_blob_data(seed=4, count=5)
    maps[2] = np.round(maps[2], 1)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-9)
    # Evenly spaced thresholds approximate the exact curve.
    assert aupro(maps, masks, num_thresholds=2000) == pytest.approx(reference_aupro(maps, masks), abs=5e-3)


def test_aupro_without_regions_is_none():
    assert aupro([np.random.default_rng(0).random((4, 4))], [np.zeros((4, 4), bool)]) is None


def _ranked_counts_by_argsort(scores, anomalous, weights):
    """The plain definition: a stable descending ranking of every pixel, cumulative sums, one
    entry per run of equal scores (the implementation before the sort-only one)."""
    order = np.argsort(scores, kind="stable")[::-1]
    ranked = scores[order]
    ends = np.flatnonzero(np.r_[np.diff(ranked) != 0, True])
    tp = np.cumsum(anomalous[order], dtype=np.int64)[ends]
    return tp, (ends + 1) - tp, np.cumsum(weights[order])[ends]


@pytest.mark.parametrize("levels", [7, 1000, None])
def test_exact_counts_are_bit_identical_to_a_full_ranking(levels):
    # Many ties (few levels) and none (continuous scores); several regions with float weights.
    rng = np.random.default_rng(3)
    scores = rng.random(20_000).astype(np.float32)
    if levels:
        scores = np.floor(scores * levels).astype(np.float32) / levels
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:30, 20:50] = mask[60:61, 100:190] = mask[80:95, 5:9] = True
    weights, regions = region_weights(mask)
    anomalous = mask.ravel()
    counts = _ranked_counts_exact(scores, anomalous, weights.ravel(), regions)
    tp, fp, pro = _ranked_counts_by_argsort(scores, anomalous, weights.ravel())
    assert np.array_equal(counts.true_positives, tp)
    assert np.array_equal(counts.false_positives, fp)
    assert np.array_equal(counts.pro_overlap, pro)  # same summation order: equal to the last bit
