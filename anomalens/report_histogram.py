"""The score histogram of the HTML report: an inline SVG, OK and NG stacked, the threshold marked."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np


def histogram_svg(
    scores: Sequence[float],
    decisions: Sequence[str | None],
    threshold: float | None,
    width: int = 680,
    height: int = 230,
) -> str:
    """An inline SVG histogram of scores, bars stacked by decision, with the threshold marked."""
    left, right, top, bottom = 44, 16, 22, 38
    pw, ph = width - left - right, height - top - bottom
    parts = [
        (
            f'<svg id="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'role="img" aria-label="Histogram of anomaly scores">'
        )
    ]
    if not scores:
        parts.append(f'<text x="{left}" y="{height / 2:.0f}">No scores to show.</text></svg>')
        return "".join(parts)
    arr = np.asarray(scores, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-12:  # all scores equal: give the axis a visible width
        pad = max(abs(lo) * 0.05, 1e-6)
        lo, hi = lo - pad, hi + pad
    n_bins = int(np.clip(math.ceil(math.sqrt(arr.size)), 10, 40))
    edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, arr, side="right") - 1, 0, n_bins - 1)
    classes = (("OK", "#1b7f3b"), ("NG", "#c62828"), (None, "#9aa1ab"))
    counts = {c: np.zeros(n_bins, dtype=int) for c, _ in classes}
    for b, d in zip(idx, decisions):
        counts[d if d in ("OK", "NG") else None][b] += 1
    total = sum(counts.values())
    ymax = int(total.max())

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    bar_w = pw / n_bins
    for b in range(n_bins):
        y = top + ph
        for c, colour in classes:
            n = int(counts[c][b])
            if not n:
                continue
            h = n / ymax * ph
            y -= h
            label = f"{edges[b]:.4g} to {edges[b + 1]:.4g}: {n} {c or 'undecided'}"
            parts.append(
                f'<rect class="bar" x="{left + b * bar_w + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{html.escape(label)}</title></rect>'
            )
    # Axes, ticks and labels.
    base = top + ph
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + pw}" y2="{base}" stroke="#666"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#666"/>')
    ticks = np.linspace(lo, hi, 5)
    for i, v in enumerate(ticks):
        x = x_of(float(v))
        # The end labels hang inwards from their tick so a long number is never cut by the edge.
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#666"/>')
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="{anchor}">{float(v):.4g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{ymax}</text>')
    parts.append(f'<text x="{left - 6}" y="{base}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">anomaly score</text>')
    if threshold is not None:
        x = x_of(threshold)
        parts.append(
            f'<line id="threshold-line" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{base}" '
            'stroke="#111" stroke-width="2" stroke-dasharray="5,3"/>'
        )
        anchor = "end" if x > left + pw * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        parts.append(
            f'<text x="{x + dx:.1f}" y="{top - 8}" text-anchor="{anchor}" font-weight="600">'
            f"threshold {threshold:.4g}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
