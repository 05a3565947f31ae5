"""The models a server holds loaded: saved detectors by name, and what clients may know of them."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..detector import MODEL_CONFIG, Detector, load_detector
from ..errors import UsageError
from .errors import ServeError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class ServedModel:
    name: str
    detector: Detector
    directory: str | None = None

    def info(self) -> dict:
        det = self.detector
        thr, pix = det.threshold, det.pixel_threshold
        return {
            "name": self.name,
            "method": det.method_name,
            "backbone": det.backbone_name,
            "threshold": _threshold_info(thr),
            "pixel_threshold": _threshold_info(pix),
            "num_references": int(getattr(det.method, "num_references", len(det.reference_paths))),
            "references": list(det.reference_paths),
            "settings": _jsonable(det.settings),
            "directory": self.directory,
            "inspection_region": None
            if det.region is None
            else {"share": det.region.share, "digest": det.region.digest},
        }


def _threshold_info(t) -> dict | None:
    if t is None:
        return None
    if hasattr(t, "description"):
        return {"value": float(t.value), "method": t.method, "description": t.description()}
    return {"value": float(t), "method": "given", "description": f"given: {float(t):.6g}"}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`name=DIR` or `DIR` (the name is then the folder's name) -> (name, DIR)."""
    name, sep, directory = spec.partition("=")
    if not sep:
        directory = spec
        name = Path(spec.rstrip("/\\")).name
    if not NAME_PATTERN.match(name):
        raise UsageError(
            f"model name {name!r} (from {spec!r}) must be 1-64 letters, digits, '.', '_' or '-'; give name=DIR"
        )
    return name, directory


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}

    def add(self, name: str, detector: Detector, directory: str | os.PathLike | None = None) -> ServedModel:
        if not NAME_PATTERN.match(name):
            raise UsageError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if name in self._models:
            raise UsageError(f"model name {name!r} is given twice")
        model = ServedModel(name, detector, None if directory is None else str(directory))
        self._models[name] = model
        return model

    def load(self, spec: str) -> ServedModel:
        """Load a model saved by `anomalens fit` / `Detector.save` from `name=DIR` or `DIR`."""
        name, directory = parse_model_spec(spec)
        if not (Path(directory) / MODEL_CONFIG).exists():
            raise UsageError(f"{directory} is not a saved anomalens model (no {MODEL_CONFIG})")
        return self.add(name, load_detector(directory), directory)

    def get(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise ServeError(404, "unknown_model", f"no model named {name!r} (models: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._models)

    def __len__(self) -> int:
        return len(self._models)
