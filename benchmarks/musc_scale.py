"""Time and peak memory of `musc` against the batch size N (synthetic 256 x 256 images).

Each N runs in its own process (so peak RSS is that run's), scoring N synthetic textured images
(a few with a planted defect) jointly, and prints one Markdown row per N plus the growth
exponent of time between consecutive N (1 = linear, 2 = quadratic).

    python benchmarks/musc_scale.py --sizes 100,300,1000 --set max_partners=32
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time


def _images(n: int, size: int):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from anomalens.images import LoadedImage

    for i in range(n):
        rng = np.random.default_rng(i)
        noise = torch.tensor(rng.random((1, 1, size // 8, size // 8)), dtype=torch.float32)
        grey = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        rgb = np.repeat((80 + 90 * grey).astype(np.uint8)[:, :, None], 3, axis=2)
        if i % 10 == 0:
            rgb[size // 3 : size // 3 + size // 10, size // 2 : size // 2 + size // 10] = 250
        yield LoadedImage(path=f"synthetic_{i:05d}.png", rgb=rgb)


def _child(n: int, size: int, threads: int, settings: dict) -> None:
    import torch

    from anomalens import Detector

    torch.set_num_threads(threads)
    det = Detector("musc", progress=False, **settings)
    start = time.perf_counter()
    results = list(det.predict_iter(_images(n, size)))
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    top = sorted(range(n), key=lambda i: -results[i].score)[: max(1, n // 10)]
    hit = sum(1 for i in top if i % 10 == 0) / len(top)
    print(json.dumps({"n": n, "seconds": seconds, "peak_rss_mb": rss, "defects_in_top": hit}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="musc setting key=JSON value (repeatable)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    if args.child:
        _child(args.child, args.image_size, args.threads, settings)
        return
    label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    print(f"musc ({label}), synthetic {args.image_size} px images, {args.threads} thread(s)\n")
    print("| N | seconds | s / image | peak RSS MB | defects in top 10 % | time growth exponent |")
    print("|---|---|---|---|---|---|")
    previous = None
    for n in (int(x) for x in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--image-size", str(args.image_size),
               "--threads", str(args.threads)] + [a for s in args.set for a in ("--set", s)]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        growth = ""
        if previous is not None:
            growth = f"{math.log(row['seconds'] / previous['seconds']) / math.log(n / previous['n']):.2f}"
        print(
            f"| {n} | {row['seconds']:.1f} | {row['seconds'] / n:.3f} | {row['peak_rss_mb']:.0f} | "
            f"{100 * row['defects_in_top']:.0f} % | {growth} |",
            flush=True,
        )
        previous = row


if __name__ == "__main__":
    main()
