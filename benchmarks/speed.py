"""Seconds per image and peak memory of each method at its default settings, on this CPU.

CLIP methods run with random weights of the real architecture (ViT-B-16-plus-240 for FADE and
WinCLIP): the FLOPs and memory are those of trained weights. Each configuration runs in its own
process so its peak resident memory is its own.

    python benchmarks/speed.py                 # all configurations, 3 timed images each
    python benchmarks/speed.py --images 5 --configs fade-0,fade-1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    "patchknn-0": ("patchknn", 0, {}),
    "patchknn-4": ("patchknn", 4, {}),
    "fade-0": ("fade", 0, {"weights": "random"}),
    "fade-1": ("fade", 1, {"weights": "random"}),
    "fade-4": ("fade", 4, {"weights": "random"}),
    "winclip-0": ("winclip", 0, {"weights": "random"}),
    "winclip-1": ("winclip", 1, {"weights": "random"}),
}


def run_one(name: str, images: int, size: int) -> dict:
    """Measure one configuration in this process."""
    import numpy as np
    import torch

    from anomalens import Detector
    from anomalens.images import LoadedImage

    torch.manual_seed(0)
    method, shots, settings = CONFIGS[name]
    rng = np.random.default_rng(0)

    def image(i: int) -> LoadedImage:
        return LoadedImage(f"synthetic{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))

    start = time.perf_counter()
    det = Detector(method, **settings)
    build = time.perf_counter() - start
    start = time.perf_counter()
    det.fit([image(100 + i) for i in range(shots)])
    fit = time.perf_counter() - start
    det.predict([image(0)])  # warm-up: text features, allocator
    queries = [image(i + 1) for i in range(images)]
    start = time.perf_counter()
    for q in queries:
        det.predict([q])
    per_image = (time.perf_counter() - start) / images
    return {
        "config": name,
        "method": method,
        "shots": shots,
        "backbone": det.backbone_name,
        "seconds_per_image": per_image,
        "fit_seconds": fit,
        "build_seconds": build,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3, help="timed images per configuration")
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic query images")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.images, args.size)))
        return
    rows = []
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--images", str(args.images), "--size", str(args.size)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['seconds_per_image']:.2f} s/image", file=sys.stderr)
    base = next((r for r in rows if r["config"] == "fade-0"), rows[0] if rows else None)
    print(f"\n{args.images} timed images of {args.size}x{args.size} px per configuration, CPU threads: "
          f"{rows[0]['threads'] if rows else '?'}\n")
    print("| method | shots | backbone | s / image | x fade zero-shot | fit s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["seconds_per_image"] / base["seconds_per_image"] if base else float("nan")
        print(f"| {r['method']} | {r['shots']} | {r['backbone']} | {r['seconds_per_image']:.2f} | {ratio:.2f} | "
              f"{r['fit_seconds']:.1f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
