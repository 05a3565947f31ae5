"""No silent ignoring: --model refuses options that would change the saved model; `fit` and
`detect --refs` agree on the default threshold; `fit` reports progress over the references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from PIL import Image
from synthetic import striped_texture

from anomalens import Detector
from anomalens.outputs import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--method", "patchknn", "--image-size", "64"]


def texture(seed: int, defect: bool = False) -> np.ndarray:
    img = striped_texture(seed, 48, 48)
    if defect:
        img[16:26, 24:34] = (20, 15, 10)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agree")
    for folder, seeds, defect in (("refs", range(4), False), ("one_ref", (9,), False), ("queries", (20, 21), False)):
        (root / folder).mkdir()
        for s in seeds:
            Image.fromarray(texture(s, defect)).save(root / folder / f"{folder}_{s}.png")
    Image.fromarray(texture(30, defect=True)).save(root / "queries" / "bad.png")
    return root


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    run(["fit", "--refs", data / "refs", "--out", out, *FAST, "--set", "neighbourhood=3"])
    return out


@pytest.mark.parametrize(
    "extra, named",
    [
        (["-m", "winclip"], "-m winclip (saved: patchknn)"),
        (["--set", "neighbourhood=1"], "--set neighbourhood=1 (saved: 3)"),
        (["--image-size", "96"], "--image-size 96 (saved: 64)"),
        (["--backbone", "test-tiny"], "--backbone test-tiny"),
        (["--set", "neighbourhood=1", "--set", "few_shot_k=2"], "--set few_shot_k=2 (saved: 3)"),
    ],
)
def test_model_refuses_options_that_would_change_it(data, model, tmp_path, extra, named):
    res = run(["detect", data / "queries", "--model", model, "--out", tmp_path / "o", *extra], code=2)
    line = res.output.strip()
    assert line.startswith("error: --model") and named in line and "\n" not in line
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_model_accepts_options_equal_to_the_saved_ones(data, model, tmp_path):
    res = run(["detect", data / "queries", "--model", model, "--out", tmp_path / "o", "-m", "patchknn",
               "--image-size", "64", "--set", "neighbourhood=3"])
    assert "error" not in res.output
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert settings["options"]["method"] == "patchknn"
    # The run repeats from its settings.json (the recorded options do not conflict with the model).
    run(["detect", "--config", tmp_path / "o" / "settings.json", "--out", tmp_path / "again"])


def test_fit_and_detect_with_refs_both_calibrate_by_default(data, model, tmp_path):
    saved = json.loads((model / "detector.json").read_text())["threshold"]
    assert saved["method"] == "auto"
    res = run(["detect", data / "queries", "--refs", data / "refs", "--out", tmp_path / "o", *FAST])
    assert "threshold: auto" in res.output
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert settings["threshold"]["method"] == "auto"
    assert settings["threshold"]["value"] == pytest.approx(saved["value"])
    decisions = {Path(r["path"]).name: r["decision"] for r in read_records(tmp_path / "o")}
    assert set(decisions.values()) <= {"OK", "NG"} and decisions["bad.png"] == "NG"


def test_default_threshold_without_enough_references_is_none_with_a_note(data, tmp_path):
    res = run(["detect", data / "queries", "--refs", data / "one_ref", "--out", tmp_path / "o", *FAST])
    assert "note: no threshold: the default --threshold auto cannot be calibrated" in res.output
    assert {r["decision"] for r in read_records(tmp_path / "o")} == {None}
    res = run(["detect", data / "queries", "--refs", data / "one_ref", "--out", tmp_path / "p", *FAST,
               "--threshold", "auto"], code=2)
    assert "at least 2 reference images" in res.output
    run(["fit", "--refs", data / "one_ref", "--out", tmp_path / "m", *FAST])
    assert json.loads((tmp_path / "m" / "detector.json").read_text())["threshold"] is None


def test_fit_reports_progress_reference_by_reference(data):
    events = []
    det = Detector(method="patchknn", image_size=64).fit([data / "refs"], progress=events.append)
    det.calibrate(progress=events.append)
    for phase in ("reading", "fitting", "calibrating"):
        done = [e.done for e in events if e.phase == phase]
        assert all(e.total == 4 for e in events if e.phase == phase)
        # Every step from 0 to 4 is seen, in order (patchknn goes reference by reference).
        assert sorted(set(done)) == [0, 1, 2, 3, 4] and done == sorted(done), (phase, done)


def test_fit_progress_bar_can_be_turned_off(data, tmp_path):
    res = run(["fit", "--refs", data / "refs", "--out", tmp_path / "m", *FAST, "--no-progress"])
    assert "fitting" not in res.output and "saved patchknn model" in res.output


def _run_in_terminal(args: list[str], timeout: float = 120.0) -> str:
    """Run `python -m anomalens ARGS` with a pseudo-terminal as stdin/stdout/stderr; its output."""
    import fcntl
    import os
    import select
    import struct
    import subprocess
    import sys
    import termios

    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "anomalens", "--threads", "1", *args],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True, env=env)
    os.close(slave)
    out = b""
    while select.select([master], [], [], timeout)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=timeout)
    os.close(master)
    return out.decode(errors="replace")


def test_fit_shows_a_bar_per_phase_in_a_terminal(data, tmp_path):
    shown = _run_in_terminal(["fit", "--refs", str(data / "refs"), "--out", str(tmp_path / "m"), *FAST])
    for phase in ("reading", "fitting", "calibrating"):
        assert f"{phase}: 100%" in shown and "4/4" in shown, shown
    assert "saved patchknn model" in shown  # (--no-progress: test_fit_progress_bar_can_be_turned_off)
