"""What makes two runs' results the same kind: the effective settings a resumed run must share.

A resumed `detect` (or `benchmark`) adds results to those already in its output folder. Mixing
results made with another threshold, model, bit depth or data would give one report with two
configurations, so a resumed run compares the full effective settings (not a display string)
and is refused with every difference named. The user's way out is a new `--out`, or
`--overwrite` to redo everything with the new settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .errors import UsageError


def model_fingerprint(detector: Any) -> str:
    """sha256 (16 hex digits) of the method's learned tensors: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    state = detector.method.state_dict() if hasattr(detector.method, "state_dict") else {}
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        h.update(tensor.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def _byte_dtype():
    import torch

    return torch.uint8


def effective_settings(detector: Any) -> dict[str, Any]:
    """Everything that decides a run's scores, maps and decisions (JSON-ready)."""
    reading = getattr(detector, "reading", None)
    effective = {
        "method": detector.method_name,
        "settings": detector.settings,
        "backbone": detector.backbone_name,
        "model": model_fingerprint(detector),
        "references": [os.path.realpath(p) for p in detector.reference_paths],
        "threshold": _threshold(detector.threshold),
        "pixel_threshold": _threshold(detector.pixel_threshold),
        "bit_depth": None if reading is None else reading.bit_depth,
    }
    region = getattr(detector, "region", None)
    if region is not None:  # absent without one: runs recorded before regions existed resume as before
        effective["inspection_region"] = {"digest": region.digest, "share": round(region.share, 4)}
    return json.loads(json.dumps(effective, default=str))


def _threshold(threshold: Any) -> dict | None:
    """A threshold's numbers and rule, without its display text (which repeats them)."""
    if threshold is None:
        return None
    return {k: v for k, v in threshold.to_dict().items() if k != "description"}


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """"name: old -> new" for every setting that differs (nested mappings by dotted name)."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(none)"), new.get(key, "(none)")
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found.extend(differences(a, b, f"{name}."))
        elif key == "references" and isinstance(a, list) and isinstance(b, list):
            found.append(f"references: {len(a)} images -> {len(b)} images ({len(set(a) ^ set(b))} differ)")
        else:
            found.append(f"{name}: {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def resume_refusal(what: str, changes: list[str], how_to_start_afresh: str) -> str:
    """The one-line message of a refused resume, naming every difference."""
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    return (
        f"{what} holds results made with other settings ({shown}); resuming would mix them. "
        f"Write to a new --out, or {how_to_start_afresh}"
    )


def check_resume(previous: dict | None, settings: dict, out) -> None:
    """Refuse to add results to `out` when its results were made with other effective settings."""
    how = "pass --overwrite to redo every image with these settings (the results in it are replaced)"
    if previous is None:
        raise UsageError(resume_refusal(f"{out}", ["its settings.json is missing or unreadable"], how))
    if "effective" in previous:
        changes = differences(previous["effective"], settings["effective"])
    else:  # written before effective settings were recorded: compare what it has
        keys = ("method", "settings", "threshold", "pixel_threshold")
        changes = differences({k: previous.get(k) for k in keys}, {k: settings.get(k) for k in keys})
    if changes:
        raise UsageError(resume_refusal(f"{out}", changes, how))
