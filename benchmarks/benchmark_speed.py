"""Where the time of `anomalens benchmark` goes: scoring against metrics, on large images.

Builds an MVTec-layout copy of a category with every image and mask resized to 1130x460
(the elongated size of the issue; bilinear images, nearest masks) in a temporary folder: the
first N/2 good and N/2 defective test images of a fixed sorted order, and the train/good
images. Then runs `anomalens benchmark` (patchknn, 4 shots, seed 0) in its own process with
each stage's function wrapped to add up its wall seconds: scoring (the detector), reading
masks, accumulating pixels, computing the pixel metrics at the end.

    python benchmarks/benchmark_speed.py                    # 90 and 200 test images
    python benchmarks/benchmark_speed.py --images 90 --repeat 2

90 images x 1130 x 460 = 47 M pixels stay under the exact pixel limit (50 M): the metrics
rank every pixel, the slowest case; 200 images go to the histogram path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZE_WH = (1130, 460)
STAGES = ("score", "load_mask", "pixel_update", "pixel_compute", "image_metrics")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "magnetic_tile"


def make_dataset(source: Path, target: Path, n: int) -> None:
    from PIL import Image

    def convert(src: Path, dst: Path, nearest: bool = False) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as img:
            img.resize(SIZE_WH, Image.NEAREST if nearest else Image.BILINEAR).save(dst)

    goods = sorted((source / "test" / "good").iterdir())[: n // 2]
    defects = sorted(p for d in sorted((source / "test").iterdir()) if d.name != "good" for p in sorted(d.iterdir()))
    defects = defects[:: max(1, len(defects) // (n - len(goods)))][: n - len(goods)]
    for p in goods:
        convert(p, target / "test" / "good" / p.name)
    for p in defects:
        convert(p, target / "test" / p.parent.name / p.name)
        mask = source / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        convert(mask, target / "ground_truth" / p.parent.name / mask.name, nearest=True)
    for p in sorted((source / "train" / "good").iterdir())[:8]:
        convert(p, target / "train" / "good" / p.name)


def child(data: str, out: str, threads: int | None) -> None:
    start = time.perf_counter()
    totals = dict.fromkeys(STAGES, 0.0)
    lock = threading.Lock()

    def timed(stage, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    totals[stage] += time.perf_counter() - t

        return wrapper

    import anomalens.benchmark as bench
    from anomalens.methods.base import Method
    from anomalens.metrics import PixelMetricAccumulator

    Method.predict = timed("score", Method.predict)
    bench.load_mask = timed("load_mask", bench.load_mask)
    bench.image_metrics = timed("image_metrics", bench.image_metrics)
    PixelMetricAccumulator.update = timed("pixel_update", PixelMetricAccumulator.update)
    PixelMetricAccumulator.compute = timed("pixel_compute", PixelMetricAccumulator.compute)
    from anomalens.cli import app

    argv = [] if threads is None else ["--threads", str(threads)]
    argv += ["benchmark", "--data", data, "--method", "patchknn", "--shots", "4", "--seeds", "0", "--out", out]
    try:
        app(argv, standalone_mode=False)
    except SystemExit as exit_:
        if exit_.code:
            raise
    runs = [json.loads(line) for line in (Path(out) / "runs.jsonl").read_text().splitlines()]
    metrics = runs[-1]["metrics"]
    print(json.dumps({"wall": time.perf_counter() - start, "images": metrics["images"], **totals,
                      "pixel_auroc": metrics["pixel_auroc"], "pixel_aupro": metrics["pixel_aupro"],
                      "image_auroc": metrics["image_auroc"], "exact": metrics["pixel_metrics_exact"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", default="90,200")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label", default="default")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads)
        return
    rows = []
    for n in (int(x) for x in args.images.split(",")):
        with tempfile.TemporaryDirectory(prefix="benchmark_speed_") as tmp:
            data = Path(tmp) / "data"
            make_dataset(args.data.resolve(), data / args.data.resolve().name, n)
            for _ in range(args.repeat):
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [sys.executable, __file__, "--child", str(data), str(out)]
                cmd += [] if args.threads is None else ["--threads", str(args.threads)]
                load = os.getloadavg()[0]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["load"] = load
                rows.append(row)
                print(f"{n} images: {row['images'] / row['wall']:.2f} images/s", file=sys.stderr)
    size = f"{SIZE_WH[0]}x{SIZE_WH[1]}"
    print(f"\n`anomalens benchmark`, patchknn 4-shot, {size} px images; configuration: {args.label}\n")
    print("| test images | images/s (whole command) | wall s | scoring s | masks s | pixel update s | pixel metrics s "
          "| exact | image AUROC | pixel AUROC | AUPRO | load avg |")
    print("|" + "---|" * 12)
    for r in rows:
        print(f"| {r['images']} | {r['images'] / r['wall']:.2f} | {r['wall']:.1f} | {r['score']:.1f} | "
              f"{r['load_mask']:.1f} | {r['pixel_update']:.1f} | {r['pixel_compute']:.1f} | {r['exact']} | "
              f"{r['image_auroc']:.6f} | {r['pixel_auroc']:.6f} | {r['pixel_aupro']:.6f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
