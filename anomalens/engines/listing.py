"""The input list of a large job, streamed once to disk and cut into shards.

Inputs are folders (searched recursively, image extensions, sorted per folder), text files of
paths (one per line; `.txt`/`.lst`/`.list`; relative paths are relative to the list's folder),
glob patterns (`/data/**/*.png`, expanded lazily) or single image files. The paths are written
to `<out>/_inputs/paths.txt` as they are found, so the driver never holds millions of paths;
`index.json` beside it records the byte offset and length of every shard, which is what the
workers need to read their shard, and what a resumed job reuses (same inputs, same shards).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..images import IMAGE_EXTENSIONS

LIST_SUFFIXES = (".txt", ".lst", ".list")
INPUTS_DIR = "_inputs"


@dataclass
class Shard:
    index: int
    offset: int  # byte offset of its first line in paths.txt
    count: int  # number of paths


def _walk(folder: Path, skip: str) -> Iterator[str]:
    """Image files under a folder, depth first, each folder's entries sorted; `skip` excluded."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            if os.path.realpath(entry.path) != skip:
                yield from _walk(Path(entry.path), skip)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            yield entry.path


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def iter_paths(inputs: list[str], skip_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """Every input path in order (a missing input is yielded as given: it is reported as missing)."""
    skip = os.path.realpath(skip_dir) if skip_dir else ""
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            yield from _walk(path, skip)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        yield line if os.path.isabs(line) else str(path.parent / line)
        elif not path.exists() and _is_glob(item):
            for found in glob.iglob(item, recursive=True):
                if os.path.isfile(found):
                    yield found
        else:
            yield item


def inputs_key(inputs: list[str]) -> str:
    return hashlib.sha256(json.dumps([str(i) for i in inputs]).encode()).hexdigest()[:16]


def build_listing(inputs: list[str], out: Path, shard_size: int) -> tuple[list[Shard], int]:
    """Stream the input paths to out/_inputs/paths.txt and return (shards, total paths).

    Reused as it is when it exists for the same inputs and shard size (a resumed job).
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    folder = out / INPUTS_DIR
    index_file = folder / "index.json"
    key = inputs_key(inputs)
    if index_file.exists():
        index = json.loads(index_file.read_text())
        if index.get("inputs_key") != key or index.get("shard_size") != shard_size:
            raise ValueError(
                f"{out} holds a job over other inputs or another shard size ({index.get('inputs')}, "
                f"shard size {index.get('shard_size')}); use another --out or pass --overwrite"
            )
        return [Shard(i, o, c) for i, (o, c) in enumerate(index["shards"])], index["total"]
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[Shard] = []
    total = 0
    tmp = folder / f".paths.txt.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        seen_in_shard = 0
        for p in iter_paths(inputs, skip_dir=out):
            line = (p.replace("\n", " ") + "\n").encode("utf-8", "surrogateescape")
            if seen_in_shard == 0:
                shards.append(Shard(len(shards), f.tell(), 0))
            f.write(line)
            shards[-1].count += 1
            total += 1
            seen_in_shard = (seen_in_shard + 1) % shard_size
    os.replace(tmp, folder / "paths.txt")
    index = {
        "inputs": [str(i) for i in inputs],
        "inputs_key": key,
        "shard_size": shard_size,
        "total": total,
        "shards": [[s.offset, s.count] for s in shards],
    }
    tmp_index = folder / f".index.json.tmp-{os.getpid()}"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, index_file)
    return shards, total


def read_shard(paths_file: str | os.PathLike, offset: int, count: int) -> list[str]:
    """The `count` paths of a shard, read from its byte offset."""
    with open(paths_file, "rb") as f:
        f.seek(offset)
        return [f.readline().decode("utf-8", "surrogateescape").rstrip("\n") for _ in range(count)]
