"""Result shards of a large job: `<out>/shards/part-NNNNNN.parquet` and `.jsonl`, one pair per
input shard, with the columns of a local run's results.jsonl.

A shard is written whole by the worker that scored it: the JSONL first, then the Parquet file,
each to a temporary name and renamed. The Parquet file is the shard's completion mark, so a
restarted job redoes exactly the shards without one: no result twice, none missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SHARDS_DIR = "shards"

# The columns of results.jsonl (outputs.OutputWriter) plus the image sizes the CLI adds.
COLUMNS = (
    "path",
    "score",
    "decision",
    "threshold",
    "pixel_threshold",
    "descriptions",
    "seconds",
    "time",
    "image_size",
    "map_size",
    "overlay",
    "mask",
    "map",
    "status",
    "error",
)


def schema():
    import pyarrow as pa

    description = pa.struct([("text", pa.string()), ("similarity", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("score", pa.float64()),
            ("decision", pa.string()),
            ("threshold", pa.float64()),
            ("pixel_threshold", pa.float64()),
            ("descriptions", pa.list_(description)),
            ("seconds", pa.float64()),
            ("time", pa.string()),
            ("image_size", pa.list_(pa.int64())),
            ("map_size", pa.list_(pa.int64())),
            ("overlay", pa.string()),
            ("mask", pa.string()),
            ("map", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
        ]
    )


def shard_stem(index: int) -> str:
    return f"part-{index:06d}"


def parquet_path(out: Path, index: int) -> Path:
    return out / SHARDS_DIR / f"{shard_stem(index)}.parquet"


def is_done(out: Path, index: int) -> bool:
    return parquet_path(out, index).exists()


def complete_record(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in COLUMNS}


def write_shard(out: Path, index: int, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..results_table import json_safe

    folder = out / SHARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows = [complete_record(json_safe(r)) for r in records]
    stem = shard_stem(index)
    suffix = f".tmp-{os.getpid()}"
    jsonl_tmp = folder / f".{stem}.jsonl{suffix}"
    parquet_tmp = folder / f".{stem}.parquet{suffix}"
    try:
        with open(jsonl_tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        table = pa.Table.from_pylist(rows, schema=schema())
        pq.write_table(table, parquet_tmp)
        os.replace(jsonl_tmp, folder / f"{stem}.jsonl")
        os.replace(parquet_tmp, folder / f"{stem}.parquet")
    finally:
        jsonl_tmp.unlink(missing_ok=True)
        parquet_tmp.unlink(missing_ok=True)


def read_results(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of the finished shards, in shard order."""
    import pyarrow.parquet as pq

    folder = Path(out) / SHARDS_DIR
    records: list[dict[str, Any]] = []
    for file in sorted(folder.glob("part-*.parquet")):
        records.extend(pq.read_table(file).to_pylist())
    return records
