"""evaluation.html: one self-contained page (inline CSS and SVG, base64 thumbnails, no URLs).

Sections: the decision at the threshold (confusion matrix, false-reject and escape rates,
recall per defect type), the threshold that would have met the target on this data, the
metrics, a ROC curve with the operating point, the score distributions of good images and of
each defect type with the thresholds drawn, and the worst misses with their anomaly maps.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

THUMB_SIDE = 128
_CSS = """
body{margin:0;padding:24px;font:14px/1.45 system-ui,sans-serif;color:#1f2328;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:16px 20px;margin-top:16px}
table{border-collapse:collapse}th,td{padding:5px 10px;border-bottom:1px solid #d9dde3;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.meta{color:#6b7280}
.bad{color:#c62828;font-weight:600}.good{color:#1b7f3b;font-weight:600}
.misses{display:flex;flex-wrap:wrap;gap:12px}.miss{border:1px solid #d9dde3;border-radius:6px;padding:6px;width:272px}
.miss img{margin-right:4px;vertical-align:top}.miss p{margin:4px 0 0;font-size:12px;word-break:break-all}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""
# Colours of the outcomes in the distribution plot (misses stand out).
_COLOURS = {"pass": "#1b7f3b", "caught": "#1565c0", "false reject": "#c62828", "escape": "#ef6c00", "": "#6b7280"}


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(rate) -> str:
    return "n/a" if rate is None else f"{rate * 100:.3g}%"


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _data_uri(img: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_thumb(path: str) -> str:
    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))
            img = img.convert("RGB")
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
            return f'<img src="{_data_uri(img, "JPEG")}" width="{img.width}" height="{img.height}" alt="image">'
    except (OSError, ValueError):
        return '<span class="meta">image not readable</span>'


def _map_thumb(amap: np.ndarray, threshold: float | None, top: float) -> str:
    """The map on one scale for every miss: blue at 0, white at the threshold, red at `top`."""
    if threshold is not None and threshold > 0 and top > threshold:
        below = np.clip(amap / threshold, 0, 1)
        above = np.clip((amap - threshold) / (top - threshold), 0, 1)
        t = np.where(amap <= threshold, 0.5 * below, 0.5 + 0.5 * above)
    else:
        t = np.clip(amap / top, 0, 1) if top > 0 else np.zeros_like(amap)
    blue, white, red = np.array([33, 102, 172.0]), np.array([247, 247, 247.0]), np.array([178, 24, 43.0])
    lo = t[..., None] * 2
    rgb = np.where(t[..., None] <= 0.5, blue + (white - blue) * lo, white + (red - white) * (lo - 1))
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    scale = THUMB_SIDE / max(img.width, img.height)  # the same box as the image thumbnail
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.NEAREST)
    return f'<img src="{_data_uri(img, "PNG")}" width="{img.width}" height="{img.height}" alt="anomaly map">'


def roc_svg(rows: list[dict], operating: tuple[float, float] | None, size: int = 300) -> str:
    """ROC curve (false-reject rate vs share of defects caught) with the operating point."""
    labels = np.array([r["label"] for r in rows])
    if labels.size == 0 or labels.min() == labels.max():
        return '<p class="meta">The ROC curve needs good and defective images.</p>'
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, [r["score"] for r in rows])
    pad = 40
    x = lambda v: pad + v * size  # noqa: E731
    y = lambda v: pad + (1 - v) * size  # noqa: E731
    points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(fpr, tpr))
    parts = [
        f'<svg id="roc" xmlns="http://www.w3.org/2000/svg" width="{size + 2 * pad}" height="{size + 2 * pad}" '
        'role="img" aria-label="ROC curve">',
        f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>',
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#ccc" stroke-dasharray="4 3"/>',
        f'<polyline points="{points}" fill="none" stroke="#1565c0" stroke-width="2"/>',
        f'<text x="{pad + size / 2}" y="{size + pad + 28}" text-anchor="middle">'
        "false-reject rate (good parts rejected)</text>",
        f'<text x="12" y="{pad + size / 2}" text-anchor="middle" transform="rotate(-90 12 {pad + size / 2})">'
        "defects caught (recall)</text>",
        f'<text x="{x(0)}" y="{y(0) + 14}" text-anchor="middle">0</text>',
        f'<text x="{x(1)}" y="{y(0) + 14}" text-anchor="middle">1</text>',
        f'<text x="{x(0) - 6}" y="{y(1) + 4}" text-anchor="end">1</text>',
    ]
    if operating is not None:
        fr, caught = operating
        parts.append(
            f'<circle id="operating-point" cx="{x(fr):.1f}" cy="{y(caught):.1f}" r="5" fill="#c62828">'
            f"<title>at the threshold: false-reject rate {_pct(fr)}, defects caught {_pct(caught)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def distribution_svg(rows: list[dict], thresholds: list[tuple[str, float, str]], width: int = 760) -> str:
    """One strip per class (good, then each defect type): a dot per image at its score, coloured
    by outcome, with vertical lines at the `thresholds` ((label, value, colour))."""
    if not rows:
        return ""
    classes = ["good"] + sorted({r["defect_type"] for r in rows if r["label"] == 1})
    scores = [r["score"] for r in rows if math.isfinite(r["score"])] + [v for _, v, _ in thresholds]
    lo, hi = min(scores), max(scores)
    hi = hi if hi > lo else lo + 1.0
    left, right, row_h = 150, 20, 44
    top = 16 + 14 * len(thresholds)  # one label line per threshold above the strips
    x = lambda v: left + (v - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    height = top + row_h * len(classes) + 30
    rng = np.random.default_rng(0)  # jitter only: the same page for the same data
    parts = [
        f'<svg id="distributions" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="score distributions">'
    ]
    for i, name in enumerate(classes):
        mine = [
            r for r in rows if (r["label"] == 0 if name == "good" else r["defect_type"] == name and r["label"] == 1)
        ]
        y0 = top + i * row_h
        parts.append(
            f'<text x="{left - 8}" y="{y0 + row_h / 2 + 4}" text-anchor="end">{_esc(name)} ({len(mine)})</text>'
        )
        parts.append(f'<line x1="{left}" y1="{y0 + row_h}" x2="{width - right}" y2="{y0 + row_h}" stroke="#eee"/>')
        for r in mine:
            if not math.isfinite(r["score"]):
                continue
            cy = y0 + 8 + rng.random() * (row_h - 16)
            parts.append(
                f'<circle cx="{x(r["score"]):.1f}" cy="{cy:.1f}" r="2.6" fill="{_COLOURS[r["outcome"]]}" '
                f'fill-opacity="0.7"><title>{_esc(Path(r["path"]).name)}: {r["score"]:.4g}</title></circle>'
            )
    bottom = top + row_h * len(classes)
    for k, (label, value, colour) in enumerate(thresholds):
        anchor = "start" if x(value) < (left + width - right) / 2 else "end"
        parts.append(
            f'<line class="threshold" x1="{x(value):.1f}" y1="{12 + 14 * k}" x2="{x(value):.1f}" y2="{bottom}" '
            f'stroke="{colour}" stroke-width="2" stroke-dasharray="5 3"/>'
            f'<text x="{x(value) + (4 if anchor == "start" else -4):.1f}" y="{14 + 14 * k}" text-anchor="{anchor}" '
            f'fill="{colour}">{_esc(label)} {value:.4g}</text>'
        )
    parts.append(f'<text x="{left}" y="{bottom + 16}">{lo:.4g}</text>')
    parts.append(f'<text x="{width - right}" y="{bottom + 16}" text-anchor="end">{hi:.4g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{bottom + 28}" text-anchor="middle">score</text></svg>')
    return "".join(parts)


def _misses_html(rows, miss_maps, threshold, count) -> str:
    rejects = sorted((r for r in rows if r["outcome"] == "false reject"), key=lambda r: -r["score"])[:count]
    escapes = sorted((r for r in rows if r["outcome"] == "escape"), key=lambda r: r["score"])[:count]
    shown = rejects + escapes
    if not shown:
        return '<p class="meta">No misses at this threshold.</p>'
    top = max(float(miss_maps[r["path"]].max()) for r in shown if r["path"] in miss_maps)
    top = max(top, (threshold or 0.0) * 1.5)
    parts = []
    for title, group in (
        ("False rejects (good parts rejected), highest score first", rejects),
        ("Escapes (defects passed), lowest score first", escapes),
    ):
        if not group:
            continue
        cards = "".join(
            f'<div class="miss">{_image_thumb(r["path"])}'
            f"{_map_thumb(miss_maps[r['path']], threshold, top) if r['path'] in miss_maps else ''}"
            f"<p>{_esc(r['defect_type'])} · score {r['score']:.4g}<br>{_esc(r['path'])}</p></div>"
            for r in group
        )
        parts.append(f'<h3>{_esc(title)}</h3><div class="misses">{cards}</div>')
    scale = "blue: 0, white: the threshold, red: " + f"{top:.4g}" if threshold else f"0 to {top:.4g}"
    return f'<p class="meta">Maps on one colour scale ({_esc(scale)}).</p>' + "".join(parts)


def write_page(path: Path, summary: dict, rows: list[dict], miss_maps: dict, count: int) -> Path:
    """Write evaluation.html (atomically) and return its path."""
    thr = summary.get("threshold") or {}
    threshold = thr.get("value")
    conf = summary.get("confusion")
    at = summary.get("at_target")
    lines = []
    if conf:
        m = conf["matrix"]
        lines.append(
            '<table id="confusion"><tr><th></th><th>decided OK</th><th>decided NG</th></tr>'
            f'<tr><th>good</th><td class="num">{m["good"]["OK"]}</td>'
            f'<td class="num{" bad" if m["good"]["NG"] else ""}">{m["good"]["NG"]}</td></tr>'
            f'<tr><th>defect</th><td class="num{" bad" if m["defect"]["OK"] else ""}">{m["defect"]["OK"]}</td>'
            f'<td class="num">{m["defect"]["NG"]}</td></tr>'
            "</table>"
            f'<p id="rates">False-reject rate <b>{_pct(conf["false_reject_rate"])}</b> '
            f"(95% upper bound {_pct(conf['false_reject_bound'])}); escape rate <b>{_pct(conf['escape_rate'])}</b> "
            f"(95% upper bound {_pct(conf['escape_bound'])}).</p>"
        )
    else:
        lines.append('<p class="meta">No image threshold: no decisions (metrics and the target threshold only).</p>')
    recall = summary.get("recall_by_defect_type") or {}
    if recall:
        body = "".join(
            f'<tr><td>{_esc(k)}</td><td class="num">{v["defects"]}</td><td class="num">{v["caught"]}</td>'
            f'<td class="num">{_pct(v["recall"])}</td></tr>'
            for k, v in recall.items()
        )
        lines.append(
            '<table id="recall"><tr><th>defect type</th><th>defects</th><th>caught</th><th>recall</th></tr>'
            f"{body}</table>"
        )
    target_html = ""
    if at:
        target_html = (
            f'<section id="at-target"><h2>Threshold for a false-reject rate of {_pct(at["target"])} on this data</h2>'
            f"<p>{at['threshold']:.6g}: {at['false_rejects']} good images rejected ({_pct(at['false_reject_rate'])}), "
            f"{at['escapes']} defects escape ({_pct(at['escape_rate'])}). Fitted to these images: what the "
            "threshold should have been here, not a calibration for new data.</p></section>"
        )
    metrics = summary.get("metrics") or {}
    metric_rows = "".join(
        f'<tr><td>{_esc(k)}</td><td class="num">{_num(None if v is None else 100 * v, 4)}</td></tr>'
        for k, v in metrics.items()
    )
    lines_thr = [("threshold", threshold, "#c62828")] if threshold is not None else []
    if at:
        lines_thr.append((f"for {_pct(at['target'])} here", at["threshold"], "#6b7280"))
    operating = None
    if conf and conf["false_reject_rate"] is not None and conf["escape_rate"] is not None:
        operating = (conf["false_reject_rate"], 1 - conf["escape_rate"])
    failed = summary.get("failed") or []
    failed_html = "".join(f"<li>{_esc(f['path'])}: {_esc(f['error'])}</li>" for f in failed)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>anomalens evaluation</title>'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Evaluation: {_esc(summary.get('category'))}</h1>"
        f'<p class="meta">{_esc(summary.get("method"))}, {_esc(summary.get("source"))}; {summary.get("scored")} '
        f"images scored ({summary.get('good')} good, {summary.get('defects')} defects), {len(failed)} failed, "
        f"in {summary.get('seconds')} s</p>"
        f'<section id="decision"><h2>Decisions at the threshold</h2>'
        f"<p>Threshold: {_esc(thr.get('description', 'none'))}</p>{''.join(lines)}</section>"
        f"{target_html}"
        f'<section id="metrics"><h2>Metrics (x100)</h2><table>{metric_rows}</table></section>'
        f'<section id="roc-curve"><h2>ROC curve</h2>{roc_svg(rows, operating)}</section>'
        f'<section id="score-distributions"><h2>Scores of good images and of each defect type</h2>'
        f"{distribution_svg(rows, lines_thr)}"
        '<p class="meta">Dots: green pass, blue caught, red false reject, orange escape.</p></section>'
        f'<section id="worst-misses"><h2>Worst misses</h2>{_misses_html(rows, miss_maps, threshold, count)}</section>'
        + (f'<section id="failures"><h2>Failed ({len(failed)})</h2><ul>{failed_html}</ul></section>' if failed else "")
        + "</body></html>\n"
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
