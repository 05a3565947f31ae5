"""The HTML report: content, order, embedded images, histogram, failures; and a real browser render."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip
from PIL import Image

from anomalens.calibration import apply_decision, calibrate_threshold
from anomalens.outputs import OutputWriter
from anomalens.report import histogram_svg, write_report
from anomalens.results import AnomalyResult

SCORES = [0.31, 0.92, 0.12, 0.55, 0.47, 0.78]


def _make_run(tmp_path: Path, scores=SCORES, size=(90, 140)) -> tuple[Path, object]:
    """Write input images, results and one failure the way `anomalens detect` would."""
    h, w = size
    rng = np.random.default_rng(0)
    threshold = calibrate_threshold([0.2, 0.25, 0.3, 0.35, 0.4])
    out = tmp_path / "out"
    with OutputWriter(out, overlay_range=(0.0, 1.0)) as writer:
        for i, score in enumerate(scores):
            src = tmp_path / "in" / f"dir{i % 2}" / f"part_{i:02d}.png"
            src.parent.mkdir(parents=True, exist_ok=True)
            img = np.full((h, w, 3), (90 + 20 * i, 110, 130), np.uint8)
            Image.fromarray(img).save(src)
            amap = (rng.random((h, w)) * 0.3).astype(np.float32)
            amap[20:50, 40:90] += score
            r = AnomalyResult(
                str(src), score, amap, descriptions=[(f"defect <{i}> & co", 0.3 - i / 100)], seconds=0.5
            )
            writer.write(apply_decision(r, threshold), image=img)
        writer.record_failure(tmp_path / "in" / "broken.jpg", "truncated or corrupt image data <EOF>")
    return out, threshold


def _score_order(page: str) -> list[float]:
    return [
        float(v)
        for v in re.findall(r'<td class="num" data-v="([0-9.e-]+)">[^<]*</td><td data-v="(?:OK|NG)', page)
    ]


def test_report_content(tmp_path):
    out, threshold = _make_run(tmp_path)
    info = {
        "threshold": threshold,
        "method": "fade",
        "backbone": "ViT-B-16-plus-240",
        "total_seconds": 12.5,
        "references": "10 good images in ref/",
    }
    path = write_report(out, summary_info=info, title="Line 3 inspection")
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")

    # Summary.
    assert "<title>Line 3 inspection</title>" in page
    assert re.search(r'id="count-ok"><span class="n">2</span>', page)
    assert re.search(r'id="count-ng"><span class="n">4</span>', page)
    assert re.search(r'id="count-failed"><span class="n">1</span>', page)
    assert threshold.description() in page
    assert "fade" in page and "ViT-B-16-plus-240" in page and "12.5 s" in page
    assert "10 good images in ref/" in page

    # Table: one row per image, worst first, every row with two embedded thumbnails.
    assert _score_order(page) == sorted(SCORES, reverse=True)
    uris = re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', page)
    assert len(uris) == 2 * len(SCORES)
    thumb = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert thumb.format == "JPEG" and max(thumb.size) == 140 and thumb.size == (140, 90)
    assert page.count('class="badge ng"') == 4 and page.count('class="badge ok"') == 2
    assert "defect &lt;1&gt; &amp; co" in page and "defect <1>" not in page  # escaped

    # Histogram with the threshold marked.
    assert '<svg id="histogram"' in page and 'id="threshold-line"' in page
    assert f"threshold {threshold.value:.4g}" in page
    assert page.count('class="bar"') >= 2

    # Failures section, escaped.
    failures = page[page.index('id="failures"') :]
    assert "broken.jpg" in failures and "truncated or corrupt image data &lt;EOF&gt;" in failures

    # Self-contained: nothing fetched from anywhere.
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<link" not in page and "<script src" not in page


def test_report_from_given_records_and_missing_images(tmp_path):
    records = [
        {
            "path": str(tmp_path / "gone.png"),
            "score": 0.7,
            "decision": "NG",
            "threshold": 0.5,
            "descriptions": [],
            "seconds": 1.0,
            "overlay": None,
            "status": "ok",
        },
        {
            "path": str(tmp_path / "gone2.png"),
            "score": None,
            "decision": None,
            "threshold": None,
            "descriptions": [],
            "seconds": 2.0,
            "overlay": "overlays/none.png",
            "status": "ok",
        },
    ]
    page = write_report(tmp_path, records=records).read_text()
    assert page.count("not available") == 4
    assert "data:image" not in page
    assert "3.0 s (sum of per-image times)" in page
    assert page.index("gone.png") < page.index("gone2.png")  # unscored rows go last
    assert 'id="failures"' not in page


def test_histogram_edge_cases():
    assert "No scores" in histogram_svg([], [], 0.5)
    svg = histogram_svg([0.4, 0.4, 0.4], ["OK"] * 3, None)  # zero range, no threshold
    assert "threshold-line" not in svg and 'class="bar"' in svg
    svg = histogram_svg([0.1, 0.2], ["OK", "OK"], 5.0)  # threshold far right stays on the axis
    x = float(re.search(r'id="threshold-line" x1="([0-9.]+)"', svg).group(1))
    assert 0 < x <= 680


def test_report_scales_to_thousands_of_rows(tmp_path):
    src = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(src)
    rng = np.random.default_rng(0)
    records = [
        {
            "path": str(src),
            "score": float(s),
            "decision": "NG" if s > 0.9 else "OK",
            "threshold": 0.9,
            "descriptions": [{"text": "scratch", "similarity": 0.2}],
            "seconds": 0.1,
            "overlay": None,
            "status": "ok",
        }
        for s in rng.random(3000)
    ]
    page = write_report(tmp_path, records=records).read_text()
    scores = _score_order(page)
    assert len(scores) == 3000 and scores == sorted(scores, reverse=True)
    assert len(page) < 20_000_000


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path):
    sync_playwright = browser_or_skip()
    out, threshold = _make_run(tmp_path)
    report = write_report(
        out, summary_info={"threshold": threshold, "method": "fade", "backbone": "ViT-B-16"}
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")

            rows = page.locator("#results-table tbody tr")
            assert rows.count() == len(SCORES)
            assert page.locator("#failures-table tbody tr").count() == 1
            assert page.locator("svg#histogram rect.bar").count() >= 2
            images = page.eval_on_selector_all(
                "#results-table img", "els => els.map(e => [e.complete, e.naturalWidth])"
            )
            assert len(images) == 2 * len(SCORES)
            assert all(complete and width > 0 for complete, width in images)

            def column(index: int) -> list[str]:
                return page.eval_on_selector_all(
                    "#results-table tbody tr", f"rs => rs.map(r => r.cells[{index}].textContent)"
                )

            assert [float(s) for s in column(4)] == sorted(SCORES, reverse=True)
            page.click("#results-table th:has-text('Score')")  # was descending: now ascending
            assert [float(s) for s in column(4)] == sorted(SCORES)
            page.click("#results-table th:has-text('File')")
            assert column(3) == sorted(column(3), key=str.lower)
            page.click("#results-table th:has-text('#')")
            assert [int(r) for r in column(0)] == list(range(1, len(SCORES) + 1))

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("ANOMALENS_SCREENSHOT"):  # keep a copy to look at
                shutil.copy(shot, os.environ["ANOMALENS_SCREENSHOT"])
            # Only the report itself was requested: no network, no external files.
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
        finally:
            browser.close()
