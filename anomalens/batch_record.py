"""What a jointly scored run's batch was, so that a resumed run scores the same batch.

Methods with `scores_jointly` (`musc`) score each image against the other images of the run,
so an image's score depends on the whole batch. `batch.json` in the output directory records
the batch (every input file and the reference images); a resumed run scores that same batch
again and writes only the images still missing, which gives the scores an uninterrupted run
gives. A run whose inputs differ from the recorded batch would mix scores of two batches:
it is refused with the differences named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

BATCH_JSON = "batch.json"


def describe_batch(files: Sequence[str | os.PathLike], references: Sequence[str | os.PathLike]) -> dict:
    """The batch as absolute paths (inputs in run order; references sorted)."""
    return {
        "images": [os.path.abspath(f) for f in files],
        "references": sorted(os.path.abspath(r) for r in references),
    }


def read_batch(out: str | os.PathLike) -> dict | None:
    try:
        data = json.loads((Path(out) / BATCH_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def batch_conflict(recorded: dict | None, current: dict, out: str | os.PathLike) -> str | None:
    """None if results in `out` may be completed by this batch, else a one-line reason."""
    if recorded is None:
        return (
            f"{out} holds results but no {BATCH_JSON}: they were not scored as one batch with these "
            "images; pass --overwrite or choose another --out"
        )
    problems = []
    for key, label in (("images", "input images"), ("references", "reference images")):
        old, new = set(recorded.get(key, [])), set(current[key])
        if old != new:
            problems.append(f"{len(new - old)} {label} added, {len(old - new)} removed")
    if not problems:
        return None
    return (
        f"{out} holds results scored as a different batch ({'; '.join(problems)}): this method scores "
        "images against each other, so the scores would not be comparable; pass --overwrite or "
        "choose another --out"
    )


def write_batch(out: str | os.PathLike, record: dict) -> Path:
    path = Path(out) / BATCH_JSON
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def record_pseudo_references(out: str | os.PathLike, last_batch: dict) -> int:
    """Add to batch.json the images a zero-shot `musc` run used as patchknn's references (its
    `last_batch`); returns how many (0: none, nothing written)."""
    chosen = last_batch.get("pseudo_references")
    batch = read_batch(out)
    if not chosen or batch is None:
        return 0
    batch["pseudo_references"] = sorted(os.path.abspath(p) for p in chosen)
    write_batch(out, batch)
    return len(chosen)
