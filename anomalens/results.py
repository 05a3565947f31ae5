"""The result of inspecting one image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AnomalyResult:
    """What a detector says about one image.

    ``anomaly_map`` has the height and width of the input image (after EXIF rotation) and
    holds float32 anomaly values; ``score`` is the image-level anomaly score. ``decision``,
    ``threshold`` and ``mask`` are filled once a threshold is known (given or calibrated).
    ``descriptions`` lists the defect descriptions (text, similarity) that match best, for
    the methods that have text; it is empty for vision-only methods.
    """

    path: str
    score: float
    anomaly_map: np.ndarray
    descriptions: list[tuple[str, float]] = field(default_factory=list)
    decision: str | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None
    mask: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # method-specific fields, e.g. FiLo's "grounding"
    # (H, W) bool, True where the image was inspected (`anomalens.inspection_region`); None: everywhere
    inspected: np.ndarray | None = None

    def to_record(self) -> dict:
        """A JSON-serialisable summary (no arrays), as written to ``results.jsonl``."""
        return {
            "path": self.path,
            "score": float(self.score),
            "decision": self.decision,
            "threshold": None if self.threshold is None else float(self.threshold),
            "pixel_threshold": None if self.pixel_threshold is None else float(self.pixel_threshold),
            "descriptions": [{"text": t, "similarity": float(s)} for t, s in self.descriptions],
            "seconds": float(self.seconds),
            **self.extra,
        }
