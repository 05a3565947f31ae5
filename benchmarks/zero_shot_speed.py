"""Single-image zero-shot patchknn: images per second of `Detector.predict`, one setting change at a time.

Reads the first N good magnetic_tile test images into memory (decoding is not timed), warms up on five, then
times `predict` over all of them, alternating the variants `--repeat` times (one torch thread by default):

    python benchmarks/zero_shot_speed.py --images 150 '{}' '{"zero_shot_fused": false}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anomalens import Detector
from anomalens.images import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="JSON objects of patchknn settings ('{}' = the defaults)")
    parser.add_argument("--data", default="../shared/data/magnetic_tile/test/good")
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = [load_image(p) for p in sorted(Path(args.data).iterdir())[: args.images]]
    print(f"{len(images)} images of {args.data}, {args.threads} torch thread(s)\n")
    print("| variant | run | images/s | ms / image |\n|---|---|---|---|")
    for run in range(args.repeat):
        for variant in args.variants:
            detector = Detector("patchknn", **json.loads(variant)).fit([])
            detector.predict(images[:5])
            start = time.perf_counter()
            detector.predict(images)
            seconds = time.perf_counter() - start
            print(f"| `{variant}` | {run + 1} | {len(images) / seconds:.1f} | {1000 * seconds / len(images):.1f} |")


if __name__ == "__main__":
    main()
