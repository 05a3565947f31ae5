"""Local loop vs Ray on many synthetic images: throughput and peak memory per process.

Writes N synthetic textured PNGs (reused when present), fits `patchknn` on 4 of them, then
scores all N (a) with the library's local loop (`Detector.predict_iter`, results written as
JSONL, no maps: the same outputs as the Ray engine's default) in a child process, and (b) with
`score_with_ray` on a local Ray instance. Wall time includes loading the model (and for Ray,
starting the actors, not Ray itself).

    python benchmarks/ray_scale.py                         # 10,000 images of 128 x 128
    python benchmarks/ray_scale.py --images 500 --actors 2 --image-size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def make_images(folder: Path, n: int, side: int) -> None:
    import numpy as np
    from PIL import Image

    from anomalens.export.graph import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.png")))
    for i in range(existing, n):
        rgb = synthetic_image(side, side, seed=i)
        if i % 10 == 0:  # some defects
            rgb[side // 3 : side // 2, side // 3 : side // 2] = np.uint8(20)
        Image.fromarray(rgb).save(folder / f"img_{i:06d}.png")


def local_run(images: str, model: str, out: str, threads: int, batch: int) -> None:
    """Child process: score every image with the local loop, print wall time and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    from anomalens.detector import load_detector
    from anomalens.images import ImageLoadError, list_images

    start = time.perf_counter()
    det = load_detector(model)
    n = 0
    with open(out, "w") as f:
        for item in det.predict_iter(list_images([images]), batch_size=batch, jobs=1, skip_errors=True):
            if not isinstance(item, ImageLoadError):
                f.write(json.dumps(item.to_record()) + "\n")
                n += 1
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": n, "seconds": seconds, "peak_rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--side", type=int, default=128, help="synthetic image side in pixels")
    ap.add_argument("--image-size", type=int, default=128, help="patchknn model input side")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--work", default="/tmp/anomalens_ray_scale", help="folder for images and outputs")
    ap.add_argument("--local-run", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.local_run:
        local_run(*args.local_run, threads=1, batch=args.batch_size)
        return

    import shutil

    import ray

    from anomalens.calibration import Threshold
    from anomalens.detector import Detector
    from anomalens.engines.ray import score_with_ray

    work = Path(args.work)
    images = work / f"images_{args.side}"
    make_images(images, args.images, args.side)
    model = work / f"model_{args.image_size}"
    shutil.rmtree(model, ignore_errors=True)
    det = Detector("patchknn", image_size=args.image_size).fit(sorted(images.glob("*.png"))[1:5])
    det.threshold = Threshold.given(0.1)
    det.save(model)

    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--batch-size",
            str(args.batch_size),
            "--local-run",
            str(images),
            str(model),
            str(work / "local.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    local = json.loads(child.stdout.strip().splitlines()[-1])

    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    summary = score_with_ray(
        [str(images)],
        work / "ray_out",
        model,
        actors=args.actors,
        cpus_per_actor=1,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        overwrite=True,
    )
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()

    print(
        f"{args.images} synthetic {args.side}x{args.side} PNGs, patchknn image_size {args.image_size}, "
        f"batch {args.batch_size}, 1 thread per process\n"
    )
    print("| path | processes | wall s | images/s | peak RSS per process (MB) |")
    print("|---|---|---|---|---|")
    print(
        f"| local loop | 1 | {local['seconds']:.0f} | {local['images'] / local['seconds']:.1f} | "
        f"{local['peak_rss_mb']:.0f} |"
    )
    actors = ", ".join(f"{v:.0f}" for v in summary.actor_peak_rss_mb.values())
    print(
        f"| Ray, {args.actors} actors | driver + {len(summary.actor_peak_rss_mb)} actors | {summary.seconds:.0f} | "
        f"{summary.images_per_second:.1f} | driver {driver_rss:.0f}; actors {actors} |"
    )
    print(f"\nRay: {summary.ok} ok, {summary.failed} failed, {summary.shards_done_now} shards")


if __name__ == "__main__":
    main()
