"""One image's record as a results.jsonl value and as a results.csv row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

CSV_COLUMNS = ("path", "score", "decision", "threshold", "top_description", "seconds", "status", "error")


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively: JSON has no NaN, and a line with one
    would not parse in strict readers (browsers, jq)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a
    leading apostrophe, the usual escape; numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_row(rec: dict) -> list[Any]:
    return [_csv_cell(v) for v in _csv_values(rec)]


def _csv_values(rec: dict) -> list[Any]:
    descriptions = rec.get("descriptions") or []
    top = descriptions[0]["text"] if descriptions else ""
    return [
        rec.get("path"),
        "" if rec.get("score") is None else rec["score"],
        rec.get("decision") or "",
        "" if rec.get("threshold") is None else rec["threshold"],
        top,
        "" if rec.get("seconds") is None else rec["seconds"],
        rec.get("status", ""),
        rec.get("error") or "",
    ]


def image_fields(img) -> dict:
    """The record fields every front end adds for a scored image: when, and at what sizes."""
    fields = {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "image_size": list(img.original_hw or img.size_hw),
        "map_size": list(img.size_hw),
    }
    if getattr(img, "notes", ()):
        fields["read_note"] = "; ".join(img.notes)  # e.g. "first frame of 12 read"
    return fields
