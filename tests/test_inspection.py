"""`anomalens.inspection.run`: the library's inspection run (what `anomalens detect` calls)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import striped_texture

from anomalens import Detector
from anomalens.errors import UsageError
from anomalens.inspection import RunProgress, collect_inputs, run
from anomalens.outputs import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texture(seed: int, defect: bool = False) -> np.ndarray:
    img = striped_texture(seed, 48, 48)
    if defect:
        img[16:26, 24:34] = (20, 15, 10)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspection")
    for folder, seeds, defect in (("refs", range(3), False), ("good", range(10, 12), False), ("bad", (20,), True)):
        (root / folder).mkdir()
        for s in seeds:
            Image.fromarray(texture(s, defect)).save(root / folder / f"{folder}_{s}.png")
    (root / "bad" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def detector(data) -> Detector:
    return Detector(method="patchknn", image_size=64).fit([data / "refs"]).calibrate()


def test_run_writes_outputs_report_and_settings_and_counts(data, detector, tmp_path):
    events: list[RunProgress] = []
    notes: list[str] = []
    summary = run(detector, [data / "good", data / "bad", data / "nope.png"], tmp_path / "out",
                  jobs=0, progress=events.append, log=notes.append)
    recs = {Path(r["path"]).name: r for r in read_records(tmp_path / "out")}
    assert set(recs) == {"good_10.png", "good_11.png", "bad_20.png", "broken.png", "nope.png"}
    assert recs["bad_20.png"]["decision"] == "NG"
    assert recs["broken.png"]["status"] == "error" and "broken.png" not in recs["broken.png"]["error"]
    assert recs["nope.png"]["error"] == "file does not exist"
    assert (summary.images, summary.done, summary.scored, summary.resumed) == (5, 5, 3, 0)
    decisions = [r["decision"] for r in recs.values()]
    assert (summary.ok, summary.ng) == (decisions.count("OK"), decisions.count("NG")) and summary.ok + summary.ng == 3
    assert (summary.failed, summary.exit_code, summary.undecided, summary.interrupted) == (2, 1, 0, False)
    assert summary.report == tmp_path / "out" / "report.html" and summary.report.exists()
    # One call before the first image (done 0), then one per image tried (4 existing files).
    assert [(e.done, e.total) for e in events] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert events[0].record is None and all(e.record is not None for e in events[1:])
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["method"] == "patchknn" and settings["threshold"]["method"] == "auto"
    assert settings["source"] == "3 reference images" and summary.settings == settings
    assert notes == []


def test_run_resumes_and_retries_only_failures(data, detector, tmp_path):
    out = tmp_path / "out"
    first = run(detector, [data / "good"], out, jobs=0, report=False)
    assert first.scored == 2 and first.report is None and not (out / "report.html").exists()
    notes: list[str] = []
    again = run(detector, [data / "good", data / "bad"], out, jobs=0, report=False, log=notes.append)
    assert (again.scored, again.resumed, again.done, again.images) == (1, 2, 4, 4)
    assert notes == [f"resuming: 2 of 4 images already done in {out}"]
    fresh = run(detector, [data / "good"], out, jobs=0, report=False, overwrite=True)
    assert (fresh.scored, fresh.resumed) == (2, 0) and len(read_records(out)) == 2


def test_pixel_threshold_alone_gives_masks_and_no_decisions(data, tmp_path):
    det = Detector(method="patchknn", image_size=64).fit([data / "refs"])
    det.pixel_threshold = 0.0  # every finite pixel above it
    summary = run(det, [data / "bad" / "bad_20.png"], tmp_path / "out", jobs=0, report=False)
    (rec,) = read_records(tmp_path / "out")
    assert rec["decision"] is None and rec["pixel_threshold"] == 0.0 and rec["mask"] is not None
    mask = np.asarray(Image.open(tmp_path / "out" / rec["mask"]))
    assert mask.max() == 255 and summary.undecided == 1


def test_collect_inputs_skips_duplicates_and_the_output_folder(data, tmp_path):
    notes: list[str] = []
    got = collect_inputs([data / "good", data / "good" / "good_10.png", tmp_path / "gone"], tmp_path, notes.append)
    assert [p.name for p in got.files] == ["good_10.png", "good_11.png"] and got.missing == (tmp_path / "gone",)
    assert notes == ["note: 1 duplicate input(s) (same file given twice) scored once"]
    with pytest.raises(UsageError, match="no images given"):
        collect_inputs([], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no image files found"):
        collect_inputs([empty], tmp_path / "elsewhere", notes.append)


def test_two_scoring_threads_write_what_one_writes_in_the_same_order(data, detector, tmp_path):
    from anomalens.scoring_threads import scoring_workers

    inputs = [data / "good", data / "refs", data / "bad"]  # 6 images and one unreadable file
    one = run(detector, inputs, tmp_path / "one", batch_size=2, workers=1, report=False)
    two = run(detector, inputs, tmp_path / "two", batch_size=2, workers=2, report=False)
    lines = {
        name: [json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    }
    assert [r["path"] for r in lines["one"]] == [r["path"] for r in lines["two"]]  # input order, failure in place
    for a, b in zip(lines["one"], lines["two"]):
        assert (a["status"], a["score"], a["decision"]) == (b["status"], b["score"], b["decision"])
        if a["status"] == "ok":
            np.testing.assert_array_equal(np.load(tmp_path / "one" / a["map"]), np.load(tmp_path / "two" / b["map"]))
    assert (one.scored, one.failed) == (two.scored, two.failed) == (6, 1)
    assert scoring_workers(detector) in (1, 2)  # 2 on a multi-core machine with one torch thread
