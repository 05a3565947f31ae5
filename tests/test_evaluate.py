"""`anomalens evaluate` against hand-computed confusion matrices.

A stand-in detector scores an image by its mean grey level / 255 (its map is the grey image),
so every number below is computed by hand from the grey levels the images are painted with.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy.stats import beta

from anomalens.calibration import Threshold, apply_decision
from anomalens.data import load_dataset
from anomalens.evaluation import evaluate
from anomalens.evaluation.confusion import confusion, recall_by_defect_type, threshold_meeting_target
from anomalens.images import ImageLoadError
from anomalens.results import AnomalyResult

# grey levels: good 10, 20, 30, 40; scratch 35, 60; hole 20, 90
GOOD = [10, 20, 30, 40]
DEFECTS = {"scratch": [35, 60], "hole": [20, 90]}


class GreyDetector:
    """Score = mean grey / 255; map = grey / 255; decisions by `apply_decision`."""

    method_name = "grey"

    def __init__(self, threshold: float | None):
        self.threshold = None if threshold is None else Threshold.given(threshold)
        self.pixel_threshold = None
        self.method = SimpleNamespace(set_category=lambda name: None)

    def predict_iter(self, paths, batch_size: int = 8):
        for path in paths:
            try:
                grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
            except OSError as err:
                yield ImageLoadError(path, f"cannot read: {err}")
                continue
            result = AnomalyResult(path=str(path), score=float(grey.mean()), anomaly_map=grey)
            if self.threshold is not None:
                apply_decision(result, self.threshold)
            yield result


@pytest.fixture()
def tiles(tmp_path) -> Path:
    """An MVTec-layout category with masks, and one unreadable test image."""
    cat = tmp_path / "tiles"
    (cat / "test" / "good").mkdir(parents=True)
    for i, g in enumerate(GOOD):
        Image.fromarray(np.full((16, 16), g, np.uint8)).save(cat / "test" / "good" / f"g{i}.png")
    for name, levels in DEFECTS.items():
        (cat / "test" / name).mkdir()
        (cat / "ground_truth" / name).mkdir(parents=True)
        for i, g in enumerate(levels):
            img = np.full((16, 16), g, np.uint8)
            Image.fromarray(img).save(cat / "test" / name / f"d{i}.png")
            mask = np.zeros((16, 16), np.uint8)
            mask[:8] = 255
            Image.fromarray(mask).save(cat / "ground_truth" / name / f"d{i}_mask.png")
    (cat / "test" / "good" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def _split(root: Path):
    return load_dataset(root, kind="mvtec")["tiles"]


def test_confusion_matrix_and_rates_hand_computed(tiles, tmp_path):
    out = tmp_path / "ev"
    summary = evaluate(GreyDetector(threshold=32 / 255), _split(tiles), out, max_false_reject=0.25)
    # Above 32: good 40 (false reject); scratch 35, 60 and hole 90 caught; hole 20 escapes.
    conf = summary["confusion"]
    assert conf["matrix"] == {"good": {"OK": 3, "NG": 1}, "defect": {"OK": 1, "NG": 3}}
    assert conf["false_reject_rate"] == pytest.approx(0.25) and conf["escape_rate"] == pytest.approx(0.25)
    assert conf["false_reject_bound"] == pytest.approx(beta.ppf(0.95, 2, 3))  # Clopper-Pearson, 1 of 4
    assert summary["recall_by_defect_type"] == {
        "hole": {"defects": 2, "caught": 1, "recall": 0.5},
        "scratch": {"defects": 2, "caught": 2, "recall": 1.0},
    }
    assert (summary["good"], summary["defects"], summary["scored"], summary["images"]) == (4, 4, 8, 9)
    assert [f["path"].endswith("broken.png") for f in summary["failed"]] == [True]
    # Target 25 % of 4 good: one may lie above -> the 2nd largest good score (30); hole 20 escapes.
    at = summary["at_target"]
    assert at["threshold"] == pytest.approx(30 / 255, rel=1e-6)
    assert (at["false_rejects"], at["escapes"], at["escape_rate"]) == (1, 1, pytest.approx(0.25))
    # Image metrics as the benchmark computes them: good 10,20,30,40 vs defects 20,35,60,90.
    # Pairs (defect > good) over 16: 20 beats 10 (+ tie with 20 = 0.5), 35 beats 3, 60 and 90 beat 4.
    assert summary["metrics"]["image_auroc"] == pytest.approx((1.5 + 3 + 4 + 4) / 16)
    assert summary["metrics"]["pixel_auroc"] is not None
    # Each type against the good images: hole 20 (1.5 of 4) and 90 (4), scratch 35 (3) and 60 (4), over 8 pairs.
    by_type = summary["metrics_by_defect_type"]
    assert by_type["hole"]["image_auroc"] == pytest.approx(5.5 / 8)
    assert by_type["scratch"]["image_auroc"] == pytest.approx(7 / 8)
    # The CSV: every image, its outcome; the failed one with its error.
    with open(out / "scores.csv", newline="") as fh:
        rows = {Path(r["path"]).name + "/" + r["defect_type"]: r for r in csv.DictReader(fh)}
    assert rows["g3.png/good"]["outcome"] == "false reject" and rows["g3.png/good"]["decision"] == "NG"
    assert rows["d0.png/hole"]["outcome"] == "escape" and rows["d1.png/hole"]["outcome"] == "caught"
    assert rows["g0.png/good"]["outcome"] == "pass" and rows["broken.png/good"]["error"]
    assert json.loads((out / "summary.json").read_text())["confusion"]["matrix"] == conf["matrix"]


def test_page_has_roc_distributions_thresholds_and_misses(tiles, tmp_path):
    out = tmp_path / "ev"
    evaluate(GreyDetector(threshold=32 / 255), _split(tiles), out)
    page = (out / "evaluation.html").read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert '<svg id="roc"' in page and 'id="operating-point"' in page
    assert '<svg id="distributions"' in page and page.count('class="threshold"') == 2  # ours + at target
    for name in ("good (4)", "hole (2)", "scratch (2)"):
        assert name in page
    misses = page[page.index('id="worst-misses"') :]
    assert "False rejects" in misses and "Escapes" in misses
    assert misses.count("data:image/jpeg;base64,") == 2 and misses.count("data:image/png;base64,") == 2
    assert "broken.png" in page[page.index('id="failures"') :]


def test_without_threshold_metrics_only_and_no_overwrite(tiles, tmp_path):
    out = tmp_path / "ev"
    summary = evaluate(GreyDetector(threshold=None), _split(tiles), out)
    assert summary["confusion"] is None and summary["threshold"] is None
    assert summary["at_target"]["target"] == pytest.approx(0.01)  # 1 - the default quantile
    assert summary["at_target"]["threshold"] == pytest.approx(40 / 255, rel=1e-6)  # none of 4 may lie above
    with pytest.raises(FileExistsError):
        evaluate(GreyDetector(threshold=None), _split(tiles), out)
    evaluate(GreyDetector(threshold=0.5), _split(tiles), out, overwrite=True)


def test_confusion_helpers_hand_computed():
    rows = [
        {"label": 0, "defect_type": "good", "score": 0.1, "decision": "OK"},
        {"label": 0, "defect_type": "good", "score": 0.5, "decision": "NG"},
        {"label": 1, "defect_type": "crack", "score": 0.4, "decision": "OK"},
        {"label": 1, "defect_type": "crack", "score": 0.9, "decision": "NG"},
        {"label": 1, "defect_type": "fray", "score": 0.8, "decision": None},
    ]
    c = confusion(rows)
    assert (c.good_ok, c.good_ng, c.defect_ok, c.defect_ng) == (1, 1, 1, 1)
    assert recall_by_defect_type(rows)["fray"] == {"defects": 1, "caught": 0, "recall": 0.0}
    at = threshold_meeting_target(rows, 0.5)  # one of two good may lie above: threshold 0.1
    assert at["threshold"] == 0.1 and at["escapes"] == 0 and at["false_reject_rate"] == 0.5
    assert confusion([{"label": 0, "decision": None}]) is None


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_evaluate_matches_an_independent_run(tmp_path):
    """patchknn end to end on a folder layout: the CLI's decisions are Detector.predict's."""
    from test_cli import FAST, run, texture

    from anomalens.detector import Detector

    root = tmp_path / "parts"
    for sub in ("train_good", "good", "bad"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(texture(i)).save(root / "train_good" / f"r{i}.png")
        Image.fromarray(texture(50 + i)).save(root / "good" / f"g{i}.png")
        Image.fromarray(texture(70 + i, defect=True)).save(root / "bad" / f"b{i}.png")
    out = tmp_path / "ev"
    res = run(
        [
            "evaluate",
            root,
            "--dataset",
            "folder",
            "--refs",
            root / "train_good",
            "--out",
            out,
            "--threshold",
            "0.03",
            "--no-progress",
            *FAST,
        ]
    )
    det = Detector("patchknn", image_size=128).fit([root / "train_good"])
    det.threshold = 0.03
    expected = {
        Path(r.path).name: r.decision
        for r in det.predict(sorted((root / "good").iterdir()) + sorted((root / "bad").iterdir()))
    }
    with open(out / "scores.csv", newline="") as fh:
        got = {Path(r["path"]).name: r["decision"] for r in csv.DictReader(fh)}
    assert got == expected
    summary = json.loads((out / "summary.json").read_text())
    m = summary["confusion"]["matrix"]
    assert m["good"]["NG"] == sum(expected[f"g{i}.png"] == "NG" for i in range(3))
    assert m["defect"]["OK"] == sum(expected[f"b{i}.png"] == "OK" for i in range(3))
    assert "false-reject rate" in res.output and "escape rate" in res.output
    assert (out / "evaluation.html").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_evaluate_on_a_category_folder_with_shots(tmp_path):
    """An MVTec category folder given directly; references drawn from its train/good; the
    threshold calibrated for a target; several categories need --category."""
    from test_cli import FAST, run, texture

    for cat in ("a", "b"):
        for sub in ("train/good", "test/good", "test/hole"):
            (tmp_path / "ds" / cat / sub).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(texture(i)).save(tmp_path / "ds" / cat / "train" / "good" / f"r{i}.png")
        Image.fromarray(texture(40)).save(tmp_path / "ds" / cat / "test" / "good" / "g.png")
        Image.fromarray(texture(41, defect=True)).save(tmp_path / "ds" / cat / "test" / "hole" / "h.png")
    out = tmp_path / "ev"
    res = run(
        [
            "evaluate",
            tmp_path / "ds" / "a",
            "--shots",
            "3",
            "--max-false-reject",
            "0.25",
            "--out",
            out,
            "--no-progress",
            *FAST,
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "3 references drawn from a train/good (seed 0)"
    t = summary["threshold"]
    assert t["max_false_reject"] == 0.25 and t["n_scores"] == 3 and t["rank"] == 1  # floor(0.25 * 4) = 1
    assert "largest of 3 leave-one-out reference scores" in res.output
    assert (summary["good"], summary["defects"]) == (1, 1)
    res = run(["evaluate", tmp_path / "ds", "--shots", "3", "--out", tmp_path / "ev2", *FAST], code=2)
    assert "holds 2 categories; choose one with --category (a, b)" in res.output
    res = run(["evaluate", tmp_path / "ds" / "a", "--shots", "3", "--out", out, *FAST], code=2)
    assert "already holds an evaluation" in res.output
    # With a saved model, --max-false-reject is only the target on this data: the model's threshold stays.
    run(["fit", "--refs", tmp_path / "ds" / "a" / "train" / "good", "--out", tmp_path / "m", *FAST])
    run(["evaluate", tmp_path / "ds" / "a", "--model", tmp_path / "m", "--max-false-reject", "0.5",
         "--out", tmp_path / "ev3", "--no-progress"])
    summary = json.loads((tmp_path / "ev3" / "summary.json").read_text())
    saved = json.loads((tmp_path / "m" / "detector.json").read_text())["threshold"]
    assert summary["threshold"]["value"] == saved["value"] and summary["at_target"]["target"] == 0.5
