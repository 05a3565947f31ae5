"""The README's screenshot of the `anomalens serve` page, made in headless Chromium.

Fits patchknn on a few good images of an MVTec-layout category, serves it on 127.0.0.1 (in this
process), uploads one good and a few defective test images through the page and saves a PNG.

    python benchmarks/serve_screenshot.py --data ../shared/data/magnetic_tile --out docs/serve_page.png
"""

from __future__ import annotations

import argparse
import random
import socket
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="an MVTec-layout category folder")
    ap.add_argument("--out", type=Path, default=Path("docs/serve_page.png"))
    ap.add_argument("--refs", type=int, default=8)
    ap.add_argument("--defects", default="good,crack,blowhole,fray", help="one test image from each folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import uvicorn
    from playwright.sync_api import sync_playwright

    from anomalens import Detector
    from anomalens.images import list_images
    from anomalens.serve import ModelRegistry, create_app

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    good = list_images([args.data / "train" / "good"])
    det = Detector("patchknn").fit(rng.sample(good, args.refs)).calibrate()
    registry = ModelRegistry()
    registry.add(args.data.name, det)
    uploads = [rng.choice(list_images([args.data / "test" / d])) for d in args.defects.split(",")]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(registry), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#status:has-text('loaded')")
            for path in uploads[::-1]:  # newest first on the page: upload in reverse to show them in order
                page.set_input_files("#files", str(path))
                page.wait_for_function(
                    f"document.querySelectorAll('.card[data-decision], .card.failed').length == "
                    f"{uploads[::-1].index(path) + 1}"
                )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    print(f"wrote {args.out}: {', '.join(f'{p.parent.name}/{p.name}' for p in uploads)}")


if __name__ == "__main__":
    main()
