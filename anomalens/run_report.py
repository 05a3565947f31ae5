"""The report of one inspection run: what `anomalens.inspection.run` tells `report.write_report`
about the run (method, thresholds and their stated rates, timing, the batch of a joint method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_run_report(
    out: Path, records, detector, title: str, source: str, elapsed: float, log, num_images: int = 0,
    scale=None, settings: dict | None = None, thumbs: dict | None = None,
) -> Path | None:  # fmt: skip
    """The report of this run only: `records` are those of its inputs (another run into the same
    folder keeps its own records in results.jsonl, but they are not shown here). `thumbs`: those
    the output writer made (`OutputWriter.thumbs`)."""
    from .report import calibration_rows, write_report

    info: dict[str, Any] = {
        "method": detector.method_name,
        "backbone": detector.backbone_name,
        "total_seconds": elapsed,
        "source": source,
        "run_settings": settings,
    }
    if detector.threshold is not None:
        info["threshold"] = detector.threshold.value
        info["threshold_description"] = detector.threshold.description()
        info["calibration"] = calibration_rows(detector.threshold)  # {} until the rule states rates
    if detector.pixel_threshold is not None:
        info["pixel_threshold"] = detector.pixel_threshold.value
        info["pixel_threshold_description"] = detector.pixel_threshold.description()
    if detector.scores_jointly and num_images:
        refs = len(detector.reference_paths)
        refs_note = f" and {refs} reference images" if refs else ""
        info["batch"] = f"{num_images} input images scored jointly (each against the others{refs_note})"
    try:
        return write_report(
            out, records, title=title, summary_info=info, colour_scale=scale, references=detector.reference_paths,
            thumbs=thumbs,
        )
    except (OSError, ValueError) as err:
        log(f"warning: could not write {out}/report.html: {err}")
        return None
