"""Screenshots of a report.html in headless Chromium: the page, and the viewer opened on the worst image.

    anomalens demo && python benchmarks/report_screenshot.py anomalens_demo/results/grass/report.html \
        --page docs/report_demo.png --viewer docs/report_viewer.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--page", type=Path, required=True, help="PNG of the whole page")
    parser.add_argument("--viewer", type=Path, help="PNG of the viewer on the first row")
    parser.add_argument("--rows", type=int, default=6, help="rows left on the page screenshot's table")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(args.report.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        # A short table keeps the picture readable; the page itself shows 100 rows.
        page.evaluate(f"Array.from(document.querySelectorAll('#results-table tbody tr')).slice({args.rows})"
                      ".forEach(r => r.remove())")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
        page.screenshot(path=str(args.page), full_page=True)
        if args.viewer:
            page.evaluate("window.scrollTo(0, 0)")
            page.click("#results-table tbody tr:first-child img[alt='overlay']")
            page.wait_for_function("Array.from(document.querySelectorAll('#viewer img')).every(i => i.complete)")
            page.screenshot(path=str(args.viewer))
        browser.close()


if __name__ == "__main__":
    main()
