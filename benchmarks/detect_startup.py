"""Where the time of a short `anomalens detect` goes before and after its images: start-up, fit, threshold.

One `anomalens detect` of N magnetic_tile test images (the same evenly spaced draw as detect_speed.py) with 4
`train/good` references and `--threshold auto`, in this process, with the stages' functions wrapped to sum
their wall seconds: importing torch and anomalens, building the detector (the backbone), `fit` (of which the
references' backbone passes and coresets, `bank_with_origin`, and the fused levels' leave-one-out maps,
`normal_maps`), the threshold's calibration, and the run (scoring and writing the N images).

    python benchmarks/detect_startup.py                      # 20 images
    python benchmarks/detect_startup.py --images 20 --repeat 3
    PYTHONPATH=/tmp/before python benchmarks/detect_startup.py   # the code of a worktree, for a comparison

Each repetition runs in its own process (imports are timed from a cold interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detect_speed import DEFAULT_DATA, select_images

STAGES = ("imports", "detector", "fit", "  bank_with_origin", "  normal_maps", "threshold", "run", "total")


def child(inputs: list[str], refs: str, out: str) -> None:
    start = time.perf_counter()
    from anomalens.cli.app import default_threads

    os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))  # as the CLI does before torch
    import torch  # noqa: F401

    import anomalens.cli.detect as detect
    import anomalens.detector as detector
    import anomalens.inspection as inspection
    from anomalens.cli import app
    from anomalens.methods import recipe_fusion
    from anomalens.methods.patchknn import PatchKnn

    totals = dict.fromkeys(STAGES, 0.0)
    totals["imports"] = time.perf_counter() - start

    def timed(owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[stage] += time.perf_counter() - t

        setattr(owner, name, wrapper)

    timed(detector.Detector, "__init__", "detector")
    timed(detector.Detector, "fit", "fit")
    timed(PatchKnn, "bank_with_origin", "  bank_with_origin")
    timed(recipe_fusion, "normal_maps", "  normal_maps")
    timed(detect, "_set_and_say_threshold", "threshold")
    timed(inspection, "run", "run")
    argv = ["detect", *inputs, "--refs", refs, "--out", out, "--threshold", "auto", "--overwrite"]
    try:
        app(argv, standalone_mode=False)
    except SystemExit as exit_:
        if exit_.code:
            raise
    totals["total"] = time.perf_counter() - start
    print(json.dumps(totals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=3, metavar=("INPUTS_FILE", "REFS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        inputs_file, refs, out = args.child
        child(Path(inputs_file).read_text().split("\n"), refs, out)
        return
    data = args.data.resolve()
    images = select_images(data, args.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="detect_startup_") as tmp:
        refs = Path(tmp) / "refs"
        refs.mkdir()
        for p in sorted((data / "train" / "good").iterdir())[: args.shots]:
            (refs / p.name).symlink_to(p)
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(map(str, images)))
        for i in range(args.repeat):
            cmd = [sys.executable, __file__, "--child", str(listing), str(refs), str(Path(tmp) / f"out{i}")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"detect failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"\n`anomalens detect` of {len(images)} {data.name} images, {args.shots} references, --threshold auto: "
        "wall seconds per stage (indented: inside fit)\n"
    )
    print("| stage | " + " | ".join(f"run {i + 1}" for i in range(len(rows))) + " |")
    print("|---|" + "---|" * len(rows))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{row[stage]:.2f}" for row in rows) + " |")


if __name__ == "__main__":
    main()
