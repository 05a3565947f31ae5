"""The HTML report: content, order, embedded images, histogram, failures; and a real browser render."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip
from PIL import Image

from anomalens.calibration import apply_decision, calibrate_threshold
from anomalens.colour_scale import ColourScale
from anomalens.outputs import OutputWriter
from anomalens.report import THUMB_SIDE, histogram_svg, write_report
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


def report_rows(page: str) -> list[dict]:
    """The rows embedded in a report (the JSON array its script renders)."""
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def _score_order(page: str) -> list[float]:
    return [r["score"] for r in report_rows(page) if r["st"] == "ok"]


def test_report_content(tmp_path):
    out, threshold = _make_run(tmp_path)
    info = {
        "threshold": threshold,
        "method": "fade",
        "backbone": "ViT-B-16-plus-240",
        "total_seconds": 12.5,
        "references": "10 good images in ref/",
        "run_settings": {"method": "fade", "settings": {"k": 3}},
        "calibration": {"Expected false-reject rate": "1.2 %"},
    }
    path = write_report(out, summary_info=info, title="Line 3 inspection", colour_scale=ColourScale.around(0.5))
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")

    # Summary, with the run's own settings, and the calibration section.
    assert "<title>Line 3 inspection</title>" in page
    assert re.search(r'id="count-ok"><span class="n">2</span>', page)
    assert re.search(r'id="count-ng"><span class="n">4</span>', page)
    assert re.search(r'id="count-failed"><span class="n">1</span>', page)
    assert threshold.description() in page
    assert "fade" in page and "ViT-B-16-plus-240" in page and "12.5 s" in page
    assert "10 good images in ref/" in page
    assert 'id="run-settings"' in page and "&quot;k&quot;: 3" in page
    assert 'id="calibration"' in page and "Expected false-reject rate" in page

    # Rows: one per image, worst first, then the failure; every scored row has three thumbnails.
    rows = report_rows(page)
    assert _score_order(page) == sorted(SCORES, reverse=True)
    assert [r["i"] for r in rows] == list(range(1, len(SCORES) + 2))
    assert rows[-1]["st"] == "error" and rows[-1]["e"] == "truncated or corrupt image data <EOF>"
    scored = rows[:-1]
    assert all(r["im"].startswith("data:image/jpeg;base64,") and r["ov"].startswith("data:image/jpeg") for r in scored)
    assert all(r["mk"].startswith("data:image/png;base64,") for r in scored)
    assert all(r["fo"].startswith("overlays/") and r["fm"].startswith("masks/") for r in scored)
    thumb = Image.open(io.BytesIO(base64.b64decode(scored[0]["im"].split(",", 1)[1])))
    assert thumb.format == "JPEG" and thumb.size == (THUMB_SIDE, round(90 * THUMB_SIDE / 140))
    assert (scored[0]["w"], scored[0]["h"]) == thumb.size
    assert [r["d"] for r in scored].count("NG") == 4
    assert scored[0]["t"] == "defect <1> & co"  # raw in the JSON; the script escapes it

    # Histogram with the threshold marked; the overlays' colour scale with its threshold.
    assert '<svg id="histogram"' in page and 'id="threshold-line"' in page
    assert f"threshold {threshold.value:.4g}" in page
    assert page.count('class="bar"') >= 2
    assert '<svg id="colour-scale"' in page

    # Failures section, escaped.
    failures = page[page.index('id="failures"') :]
    assert "broken.jpg" in failures and "truncated or corrupt image data &lt;EOF&gt;" in failures

    # Self-contained: nothing fetched from anywhere.
    assert "http://" not in page and "https://" not in page
    markup = re.sub(r"<script.*?</script>", "", page, flags=re.S)
    assert not re.search(r'(src|href)="(?!data:)', markup)
    assert "<link" not in page and "<script src" not in page


def test_report_json_cannot_end_its_script_early(tmp_path):
    record = {"path": str(tmp_path / "x.png"), "score": 0.5, "decision": "NG", "status": "ok",
              "descriptions": [{"text": "</script><script>alert(1)</script>", "similarity": 0.1}]}
    page = write_report(tmp_path, records=[record]).read_text()
    assert "</script><script>alert(1)" not in page
    assert report_rows(page)[0]["t"] == "</script><script>alert(1)</script>"


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
    rows = report_rows(page)
    assert not any("im" in r or "ov" in r for r in rows)  # shown as "not available"
    assert "data:image" not in page
    assert "3.0 s (sum of per-image times)" in page
    assert [Path(r["p"]).name for r in rows] == ["gone.png", "gone2.png"]  # unscored rows go last
    assert 'id="failures"' not in page and 'id="calibration"' not in page


def test_report_shows_ground_truth_and_marks_misses(tmp_path):
    mask = tmp_path / "gt.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
    records = [
        {"path": "a.png", "score": 0.9, "decision": "NG", "status": "ok",
         "ground_truth": {"label": "good", "mask": None}},
        {"path": "b.png", "score": 0.2, "decision": "OK", "status": "ok",
         "ground_truth": {"label": "crack", "mask": str(mask)}},
        {"path": "c.png", "score": 0.8, "decision": "NG", "status": "ok",
         "ground_truth": {"label": "crack", "mask": None}},
    ]
    rows = {r["p"]: r for r in report_rows(write_report(tmp_path, records=records).read_text())}
    assert rows["a.png"]["g"] == "good" and rows["a.png"]["miss"] is True  # a false reject
    assert rows["b.png"]["miss"] is True and rows["b.png"]["gk"].startswith("data:image/png")  # an escape
    assert rows["c.png"]["miss"] is False


def test_report_shows_reference_images(tmp_path):
    refs = []
    for i in range(3):
        refs.append(tmp_path / f"ref{i}.png")
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(refs[-1])
    page = write_report(tmp_path, records=[], references=[*map(str, refs), str(tmp_path / "moved.png")]).read_text()
    section = page[page.index('id="references"') :]
    assert "Reference images (4)" in section and section.count("data:image/jpeg") == 3
    assert "moved.png" in section and "not available" in section


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
        out, summary_info={"threshold": threshold, "method": "fade", "backbone": "ViT-B-16"},
        colour_scale=ColourScale.around(threshold.value),
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(report.as_uri())
            page.wait_for_selector("body[data-ready='1']")

            rows = page.locator("#results-table tbody tr")
            assert rows.count() == len(SCORES) + 1  # the failure is a row too
            assert page.locator("#failures-table tbody tr").count() == 1
            assert page.locator("svg#histogram rect.bar").count() >= 2
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazy images: bring them on screen
            page.wait_for_function(
                "Array.from(document.querySelectorAll('#results-table img'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            assert page.locator("#results-table img").count() == 2 * len(SCORES)

            def column(index: int) -> list[str]:
                return page.eval_on_selector_all(
                    "#results-table tbody tr", f"rs => rs.map(r => r.cells[{index}].textContent)"
                )

            scores = [float(s) for s in column(4) if s]
            assert scores == sorted(SCORES, reverse=True)
            assert "<EOF>" in column(6)[-1]  # the error text, escaped and shown as text
            assert "defect <1> & co" in column(6)[0]
            page.click("#results-table th:has-text('Score')")  # was descending: now ascending
            assert [float(s) for s in column(4) if s] == sorted(SCORES)
            page.click("#results-table th:has-text('File')")
            assert column(3) == sorted(column(3), key=str.lower)
            page.click("#results-table th:has-text('#')")
            assert [int(r) for r in column(0)] == list(range(1, len(SCORES) + 2))

            page.click("#filters button[data-filter='NG']")
            assert set(column(5)) == {"NG"} and len(column(5)) == 4
            page.click("#filters button[data-filter='failed']")
            assert column(5) == ["failed"]
            page.click("#filters button[data-filter='OK']")
            assert set(column(5)) == {"OK"} and len(column(5)) == 2

            # Enlarge: image, overlay and mask side by side, the full-size files of the run.
            page.click("#results-table tbody tr:first-child img[alt='overlay']")
            viewer = page.locator("dialog#viewer")
            assert viewer.is_visible()
            assert viewer.locator("figure").count() == 3
            page.wait_for_function(
                "Array.from(document.querySelectorAll('#viewer img')).every(i => i.complete && i.naturalWidth > 0)"
            )
            widths = page.eval_on_selector_all("#viewer img", "is => is.map(i => i.naturalWidth)")
            assert widths == [140, 140, 140]  # full size, not the thumbnails
            page.keyboard.press("Escape")
            assert not viewer.is_visible()

            # No text of the histogram or the colour scale is cut by its box.
            for svg in ("svg#histogram", "svg#colour-scale"):
                inside = page.eval_on_selector(
                    svg,
                    "s => Array.from(s.querySelectorAll('text')).every(t => { const b = t.getBBox(); "
                    "return b.x >= 0 && b.y >= 0 && b.x + b.width <= s.viewBox.baseVal.width && "
                    "b.y + b.height <= s.viewBox.baseVal.height; })",
                )
                assert inside, svg

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("ANOMALENS_SCREENSHOT"):  # keep a copy to look at
                shutil.copy(shot, os.environ["ANOMALENS_SCREENSHOT"])
            # Only the report itself and the run's own files were requested: no network.
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
            assert not errors, errors
        finally:
            browser.close()


def test_calibration_rows_from_the_threshold_rule_fields(tmp_path):
    from types import SimpleNamespace

    from anomalens.report import calibration_rows

    assert calibration_rows(SimpleNamespace(value=0.4)) == {}  # a threshold that states no rates
    stated = SimpleNamespace(max_false_reject=0.01, expected_false_reject=1 / 65, false_reject_bound=0.045,
                             confidence=0.95, n_scores=64, rank=1, defects=8, escapes=2, escape_bound=0.59,
                             warning="64 references are too few for 1 %")
    rows = calibration_rows(stated)
    assert rows["False-reject target"] == "1 %" and rows["Expected false-reject rate"] == "1.54 %"
    assert rows["False-reject rate upper bound (95 % confidence)"] == "4.5 %"
    assert rows["Rule"] == "at the largest of 64 good (leave-one-out) scores"
    assert calibration_rows(SimpleNamespace(rank=3, n_scores=64))["Rule"].startswith("at the 3rd largest of 64")
    assert rows["Known defects"] == "2 of 8 escape" and rows["Escape rate upper bound"] == "59 %"
    assert rows["Warning"].startswith("64 references")
    page = write_report(tmp_path, records=[], summary_info={"calibration": rows}).read_text()
    section = page[page.index('id="calibration"') :]
    assert "Expected false-reject rate</dt><dd>1.54 %" in section
