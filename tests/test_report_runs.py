"""One run per report: a second `detect` into the same --out reports only its own images, settings
and time; ground truth from an MVTec-layout input folder is shown; the reference images too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens import Detector
from anomalens.ground_truth import ground_truth_of
from anomalens.inspection import run
from anomalens.outputs import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows_of(report: Path) -> list[dict]:
    page = report.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    folders = {"refs": 3, "line1": 2, "line2": 3, "tile/test/good": 1, "tile/test/crack": 1}
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(80, 170, (32, 32, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    (root / "tile/ground_truth/crack").mkdir(parents=True)
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "tile/ground_truth/crack/0_mask.png")
    return root


@pytest.fixture(scope="module")
def detector(data) -> Detector:
    return Detector(method="patchknn", image_size=64).fit([data / "refs"]).calibrate()


def test_a_second_run_into_the_same_folder_reports_only_itself(data, detector, tmp_path):
    out = tmp_path / "out"
    first = run(detector, [data / "line1"], out, jobs=0, options={"run": "first"})
    assert len(rows_of(first.report)) == 2
    # (A second run with other effective settings is refused: see the resume tests.)
    second = run(detector, [data / "line2"], out, jobs=0, options={"run": "second"})
    assert len(read_records(out)) == 5  # both runs' records are kept in results.jsonl
    rows = rows_of(second.report)
    assert sorted(Path(r["p"]).parent.name for r in rows) == ["line2"] * 3
    page = second.report.read_text(encoding="utf-8")
    assert re.search(r'id="count-images"><span class="n">3</span>', page)
    assert "&quot;run&quot;: &quot;second&quot;" in page and "&quot;run&quot;: &quot;first&quot;" not in page
    assert "line2" in page and "line1" not in page  # this run's own inputs and settings
    assert f"{second.seconds:.1f} s" in page  # this run's own time


def test_ground_truth_and_references_in_the_report(data, detector, tmp_path):
    assert ground_truth_of(data / "tile/test/good/0.png") == {"label": "good", "mask": None}
    assert ground_truth_of(data / "tile/test/crack/0.png")["mask"].endswith("crack/0_mask.png")
    assert ground_truth_of(data / "line1/0.png") is None
    summary = run(detector, [data / "tile/test"], tmp_path / "out", jobs=0)
    rows = {Path(r["p"]).parent.name: r for r in rows_of(summary.report)}
    assert rows["good"]["g"] == "good" and rows["crack"]["g"] == "crack"
    assert rows["crack"]["gk"].startswith("data:image/png") and rows["crack"]["miss"] == (rows["crack"]["d"] == "OK")
    page = summary.report.read_text(encoding="utf-8")
    assert 'data-truth="1"' in page and "Reference images (3)" in page
    assert '<svg id="colour-scale"' in page and "pixel threshold" in page
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["colour_scale"]["anchor"] == pytest.approx(detector.pixel_threshold.value)
