"""`anomalens evaluate`: a detector on labelled images, as an engineer checks it before a line.

    from anomalens import load_detector
    from anomalens.data import load_dataset
    from anomalens.evaluation import evaluate

    split = load_dataset("data/", categories=["magnetic_tile"])["magnetic_tile"]
    summary = evaluate(load_detector("models/tile"), split, "eval/")

writes into `out`:

* ``scores.csv``: per image its path, category, defect type, label, score, decision and outcome
  (pass / false reject / caught / escape), failed images with their error;
* ``summary.json``: the threshold (with how it was set and its stated rates), the confusion
  matrix, false-reject and escape rates (with 95 % Clopper-Pearson upper bounds), recall per
  defect type, the benchmark's image and pixel metrics, and the threshold that would have met
  the false-reject target on this data with the escape rate there;
* ``evaluation.html``: one self-contained page with all of it, a ROC curve, the score
  distributions of good images and of each defect type with the thresholds, and the worst
  misses (highest-scoring false rejects, lowest-scoring escapes) as thumbnails.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..benchmark import category_metrics, score_samples
from ..calibration import DEFAULT_QUANTILE
from ..data import CategorySplit
from ..defect_type_metrics import DefectTypeMetrics
from ..metrics import PixelMetricAccumulator
from .confusion import confusion, outcome, recall_by_defect_type, threshold_meeting_target

SCORES_CSV, SUMMARY_JSON, EVALUATION_HTML = "scores.csv", "summary.json", "evaluation.html"
CSV_FIELDS = ("path", "category", "defect_type", "label", "score", "decision", "outcome", "error")
MAP_THUMB_SIDE = 96  # side of the maps kept for the worst misses
WORST_MISSES = 12  # of each kind on the page

__all__ = ["CSV_FIELDS", "EVALUATION_HTML", "SCORES_CSV", "SUMMARY_JSON", "evaluate"]


def evaluate(
    detector,
    split: CategorySplit,
    out: str | os.PathLike,
    *,
    max_false_reject: float | None = None,
    pixel_resolution: int | None = None,
    batch_size: int = 8,
    source: str = "",
    overwrite: bool = False,
    on_image=None,
) -> dict[str, Any]:
    """Score `split.test` with the fitted `detector` at its thresholds; write the files above.

    `max_false_reject`: the target for "the threshold that would have met it on this data"
    (default: the one the detector was calibrated for, else 1 - the default quantile).
    Existing results in `out` are not replaced without `overwrite` (FileExistsError).
    Returns what summary.json holds.
    """
    out = Path(out)
    if (out / SUMMARY_JSON).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an evaluation; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    threshold = detector.threshold
    target = max_false_reject
    if target is None:
        target = getattr(threshold, "max_false_reject", None) or round(1.0 - DEFAULT_QUANTILE, 12)

    rows: list[dict] = []
    miss_maps: dict[str, np.ndarray] = {}
    by_type = DefectTypeMetrics(split.test, pixels=False)  # threshold-free, beside the recall per type

    def keep(sample, result, mask) -> None:
        by_type.add(sample, result, mask)
        row = _row(sample, result.score, result.decision)
        rows.append(row)
        if row["outcome"] in ("false reject", "escape"):
            miss_maps[row["path"]] = _small(result.anomaly_map)

    pixels = PixelMetricAccumulator(resolution=pixel_resolution) if split.has_masks else None
    start = time.perf_counter()
    detector.method.set_category(split.category)
    labels, scores, failures, unmasked = score_samples(
        detector, split.test, pixels, batch_size, on_image=on_image, on_result=keep
    )
    seconds = time.perf_counter() - start
    matrix = confusion(rows)
    summary: dict[str, Any] = {
        "category": split.category,
        "source": source,
        "method": detector.method_name,
        "threshold": None if threshold is None else threshold.to_dict(),
        "pixel_threshold": None if detector.pixel_threshold is None else detector.pixel_threshold.to_dict(),
        "images": len(split.test),
        "scored": len(rows),
        "good": sum(1 for r in rows if r["label"] == 0),
        "defects": sum(1 for r in rows if r["label"] == 1),
        "failed": failures,
        "confusion": None if matrix is None else matrix.to_dict(),
        "recall_by_defect_type": recall_by_defect_type(rows),
        "metrics_by_defect_type": by_type.compute(),
        "metrics": category_metrics(labels, scores, pixels),
        "pixel_metrics_exact": None if pixels is None else pixels.is_exact,
        "defects_without_mask": len(unmasked),
        "at_target": threshold_meeting_target(rows, target),
        "seconds": round(seconds, 3),
    }
    _write_csv(out / SCORES_CSV, rows, failures, split)
    _write_json(out / SUMMARY_JSON, summary)
    from .page import write_page

    write_page(out / EVALUATION_HTML, summary, rows, miss_maps, WORST_MISSES)
    return summary


def _row(sample, score: float, decision: str | None) -> dict:
    return {
        "path": str(sample.path),
        "category": sample.category,
        "defect_type": sample.defect_type,
        "label": int(sample.label),
        "score": float(score),
        "decision": decision,
        "outcome": outcome(sample.label, decision),
    }


def _small(anomaly_map: np.ndarray) -> np.ndarray:
    """The map at most MAP_THUMB_SIDE a side (float32), for the misses' thumbnails."""
    from PIL import Image

    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    h, w = amap.shape[:2]
    scale = MAP_THUMB_SIDE / max(h, w)
    if scale >= 1:
        return amap
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(amap, mode="F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _write_csv(path: Path, rows: list[dict], failures: list[dict], split: CategorySplit) -> None:
    by_path = {str(s.path): s for s in split.test}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "label": "defect" if row["label"] else "good", "decision": row["decision"] or ""})
        for fail in failures:
            sample = by_path.get(fail["path"])
            writer.writerow(
                {
                    "path": fail["path"],
                    "category": getattr(sample, "category", ""),
                    "defect_type": getattr(sample, "defect_type", ""),
                    "label": "defect" if getattr(sample, "label", 0) else "good",
                    "error": fail["error"],
                }
            )
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
