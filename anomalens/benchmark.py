"""`anomalens benchmark`: a method on every category and shot count of a dataset, with the papers' metrics.

One *run* is (category, shots, seed). Each finished run is appended to `runs.jsonl` in the output
directory, so an interrupted benchmark resumes from what it already wrote. A run is keyed by its
effective settings and data too (`run_config`, `data_fingerprint`): runs made with other settings
or on changed data are kept in runs.jsonl but never reused or summarised, and a note names the
difference. Few-shot runs are
repeated over seeds (different reference draws) and reported as mean and standard deviation;
zero-shot runs once. The summary goes to `results.json`, `results.csv` and a Markdown table.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .data import CategorySplit, load_dataset, load_mask, sample_references
from .defect_type_metrics import DefectTypeMetrics, write_defect_types
from .detector import Detector
from .image_reading import ImageReading
from .images import ImageLoadError
from .metrics import IMAGE_METRICS, PIXEL_METRICS, PixelMetricAccumulator, image_metrics

METRICS = IMAGE_METRICS + PIXEL_METRICS
RUNS_FILE = "runs.jsonl"


@dataclass
class BenchmarkSettings:
    data: str
    dataset: str = "auto"  # mvtec | visa | folder | meta | auto
    method: str = "patchknn"
    categories: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    pixel_resolution: int | None = None  # longer side for pixel metrics; None = mask resolution
    method_settings: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    image_reading: dict[str, Any] = field(default_factory=dict)  # ImageReading fields (bit depth, pixel limit)
    region: str | None = None  # an inspection region's mask file, applied to every category's images
    by_defect_type: bool = False  # also each defect type's metrics on its own (does not change the others)


def run_config(settings: BenchmarkSettings) -> dict[str, Any]:
    """What decides a run's numbers besides its category, shots and seed (JSON-ready)."""
    from .image_reading import ImageReading

    config = {
        "method": settings.method,
        "method_settings": settings.method_settings,
        "dataset": settings.dataset,
        "data": os.path.realpath(settings.data),
        "pixel_resolution": settings.pixel_resolution,
        "bit_depth": ImageReading.from_dict(settings.image_reading).bit_depth,
    }
    if settings.region is not None:  # absent without one: results recorded before regions existed still resume
        from .inspection_region import InspectionRegion

        config["inspection_region"] = InspectionRegion.from_file(settings.region).digest
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(split: CategorySplit) -> str:
    """sha256 (16 hex digits) of a category's files: names, sizes, labels and masks."""

    def entry(path: Path | None) -> list:
        if path is None:
            return [None]
        try:
            return [path.name, path.stat().st_size]
        except OSError:
            return [path.name, None]

    parts = {
        "train_good": [entry(p) for p in split.train_good],
        "test": [[*entry(s.path), s.label, *entry(s.mask_path)] for s in split.test],
    }
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def score_samples(
    detector: Detector,
    samples: list,
    pixels: PixelMetricAccumulator | None,
    batch_size: int = 8,
    on_image=None,
    on_result=None,
) -> tuple[list[int], list[float], list[dict], list[str]]:
    """Score labelled samples: (labels, scores, failures, defects without a mask).

    `pixels` (None: no pixel metrics) is fed each map with its ground-truth mask; a defect
    without its mask is left out of it. `on_result(sample, result, mask)` sees every scored result and
    the mask read for `pixels` or None (`on_image()` every sample, failed ones too). `evaluate` shares it.
    """
    labels, scores, failures, unmasked = [], [], [], []
    for sample, result in zip(samples, detector.predict_iter([s.path for s in samples], batch_size=batch_size)):
        if isinstance(result, ImageLoadError):
            failures.append({"path": str(sample.path), "error": result.reason})
        else:
            labels.append(sample.label)
            scores.append(result.score)
            mask = None
            if pixels is not None and sample.label == 1 and sample.mask_path is None:
                # A defect without its mask is not defect-free: leave it out of pixel metrics.
                unmasked.append(str(sample.path))
            elif pixels is not None:
                mask = load_mask(sample, result.anomaly_map.shape)
                pixels.update(result.anomaly_map, mask)
            if on_result is not None:
                on_result(sample, result, mask)
        if on_image is not None:
            on_image()
    return labels, scores, failures, unmasked


def category_metrics(labels: list[int], scores: list[float], pixels: PixelMetricAccumulator | None) -> dict:
    """The benchmark's image metrics, and its pixel metrics when `pixels` is given."""
    metrics: dict[str, Any] = dict(image_metrics(labels, scores)) if labels else dict.fromkeys(IMAGE_METRICS)
    if pixels is not None and labels:
        metrics.update(pixels.compute())
    else:
        metrics.update(dict.fromkeys(PIXEL_METRICS))
    return metrics


