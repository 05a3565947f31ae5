"""How patchknn's settings change its accuracy on one category (the README's tuning table).

Each variant changes one setting of the default; all run on the same seeded subset of the test
images with the same seeded reference draw, so differences come from the setting alone.

    python benchmarks/patchknn_variants.py --data ../shared/data --category magnetic_tile --images 200
"""

from __future__ import annotations

import argparse
import random
import time

from anomalens import Detector
from anomalens.benchmark import evaluate_category
from anomalens.data import load_dataset, sample_references

FEW_SHOT_VARIANTS = [
    {"image_size": 320},
    {},
    {"image_size": 448},
    {"resize": "pad"},
    {"blocks": (2, 4)},
    {"blocks": (7, 10)},
    {"blocks": (4, 7, 10)},
    {"neighbourhood": 1},
    {"neighbourhood": 5},
]
ZERO_SHOT_VARIANTS = [{"image_size": 320}, {}, {"zero_shot_k": 5}, {"zero_shot_k": 16}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--images", type=int, default=200, help="seeded random subset of the test images")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = load_dataset(args.data, categories=[args.category])[args.category]
    random.Random(args.seed).shuffle(split.test)
    split.test = split.test[: args.images]
    print(f"{args.category}: {len(split.test)} test images, seed {args.seed}\n")
    print("| shots | variant | image AUROC | pixel AUROC | pixel AUPRO | seconds |")
    print("|---|---|---|---|---|---|")
    for shots, variants in ((args.shots, FEW_SHOT_VARIANTS), (0, ZERO_SHOT_VARIANTS)):
        refs = sample_references(split, shots, args.seed) if shots else []
        for variant in variants:
            start = time.perf_counter()
            metrics = evaluate_category(Detector("patchknn", **variant), split, refs)
            cells = " | ".join(f"{100 * metrics[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "pixel_aupro"))
            name = ", ".join(f"{k}={v}" for k, v in variant.items()) or "default"
            print(f"| {shots} | {name} | {cells} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
