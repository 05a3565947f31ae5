"""One record per input file, a lock on --out, CSV cells that are not formulas (issue 12, items 7, 11)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from anomalens import Detector
from anomalens.errors import UsageError
from anomalens.inspection import run
from anomalens.outputs import OutputWriter, read_records


def _tiles(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), 40 * i + 10, np.uint8)).save(folder / f"t{i}.png")


@pytest.fixture()
def detector():
    det = Detector(method="patchknn", image_size=64)
    det.fit([])
    return det


def _lines(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def test_rerun_from_another_working_directory_adds_no_record(tmp_path, detector, monkeypatch):
    _tiles(tmp_path / "in", 3)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    run(detector, ["in"], out)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    run(detector, ["../in"], out)
    run(detector, [str(tmp_path / "in")], out)
    assert len(_lines(out)) == 3


def test_retried_failure_leaves_one_record(tmp_path, detector):
    src = tmp_path / "in"
    _tiles(src, 2)
    (src / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    run(detector, [src], out)
    assert [r["status"] for r in _lines(out)].count("error") == 1
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(src / "bad.png")  # fixed by the user
    run(detector, [src], out)
    lines = _lines(out)
    assert len(lines) == 3 and all(r["status"] == "ok" for r in lines)
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_second_writer_on_one_out_is_refused(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out):
        with pytest.raises(UsageError, match=rf"being written by another anomalens run \(pid {os.getpid()}\)"):
            OutputWriter(out)
    with OutputWriter(out):  # released at close
        pass


def test_csv_cells_cannot_start_a_formula(tmp_path, detector, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@x.png"]
    for name in names:
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(src / name)
    monkeypatch.chdir(src)
    out = tmp_path / "out"
    run(detector, names, out)  # relative paths: the CSV cell starts with the file name
    with open(out / "results.csv", newline="") as f:
        cells = [r["path"] for r in csv.DictReader(f)]
    assert sorted(cells) == sorted("'" + n for n in names)
    assert sorted(r["path"] for r in read_records(out)) == sorted(names)  # the JSON keeps them as they are
