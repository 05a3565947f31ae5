"""One inspection run: images in, results, overlays, masks, maps, settings.json and report out.

This is what `anomalens detect` does after it has parsed its options, as a library function::

    from anomalens import Detector
    from anomalens.inspection import run

    det = Detector(method="patchknn").fit(["golden/"]).calibrate()
    summary = run(det, ["line3/2026-11-26/"], "inspect/")
    print(summary.ok, summary.ng, summary.failed, summary.report)

`run` expands folders, skips images that already have results in `out` (resume; failed ones are
tried again), writes every image's files before its line in results.jsonl, records unreadable
or unscorable inputs with the reason and goes on, and ends with report.html. The detector's
thresholds decide OK/NG and the mask (`Detector.threshold`, `Detector.pixel_threshold`);
calibrate or set them before the run. A front end (CLI, server, engine) passes `progress` to
follow the run and `log` for notes meant for a person; nothing here prints.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .colour_scale import scale_for_run
from .errors import ImageLoadError, UsageError
from .ground_truth import ground_truth_fields
from .images import IMAGE_EXTENSIONS, list_images, missing_reason
from .outputs import SETTINGS_JSON, OutputWriter, record_key
from .paths import PathResolver
from .report_thumbs import THUMB_SIDE
from .results_table import image_fields
from .run_identity import check_resume, effective_settings
from .run_report import write_run_report
from .scoring_threads import scored_items, scoring_workers


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: `done` of `total` images handled; `record` is the last one written
    (None for the first call, made before any image, so a progress bar can show its total)."""

    done: int
    total: int
    record: dict | None = None


ProgressCallback = Callable[[RunProgress], None]


@dataclass
class RunSummary:
    """What a run did. Counts are over the run's inputs, images resumed from `out` included."""

    out: Path
    images: int  # distinct inputs: image files found plus inputs that do not exist
    done: int  # inputs that have a record in out (ok or failed)
    scored: int  # images scored and written by this run
    resumed: int  # images whose results were already in out
    ok: int
    ng: int
    undecided: int  # scored without an image threshold: no OK/NG decision
    failures: list[dict] = field(default_factory=list)  # records with status "error"
    seconds: float = 0.0  # time spent scoring and writing in this run
    interrupted: bool = False  # stopped by Ctrl-C (KeyboardInterrupt); everything written is valid
    report: Path | None = None
    settings: dict = field(default_factory=dict)  # what settings.json holds

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        """The command line's: 130 interrupted, 1 some images failed, 0 all done."""
        return 130 if self.interrupted else 1 if self.failures else 0


@dataclass(frozen=True)
class RunInputs:
    """The inputs of a run as given, and what they expand to."""

    given: tuple[Path, ...]  # files and folders as the user gave them
    files: tuple[Path, ...]  # image files found (folders expanded, duplicates dropped)
    missing: tuple[Path, ...]  # given paths that do not exist (recorded as failures)


def check_options(map_format: str = "npy", batch_size: int = 8, jobs: int = 2) -> None:
    """Raise UsageError for run options that cannot work (before any model is loaded)."""
    if map_format not in ("npy", "tiff"):
        raise UsageError(f"--map-format must be 'npy' or 'tiff', got {map_format!r}")
    if jobs < 0 or batch_size < 1:
        raise UsageError("--jobs must be >= 0 and --batch-size >= 1")


def collect_inputs(
    inputs: Sequence[str | os.PathLike], out: str | os.PathLike, log: Callable[[str], None] | None = None
) -> RunInputs:
    """Expand folders (recursively), drop duplicates with a note, set aside missing paths.

    Files inside the output directory are not taken from an expanded input folder, so that
    `detect DIR --out DIR/results` run twice does not score its own overlays and masks.
    Raises UsageError when nothing is given or nothing is found.
    """
    log = log or _no_log
    given = tuple(Path(i) for i in inputs)
    if not given:
        raise UsageError("no images given")
    files: list[Path] = []
    missing: list[Path] = []
    seen: set[str] = set()
    duplicates = 0
    out_prefix = os.path.join(os.path.realpath(out), "")
    resolve = PathResolver()
    for item in given:
        if not item.exists():
            if str(item) not in {str(m) for m in missing}:
                missing.append(item)
            continue
        found = list_images([item])
        if item.is_dir():
            found = [f for f in found if not resolve(f).startswith(out_prefix)]
            if not found:
                log(f"note: {item}: no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})")
        for f in found:
            key = resolve(f)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            files.append(f)
    if duplicates:
        log(f"note: {duplicates} duplicate input(s) (same file given twice) scored once")
    if not files and not missing:
        raise UsageError(f"no image files found in {', '.join(map(str, given))}")
    return RunInputs(given, tuple(files), tuple(missing))


