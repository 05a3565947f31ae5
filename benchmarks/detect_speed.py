"""End-to-end speed and memory of `anomalens detect` (patchknn, every output written).

Each run is one `anomalens detect` in its own process (its peak RSS is its own), on the first N
images of a fixed, evenly spaced draw from `<data>/test` (good and defective), with 4
`train/good` references, `--threshold auto` (so masks are written too), overlays, masks,
npy maps, results.jsonl/.csv and report.html. The time split is measured by wrapping the
functions of each stage (wall seconds inside them, summed over calls; stages that run in
other threads overlap with the model, so the split can add up to more than the run).

    python benchmarks/detect_speed.py                              # 500 and 1000 images
    python benchmarks/detect_speed.py --images 200 --repeat 3
    python benchmarks/detect_speed.py --images 200 --load 1        # with one core kept busy
    python benchmarks/detect_speed.py --threads 2 --env OMP_WAIT_POLICY=ACTIVE   # torch's old defaults

--load N starts N busy-loop processes (`while True: pass`) for the measurement and ends
them (by their PIDs) afterwards, to show how a loaded machine changes the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STAGES = ("decode", "prepare", "model", "knn", "write", "report")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "magnetic_tile"


def select_images(data: Path, n: int) -> list[Path]:
    """n test images spread evenly over the sorted test set (good and every defect type)."""
    files = sorted(p for p in (data / "test").rglob("*") if p.suffix.lower() in (".jpg", ".png", ".bmp", ".tif"))
    if n > len(files):
        raise SystemExit(f"{data}/test has {len(files)} images, fewer than {n}")
    return [files[int(i * len(files) / n)] for i in range(n)]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def instrument(totals: dict[str, float], rss: list[tuple[int, float]], every: int, workers: int | None = None) -> None:
    """Wrap each stage's function so that its wall seconds add up in `totals`."""
    import anomalens.detector as detector
    import anomalens.inspection as inspection
    import anomalens.report as report
    from anomalens.backbones.cnn import EfficientNetPatchBackbone
    from anomalens.methods.patchknn import PatchKnn
    from anomalens.outputs import OutputWriter

    lock = threading.Lock()

    def timed(stage, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    totals[stage] += time.perf_counter() - start

        return wrapper

    if hasattr(detector.Detector, "_load"):  # decoding, in the read-ahead threads
        detector.Detector._load = timed("decode", detector.Detector._load)
    else:  # older versions
        detector._try_load = timed("decode", detector._try_load)
    PatchKnn.model_inputs = timed("prepare", PatchKnn.model_inputs)
    EfficientNetPatchBackbone.forward = timed("model", EfficientNetPatchBackbone.forward)
    try:  # `fused_recipe` (the default since session 25): one pass for both recipes' features
        from anomalens.methods import recipe_fusion

        recipe_fusion.encode_both = timed("model", recipe_fusion.encode_both)
    except (ImportError, AttributeError):  # older versions
        pass
    if hasattr(PatchKnn, "input_maps"):  # the kNN and the map on the model inputs, fused or not
        PatchKnn.input_maps = timed("knn", PatchKnn.input_maps)
    else:  # older versions
        PatchKnn.score = timed("knn", PatchKnn.score)
    write = timed("write", OutputWriter.write)
    written = [0]

    def write_and_sample(self, *args, **kwargs):
        record = write(self, *args, **kwargs)
        written[0] += 1
        if written[0] % every == 0:
            rss.append((written[0], rss_mb()))
        return record

    OutputWriter.write = write_and_sample
    report.write_report = timed("report", report.write_report)
    run = inspection.run

    def run_and_keep(*args, **kwargs):
        if workers is not None:
            kwargs["workers"] = workers
        auto = getattr(inspection, "scoring_workers", lambda detector: 1)  # versions without it: 1
        totals["workers_used"] = kwargs.get("workers") or auto(args[0])
        summary = run(*args, **kwargs)
        totals["run_seconds"] = summary.seconds
        totals["scored"] = summary.scored
        return summary

    inspection.run = run_and_keep


def child(args: argparse.Namespace) -> None:
    """One measured `anomalens detect` in this process; prints a JSON line."""
    start = time.perf_counter()
    if args.threads is None:  # what the CLI's --threads 0 does before torch is imported
        try:
            from anomalens.cli.app import default_threads
        except ImportError:  # a version without it: torch's default
            pass
        else:
            os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
    totals = dict.fromkeys(STAGES, 0.0)
    rss: list[tuple[int, float]] = []
    instrument(totals, rss, max(1, args.one // 4), args.workers)
    from anomalens.cli import app

    argv = [] if args.threads is None else ["--threads", str(args.threads)]
    argv += ["detect", *args.inputs, "--refs", args.refs, "--out", args.out, "--threshold", "auto", "--overwrite"]
    argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    argv += [a for item in args.set for a in ("--set", item)]
    try:
        app(argv, standalone_mode=False)
    except SystemExit as exit_:
        if exit_.code:
            raise
    import torch

    cpu = os.times()
    print(
        json.dumps(
            {
                "images": args.one,
                "wall": time.perf_counter() - start,
                "cpu": cpu.user + cpu.system,
                "torch_threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss": rss,
                **totals,
            }
        )
    )


def measure(args: argparse.Namespace, images: list[Path], refs: Path, env: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix="detect_speed_"))
    listing = out.parent / f"{out.name}.inputs"
    try:
        cmd = [sys.executable, __file__, "--one", str(len(images)), "--refs-dir", str(refs)]
        cmd += ["--out-dir", str(out / "o")]
        cmd += [] if args.threads is None else ["--threads", str(args.threads)]
        cmd += [] if args.workers is None else ["--workers", str(args.workers)]
        cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        cmd += [a for item in args.set for a in ("--set", item)]
        listing.write_text("\n".join(map(str, images)))
        cmd += ["--inputs-file", str(listing)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"detect failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)
        listing.unlink(missing_ok=True)


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", default="500,1000", help="comma-separated image counts")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="anomalens --threads (default: its default)")
    parser.add_argument("--batch-size", type=int, default=0, help="detect --batch-size (default: its default)")
    parser.add_argument(
        "--workers", type=int, default=None, help="inspection.run(workers=N): batches scored at once (default: auto)"
    )
    parser.add_argument("--load", type=int, default=0, help="busy-loop processes kept running while measuring")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the measured process")
    parser.add_argument("--label", default="", help="a name for this configuration in the table")
    parser.add_argument("--set", action="append", default=[], help="a method setting for detect, key=value")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--refs-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--inputs-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.refs, args.out = args.refs_dir, args.out_dir
        args.inputs = Path(args.inputs_file).read_text().split("\n")
        child(args)
        return

    data = args.data.resolve()
    counts = [int(n) for n in args.images.split(",")]
    env = dict(os.environ)
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    with tempfile.TemporaryDirectory(prefix="detect_speed_refs_") as refs:
        for p in sorted((data / "train" / "good").iterdir())[: args.shots]:
            shutil.copy(p, refs)
        load = start_load(args.load)
        rows = []
        try:
            for n in counts:
                images = select_images(data, n)
                for _ in range(args.repeat):
                    before = os.getloadavg()[0]
                    row = measure(args, images, Path(refs), env)
                    row["load_before"] = before
                    row["load_after"] = os.getloadavg()[0]
                    rows.append(row)
                    print(f"{n} images: {row['scored'] / row['run_seconds']:.1f} images/s (run), "
                          f"{n / row['wall']:.1f} images/s (whole command)", file=sys.stderr)
        finally:
            for p in load:
                p.kill()
                p.wait()
    label = args.label or "default"
    print(f"\n`anomalens detect`, patchknn, {args.shots} references, {data.name}; configuration: {label}; "
          f"busy-loop processes: {args.load}\n")
    print("| images | images/s (run) | images/s (whole command) | decode s | prepare s | model s | kNN+map s "
          "| write s | report s | CPU s | threads x workers | peak RSS MB | RSS MB at 1/4, 1/2, 3/4, all | load avg |")
    print("|" + "---|" * 14)
    for r in rows:
        rss = ", ".join(f"{mb:.0f}" for _, mb in r["rss"])
        print(f"| {r['images']} | {r['scored'] / r['run_seconds']:.1f} | {r['images'] / r['wall']:.1f} | "
              f"{r['decode']:.1f} | {r['prepare']:.1f} | {r['model']:.1f} | {r['knn']:.1f} | {r['write']:.1f} | "
              f"{r['report']:.1f} | {r['cpu']:.0f} | {r['torch_threads']} x {r.get('workers_used', 1)} | "
              f"{r['peak_rss_mb']:.0f} | {rss} | "
              f"{r['load_before']:.1f} -> {r['load_after']:.1f} |")


if __name__ == "__main__":
    main()
