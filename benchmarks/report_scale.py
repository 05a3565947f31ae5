"""How the HTML report scales: writing it and opening it in headless Chromium for 1,000 to 10,000 images.

Each image has its own picture files (textured 256 x 256 PNGs, overlays and masks) so that every
row's thumbnails are distinct, as in a real run. Prints, per size: seconds to write report.html,
its size, and in Chromium the first contentful paint and the time until the table is interactive.

    python benchmarks/report_scale.py --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anomalens.colour_scale import ColourScale
from anomalens.report import write_report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def make_run(out: Path, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    for sub in ("in", "overlays", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:256, 0:256]
    records = []
    for i in range(n):
        phase = rng.random() * 6.28
        grey = 128 + 60 * np.sin(xx / (4 + i % 7) + phase) * np.cos(yy / 9.0)
        img = np.clip(grey[:, :, None] + rng.normal(0, 8, (256, 256, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(out / "in" / f"img{i}.png", compress_level=1)
        Image.fromarray(img[:, :, ::-1]).save(out / "overlays" / f"img{i}.png", compress_level=1)
        score = float(rng.random())
        mask = None
        if score > 0.8:
            m = np.zeros((256, 256), np.uint8)
            m[100:140, 80:150] = 255
            Image.fromarray(m).save(out / "masks" / f"img{i}.png")
            mask = f"masks/img{i}.png"
        records.append({
            "path": str(out / "in" / f"img{i}.png"), "score": score, "decision": "NG" if score > 0.8 else "OK",
            "threshold": 0.8, "descriptions": [], "overlay": f"overlays/img{i}.png", "mask": mask, "status": "ok",
        })
    return records


def open_in_chromium(report: Path) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            start = time.perf_counter()
            page.goto(report.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            interactive = time.perf_counter() - start
            fcp = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0]||{startTime:-1}).startTime")
            return fcp / 1000.0, interactive
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2, help="threads making thumbnails")
    args = parser.parse_args()
    print("| images | write report (s) | report.html (MB) | first paint (s) | interactive (s) |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            records = make_run(out, n)
            start = time.perf_counter()
            report = write_report(out, records, summary_info={"threshold": 0.8}, workers=args.workers,
                                  colour_scale=ColourScale.around(0.8))
            written = time.perf_counter() - start
            size = report.stat().st_size / 1e6
            fcp, interactive = open_in_chromium(report)
            print(f"| {n} | {written:.1f} | {size:.1f} | {fcp:.2f} | {interactive:.2f} |", flush=True)


if __name__ == "__main__":
    main()
