"""A hot folder: inspect images as a camera or a line PC writes them (`anomalens detect DIR --watch`).

`watch` polls the given folders, waits until each new file has stopped changing (a file still
being copied is not read half-written), and runs `inspection.run` on the new ones: the same
outputs, resume and records as `anomalens detect`, in the same `out`. A file that could not be
read or scored is recorded once and tried again only when it changes (a corrupt frame does not
fail every poll). The report is rewritten at most every `report_seconds` while images come in
(less often when writing it takes more than a tenth of that: many thousand images take a
minute), and once more when the watch ends (Ctrl-C, `stop()`, or `max_polls`). Methods that
score a folder as one batch (musc) have no "new image" to score on its own and are refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .images import list_images
from .inspection import RunInputs, RunSummary, run
from .paths import PathResolver
from .records import record_key

# How long a file must keep its size and modification time before it is read (a camera's or a copy's
# write of one image takes well under this on a local disk or a share).
DEFAULT_SETTLE_SECONDS = 1.0
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_REPORT_SECONDS = 60.0
# A periodic report takes at most this share of the watch's time: writing it costs ~2 ms per image
# (thumbnails), a minute for 30,000 images, and scoring waits meanwhile; the interval stretches.
REPORT_TIME_SHARE = 0.1


@dataclass
class WatchSummary:
    """What a watch did: the last run's counts over every image it took in, and how many polls."""

    polls: int = 0
    scored: int = 0  # images scored while watching
    last: RunSummary | None = None  # the counts of the final run (all images taken in)
    skipped_failures: set[str] = field(default_factory=set)  # failed files left alone until they change


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:  # removed between listing and looking
        return None
    return st.st_size, st.st_mtime_ns


class _Folder:
    """Which files under the inputs have settled (same size and time on two looks `settle` apart), with that
    size and time."""

    def __init__(self, inputs: Sequence[Path], out: Path, settle_seconds: float):
        self.inputs = list(inputs)
        self.out_prefix = os.path.join(os.path.realpath(out), "")
        self.settle_seconds = settle_seconds
        self.seen: dict[str, tuple[tuple[int, int], float]] = {}  # path -> (signature, when first seen so)

    def settled(self, now: float) -> list[tuple[Path, str, tuple[int, int]]]:
        """(file, its resolved path, its size and time) of each settled file."""
        resolve = PathResolver()  # one per poll: a folder's links may change between polls
        ready = []
        for f in list_images(self.inputs):
            key = resolve(f)
            if key.startswith(self.out_prefix):
                continue
            sig = _signature(f)
            if sig is None:
                continue
            before = self.seen.get(key)
            if before is None or before[0] != sig:
                self.seen[key] = (sig, now)  # new or still changing: look again later
                before = self.seen[key]
            old_enough = now - before[1] >= self.settle_seconds or time.time() - sig[1] / 1e9 >= self.settle_seconds
            if old_enough and sig[0] > 0:
                ready.append((f, key, sig))
        return ready


def counts(summary: RunSummary) -> str:
    """'12 images: OK 10, NG 1, failed 1' (or 'no decision 11' without a threshold)."""
    decided = f"OK {summary.ok}, NG {summary.ng}, " if summary.ok + summary.ng else ""
    undecided = f"no decision {summary.undecided}, " if summary.undecided else ""
    return f"{summary.done} images: {decided}{undecided}failed {summary.failed}"


