"""Decisions against ground truth: confusion matrix, false-reject and escape rates, recall per
defect type, and the threshold that would have met a false-reject target on the data.

A row is one scored image: ``label`` 0 (good) or 1 (defect), ``defect_type``, ``score`` and
``decision`` ("OK", "NG" or None without a threshold). The words are the line's: a good part
rejected is a *false reject*, a defect passed is an *escape*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..threshold_rule import CONFIDENCE, clopper_pearson_upper

OUTCOMES = {(0, "OK"): "pass", (0, "NG"): "false reject", (1, "NG"): "caught", (1, "OK"): "escape"}


def outcome(label: int, decision: str | None) -> str:
    """ "pass", "false reject", "caught", "escape", or "" without a decision."""
    return OUTCOMES.get((int(label), decision), "")


@dataclass(frozen=True)
class Confusion:
    """Counts of good/defect images decided OK/NG."""

    good_ok: int
    good_ng: int
    defect_ok: int
    defect_ng: int

    @property
    def good(self) -> int:
        return self.good_ok + self.good_ng

    @property
    def defects(self) -> int:
        return self.defect_ok + self.defect_ng

    @property
    def false_reject_rate(self) -> float | None:
        return self.good_ng / self.good if self.good else None

    @property
    def escape_rate(self) -> float | None:
        return self.defect_ok / self.defects if self.defects else None

    def to_dict(self, confidence: float = CONFIDENCE) -> dict:
        """The matrix, both rates and their one-sided Clopper-Pearson upper bounds."""
        return {
            "matrix": {
                "good": {"OK": self.good_ok, "NG": self.good_ng},
                "defect": {"OK": self.defect_ok, "NG": self.defect_ng},
            },
            "false_reject_rate": self.false_reject_rate,
            "false_reject_bound": clopper_pearson_upper(self.good_ng, self.good, confidence) if self.good else None,
            "escape_rate": self.escape_rate,
            "escape_bound": clopper_pearson_upper(self.defect_ok, self.defects, confidence) if self.defects else None,
            "confidence": confidence,
        }


def confusion(rows: Sequence[dict]) -> Confusion | None:
    """The confusion matrix of the rows that have a decision (None when none has)."""
    decided = [r for r in rows if r.get("decision") in ("OK", "NG")]
    if not decided:
        return None

    def count(label: int, decision: str) -> int:
        return sum(1 for r in decided if int(r["label"]) == label and r["decision"] == decision)

    return Confusion(count(0, "OK"), count(0, "NG"), count(1, "OK"), count(1, "NG"))


def recall_by_defect_type(rows: Sequence[dict]) -> dict[str, dict]:
    """Per defect type (sorted): defects, caught (decided NG) and recall; rows without a
    decision count as not caught."""
    result: dict[str, dict] = {}
    for name in sorted({r["defect_type"] for r in rows if int(r["label"]) == 1}):
        of_type = [r for r in rows if int(r["label"]) == 1 and r["defect_type"] == name]
        caught = sum(1 for r in of_type if r.get("decision") == "NG")
        result[name] = {"defects": len(of_type), "caught": caught, "recall": caught / len(of_type)}
    return result


def threshold_meeting_target(rows: Sequence[dict], target: float) -> dict | None:
    """The lowest threshold whose false-reject rate on these good images is <= `target`, and the
    escape rate there (None without good images).

    At most floor(target * good) good scores may lie above it, so it is the (that + 1)-th
    largest good score (a score equal to the threshold passes). It is fitted to this data, so
    it is what the threshold *should have been*, not a calibration for new data.
    """
    good = np.sort(np.array([r["score"] for r in rows if int(r["label"]) == 0], dtype=np.float64))[::-1]
    defects = np.array([r["score"] for r in rows if int(r["label"]) == 1], dtype=np.float64)
    if good.size == 0:
        return None
    allowed = int(np.floor(target * good.size + 1e-9))
    value = float(good[min(allowed, good.size - 1)])
    false_rejects = int(np.count_nonzero(good > value))
    escapes = int(np.count_nonzero(defects <= value))
    return {
        "target": target,
        "threshold": value,
        "false_rejects": false_rejects,
        "false_reject_rate": false_rejects / good.size,
        "escapes": escapes,
        "escape_rate": escapes / defects.size if defects.size else None,
    }
