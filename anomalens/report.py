"""A single self-contained HTML report of a run (no external files or URLs).

The report holds a summary, a histogram of the scores with the threshold (inline SVG), a
table of all images worst first with image and overlay thumbnails (base64 JPEG), sortable by
clicking a column header (a few lines of inline JavaScript), and a list of failed images.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from anomalens.calibration import Threshold, as_threshold
from anomalens.outputs import REPORT_HTML, read_records
from anomalens.report_histogram import histogram_svg

THUMB_SIDE = 160
JPEG_QUALITY = 75

_CSS = """
:root{--ok:#1b7f3b;--ng:#c62828;--na:#6b7280;--bg:#f6f7f9;--line:#d9dde3}
*{box-sizing:border-box}
body{margin:0;padding:24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 color:#1f2328;background:var(--bg)}
h1{margin:0 0 4px;font-size:22px}h2{font-size:17px;margin:0 0 10px}
.meta{color:var(--na);margin:0}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-top:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}
.card{min-width:110px;padding:10px 14px;border-radius:8px;border:1px solid var(--line);background:#fafbfc}
.card .n{font-size:26px;font-weight:600;display:block}
.card.ok .n{color:var(--ok)}.card.ng .n{color:var(--ng)}.card.failed .n{color:var(--na)}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.info dt{color:var(--na)}dl.info dd{margin:0}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{position:sticky;top:0;background:#eef0f3;white-space:nowrap;user-select:none}
th[data-type]{cursor:pointer}th[data-type]:hover{background:#e2e6ea}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.path{font-family:ui-monospace,Consolas,monospace;font-size:12px;word-break:break-all;max-width:380px}
td img{display:block;border-radius:3px}
.badge{display:inline-block;padding:2px 9px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.badge.ok{background:var(--ok)}.badge.ng{background:var(--ng)}.badge.na{background:var(--na)}
.missing{color:var(--na);font-style:italic}
.sim{color:var(--na)}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""

# Sorting: numeric columns compare data-v as numbers (empty values last), others as text in
# natural order (img2 before img10);
# rank breaks ties so sorting is stable. The first click on a header sorts in the direction
# given by data-first (descending for scores: worst first).
_JS = """
(function(){
  function val(row,i,num){var c=row.cells[i];var v=c.getAttribute('data-v');
    if(v===null){v=c.textContent;}if(!num){return v.toLowerCase();}
    var f=parseFloat(v);return isNaN(f)?null:f;}
  function sortBy(table,th){
    var i=th.cellIndex,num=th.getAttribute('data-type')==='num';
    var cur=th.getAttribute('aria-sort');
    var dir=cur==='ascending'?'descending':cur==='descending'?'ascending':(th.getAttribute('data-first')||'ascending');
    var sign=dir==='ascending'?1:-1;
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=val(a,i,num),y=val(b,i,num),r=0;
      if(x===null&&y!==null){return 1;}if(y===null&&x!==null){return -1;}
      if(x!==null&&y!==null){r=num?(x<y?-1:x>y?1:0):x.localeCompare(y,undefined,{numeric:true});}
      return r!==0?sign*r:(val(a,0,true)-val(b,0,true));});
    var frag=document.createDocumentFragment();rows.forEach(function(r){frag.appendChild(r);});
    body.appendChild(frag);
    Array.prototype.forEach.call(th.parentNode.cells,function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir);}
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
      if(th.hasAttribute('data-type')){th.addEventListener('click',function(){sortBy(table,th);});}});});
})();
"""


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


def _open_rgb(path: Path, max_side: int) -> Image.Image:
    """Open an image as RGB, EXIF-rotated; JPEGs are decoded at reduced scale (draft) for speed."""
    with Image.open(path) as img:
        img.draft("RGB", (max_side * 2, max_side * 2))
        # Shrink huge non-JPEG images before any full-size copy (rotation, conversion) is made.
        factor = max(img.size) // (max_side * 2)
        if factor > 1:
            try:
                img = img.reduce(factor)
            except ValueError:  # modes reduce() does not support (e.g. palette): thumbnail copes
                img.thumbnail((max_side * 2, max_side * 2))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # High bit depth grey: stretch the used range, as convert("L") would clip it white.
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
            return Image.fromarray(np.rint(arr).astype(np.uint8)).convert("RGB")
        return img.convert("RGB")


def _thumb_data_uri(path: Path | None, max_side: int) -> tuple[str, int, int] | None:
    """(data URI of a JPEG thumbnail, width, height), or None if the file cannot be read."""
    if path is None:
        return None
    try:
        img = _open_rgb(path, max_side)
    except (OSError, ValueError, SyntaxError):
        return None
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, img.width, img.height


def _img_cell(thumb: tuple[str, int, int] | None, alt: str) -> str:
    if thumb is None:
        return '<td><span class="missing">not available</span></td>'
    uri, w, h = thumb
    return f'<td><img src="{uri}" width="{w}" height="{h}" alt="{_esc(alt)}"></td>'


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
    rows: list[tuple[str, str]] = []
    thr_obj = info.pop("threshold", None)  # described only when it carries how it was set
    thr_text = info.pop("threshold_description", None) or (
        thr_obj.description() if isinstance(thr_obj, Threshold) else None
    )
    if threshold is not None or thr_text:
        value = "" if threshold is None else _fmt_num(threshold, 6)
        rows.append(("Threshold", f"{value} ({thr_text})" if thr_text and value else value or str(thr_text)))
    pix = info.pop("pixel_threshold", None)
    pix_text = info.pop("pixel_threshold_description", None) or (
        pix.description() if isinstance(pix, Threshold) else None
    )
    if pix is not None or pix_text:
        value = _fmt_num(as_threshold(pix).value, 6) if pix is not None else ""
        rows.append(
            ("Pixel threshold", f"{value} ({pix_text})" if pix_text and value else value or str(pix_text))
        )
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
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{cards}</div><dl class="info">{dl}</dl></section>'


def _results_table(ok: Sequence[dict], thumbs: dict[int, tuple[Any, Any]]) -> str:
    head = (
        "<thead><tr>"
        '<th data-type="num" data-first="ascending">#</th><th>Image</th><th>Overlay</th>'
        '<th data-type="text" data-first="ascending">File</th>'
        '<th data-type="num" data-first="descending" aria-sort="descending">Score</th>'
        '<th data-type="text" data-first="descending">Decision</th>'
        '<th data-type="text" data-first="ascending">Top defect description</th>'
        "</tr></thead>"
    )
    rows = []
    for rank, rec in enumerate(ok, start=1):
        score = _score_of(rec)
        decision = rec.get("decision")
        badge = {"OK": "ok", "NG": "ng"}.get(decision or "", "na")
        descriptions = rec.get("descriptions") or []
        if descriptions:
            top = descriptions[0]
            sim = top.get("similarity")
            desc = f'{_esc(top.get("text", ""))} <span class="sim">({_fmt_num(sim, 3)})</span>'
            desc_v = _esc(top.get("text", ""))
        else:
            desc, desc_v = "", ""
        image_thumb, overlay_thumb = thumbs[rank]
        rows.append(
            f'<tr class="{badge}"><td class="num" data-v="{rank}">{rank}</td>'
            f"{_img_cell(image_thumb, 'image')}{_img_cell(overlay_thumb, 'overlay')}"
            f'<td class="path">{_esc(rec.get("path", ""))}</td>'
            f'<td class="num" data-v="{"" if score is None else repr(score)}">{_fmt_num(score)}</td>'
            f'<td data-v="{_esc(decision or "")}"><span class="badge {badge}">{_esc(decision or "n/a")}</span></td>'
            f'<td data-v="{desc_v}">{desc}</td></tr>'
        )
    return f'<table id="results-table" class="sortable">{head}<tbody>{"".join(rows)}</tbody></table>'


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
) -> Path:
    """Build ``out_dir/report.html`` and return its path.

    `records` are results.jsonl records (read from ``out_dir/results.jsonl`` when None).
    `summary_info` may hold "threshold" (number or Threshold), "threshold_description",
    "pixel_threshold", "pixel_threshold_description", "method", "backbone", "total_seconds";
    other keys are listed as they are. Input images are read from the records' paths, overlays
    from ``out_dir``; files that cannot be read show as "not available".
    """
    out = Path(out_dir)
    records = list(read_records(out) if records is None else records)
    summary_info = dict(summary_info or {})
    threshold = _threshold_value(summary_info, records)

    ok = [r for r in records if r.get("status", "ok") == "ok"]
    failed = [r for r in records if r.get("status", "ok") != "ok"]
    # Worst first; images without a finite score go last (they cannot be ranked).
    ok.sort(key=lambda r: (_score_of(r) is None, -(_score_of(r) or 0.0)))

    def make_thumbs(rec: dict) -> tuple[Any, Any]:
        overlay = rec.get("overlay")
        return (
            _thumb_data_uri(Path(rec["path"]), thumb_side),
            _thumb_data_uri(out / overlay if overlay else None, thumb_side),
        )

    # Decoding and resizing release the GIL in Pillow, so threads speed up thousands of images.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        thumbs = dict(enumerate(pool.map(make_thumbs, ok), start=1))

    scored = [(s, r.get("decision")) for r in ok if (s := _score_of(r)) is not None]
    svg = histogram_svg([s for s, _ in scored], [d for _, d in scored], threshold)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_esc(title)}</h1><p class="meta">Generated {generated} from {_esc(out)}</p></header>'
        f"{_summary_html(records, summary_info, threshold)}"
        f'<section id="score-distribution"><h2>Score distribution</h2>{svg}</section>'
        f'<section id="results"><h2>Results ({len(ok)} images, worst first)</h2>'
        '<p class="meta">Click a column header to sort.</p>'
        f"{_results_table(ok, thumbs)}</section>"
        f"{_failures_html(failed)}"
        f"<script>{_JS}</script></body></html>\n"
    )
    target = out / REPORT_HTML
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target
