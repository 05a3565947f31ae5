"""`anomalens.watch` and `anomalens detect --watch`: a hot folder inspected as images arrive."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import run as cli
from PIL import Image
from synthetic import striped_texture

from anomalens import Detector
from anomalens import watch as watch_module
from anomalens.errors import UsageError
from anomalens.outputs import read_records
from anomalens.watch import watch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(path: Path, seed: int, defect: bool = False, age: float = 60.0) -> Path:
    img = striped_texture(seed, 48, 48)
    if defect:
        img[16:26, 24:34] = (20, 15, 10)
    Image.fromarray(img).save(path)
    past = path.stat().st_mtime - age  # an image written a while ago has settled
    os.utime(path, (past, past))
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    refs = tmp_path_factory.mktemp("refs")
    for s in range(3):
        _png(refs / f"ref_{s}.png", s)
    return Detector(method="patchknn", image_size=64).fit([refs]).calibrate()


@pytest.fixture
def inbox(tmp_path) -> Path:
    """The watched folder, holding one good image (a.png) written a while ago."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    _png(folder / "a.png", 10)
    return folder


class Line:
    """A fake clock and a fake sleep that runs the next step of a production line between polls."""

    def __init__(self, steps):
        self.now = 0.0
        self.steps = list(steps)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.steps:
            self.steps.pop(0)()


def _watch_line(detector, inbox: Path, out: Path, steps, **options):
    """watch() polling once a (fake) second while `steps` happen between polls: (summary, each run's summary)."""
    line = Line(steps)
    runs = []
    result = watch(
        detector,
        [inbox],
        out,
        poll_seconds=1.0,
        clock=line.clock,
        sleep=line.sleep,
        on_run=runs.append,
        jobs=0,
        **options,
    )
    return result, runs


def _records(out: Path) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_name.setdefault(Path(rec["path"]).name, []).append(rec)
    return by_name


def test_new_images_are_scored_once_when_they_have_settled(detector, inbox, tmp_path):
    half = inbox / "c.png"

    def arrive_b():
        _png(inbox / "b.png", 20, defect=True, age=0.0)  # just written: waits until it settles

    def start_c():
        half.write_bytes(Image.open(inbox / "a.png").tobytes()[:100])  # a copy under way: not an image yet

    def finish_c():
        _png(half, 11, age=0.0)

    result, runs = _watch_line(
        detector,
        inbox,
        tmp_path / "out",
        [arrive_b, start_c, finish_c],
        settle_seconds=1.5,
        report_seconds=1000.0,
        max_polls=8,
    )
    recs = _records(tmp_path / "out")
    assert {k: len(v) for k, v in recs.items()} == {"a.png": 1, "b.png": 1, "c.png": 1}  # each once, none failed
    assert all(r[0]["status"] == "ok" for r in recs.values())
    assert recs["b.png"][0]["decision"] == "NG" and recs["a.png"][0]["decision"] == "OK"
    # poll 1 takes a; b (poll 2) waits 1.5 s of unchanged looks; c is read only after its copy ended
    assert [r.scored for r in runs[:3]] == [1, 1, 1] and not any(r.failed for r in runs)
    assert result.scored == 3 and result.polls == 8
    # the report: with the first run, not again within report_seconds, and once more at the end
    assert runs[0].report is not None and runs[1].report is None and runs[2].report is None
    assert result.last.done == 3 and result.last.report == tmp_path / "out" / "report.html"