def evaluate_category(
    detector: Detector,
    split: CategorySplit,
    references: list[Path],
    pixel_resolution: int | None = None,
    batch_size: int = 8,
    on_image=None,
    by_defect_type: bool = False,
) -> dict[str, Any]:
    """Fit on the references, score every test image, compute all metrics for one category
    (with `by_defect_type`, also each defect type's against the good images: `DefectTypeMetrics`)."""
    start = time.perf_counter()
    detector.method.set_category(split.category)
    detector.fit(references)
    fit_seconds = time.perf_counter() - start
    use_pixels = split.has_masks
    pixels = PixelMetricAccumulator(resolution=pixel_resolution) if use_pixels else None
    predict_start = time.perf_counter()
    samples = split.test
    types = DefectTypeMetrics(samples, use_pixels, pixel_resolution) if by_defect_type else None
    labels, scores, failures, unmasked = score_samples(
        detector, samples, pixels, batch_size, on_image, on_result=None if types is None else types.add
    )
    predict_seconds = time.perf_counter() - predict_start
    metrics = category_metrics(labels, scores, pixels)
    if types is not None:
        metrics["by_defect_type"] = types.compute()
    n = len(labels)
    metrics.update(
        images=n,
        failed=failures,
        references=[str(p) for p in references],
        fit_seconds=round(fit_seconds, 3),
        seconds=round(fit_seconds + predict_seconds, 3),
        images_per_second=round(n / predict_seconds, 3) if predict_seconds > 0 and n else None,
        peak_rss_mb=round(peak_rss_mb(), 1),
        pixel_metrics_exact=pixels.is_exact if use_pixels else None,
        defects_without_mask=len(unmasked),
    )
    if detector.scores_jointly:
        # The category's test images were one batch, each scored against the others.
        metrics["batch"] = {"images": len(samples), "references": len(references)}
    return metrics


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else 0.0


def _read_runs(path: Path) -> list[dict]:
    runs = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that run is simply redone
    return runs


def _note_other_runs(others: list[dict], config: dict[str, Any], fingerprints: dict[str, str]) -> None:
    """Say that runs.jsonl holds runs of another kind, and how the latest one differs."""
    if not others:
        return
    from tqdm.auto import tqdm

    from .run_identity import differences

    latest = others[-1]
    changes = differences(latest.get("config") or {"recorded": "nothing (an older anomalens)"}, config)
    if latest.get("data") != fingerprints.get(latest.get("category"), latest.get("data")):
        changes.append(f"the files of {latest['category']} changed")
    tqdm.write(
        f"note: {RUNS_FILE} holds {len(others)} run(s) made with other settings or data; they are kept but "
        f"not reused or summarised here (latest: {'; '.join(changes) or 'other categories'})"
    )


def summarise(runs: list[dict], categories: list[str], shots: list[int]) -> dict[str, Any]:
    """Per (shots, category): mean/std over seeds; plus the mean over categories."""
    by_shots: dict[str, Any] = {}
    for k in shots:
        per_cat: dict[str, Any] = {}
        for cat in categories:
            cat_runs = [r for r in runs if r["category"] == cat and r["shots"] == k]
            if not cat_runs:
                continue
            entry: dict[str, Any] = {"seeds": [r["seed"] for r in cat_runs]}
            for m in METRICS:
                mean, std = _mean_std([r["metrics"][m] for r in cat_runs])
                entry[m] = mean
                entry[f"{m}_std"] = std
            for m in ("images", "seconds", "images_per_second", "peak_rss_mb"):
                entry[m], _ = _mean_std([r["metrics"][m] for r in cat_runs])
            entry["images"] = int(entry["images"] or 0)
            entry["failed"] = sum(len(r["metrics"]["failed"]) for r in cat_runs)
            per_cat[cat] = entry
        mean: dict[str, Any] = {}
        for m in METRICS:
            vals = [c[m] for c in per_cat.values() if c[m] is not None]
            mean[m] = float(np.mean(vals)) if vals else None
            mean[f"{m}_categories"] = len(vals)
        by_shots[str(k)] = {"categories": per_cat, "mean": mean}
    return by_shots


