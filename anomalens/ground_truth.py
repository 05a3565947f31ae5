"""Ground truth read from where an input image lies, when its folders follow the MVTec layout.

``<category>/test/<type>/<name>.png`` is labelled ``<type>`` ("good" or a defect type), and its
mask is ``<category>/ground_truth/<type>/<name>_mask.png`` (or ``<name>.png``) when that exists.
A run records this in each result's "ground_truth" so the report can show it beside the decision
and mark escapes and false rejects. Images in any other layout have no ground truth.
"""

from __future__ import annotations

from pathlib import Path

GOOD = "good"


def ground_truth_of(path: str | Path) -> dict | None:
    """{"label": type, "mask": mask path or None} for an image in an MVTec-layout test folder, else None."""
    p = Path(path)
    if len(p.parts) < 3 or p.parent.parent.name != "test":
        return None
    label = p.parent.name
    mask = None
    if label != GOOD:
        masks = p.parent.parent.parent / "ground_truth" / label
        for name in (f"{p.stem}_mask.png", f"{p.stem}.png"):
            if (masks / name).is_file():
                mask = str(masks / name)
                break
    return {"label": label, "mask": mask}


def ground_truth_fields(path: str | Path) -> dict:
    """{"ground_truth": ...} for a result record when the image's ground truth is known, else {}."""
    truth = ground_truth_of(path)
    return {} if truth is None else {"ground_truth": truth}
