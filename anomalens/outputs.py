"""Writing a run's results to disk so that an interrupted run can resume.

Layout of ``out_dir``::

    results.jsonl       one JSON object per input image (status "ok" or "error"), append-only
    results.csv         the same as a table (rebuilt from results.jsonl when resuming)
    settings.json       the run's effective settings (older different ones kept as settings.<n>.json)
    overlays/<name>.png heatmap over the image with the mask contour (and the run's colour bar below)
    masks/<name>.png    predicted mask, 0/255 (only when the result has a mask)
    maps/<name>.npy     raw float32 anomaly map (or maps/<name>.tiff, 32-bit float TIFF)

An image's files are written (each atomically: temporary file, then rename) before its line
is appended to results.jsonl, and each line is flushed (fsynced every few seconds and at the
end); so after Ctrl-C or a kill every line in results.jsonl points to complete files, and at
worst the last line is truncated, which reading ignores.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from anomalens.colour_scale import ColourScale, with_colour_bar
from anomalens.images import OUTPUT_MARKER
from anomalens.overlay import heatmap_overlay, mask_image
from anomalens.png_encoding import encode_png
from anomalens.records import RESULTS_JSONL, backup_path, lock_output_dir, read_jsonl, read_records, record_key
from anomalens.report_thumbs import array_thumb_uri, mask_array_uri, mask_data_uri
from anomalens.results import AnomalyResult
from anomalens.results_table import CSV_COLUMNS, csv_row, json_safe

__all__ = ["RESULTS_JSONL", "OutputWriter", "atomic_write", "output_name", "read_records", "record_key"]

RESULTS_CSV = "results.csv"
SETTINGS_JSON = "settings.json"
REPORT_HTML = "report.html"
SUBDIRS = ("overlays", "masks", "maps")

MapFormat = Literal["npy", "tiff"]


def output_name(path: str | os.PathLike) -> str:
    """A file-name stem unique per input path: "<stem>-<8 hex of sha1(absolute path)>".

    Two inputs with the same file name in different folders get different names; the stem is
    kept (shortened, unsafe characters replaced) so a human can still find the file.
    """
    p = Path(path)
    digest = hashlib.sha1(os.path.abspath(p).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    stem = re.sub(r"[^\w.\-]+", "_", p.stem)[:80] or "image"
    return f"{stem}-{digest}"


def atomic_write(target: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through `write(file)` to a temporary file beside `target`, then rename over it:
    a reader (or a run after a kill) sees the old file or the whole new one, never a part."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


# level 1 (zlib's, or ISA-L's when installed): an overlay PNG is ~15 % larger than at Pillow's default 6
# and written ~4x faster (the pixels are the same: PNG is lossless); at 6 it was the slowest step of a run.
PNG_COMPRESS_LEVEL = 1
# results.jsonl is flushed after every line (a killed process loses nothing written) and
# fsynced at most this often and at close (after a power cut, at most this long is lost).
FSYNC_INTERVAL_SECONDS = 2.0


# With zlib (python-isal missing), overlays (photographic, little repetition) are Huffman-coded only,
# without deflate's string matching: after the Up filter, 4.2 instead of 5.9 ms per overlay, the file ~1 %
# larger; masks keep deflate (long runs of 0 and 255 shrink to a few KB). ISA-L, the default since session
# 37, has no strategies: its level 1 writes overlays in 1.1 ms at zlib's size (benchmarks/png_speed.py).
OVERLAY_PNG_STRATEGY = zlib.Z_HUFFMAN_ONLY


def _save_png(array: np.ndarray, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> Callable[[io.BufferedWriter], None]:
    # one fixed row filter instead of Pillow's per-row search, ISA-L's deflate: 10.3 -> 1.1 ms per overlay
    return lambda f: f.write(encode_png(array, PNG_COMPRESS_LEVEL, strategy))


def _save_npy(array: np.ndarray) -> Callable[[io.BufferedWriter], None]:
    return lambda f: np.save(f, array, allow_pickle=False)


def _save_tiff(array: np.ndarray) -> Callable[[io.BufferedWriter], None]:
    def write(f: io.BufferedWriter) -> None:
        img = Image.fromarray(array)  # float32 -> mode "F"
        try:
            # Deflate is lossless and shrinks smooth maps a lot; it needs Pillow's libtiff.
            buf = io.BytesIO()
            img.save(buf, format="TIFF", compression="tiff_adobe_deflate")
            f.write(buf.getvalue())
        except (OSError, ValueError):
            img.save(f, format="TIFF")

    return write


class OutputWriter:
    """Writes per-image files and the results table of a run into `out_dir`.

    If `out_dir` already holds a results.jsonl: with `overwrite=True` the previous results
    (results files, report, settings and the files in overlays/, masks/, maps/) are deleted
    first; otherwise with `resume=True` the run continues it: ``done_paths()`` tells which inputs
    to skip; with neither, FileExistsError is raised. Use as a context manager or call close().
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        overwrite: bool = False,
        map_format: MapFormat = "npy",
        write_overlays: bool = True,
        write_masks: bool = True,
        resume: bool = True,
        overlay_range: tuple[float, float] | None = None,
        overlay_alpha: float = 0.5,
        overlay_scale: ColourScale | None = None,
        thumbnails: int = 0,
    ):
        if map_format not in ("npy", "tiff"):
            raise ValueError(f"map_format must be 'npy' or 'tiff', got {map_format!r}")
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        self.map_format = map_format
        self.write_overlays = write_overlays
        self.write_masks = write_masks
        # Same colour scale for every image (e.g. (0, threshold * 1.5)) makes overlays comparable;
        # None scales each overlay to its own map's range.
        self.overlay_range = overlay_range
        self.overlay_alpha = overlay_alpha
        # A run's ColourScale (anomalens.colour_scale): one scale anchored to the threshold, drawn
        # as a bar under every overlay. It takes precedence over overlay_range.
        self.overlay_scale = overlay_scale
        # thumbnails > 0: while an image, its overlay and masks are in memory, also make the
        # report's thumbnails of that side (`thumbs`, by record key), so that report.html need
        # not read every file again at the end of a run.
        self.thumb_side = thumbnails
        self.thumbs: dict[str, dict[str, Any]] = {}

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_output_dir(self.out_dir)
        self._superseded = 0
        jsonl = self.out_dir / RESULTS_JSONL
        if overwrite:
            self._clear_previous()
        elif jsonl.exists() and not resume:
            raise FileExistsError(
                f"{self.out_dir} already holds results of a previous run ({RESULTS_JSONL}); "
                "resume it, choose another output directory, or pass overwrite=True (--overwrite)"
            )
        for sub in SUBDIRS:
            (self.out_dir / sub).mkdir(exist_ok=True)
        marker = self.out_dir / OUTPUT_MARKER
        if not marker.exists():  # tells image discovery never to read this folder as input
            marker.write_text("written by anomalens: folders holding this file are never read as input images\n")

        contents = read_jsonl(jsonl)
        self._records = contents.records
        self.bad_lines: list[int] = contents.bad_lines  # for the run to report
        self.backup: Path | None = None
        if not contents.clean:
            # Appends must start on a clean line: keep the user's file as it was in a backup,
            # then rewrite it with every valid record (none is dropped for a bad neighbour).
            self.backup = backup_path(jsonl)
            shutil.copy2(jsonl, self.backup)
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._records.values())
            atomic_write(jsonl, lambda f: f.write(lines.encode("utf-8")))
        # Both files stay open for the writer's lifetime (closed by close()/__exit__).
        self._jsonl = open(jsonl, "a", encoding="utf-8", newline="\n")
        self._synced = time.monotonic()
        # The CSV is derived data: rebuild it from the records so it matches results.jsonl even
        # if the previous run stopped between the two appends.
        self._csv_file = open(self.out_dir / RESULTS_CSV, "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(CSV_COLUMNS)
        for rec in self._records.values():
            self._csv.writerow(csv_row(rec))
        self._csv_file.flush()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the results files (idempotent); a path written twice (a retried failure) is left
        with one line in results.jsonl and one row in results.csv."""
        if not self._jsonl.closed:
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())
        for f in (self._jsonl, self._csv_file):
            if not f.closed:
                f.close()
        if self._superseded:
            self._superseded = 0
            self._rewrite_tables()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _rewrite_tables(self) -> None:
        records = list(self._records.values())
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        atomic_write(self.out_dir / RESULTS_JSONL, lambda f: f.write(lines))
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow(CSV_COLUMNS)
        for rec in records:
            writer.writerow(csv_row(rec))
        data = table.getvalue().encode("utf-8")
        atomic_write(self.out_dir / RESULTS_CSV, lambda f: f.write(data))

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear_previous(self) -> None:
        """Delete what a previous run wrote (only the files this class creates)."""
        for name in (RESULTS_JSONL, RESULTS_CSV, REPORT_HTML, SETTINGS_JSON):
            (self.out_dir / name).unlink(missing_ok=True)
        for old in self.out_dir.glob("settings.*.json"):
            old.unlink()
        for sub, pattern in (
            ("overlays", "*.png"),
            ("masks", "*.png"),
            ("maps", "*.npy"),
            ("maps", "*.tiff"),
        ):
            for f in (self.out_dir / sub).glob(pattern):
                f.unlink()

    # -- queries -----------------------------------------------------------------------------

    def done_paths(self) -> set[str]:
        """Input paths that already have a record (status "ok" or "error"), to skip on resume."""
        return set(self._records)

    def records(self) -> list[dict]:
        """All records of this output directory (previous runs' included), last per path."""
        return list(self._records.values())

    # -- writing -----------------------------------------------------------------------------

    def write(self, result: AnomalyResult, image: np.ndarray | None = None, extra: dict | None = None) -> dict:
        """Write one result's files, then append its record; returns the record.

        `image` is the RGB uint8 image the map belongs to; if None and overlays are on, it is
        read from `result.path` (with EXIF rotation, as the detector reads it). `extra` holds
        more JSON-serialisable fields for the record (e.g. a timestamp, the image size).
        """
        previous = self._records.get(os.path.realpath(str(result.path)))
        if previous is not None and previous.get("status") == "ok":
            raise FileExistsError(
                f"{result.path} already has results in {self.out_dir}; skip done_paths() "
                "or pass overwrite=True (--overwrite)"
            )
        name = output_name(result.path)
        rel: dict[str, str | None] = {"overlay": None, "mask": None, "map": None}
        amap = np.ascontiguousarray(result.anomaly_map, dtype=np.float32)

        rel["map"] = f"maps/{name}.{self.map_format}"
        saver = _save_npy if self.map_format == "npy" else _save_tiff
        atomic_write(self.out_dir / rel["map"], saver(amap))

        thumbs: dict[str, Any] = {}
        if self.write_masks and result.mask is not None:
            rel["mask"] = f"masks/{name}.png"
            mask = mask_image(result.mask)
            atomic_write(self.out_dir / rel["mask"], _save_png(mask))
            if self.thumb_side:
                thumbs["mk"] = mask_array_uri(mask, self.thumb_side)

        if self.write_overlays:
            if image is None:
                from anomalens.images import load_image  # lazy: pulls in torch

                image = load_image(result.path).rgb
            vmin, vmax = self.overlay_range if self.overlay_range else (None, None)
            ignored = None if result.inspected is None else ~result.inspected
            over = heatmap_overlay(
                image, amap, result.mask, vmin, vmax, self.overlay_alpha, scale=self.overlay_scale, ignored=ignored
            )
            if self.overlay_scale is not None:
                over = with_colour_bar(over, self.overlay_scale)
            rel["overlay"] = f"overlays/{name}.png"
            atomic_write(self.out_dir / rel["overlay"], _save_png(over, OVERLAY_PNG_STRATEGY))
            if self.thumb_side:
                thumbs["ov"] = array_thumb_uri(over, self.thumb_side)
        if self.thumb_side and image is not None:
            thumbs["im"] = array_thumb_uri(image, self.thumb_side)
        truth_mask = ((extra or {}).get("ground_truth") or {}) if self.thumb_side else {}
        if isinstance(truth_mask, dict) and truth_mask.get("mask"):
            thumbs["gk"] = mask_data_uri(Path(truth_mask["mask"]), self.thumb_side)

        record = {**result.to_record(), **(extra or {}), **rel, "status": "ok", "error": None}
        self._append(record)
        if thumbs:
            self.thumbs[record_key(record)] = thumbs
        return record

    def record_failure(self, path: str | os.PathLike, error_message: str) -> dict:
        """Append a status "error" record for an input that could not be processed."""
        record = {
            "path": str(path),
            "score": None,
            "decision": None,
            "threshold": None,
            "pixel_threshold": None,
            "descriptions": [],
            "seconds": None,
            "overlay": None,
            "mask": None,
            "map": None,
            "status": "error",
            "error": str(error_message),
        }
        self._append(record)
        return record

    def _append(self, record: dict) -> None:
        clean = json_safe({**record, "resolved_path": os.path.realpath(str(record["path"]))})
        key = record_key(clean)
        if key in self._records:
            self._superseded += 1  # a retried failure: compacted to one record at close()
        self._jsonl.write(json.dumps(clean, ensure_ascii=False) + "\n")
        self._jsonl.flush()
        now = time.monotonic()
        if now - self._synced >= FSYNC_INTERVAL_SECONDS:
            os.fsync(self._jsonl.fileno())
            self._synced = now
        self._csv.writerow(csv_row(clean))
        self._csv_file.flush()
        self._records.pop(key, None)
        self._records[key] = clean

    def write_settings(self, settings: dict) -> Path:
        """Write settings.json; a different existing one is kept as settings.<n>.json."""
        target = self.out_dir / SETTINGS_JSON
        text = json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
        if target.exists():
            try:
                same = json.loads(target.read_text(encoding="utf-8")) == json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError):
                same = False
            if same:
                return target
            n = 1
            while (self.out_dir / f"settings.{n}.json").exists():
                n += 1
            os.replace(target, self.out_dir / f"settings.{n}.json")
        atomic_write(target, lambda f: f.write(text.encode("utf-8")))
        return target
