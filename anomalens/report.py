"""A single self-contained HTML report of one run (no external files or URLs).

The report holds a summary (counts, threshold, the run's own settings and timing), a place for
the calibration numbers, the reference images, a histogram of the scores with the threshold, the
overlays' colour scale, and the results: a table rendered page by page from a JSON array embedded
in the page (filters NG / OK / no decision / failed, sortable columns, thumbnails loaded lazily,
a click opens image, overlay and mask side by side). Failures are also listed in their own section.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from anomalens.calibration import Threshold, as_threshold
from anomalens.colour_scale import ColourScale, scale_svg
from anomalens.outputs import REPORT_HTML, read_records, record_key
from anomalens.report_assets import CSS, JS
from anomalens.report_histogram import histogram_svg
from anomalens.report_thumbs import THUMB_SIDE, mask_data_uri, thumb_data_uri

__all__ = ["PAGE_SIZE", "THUMB_SIDE", "histogram_svg", "write_report"]

PAGE_SIZE = 100  # rows per page of the results table
MAX_REFERENCES_SHOWN = 48


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{f:.{digits}g}" if math.isfinite(f) else str(f)


def _fmt_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {sec:02d} s" if hours else f"{minutes} min {sec:02d} s"


def _score_of(rec: dict) -> float | None:
    s = rec.get("score")
    try:
        f = float(s)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _threshold_value(summary_info: dict, records: Sequence[dict]) -> float | None:
    t = as_threshold(summary_info.get("threshold"))  # a number, a Threshold or its saved dict
    t = None if t is None else t.value
    if t is None:
        t = next((r["threshold"] for r in records if r.get("threshold") is not None), None)
    try:
        return None if t is None else float(t)
    except (TypeError, ValueError):
        return None


def _threshold_row(label: str, value: Any, text: str | None) -> tuple[str, str] | None:
    if value is None and not text:
        return None
    number = "" if value is None else _fmt_num(as_threshold(value).value, 6)
    return label, f"{number} ({text})" if text and number else number or str(text)


def _summary_html(records: Sequence[dict], summary_info: dict, threshold: float | None) -> str:
    ok = [r for r in records if r.get("status") == "ok"]
    counts = {
        "Images": len(records),
        "OK": sum(r.get("decision") == "OK" for r in ok),
        "NG": sum(r.get("decision") == "NG" for r in ok),
        "Failed": len(records) - len(ok),
    }
    undecided = len(ok) - counts["OK"] - counts["NG"]
    if undecided:
        counts["No decision"] = undecided
    cards = "".join(
        f'<div class="card {k.lower().replace(" ", "-")}" id="count-{k.lower().replace(" ", "-")}">'
        f'<span class="n">{v}</span>{_esc(k)}</div>'
        for k, v in counts.items()
    )
    info = dict(summary_info)
    info.pop("calibration", None)  # its own section
    run_settings = info.pop("run_settings", None)
    rows: list[tuple[str, str]] = []
    thr_obj = info.pop("threshold", None)  # described only when it carries how it was set
    thr_text = info.pop("threshold_description", None) or (
        thr_obj.description() if isinstance(thr_obj, Threshold) else None
    )
    pix = info.pop("pixel_threshold", None)
    pix_text = info.pop("pixel_threshold_description", None) or (
        pix.description() if isinstance(pix, Threshold) else None
    )
    for row in (_threshold_row("Threshold", threshold, thr_text), _threshold_row("Pixel threshold", pix, pix_text)):
        if row:
            rows.append(row)
    for key, label in (("method", "Method"), ("backbone", "Backbone")):
        if info.get(key) is not None:
            rows.append((label, str(info.pop(key))))
    total = info.pop("total_seconds", None)
    if total is not None:
        rows.append(("Total time", _fmt_seconds(float(total))))
    else:
        per_image = sum(float(r.get("seconds") or 0.0) for r in ok)
        rows.append(("Total time", f"{_fmt_seconds(per_image)} (sum of per-image times)"))
    for key, value in info.items():
        rows.append((str(key).replace("_", " ").capitalize(), str(value)))
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    settings = ""
    if run_settings:
        text = json.dumps(run_settings, indent=2, sort_keys=True, default=str)
        settings = (
            '<details id="run-settings"><summary>Settings of this run</summary>'
            f'<pre class="settings">{_esc(text)}</pre></details>'
        )
    return (
        f'<section id="summary"><h2>Summary</h2><div class="cards">{cards}</div>'
        f'<dl class="info">{dl}</dl>{settings}</section>'
    )


def calibration_section(calibration: dict | None) -> str:
    """The "Calibration" section: what the threshold rule promises (expected false-reject rate,
    its bound, ...), as label -> value pairs given by the calibration code. Empty when none."""
    if not calibration:
        return ""
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in calibration.items())
    return f'<section id="calibration"><h2>Calibration</h2><dl class="info">{dl}</dl></section>'


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def calibration_rows(threshold) -> dict[str, str]:
    """What a threshold states about its rates, as report rows: the fields the threshold rule fills
    (`max_false_reject`, `expected_false_reject`, `false_reject_bound`, `confidence`, `n_scores`,
    `rank`, `defects`, `escapes`, `escape_bound`, `warning`); {} for a threshold without them."""

    def get(name):
        return getattr(threshold, name, None)

    def pct(x) -> str:
        return f"{100 * float(x):.3g} %"

    rows: dict[str, str] = {}
    if get("max_false_reject") is not None:
        rows["False-reject target"] = pct(get("max_false_reject"))
    if get("expected_false_reject") is not None:
        rows["Expected false-reject rate"] = pct(get("expected_false_reject"))
    if get("false_reject_bound") is not None:
        conf = f" ({pct(get('confidence'))} confidence)" if get("confidence") is not None else ""
        rows[f"False-reject rate upper bound{conf}"] = pct(get("false_reject_bound"))
    if get("n_scores") is not None and get("rank") is not None:
        k = int(get("rank"))
        nth = "largest" if k == 1 else f"{_ordinal(k)} largest"
        rows["Rule"] = f"at the {nth} of {get('n_scores')} good (leave-one-out) scores"
    if get("defects"):
        rows["Known defects"] = f"{get('escapes') or 0} of {get('defects')} escape"
        if get("escape_bound") is not None:
            rows["Escape rate upper bound"] = pct(get("escape_bound"))
    if get("warning"):
        rows["Warning"] = str(get("warning"))
    return rows


def _references_html(references: Sequence[str], thumb_side: int) -> str:
    if not references:
        return ""
    shown = list(references)[:MAX_REFERENCES_SHOWN]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        thumbs = list(pool.map(lambda p: thumb_data_uri(Path(p), thumb_side // 2 + 40), shown))
    figures = []
    for path, thumb in zip(shown, thumbs):
        picture = (
            f'<img src="{thumb[0]}" width="{thumb[1]}" height="{thumb[2]}" alt="reference" loading="lazy">'
            if thumb
            else '<span class="missing">not available</span>'
        )
        figures.append(f"<figure>{picture}<figcaption>{_esc(Path(path).name)}</figcaption></figure>")
    more = len(references) - len(shown)
    note = f'<p class="meta">and {more} more (listed in settings.json)</p>' if more > 0 else ""
    return (
        f'<section id="references"><h2>Reference images ({len(references)})</h2>'
        f'<div class="refs">{"".join(figures)}</div>{note}</section>'
    )


def _scale_html(scale: ColourScale | None) -> str:
    if scale is None:
        return ""
    return (
        f'<section id="overlay-scale"><h2>Overlay colours</h2>{scale_svg(scale)}'
        f'<p class="meta">{_esc(scale.basis or "cool below the threshold, hot above")}. '
        "Every overlay of this run uses this one scale.</p></section>"
    )


def _file_uri(path: Path) -> str | None:
    try:
        return path.resolve().as_uri()
    except (OSError, ValueError):
        return None


def _truth(rec: dict) -> tuple[str | None, str | None]:
    """(ground-truth label, ground-truth mask path) of a record, when known."""
    gt = rec.get("ground_truth")
    if isinstance(gt, dict):
        return (None if gt.get("label") is None else str(gt["label"])), gt.get("mask")
    return (None if gt is None else str(gt)), None


def _row(rank: int, rec: dict, out: Path, thumb_side: int, made: dict | None = None) -> dict:
    """One row of the embedded JSON (short keys: the array is the bulk of a large report).

    `made`: the thumbnails the output writer made for this record ("im", "ov", "mk", "gk");
    those missing are made from the files."""
    ok = rec.get("status", "ok") == "ok"
    made = (made or {}) if ok else {}
    src = Path(str(rec.get("path", "")))
    overlay, mask = rec.get("overlay"), rec.get("mask")
    image_thumb = made.get("im") or (thumb_data_uri(src, thumb_side) if rec.get("path") else None)
    overlay_thumb = (made.get("ov") or thumb_data_uri(out / overlay, thumb_side)) if overlay else None
    descriptions = rec.get("descriptions") or []
    top = descriptions[0] if descriptions else {}
    label, truth_mask = _truth(rec)
    row: dict[str, Any] = {
        "i": rank,
        "p": str(rec.get("path", "")),
        "score": _score_of(rec),
        "d": rec.get("decision") or "",
        "st": "ok" if ok else "error",
        "t": top.get("text", ""),
        "ts": top.get("similarity"),
    }
    if not ok:
        row["e"] = rec.get("error") or "unknown error"
    if image_thumb:
        row.update(im=image_thumb[0], w=image_thumb[1], h=image_thumb[2], fi=_file_uri(src))
    if overlay_thumb:
        row.update(ov=overlay_thumb[0], ow=overlay_thumb[1], oh=overlay_thumb[2], fo=overlay)
    if mask:
        row.update(mk=made.get("mk") or mask_data_uri(out / mask, thumb_side), fm=mask)
    if label is not None:
        row["g"] = label
        defect = label.lower() not in ("good", "ok", "0", "normal")
        if ok and row["d"] in ("OK", "NG"):
            row["miss"] = (row["d"] == "NG") != defect  # an escape or a false reject
        if truth_mask:
            gk = made.get("gk") or mask_data_uri(Path(truth_mask), thumb_side)
            row.update(gk=gk, fg=_file_uri(Path(truth_mask)))
    return {k: v for k, v in row.items() if v is not None and v != ""} | {"score": row["score"]}


def _results_html(rows: list[dict], has_truth: bool) -> str:
    truth = "<th data-key=\"g\" data-first=\"ascending\">Truth</th>" if has_truth else ""
    head = (
        "<thead><tr>"
        '<th data-key="i" data-first="ascending">#</th><th>Image</th><th>Overlay</th>'
        '<th data-key="p" data-first="ascending">File</th>'
        '<th data-key="score" data-first="descending" aria-sort="descending">Score</th>'
        '<th data-key="d" data-first="descending">Decision</th>'
        f'{truth}<th data-key="t" data-first="ascending">Top defect description</th>'
        "</tr></thead>"
    )
    filters = "".join(
        f'<button type="button" data-filter="{f}" aria-pressed="{"true" if f == "all" else "false"}">'
        f'{label} <span class="count"></span></button>'
        for f, label in (("all", "All"), ("NG", "NG"), ("OK", "OK"), ("none", "No decision"), ("failed", "Failed"))
    )
    pager = (
        '<div class="pager"><button type="button" data-step="-1">&larr; previous</button>'
        '<span class="page-info"></span><button type="button" data-step="1">next &rarr;</button></div>'
    )
    # "</" inside the JSON would end the <script> element early: escape it.
    data = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return (
        f'<section id="results"><h2>Results ({len(rows)} images, worst first)</h2>'
        '<p class="meta">Filter, sort by a column header, click a picture to enlarge '
        "(image, overlay and mask side by side; arrow keys for the next one).</p>"
        f'<div class="toolbar" id="filters">{filters}</div>{pager}'
        f'<table id="results-table" data-page-size="{PAGE_SIZE}" data-truth="{int(has_truth)}">'
        f"{head}<tbody></tbody></table>"
        f'{pager}<script type="application/json" id="report-data">{data}</script></section>'
        '<dialog id="viewer" aria-label="Enlarged image"></dialog>'
    )


def _failures_html(failed: Sequence[dict]) -> str:
    if not failed:
        return ""
    rows = "".join(
        f'<tr><td class="path">{_esc(r.get("path", ""))}</td><td>{_esc(r.get("error") or "unknown error")}</td></tr>'
        for r in failed
    )
    return (
        f'<section id="failures"><h2>Failures ({len(failed)})</h2>'
        '<table id="failures-table"><thead><tr><th>File</th><th>Error</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def write_report(
    out_dir: str | os.PathLike,
    records: Sequence[dict] | None = None,
    title: str = "anomalens inspection report",
    summary_info: dict | None = None,
    thumb_side: int = THUMB_SIDE,
    workers: int | None = None,
    colour_scale: ColourScale | None = None,
    references: Sequence[str] = (),
    thumbs: dict[str, dict] | None = None,
) -> Path:
    """Build ``out_dir/report.html`` and return its path.

    `records` are results.jsonl records (all of ``out_dir/results.jsonl`` when None; a run passes
    only its own). `summary_info` may hold "threshold" (number or Threshold),
    "threshold_description", "pixel_threshold", "pixel_threshold_description", "method",
    "backbone", "total_seconds", "run_settings" (a dict, shown folded), "calibration" (label ->
    value, its own section, see `calibration_section`); other keys are listed as they are.
    `colour_scale`: the overlays' scale, drawn in the report. `references`: paths of the
    reference images, shown as thumbnails. A record may carry "ground_truth" (a label, or
    {"label", "mask"}). Input images are read from the records' paths, overlays and masks from
    ``out_dir``; files that cannot be read show as "not available". `thumbs` (record key ->
    thumbnails, `OutputWriter.thumbs`) holds thumbnails made while the run wrote its files, so
    that those files are not read again (made at `thumb_side`).
    """
    out = Path(out_dir)
    records = list(read_records(out) if records is None else records)
    summary_info = dict(summary_info or {})
    threshold = _threshold_value(summary_info, records)

    ok = [r for r in records if r.get("status", "ok") == "ok"]
    failed = [r for r in records if r.get("status", "ok") != "ok"]
    # Worst first; images without a finite score go last (they cannot be ranked), failures after.
    ok.sort(key=lambda r: (_score_of(r) is None, -(_score_of(r) or 0.0)))
    ordered = ok + failed

    # Decoding and resizing release the GIL in Pillow, so threads speed up thousands of images.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        made = thumbs or {}
        def row(ranked: tuple[int, dict]) -> dict:
            return _row(ranked[0], ranked[1], out, thumb_side, made.get(record_key(ranked[1])))

        rows = list(pool.map(row, enumerate(ordered, start=1)))
    has_truth = any("g" in r for r in rows)

    scored = [(s, r.get("decision")) for r in ok if (s := _score_of(r)) is not None]
    svg = histogram_svg([s for s, _ in scored], [d for _, d in scored], threshold)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{_esc(title)}</h1><p class="meta">Generated {generated} from {_esc(out)}</p></header>'
        f"{_summary_html(records, summary_info, threshold)}"
        f"{calibration_section(summary_info.get('calibration'))}"
        f'<section id="score-distribution"><h2>Score distribution</h2>{svg}</section>'
        f"{_scale_html(colour_scale)}"
        f"{_references_html(references, thumb_side)}"
        f"{_results_html(rows, has_truth)}"
        f"{_failures_html(failed)}"
        f"<script>{JS}</script></body></html>\n"
    )
    target = out / REPORT_HTML
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target
