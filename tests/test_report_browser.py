"""The report with 2,000 images in headless Chromium: it opens fast, filters, pages and enlarges."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip
from PIL import Image

from anomalens.colour_scale import ColourScale
from anomalens.report import PAGE_SIZE, write_report

N_ROWS = 2000
N_FAILED = 25


def generated_run(out: Path, n: int = N_ROWS, distinct: int = 16) -> list[dict]:
    """Records of `n` images (a few distinct picture files, reused) with NG, OK and failed rows."""
    rng = np.random.default_rng(0)
    for sub in ("in", "overlays", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for k in range(distinct):
        img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(img).save(out / "in" / f"img{k}.png")
        Image.fromarray(255 - img).save(out / "overlays" / f"img{k}.png")
        mask = np.zeros((60, 80), np.uint8)
        mask[10 + k : 30 + k, 20:50] = 255
        Image.fromarray(mask).save(out / "masks" / f"img{k}.png")
    records = []
    for i, score in enumerate(rng.random(n)):
        k = i % distinct
        if i < N_FAILED:
            records.append({"path": f"/nowhere/broken{i}.png", "status": "error", "error": "not an image file"})
            continue
        records.append({
            "path": str(out / "in" / f"img{k}.png"),
            "score": float(score),
            "decision": "NG" if score > 0.8 else "OK",
            "threshold": 0.8,
            "descriptions": [],
            "overlay": f"overlays/img{k}.png",
            "mask": f"masks/img{k}.png" if score > 0.8 else None,
            "status": "ok",
        })
    return records


@pytest.mark.browser
def test_report_with_2000_rows_opens_fast_filters_and_enlarges(tmp_path):
    sync_playwright = browser_or_skip()
    records = generated_run(tmp_path)
    n_ng = sum(r.get("decision") == "NG" for r in records)
    report = write_report(tmp_path, records, summary_info={"threshold": 0.8}, colour_scale=ColourScale.around(0.8))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            start = time.perf_counter()
            page.goto(report.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            interactive = time.perf_counter() - start
            first_paint = page.evaluate(
                "(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime"
            )
            # Loose bounds: a busy shared machine; the point is seconds, not minutes.
            assert interactive < 10.0, interactive
            assert 0 <= first_paint < 10_000, first_paint

            rows = page.locator("#results-table tbody tr")
            assert rows.count() == PAGE_SIZE  # one page rendered, not 2,000 rows
            assert f"of {N_ROWS}" in page.locator(".page-info").first.text_content()
            # Images below the fold are not decoded up front.
            assert page.eval_on_selector_all("#results-table img", "is => is.every(i => i.loading === 'lazy')")

            def scores() -> list[float]:
                return page.eval_on_selector_all(
                    "#results-table tbody tr", "rs => rs.map(r => parseFloat(r.cells[4].textContent))"
                )

            first_page = scores()
            assert first_page == sorted(first_page, reverse=True)
            page.click(".pager >> nth=0 >> [data-step='1']")
            second_page = scores()
            assert max(second_page) <= min(first_page) and len(second_page) == PAGE_SIZE

            page.click("#filters button[data-filter='NG']")
            assert page.locator("#filters button[data-filter='NG'] .count").text_content() == str(n_ng)
            assert f"of {n_ng})" in page.locator(".page-info").first.text_content()
            decisions = page.eval_on_selector_all(
                "#results-table tbody tr", "rs => rs.map(r => r.cells[5].textContent)"
            )
            assert set(decisions) == {"NG"} and len(decisions) == min(PAGE_SIZE, n_ng)
            page.click("#filters button[data-filter='failed']")
            assert rows.count() == N_FAILED
            page.click("#filters button[data-filter='all']")
            assert f"of {N_ROWS}" in page.locator(".page-info").first.text_content()

            # Enlarge the worst image: image, overlay and mask side by side; next with the arrow key.
            page.click("#results-table tbody tr:first-child img[alt='image']")
            viewer = page.locator("dialog#viewer")
            assert viewer.is_visible() and viewer.locator("figure").count() == 3
            shown = viewer.locator(".head b").text_content()
            assert shown == page.locator("#results-table tbody tr:first-child td.path").text_content()
            page.keyboard.press("ArrowRight")
            assert viewer.locator(".head b").text_content() == page.locator(
                "#results-table tbody tr:nth-child(2) td.path").text_content()
            page.keyboard.press("Escape")
            assert not viewer.is_visible()
        finally:
            browser.close()
