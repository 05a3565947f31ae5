"""The benchmark's metrics for each defect type on its own (`anomalens benchmark --by-defect-type`).

A category's numbers mix its defect types, and the pixel metrics weigh each type by its pixels:
on magnetic_tile the large `uneven` areas hold most of the defect pixels, so pixel AUROC is
mostly theirs. For each defect type this scores the good images against that type's images alone:
image metrics over (good, this type), pixel metrics over the pixels of both, and says which share
of the category's defect pixels (masks at the map's resolution) and images the type holds.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import load_mask
from .metrics import IMAGE_METRICS, PIXEL_METRICS, PixelMetricAccumulator, image_metrics


class DefectTypeMetrics:
    """Collects scored samples (`add`), then `compute()` -> {defect type: metrics}.

    `samples`: the category's test samples (which defect types have masks). `pixels`: also the pixel
    metrics, one accumulator per type that sees the good images' maps as well (each good image's
    pixels are accumulated once per type: opt-in, for that cost).
    """

    def __init__(self, samples: Sequence, pixels: bool = True, pixel_resolution: int | None = None):
        self.pixels = pixels
        self.good_scores: list[float] = []
        self.scores: dict[str, list[float]] = {}
        self.defect_pixels: dict[str, int] = {}
        # Known before the first map: the good images' maps go to every type's accumulator as they come.
        masked_types = sorted({s.defect_type for s in samples if s.label == 1 and s.mask_path is not None})
        self.accumulators = {t: PixelMetricAccumulator(resolution=pixel_resolution) for t in masked_types if pixels}

    def add(self, sample, result, mask=None) -> None:
        """One scored sample (`sample.label`, `.defect_type`, `.mask_path`) and its result; `mask`: its
        ground truth at the map's size when the caller has read it already (else it is read here)."""
        if sample.label == 0:
            self.good_scores.append(result.score)
        else:
            self.scores.setdefault(sample.defect_type, []).append(result.score)
        if not self.pixels or (sample.label == 1 and sample.mask_path is None):
            return  # a defect without its mask stays out of the pixel metrics, as in the category's
        if mask is None:
            mask = load_mask(sample, result.anomaly_map.shape)
        if sample.label == 0:
            for acc in self.accumulators.values():
                acc.update(result.anomaly_map, mask)
        else:
            self.defect_pixels[sample.defect_type] = self.defect_pixels.get(sample.defect_type, 0) + int(mask.sum())
            self.accumulators[sample.defect_type].update(result.anomaly_map, mask)

    def compute(self) -> dict[str, dict[str, Any]]:
        """{defect type: images, image_share, defect_pixel_share, image metrics, pixel metrics}."""
        defect_images = sum(len(s) for s in self.scores.values())
        all_pixels = sum(self.defect_pixels.values())
        out = {}
        for name in sorted(self.scores):
            scores = self.scores[name]
            entry: dict[str, Any] = {
                "images": len(scores),
                "image_share": len(scores) / defect_images,
                "defect_pixel_share": self.defect_pixels.get(name, 0) / all_pixels if all_pixels else None,
            }
            labels = [0] * len(self.good_scores) + [1] * len(scores)
            entry.update(image_metrics(labels, self.good_scores + scores))
            if name in self.accumulators:
                entry.update(self.accumulators[name].compute())
            out[name] = entry
        return out


TABLE_COLUMNS = ("images", "defect_pixel_share", "image_auroc", "pixel_auroc", "pixel_aupro")
AVERAGED = ("image_share", "defect_pixel_share", *IMAGE_METRICS, *PIXEL_METRICS)


def summarise_defect_types(runs: list[dict], categories: list[str], shots: list[int]) -> dict[str, Any]:
    """{shots: {category: {defect type: mean and std over the seeds' runs}}} from runs with `by_defect_type`."""
    summary: dict[str, Any] = {}
    for k in shots:
        per_category: dict[str, Any] = {}
        for category in categories:
            tables = [
                r["metrics"]["by_defect_type"]
                for r in runs
                if r["category"] == category and r["shots"] == k and "by_defect_type" in r["metrics"]
            ]
            if not tables:
                continue
            per_type = {}
            for name in sorted({t for table in tables for t in table}):
                entries = [table[name] for table in tables if name in table]
                merged: dict[str, Any] = {"images": entries[0]["images"], "seeds": len(entries)}
                for m in AVERAGED:
                    values = [e.get(m) for e in entries if e.get(m) is not None]
                    merged[m] = float(np.mean(values)) if values else None
                    merged[f"{m}_std"] = float(np.std(values)) if len(values) > 1 else None
                per_type[name] = merged
            per_category[category] = per_type
        if per_category:
            summary[str(k)] = per_category
    return summary


def defect_type_table(summary: dict[str, Any]) -> str:
    """Markdown: per shot count, a row per (category, defect type); shares and metrics x100."""
    lines = []
    for k, per_category in summary.items():
        lines.append(f"\n**{'zero-shot' if k == '0' else f'{k}-shot'}, each defect type against the good images**\n")
        lines.append("| category | defect type | " + " | ".join(TABLE_COLUMNS) + " |")
        lines.append("|---" * (len(TABLE_COLUMNS) + 2) + "|")
        for category, per_type in per_category.items():
            for name, e in per_type.items():
                cells = [str(e["images"])]
                for m in TABLE_COLUMNS[1:]:
                    v, std = e.get(m), e.get(f"{m}_std")
                    spread = f" ± {100 * std:.1f}" if std and round(100 * std, 1) else ""  # not "± 0.0"
                    cells.append("N/A" if v is None else f"{100 * v:.1f}{spread}")
                lines.append(f"| {category} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FILE = "results_by_defect_type.csv"


def write_defect_type_csv(path: Path, summary: dict[str, Any]) -> None:
    """One row per (shots, category, defect type): images, shares and metrics (fractions), each with its std."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["shots", "category", "defect_type", "images", *AVERAGED, *(f"{m}_std" for m in AVERAGED)])
        for k, per_category in summary.items():
            for category, per_type in per_category.items():
                for name, e in per_type.items():
                    values = [e.get(m) for m in AVERAGED] + [e.get(f"{m}_std") for m in AVERAGED]
                    writer.writerow([k, category, name, e["images"], *values])


def write_defect_types(out: Path, result: dict, runs: list[dict], categories: list[str], shots: list[int]) -> str:
    """The benchmark's by-type part: `result["by_defect_type"]` (the summary), `CSV_FILE` in `out`; its table."""
    result["by_defect_type"] = summarise_defect_types(runs, categories, shots)
    write_defect_type_csv(out / CSV_FILE, result["by_defect_type"])
    return defect_type_table(result["by_defect_type"])