def test_a_failed_file_waits_until_it_changes(detector, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bad = inbox / "frame.png"
    bad.write_bytes(b"not an image")
    os.utime(bad, (1, 1))

    def repair():
        _png(bad, 12)

    result, runs = _watch_line(
        detector,
        inbox,
        tmp_path / "out",
        [lambda: None, lambda: None, repair],
        settle_seconds=0.5,
        report=False,
        max_polls=6,
    )
    # tried once and recorded as failed; polls 2-3 leave it alone; tried again once it was rewritten
    assert [(r.scored, r.failed) for r in runs] == [(0, 1), (1, 0)]
    assert [r["status"] for r in _records(tmp_path / "out")["frame.png"]] == ["ok"]  # the error record replaced
    assert result.scored == 1 and not result.skipped_failures


def test_refusals(detector, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        watch(detector, [tmp_path / "nope"], tmp_path / "out", max_polls=1)
    joint = SimpleNamespace(scores_jointly=True, method_name="musc")
    with pytest.raises(UsageError, match="one batch"):
        watch(joint, [tmp_path], tmp_path / "out", max_polls=1)


def test_output_folder_inside_the_watched_one_is_not_read(detector, tmp_path):
    _png(tmp_path / "a.png", 10)
    line = Line([])
    watch(detector, [tmp_path], tmp_path / "out", max_polls=3, clock=line.clock, sleep=line.sleep, jobs=0)
    assert set(_records(tmp_path / "out")) == {"a.png"}  # its own overlays and masks are never scored


def test_cli_watch_ends_on_ctrl_c_with_a_summary(detector, inbox, tmp_path, monkeypatch):
    model = tmp_path / "model"
    detector.save(model)
    _png(inbox / "b.png", 20, defect=True)

    def interrupt(seconds):
        raise KeyboardInterrupt

    real_time = watch_module.time
    monkeypatch.setattr(
        watch_module, "time", SimpleNamespace(sleep=interrupt, time=real_time.time, monotonic=real_time.monotonic)
    )
    res = cli(["detect", inbox, "--model", model, "--out", tmp_path / "out", "--watch", "--jobs", "0"])
    assert "watching" in res.output and "scored 2 images" in res.output and "OK 1, NG 1" in res.output
    assert (tmp_path / "out" / "report.html").exists()
    assert np.isfinite([r["score"] for r in read_records(tmp_path / "out")]).all()


def test_a_folder_that_drops_out_is_waited_for(detector, inbox, tmp_path):
    hidden = tmp_path / "hidden"

    def drop():
        inbox.rename(hidden)

    def back():
        hidden.rename(inbox)
        _png(inbox / "b.png", 11)

    notes = []
    result, runs = _watch_line(
        detector, inbox, tmp_path / "out", [drop, back], max_polls=4, report=False, log=notes.append
    )
    assert [r.scored for r in runs] == [1, 1] and result.scored == 2
    assert [n for n in notes if "not there" in n or "back" in n] == [
        f"watch: {inbox} not there; waiting for it",
        "watch: every folder is back",
    ]


def test_a_slow_report_is_written_less_often(detector, inbox, tmp_path, monkeypatch):
    """A report that takes 30 s of the line's clock is rewritten every 300 s, not every report_seconds."""
    line_clock = {}
    real_run = watch_module.run

    def run_with_slow_report(*args, report=True, **kwargs):
        result = real_run(*args, report=report, **kwargs)
        if report:
            line_clock["line"].now += 30.0  # as if writing report.html took 30 s
        return result

    monkeypatch.setattr(watch_module, "run", run_with_slow_report)
    arrivals = [lambda i=i: _png(inbox / f"n{i}.png", 30 + i) for i in range(7)]
    line = Line(arrivals)
    line_clock["line"] = line
    runs, notes = [], []
    watch(
        detector, [inbox], tmp_path / "out", poll_seconds=50.0, settle_seconds=0.0, report_seconds=10.0,
        clock=line.clock, sleep=line.sleep, on_run=runs.append, log=notes.append, max_polls=8, jobs=0,
    )  # fmt: skip
    # polls at 0 (report, then the clock reads 30), 80, 130, ..., 330: the next report is due at 30 + 300
    written = [r.report is not None for r in runs]
    assert written[:7] == [True, False, False, False, False, False, True]
    assert sum("written every 300 s" in n for n in notes) == 1  # said when the interval stretched
