"""Local loop vs Ray on many synthetic images: throughput and peak memory per process.

Writes N synthetic textured PNGs (reused when present), fits `patchknn` on 4 of them, then
scores all N (a) with the library's local loop (`Detector.predict_iter`, results written as
JSONL, no maps: the same outputs as the Ray engine's default) in a child process, and (b) with
`score_with_ray` on a local Ray instance. Wall time includes loading the model (and for Ray,
starting the actors, not Ray itself).

Each phase runs in its own process and writes its numbers to WORK/results.json as soon as it
ends, so a phase that is killed (e.g. by the kernel's OOM killer on a shared machine) is
recorded as failed and the other phase's numbers are kept; a second run skips the phases
already measured with the same configuration (--again re-runs them). Ray gets a small object
store (--object-store-mb): the shards travel as files, not as objects.

    python benchmarks/ray_scale.py                         # 10,000 images of 128 x 128
    python benchmarks/ray_scale.py --images 500 --actors 2 --image-size 128
"""

from __future__ import annotations

import argparse
import json
import os
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


def write_json(path: Path, data: dict) -> None:
    """Atomically: a run killed half-way leaves the previous file, never a truncated one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_run(images: str, model: str, out: str, result: str, threads: int, batch: int) -> None:
    """Child process: score every image with the local loop; wall time and peak RSS to `result`."""
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
    write_json(Path(result), {"images": n, "seconds": seconds, "peak_rss_mb": peak_rss_mb()})


def ray_run(images: str, model: str, out: str, result: str, args) -> None:
    """Child process: the Ray driver. Scores every image on a local Ray instance; its own peak
    RSS, each actor's and the throughput to `result`."""
    # Ray's memory monitor kills workers when the *node* is above 95 % memory, which on a shared
    # machine is mostly other people's processes; the kernel's OOM killer still guards it.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    import ray

    from anomalens.engines.ray import score_with_ray

    ray.init(
        num_cpus=args.actors,
        object_store_memory=args.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    summary = score_with_ray(
        [images],
        out,
        model,
        actors=args.actors,
        cpus_per_actor=1,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        overwrite=True,
    )
    ray.shutdown()
    write_json(
        Path(result),
        {
            "images": summary.total,
            "ok": summary.ok,
            "failed": summary.failed,
            "shards": summary.shards_done_now,
            "seconds": summary.seconds,
            "images_per_second": summary.images_per_second,
            "driver_peak_rss_mb": peak_rss_mb(),
            "actor_peak_rss_mb": sorted(summary.actor_peak_rss_mb.values()),
            "object_store_mb": args.object_store_mb,
        },
    )


def run_phase(name: str, cmd: list[str], result: Path) -> dict:
    """One phase in its own process; a crash (e.g. the OOM killer) is recorded, not fatal."""
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    child = subprocess.run(cmd, capture_output=True, text=True)
    if child.returncode == 0 and result.is_file():
        return json.loads(result.read_text())
    tail = (child.stderr or "").strip().splitlines()[-3:]
    return {"error": f"exit code {child.returncode} after {time.perf_counter() - start:.0f} s", "stderr": tail}


def table(config: dict, phases: dict) -> str:
    lines = [
        f"{config['images']} synthetic {config['side']}x{config['side']} PNGs, patchknn image_size "
        f"{config['image_size']}, batch {config['batch_size']}, 1 thread per process\n",
        "| path | processes | wall s | images/s | peak RSS per process (MB) |",
        "|---|---|---|---|---|",
    ]
    local = phases.get("local")
    if local and "error" not in local:
        lines.append(
            f"| local loop | 1 | {local['seconds']:.0f} | {local['images'] / local['seconds']:.1f} | "
            f"{local['peak_rss_mb']:.0f} |"
        )
    elif local:
        lines.append(f"| local loop | 1 | failed: {local['error']} | | |")
    ray_row = phases.get("ray")
    if ray_row and "error" not in ray_row:
        actors = ", ".join(f"{v:.0f}" for v in ray_row["actor_peak_rss_mb"])
        lines.append(
            f"| Ray, {config['actors']} actors | driver + {len(ray_row['actor_peak_rss_mb'])} actors | "
            f"{ray_row['seconds']:.0f} | {ray_row['images_per_second']:.1f} | "
            f"driver {ray_row['driver_peak_rss_mb']:.0f}; actors {actors} |"
        )
        lines.append(
            f"\nRay: {ray_row['ok']} ok, {ray_row['failed']} failed, {ray_row['shards']} shards, "
            f"object store {ray_row['object_store_mb']} MB"
        )
    elif ray_row:
        lines.append(f"| Ray, {config['actors']} actors | | failed: {ray_row['error']} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--side", type=int, default=128, help="synthetic image side in pixels")
    ap.add_argument("--image-size", type=int, default=128, help="patchknn model input side")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--object-store-mb", type=int, default=256, help="Ray object store size (small: shards travel as files)"
    )
    ap.add_argument("--phases", default="local,ray", help="which phases to run: local, ray or both")
    ap.add_argument("--again", action="store_true", help="re-run phases already in WORK/results.json")
    ap.add_argument("--work", default="/tmp/anomalens_ray_scale", help="folder for images, outputs, results.json")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        phase, *paths = args.child
        if phase == "local":
            local_run(*paths, threads=1, batch=args.batch_size)
        else:
            ray_run(*paths, args)
        return

    import shutil

    from anomalens.calibration import Threshold
    from anomalens.detector import Detector

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in ("images", "side", "image_size", "actors", "shard_size", "batch_size")}
    results_file = work / "results.json"
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
    phases = saved.get("phases", {}) if saved.get("config") == config else {}
    images = work / f"images_{args.side}"
    make_images(images, args.images, args.side)
    model = work / f"model_{args.image_size}"
    if not (model / "detector.json").is_file():
        shutil.rmtree(model, ignore_errors=True)
        det = Detector("patchknn", image_size=args.image_size).fit(sorted(images.glob("*.png"))[1:5])
        det.threshold = Threshold.given(0.1)
        det.save(model)
    flags = [
        "--batch-size",
        str(args.batch_size),
        "--actors",
        str(args.actors),
        "--shard-size",
        str(args.shard_size),
        "--object-store-mb",
        str(args.object_store_mb),
    ]
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase not in ("local", "ray"):
            raise SystemExit(f"unknown phase {phase!r}: local or ray")
        if phase in phases and "error" not in phases[phase] and not args.again:
            print(f"{phase}: measured before, kept (see {results_file}; --again re-runs it)", flush=True)
            continue
        out = work / ("local.jsonl" if phase == "local" else "ray_out")
        result = work / f"{phase}_result.json"
        cmd = [sys.executable, __file__, *flags, "--child", phase, str(images), str(model), str(out), str(result)]
        print(f"{phase}: running ...", flush=True)
        phases[phase] = run_phase(phase, cmd, result)
        write_json(results_file, {"config": config, "phases": phases})
        print(f"{phase}: {json.dumps(phases[phase])}", flush=True)
    print()
    print(table(config, phases))


if __name__ == "__main__":
    main()
