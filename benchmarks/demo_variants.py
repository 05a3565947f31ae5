"""A method's settings on `anomalens demo`'s set (synthetic small defects on real textures), per seed.

The demo set is small (14 test tiles per texture) but its defects are small and thin, unlike most
of magnetic_tile's: a check that a lever tuned on the dev data does not cost such parts. Each
seed builds the demo set anew (other tiles, other defects) and draws other references, as
`anomalens demo --seed` does. Each variant is a JSON object of settings (`{}` = the defaults).

    python benchmarks/demo_variants.py --seeds 0,1,2 '{}' '{"coarse_weight": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from anomalens.benchmark import evaluate_category
from anomalens.data import load_dataset, sample_references
from anomalens.demo import DemoSettings, build_demo_dataset
from anomalens.detector import Detector

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="patchknn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shots", type=int, default=None, help="references per texture (default: the demo's)")
    parser.add_argument("variants", nargs="*", help="JSON objects of settings; none = the defaults")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [json.loads(v) for v in args.variants] or [{}]
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as root:
        for seed in seeds:
            settings = DemoSettings(seed=seed)
            splits = load_dataset(build_demo_dataset(Path(root) / f"seed{seed}", settings), kind="mvtec")
            for variant in variants:
                det = Detector(args.method, **variant)
                for name, split in splits.items():
                    shots = settings.references if args.shots is None else args.shots
                    refs = sample_references(split, shots, seed) if shots else []
                    results.setdefault((json.dumps(variant), name), []).append(evaluate_category(det, split, refs))
    textures = sorted({name for _, name in results})
    shots = "the demo's references" if args.shots is None else f"{args.shots} references"
    print(f"{args.method}, {shots}, seeds {seeds}: image AUROC / pixel AUROC / AUPRO, mean over seeds\n")
    print("| variant | " + " | ".join(textures) + " | mean |")
    print("|---" * (len(textures) + 2) + "|")
    for variant in variants:
        key = json.dumps(variant)
        means = [[100 * float(np.mean([r[m] for r in results[(key, t)]])) for m in METRICS] for t in textures]
        cells = [" / ".join(f"{v:.1f}" for v in cell) for cell in means]
        overall = " / ".join(f"{np.mean([cell[i] for cell in means]):.1f}" for i in range(len(METRICS)))
        print(f"| {key if variant else 'default'} | " + " | ".join(cells) + f" | {overall} |")


if __name__ == "__main__":
    main()