def markdown_table(summary: dict[str, Any], metrics: tuple[str, ...] = METRICS) -> str:
    """One table per shot count: categories as rows, metrics (x100) as columns, N/A where undefined."""
    lines = []
    for k, block in summary.items():
        lines.append(f"\n**{'zero-shot' if k == '0' else f'{k}-shot'}**\n")
        lines.append("| category | " + " | ".join(metrics) + " |")
        lines.append("|---" * (len(metrics) + 1) + "|")
        rows = list(block["categories"].items()) + [("**mean**", block["mean"])]
        for name, entry in rows:
            cells = []
            for m in metrics:
                v = entry.get(m)
                std = entry.get(f"{m}_std")
                if v is None:
                    cells.append("N/A")
                elif std:
                    cells.append(f"{100 * v:.1f} ± {100 * std:.1f}")
                else:
                    cells.append(f"{100 * v:.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, summary: dict[str, Any]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["shots", "category", *METRICS, *(f"{m}_std" for m in METRICS), "images", "seconds"])
        for k, block in summary.items():
            for cat, e in list(block["categories"].items()) + [("mean", block["mean"])]:
                writer.writerow(
                    [
                        k,
                        cat,
                        *(e.get(m) for m in METRICS),
                        *(e.get(f"{m}_std") for m in METRICS),
                        e.get("images"),
                        e.get("seconds"),
                    ]
                )


def run_benchmark(settings: BenchmarkSettings, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a benchmark and write runs.jsonl, results.json, results.csv, results.md."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset(settings.data, kind=settings.dataset, categories=settings.categories)
    categories = list(splits)
    runs_path = out / RUNS_FILE
    config = run_config(settings)
    key = config_key(config)
    fingerprints = {cat: data_fingerprint(splits[cat]) for cat in categories}

    def same_kind(r: dict) -> bool:  # same settings, and the same data for this run's categories
        return r.get("config_key") == key and r.get("data") == fingerprints.get(r["category"], r.get("data"))

    def usable(r: dict) -> bool:  # a run without the defect types' metrics is redone when they are asked for
        return same_kind(r) and (not settings.by_defect_type or "by_defect_type" in r["metrics"])

    every_run = _read_runs(runs_path)
    done = list({(r["category"], r["shots"], r["seed"]): r for r in every_run if usable(r)}.values())
    _note_other_runs([r for r in every_run if not same_kind(r)], config, fingerprints)
    done_keys = {(r["category"], r["shots"], r["seed"]) for r in done}
    plan = []
    for cat in categories:
        for k in settings.shots:
            for seed in settings.seeds if k > 0 else [settings.seeds[0]]:
                if (cat, k, seed) in done_keys:
                    continue
                if k > len(splits[cat].train_good):
                    continue  # not enough good images for this shot count: reported as absent
                plan.append((cat, k, seed))
    reading = ImageReading.from_dict(settings.image_reading)
    detector = (
        Detector(
            method=settings.method,
            device=settings.device,
            reading=reading,
            region=settings.region,
            **settings.method_settings,
        )
        if plan
        else None
    )
    total_images = sum(len(splits[c].test) for c, _, _ in plan)
    bar = tqdm(total=total_images, unit="img", disable=not progress, desc=f"{settings.method}")
    for cat, k, seed in plan:
        bar.set_postfix_str(f"{cat} {k}-shot seed {seed}")
        refs = sample_references(splits[cat], k, seed) if k > 0 else []
        metrics = evaluate_category(
            detector,
            splits[cat],
            refs,
            settings.pixel_resolution,
            settings.batch_size,
            on_image=lambda: bar.update(1),
            by_defect_type=settings.by_defect_type,
        )
        record = {
            "category": cat,
            "shots": k,
            "seed": seed,
            "method": settings.method,
            "metrics": metrics,
            "config": config,
            "config_key": key,
            "data": fingerprints[cat],
        }
        if metrics.get("defects_without_mask"):
            tqdm.write(
                f"warning: {cat}: {metrics['defects_without_mask']} defect image(s) have no mask; "
                "left out of the pixel metrics"
            )
        with runs_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        done.append(record)
    bar.close()
    runs = done
    summary = summarise(runs, categories, settings.shots)
    skipped = {
        c: [k for k in settings.shots if k > len(splits[c].train_good)]
        for c in categories
        if any(k > len(splits[c].train_good) for k in settings.shots)
    }
    result = {
        "anomalens_version": __version__,
        "settings": asdict(settings),
        "backbone": detector.backbone_name if detector else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "shots": summary,
        "skipped_for_lack_of_references": skipped,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "runs": len(runs),
    }
    write_csv(out / "results.csv", summary)
    markdown = markdown_table(summary)
    if settings.by_defect_type:  # result["by_defect_type"], results_by_defect_type.csv, a second table
        markdown += write_defect_types(out, result, runs, categories, settings.shots)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown)
    return result