def watch(
    detector,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    report_seconds: float = DEFAULT_REPORT_SECONDS,
    report: bool = True,
    overwrite: bool = False,
    max_polls: int | None = None,
    stop: Callable[[], bool] | None = None,
    on_run: Callable[[RunSummary], None] | None = None,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
    **run_options: Any,
) -> WatchSummary:
    """Inspect new images under `inputs` (folders or files) into `out` until stopped.

    Each poll takes the files that have settled (`settle_seconds` unchanged), scores those not yet in
    `out` with `inspection.run` (`run_options`: map_format, batch_size, jobs, source, options, progress,
    ...), and calls `on_run` with that run's summary (its counts cover every image taken in so far).
    Ends on Ctrl-C, when `stop()` is true, or after `max_polls` polls; the report is then written once
    more. Raises UsageError for an input that does not exist or a detector that scores jointly.
    """
    sleep = sleep or time.sleep
    person = log or (lambda message: None)

    def note(message: str) -> None:  # every poll resumes the same out: that note says nothing here
        if not message.startswith("resuming:"):
            person(message)

    if getattr(detector, "scores_jointly", False):
        raise UsageError(
            f"--watch: method {detector.method_name!r} scores a folder as one batch; watch a folder with "
            "a method that scores each image on its own (patchknn, fade, winclip, filo)"
        )
    given = tuple(Path(i) for i in inputs)
    if not given:
        raise UsageError("--watch: no folder given")
    for item in given:
        if not item.exists():
            raise UsageError(f"--watch: {item} does not exist (create the folder the images will arrive in first)")
    out = Path(out)
    folder = _Folder(given, out, settle_seconds)
    summary = WatchSummary()
    taken: dict[str, Path] = {}  # every settled file handed to a run, by real path
    failed: dict[str, tuple[int, int] | None] = {}  # failed file -> its signature when it failed
    last_report: float | None = None  # the first run writes the report at once
    report_interval = report_seconds  # stretched when a report takes long (REPORT_TIME_SHARE)
    reported = True  # nothing new since the last report
    fresh = overwrite  # --overwrite starts the first run afresh, never a later one
    missing: list[str] = []  # inputs that were not there at the last poll

    def run_once(with_report: bool) -> RunSummary:
        nonlocal fresh
        files = [p for k, p in taken.items() if k not in failed]
        result = run(
            detector,
            RunInputs(given, tuple(files), ()),
            out,
            overwrite=fresh,
            report=with_report,
            log=note,
            **run_options,
        )
        fresh = False
        summary.last = result
        summary.scored += result.scored
        for record in result.failures:
            failed[record_key(record)] = _signature(Path(record["path"]))
        if on_run is not None:
            on_run(result)
        return result

    try:
        while max_polls is None or summary.polls < max_polls:
            if stop is not None and stop():
                break
            summary.polls += 1
            now = clock()
            gone = [str(i) for i in given if not i.exists()]
            if gone != missing:  # a share that dropped out: say so once, keep polling until it is back
                note(f"watch: {', '.join(gone)} not there; waiting for it" if gone else "watch: every folder is back")
                missing[:] = gone
            new = []
            for f, key, signature in folder.settled(now):
                if key in failed and failed[key] == signature:
                    summary.skipped_failures.add(key)
                    continue  # failed as it is now: wait until the file changes
                if key not in taken or key in failed:
                    failed.pop(key, None)
                    summary.skipped_failures.discard(key)
                    new.append(f)
                taken[key] = f
            if new:
                due = report and (last_report is None or clock() - last_report >= report_interval)
                started = clock()
                result = run_once(due)
                note(f"watch: {len(new)} new image(s); so far {counts(result)}")
                if result.interrupted:
                    break
                reported = due
                if due:
                    last_report = clock()
                    cost = max(0.0, last_report - started - result.seconds)  # the run's time beside scoring
                    stretched = max(report_seconds, cost / REPORT_TIME_SHARE)
                    if stretched > 1.25 * report_interval:  # said when it stretches, not at every small change
                        note(
                            f"watch: the report of {result.done} images took {cost:.1f} s; it is written every "
                            f"{stretched:.0f} s from now (at most {REPORT_TIME_SHARE:.0%} of the time)"
                        )
                    report_interval = stretched
            if max_polls is None or summary.polls < max_polls:
                sleep(poll_seconds)
    except KeyboardInterrupt:
        note("watch: stopped")
    if report and taken and not reported:  # the report of everything taken in, once more at the end
        try:
            run_once(True)
        except KeyboardInterrupt:
            pass
    return summary
