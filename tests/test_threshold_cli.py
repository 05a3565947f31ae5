"""--max-false-reject and --defects on `fit` and `detect`: numbers to the console, detector.json,
settings.json and the report; combinations that cannot work are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_cli import FAST, run, texture

from anomalens.calibration import calibrate_for_target
from anomalens.detector import Detector
from anomalens.images import list_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The whole bank (no coreset): leave-one-out then equals refitting without the held-out reference,
# which these tests compute by hand. With a coreset, leave-one-out drops the held-out reference's
# patches from one coreset over all references (README "Choosing a threshold"; tests/test_leave_one_out.py).
# the whole bank and the recipe alone (a fused recipe's levels come from all references): the leave-one-out
# scores are then those of refitting without each reference
WHOLE_BANK = ["--set", "coreset_ratio=1.0", "--set", "fused_recipe=none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """refs/ (5 good), defects/ (2 known-bad), queries/ (2 good, 1 bad)."""
    root = tmp_path_factory.mktemp("thr")
    for sub in ("refs", "defects", "queries"):
        (root / sub).mkdir()
    for i in range(5):
        Image.fromarray(texture(i)).save(root / "refs" / f"good_{i}.png")
    for i in range(2):
        Image.fromarray(texture(300 + i, defect=True)).save(root / "defects" / f"bad_{i}.png")
        Image.fromarray(texture(100 + i)).save(root / "queries" / f"ok_{i}.png")
    Image.fromarray(texture(200, defect=True)).save(root / "queries" / "scratch.png")
    return root


def _loo_scores(refs: list[Path]) -> list[float]:
    scores = []
    for i in range(len(refs)):
        det = Detector("patchknn", image_size=128, coreset_ratio=1.0, fused_recipe="none").fit(refs[:i] + refs[i + 1 :])
        scores.append(det.predict([refs[i]])[0].score)
    return scores


def test_fit_with_a_target_saves_and_prints_the_stated_rate_and_warns(data, tmp_path):
    out = tmp_path / "model"
    res = run(["fit", "--refs", data / "refs", "--out", out, *FAST, *WHOLE_BANK, "--max-false-reject", "0.2"])
    saved = json.loads((out / "detector.json").read_text())["threshold"]
    # 5 references: k = floor(0.2 * 6) = 1, the largest leave-one-out score; expected 1/6.
    loo = _loo_scores(list_images([data / "refs"]))
    assert saved["value"] == pytest.approx(max(loo), rel=1e-5)
    assert saved["max_false_reject"] == 0.2 and saved["rank"] == 1 and saved["n_scores"] == 5
    assert saved["expected_false_reject"] == pytest.approx(1 / 6)
    assert "largest of 5 leave-one-out reference scores, for a false-reject target of 20%" in res.output
    assert "expected false-reject rate 16.7% (95% bound 45.1%)" in res.output
    assert "warning" not in res.output  # 1/6 <= 20%: 5 references are enough for this target
    res = run(
        ["fit", "--refs", data / "refs", "--out", out, *FAST, *WHOLE_BANK, "--max-false-reject", "0.05", "--overwrite"]
    )
    assert (
        "warning: 5 leave-one-out reference scores are too few for a false-reject rate of 5%: even their "
        "largest as threshold expects 16.7% (95% bound 45.1%); 19 good reference images give an expected 5%, "
        "59 a 95% bound of 5%"
    ) in res.output
    # The warning reaches the report of a run with that model.
    run(["detect", data / "queries", "--model", out, "--out", tmp_path / "run"])
    assert "too few for a false-reject rate of 5%" in (tmp_path / "run" / "report.html").read_text()


def test_detect_with_defects_reports_escapes_everywhere(data, tmp_path):
    out = tmp_path / "out"
    res = run(
        [
            "detect",
            data / "queries",
            "--refs",
            data / "refs",
            "--out",
            out,
            *FAST,
            *WHOLE_BANK,
            "--max-false-reject",
            "0.2",
            "--defects",
            data / "defects",
        ]
    )
    settings = json.loads((out / "settings.json").read_text())
    t = settings["threshold"]
    # By hand: the leave-one-out scores and the defects scored by the model fitted on all refs.
    refs = list_images([data / "refs"])
    full = Detector("patchknn", image_size=128, coreset_ratio=1.0, fused_recipe="none").fit(refs)
    bad = [r.score for r in full.predict(list_images([data / "defects"]))]
    expected = calibrate_for_target(_loo_scores(refs), 0.2, bad)
    assert t["value"] == pytest.approx(expected.value, rel=1e-5)
    assert (t["defects"], t["escapes"]) == (2, expected.escapes)
    assert "known defects" in res.output and "escapes" in res.output
    html = (out / "report.html").read_text()
    assert "escapes" in html and "expected false-reject rate" in html


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "0.3"], "cannot be combined with --threshold 0.3"),
        (["--margin", "0.2"], "--margin belongs to the --quantile rule"),
        (["--quantile", "0.9"], "either --quantile or --max-false-reject"),
        (["--max-false-reject", "1.5"], "false-reject target must be a rate in (0, 1)"),
    ],
)
def test_conflicting_threshold_options_are_refused(data, tmp_path, extra, message):
    args = ["detect", data / "queries", "--refs", data / "refs", "--out", tmp_path / "o", *FAST]
    if "--max-false-reject" not in extra:
        args += ["--max-false-reject", "0.1"]
    res = run([*args, *extra], code=2)
    assert message in res.output


def test_defects_folder_must_exist(data, tmp_path):
    res = run(["fit", "--refs", data / "refs", "--out", tmp_path / "m", *FAST, "--defects", tmp_path / "nope"], code=2)
    assert "known-defect folder does not exist" in res.output
