"""The records of a run in `results.jsonl`: reading them back (keeping every valid line and
naming the bad ones), one record per resolved input path, and the lock that keeps two runs
out of one output folder. `outputs.OutputWriter` writes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

RESULTS_JSONL = "results.jsonl"


def read_records(out_dir: str | os.PathLike) -> list[dict]:
    """All records of ``out_dir/results.jsonl``, the last one per path winning.

    Lines that are not complete JSON objects (a truncated last line after a kill) are skipped.
    Returns [] when the file does not exist.
    """
    return list(read_jsonl(Path(out_dir) / RESULTS_JSONL).records.values())


@dataclass
class JsonlContents:
    """What a results.jsonl holds: the records by path and the lines that are not records."""

    records: dict[str, dict]
    bad_lines: list[int]  # 1-based line numbers that are not complete JSON records
    clean: bool  # every byte belongs to a valid, newline-terminated record line (or a blank one)


def read_jsonl(path: Path) -> JsonlContents:
    """Records keyed by path (in order of their latest write) and the numbers of the bad lines.

    Every valid line is kept, wherever it is: one broken line (a cut write, a hand edit) must not
    cost the records after it. A last line without a newline counts as bad (it was cut mid-write).
    """
    records: dict[str, dict] = {}
    bad: list[int] = []
    if not path.exists():
        return JsonlContents(records, bad, True)
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad.append(number)
            continue
        if not isinstance(rec, dict) or "path" not in rec:
            bad.append(number)
            continue
        key = record_key(rec)
        records.pop(key, None)  # re-insert so order follows the latest write
        records[key] = rec
    if tail.strip():
        bad.append(len(lines) + 1)
    return JsonlContents(records, bad, not bad and not tail)


LOCK_FILE = ".anomalens.lock"


def lock_output_dir(out_dir: Path):
    """Hold an exclusive lock on `out_dir` for the writer's lifetime: two runs writing into one
    folder would splice their rows. The OS drops the lock when the process ends, even on kill -9."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs are not protected against each other
        return None
    handle = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        from anomalens.errors import UsageError

        raise UsageError(
            f"{out_dir} is being written by another anomalens run ({holder}); wait for it to finish "
            "or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def record_key(record: dict) -> str:
    """One record per input file: records are keyed by the resolved path, so the same image given
    as ``a.png``, ``./a.png`` or from another working directory is one record."""
    return str(record.get("resolved_path") or os.path.realpath(str(record["path"])))


def backup_path(path: Path) -> Path:
    """A new name beside `path` for a copy of it; never an existing file."""
    n = 1
    while True:
        candidate = path.with_name(f"{path.name}.bak{'' if n == 1 else f'.{n}'}")
        if not candidate.exists():
            return candidate
        n += 1