def run_settings(detector, inputs: Sequence[Any], source: str, options: dict | None = None) -> dict:
    """The JSON that settings.json holds for a run of `detector` (also what resume compares)."""
    effective = {
        "command": "detect",
        "anomalens_version": __version__,
        "inputs": [str(i) for i in inputs],
        "method": detector.method_name,
        "settings": detector.settings,
        "backbone": detector.backbone_name,
        "source": source,
        "num_references": len(detector.reference_paths),
        "threshold": None if detector.threshold is None else detector.threshold.to_dict(),
        "pixel_threshold": None if detector.pixel_threshold is None else detector.pixel_threshold.to_dict(),
        "options": dict(options or {}),
        "effective": effective_settings(detector),  # what a resumed run must share (run_identity)
    }
    return json.loads(json.dumps(effective, default=str))


def run(
    detector,
    inputs: Sequence[str | os.PathLike] | RunInputs,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    map_format: str = "npy",
    batch_size: int = 8,
    jobs: int = 2,
    workers: int = 0,
    report: bool = True,
    title: str = "anomalens inspection report",
    source: str | None = None,
    options: dict | None = None,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> RunSummary:
    """Inspect `inputs` (files and folders) with a fitted `detector`; write everything into `out`.

    overwrite: start afresh (delete this run's kind of files in out) instead of resuming.
    map_format: "npy" or "tiff" (32-bit float) for the raw maps. batch_size: images per model
    call; jobs: threads decoding images ahead of the model. workers: batches scored at once,
    each in its own thread (0 = auto, `scoring_workers`). report: write report.html.
    source: how the detector came to be (for settings.json and the report; default: its
    reference count). options: the front end's options, recorded in settings.json so that
    `anomalens detect --config OUT/settings.json` repeats the run. progress: called with a
    RunProgress before the first image and after each one. log: one-line notes for a person.

    Raises UsageError for no inputs, no images, an unusable `out`, or an `out` holding results
    made with other effective settings (`anomalens.run_identity`; every difference is named, and
    `overwrite=True` or another `out` is the way out); problems with single
    images are recorded (status "error") and the run goes on. Ctrl-C ends the run early with
    `interrupted=True` in the summary and everything written so far valid. `inputs` may be
    the RunInputs of `collect_inputs` (a front end that checks them before loading a model).
    """
    log = log or _no_log
    check_options(map_format, batch_size, jobs)
    out = Path(out)
    if not isinstance(inputs, RunInputs):
        inputs = collect_inputs(inputs, out, log)
    files, missing = list(inputs.files), list(inputs.missing)
    keys = PathResolver().all([*files, *missing])  # each input's record key, found once (folders of 30,000)
    if source is None:
        n = len(detector.reference_paths)
        source = f"{n} reference images" if n else "zero-shot (no reference images)"

    previous = None if overwrite else _read_json(out / SETTINGS_JSON)
    scale = scale_for_run(detector)
    try:
        writer = OutputWriter(
            out, overwrite=overwrite, map_format=map_format, overlay_scale=scale, thumbnails=THUMB_SIDE if report else 0
        )
    except (FileExistsError, ValueError, OSError) as err:
        raise UsageError(f"cannot write to {out}: {err}") from err
    if writer.bad_lines:
        shown = ", ".join(map(str, writer.bad_lines[:10])) + (" ..." if len(writer.bad_lines) > 10 else "")
        log(
            f"warning: {out / 'results.jsonl'}: {len(writer.bad_lines)} line(s) are not valid records "
            f"(line {shown}); kept {len(writer.records())} valid records; the original file is saved as "
            f"{writer.backup}"
        )
    settings = run_settings(detector, inputs.given, source, options)
    settings["colour_scale"] = scale.to_dict()
    try:
        if any(r.get("status") == "ok" for r in writer.records()):
            check_resume(previous, settings, out)
        writer.write_settings(settings)
        done = {record_key(r) for r in writer.records() if r.get("status") == "ok"}
        todo = [f for f, key in zip(files, keys) if key not in done]
        for m in missing:
            writer.record_failure(m, missing_reason(m))
        if len(todo) < len(files):
            log(f"resuming: {len(files) - len(todo)} of {len(files)} images already done in {out}")
        joint = _prepare_joint_batch(detector, files, done, out)
        start = time.perf_counter()
        scored, interrupted = _score_and_write(
            detector, todo, writer, batch_size, jobs, progress, batch=files if joint and todo else None, log=log,
            workers=workers or scoring_workers(detector),
        )
        elapsed = time.perf_counter() - start
        if joint and todo and not interrupted:  # musc zero-shot: which images served as references
            from .batch_record import record_pseudo_references

            if chosen := record_pseudo_references(out, getattr(detector.method, "last_batch", {})):
                log(f"pseudo-references: the {chosen} images ranked lowest (listed in batch.json)")
    finally:
        writer.close()

    report_path = None
    if report:
        mine = _records_of(writer.records(), keys)
        report_path = write_run_report(
            out, mine, detector, title, source, elapsed, log, len(files), scale, settings, writer.thumbs
        )
    summary = RunSummary(
        out=out,
        images=0,
        done=0,
        scored=scored,
        resumed=len(files) - len(todo),
        ok=0,
        ng=0,
        undecided=0,
        seconds=elapsed,
        interrupted=interrupted,
        report=report_path,
        settings=settings,
    )
    _count(summary, writer.records(), keys)
    return summary


def _prepare_joint_batch(detector, files: list[Path], done: set[str], out: Path) -> bool:
    """For methods that score images against each other (`musc`): record the batch in batch.json,
    refuse to complete results of a different batch. Returns whether the method scores jointly."""
    if not detector.scores_jointly:
        return False
    from .batch_record import batch_conflict, describe_batch, read_batch, write_batch

    batch = describe_batch(files, detector.reference_paths)
    conflict = batch_conflict(read_batch(out), batch, out) if done else None
    if conflict:
        raise UsageError(conflict)
    write_batch(out, batch)
    return True


def _score_and_write(
    detector, todo, writer: OutputWriter, batch_size, jobs, progress, batch=None, log=None, workers: int = 1
) -> tuple[int, bool]:
    """Score `todo` and write each result; returns (images written, interrupted).

    Files are written by one background thread, in input order, while the model scores the
    next images (PNG encoding and numpy release the GIL): writing overlaps with scoring
    instead of adding to it. At most WRITE_AHEAD results wait to be written (memory stays
    flat). `progress` is called from this thread, in order, once an image's line is written.

    batch: for a jointly scoring method, every image of the run: all are scored (each against
    the others, as in the first run) and only those in `todo` are written.
    """
    progress = progress or (lambda event: None)
    progress(RunProgress(0, len(todo)))
    scored = handled = 0
    resolve = PathResolver()
    wanted = set(resolve.all(todo)) if batch else set()  # only a joint batch scores images it does not write
    pending: deque[Future] = deque()

    def finish(future: Future) -> None:
        nonlocal scored, handled
        record, ok = future.result()
        scored += ok
        handled += 1
        progress(RunProgress(handled, len(todo), record))

    interrupted = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomalens-writer") as pool:
        try:
            for item in scored_items(detector, todo, batch_size, jobs, workers, batch):
                item_path = item.path if isinstance(item, ImageLoadError) else item[0].path
                if batch and resolve(item_path) not in wanted:
                    continue  # already written by the interrupted run; scored again only as a partner
                extra = None
                if not isinstance(item, ImageLoadError):
                    img = item[1]
                    extra = {**image_fields(img), **ground_truth_fields(item[0].path)}
                    if img.notes and log is not None:  # what was read, when not simply the whole image
                        log(f"note: {img.path}: {'; '.join(img.notes)}")
                pending.append(pool.submit(_write_one, writer, item, extra))
                while pending and (pending[0].done() or len(pending) > WRITE_AHEAD):
                    finish(pending.popleft())
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # What was scored is written (each image's files, then its line), also after Ctrl-C.
            while pending:
                try:
                    finish(pending.popleft())
                except KeyboardInterrupt:
                    interrupted = True
    return scored, interrupted


# Scored images waiting for the writer thread; a few batches' worth keeps both busy.
WRITE_AHEAD = 16


def _write_one(writer: OutputWriter, item, extra: dict | None) -> tuple[dict, bool]:
    """Write one predict_iter item (a result and its image, or a load error): (record, written ok)."""
    if isinstance(item, ImageLoadError):
        return writer.record_failure(item.path, item.reason), False
    result, img = item
    try:
        return writer.write(result, img.rgb, extra=extra), True
    except Exception as err:  # a full disk or an unwritable file: record it, go on
        return writer.record_failure(result.path, f"could not write outputs: {type(err).__name__}: {err}"), False


def _records_of(records: list[dict], keys: list[str]) -> list[dict]:
    """The records of these inputs (their resolved paths), in input order."""
    by_path = {record_key(r): r for r in records}
    return [by_path[a] for a in dict.fromkeys(keys) if a in by_path]


def _count(summary: RunSummary, records: list[dict], keys: list[str]) -> None:
    """Fill the counts of `summary` over this run's inputs (their resolved paths; resumed ones included)."""
    mine = _records_of(records, keys)
    ok = [r for r in mine if r.get("status") == "ok"]
    summary.images = len(set(keys))
    summary.done = len(mine)
    summary.failures = [r for r in mine if r.get("status") != "ok"]
    summary.ok = sum(r.get("decision") == "OK" for r in ok)
    summary.ng = sum(r.get("decision") == "NG" for r in ok)
    summary.undecided = len(ok) - summary.ok - summary.ng


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _no_log(message: str) -> None:
    return None
