"""How musc's settings change its accuracy (the README's variants table).

Every variant runs zero-shot on the same seeded subset of each category's test images (the
subset is the batch), so differences come from the setting alone. Variants are JSON objects of
settings changed from the defaults; `--variant` is repeatable.

    python benchmarks/musc_variants.py --data ../shared/data --images 200 \
        --variant '{}' --variant '{"degrees": [1, 3]}'
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from anomalens import Detector
from anomalens.benchmark import evaluate_category
from anomalens.data import load_dataset

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def _pct(value) -> str:
    return "N/A" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--images", type=int, default=200, help="seeded random subset of each category's test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", default=None, help="JSON settings (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cats = args.categories.split(",") if args.categories else None
    splits = load_dataset(args.data, categories=cats)
    for split in splits.values():
        random.Random(args.seed).shuffle(split.test)
        split.test = split.test[: args.images]
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    print(f"{args.images} seeded test images per category (seed {args.seed}), zero-shot\n")
    print("| variant | category | image AUROC | pixel AUROC | pixel AUPRO | seconds |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        name = ", ".join(f"{k}={v}" for k, v in variant.items()) or "default"
        means: dict[str, list[float]] = {k: [] for k in KEYS}
        for cat, split in splits.items():
            start = time.perf_counter()
            det = Detector("musc", progress=False, **variant)
            metrics = evaluate_category(det, split, [])
            for k in KEYS:
                if metrics[k] is not None:
                    means[k].append(metrics[k])
            cells = " | ".join(_pct(metrics[k]) for k in KEYS)
            print(f"| {name} | {cat} | {cells} | {time.perf_counter() - start:.0f} |", flush=True)
        cells = " | ".join(_pct(sum(v) / len(v) if v else None) for v in means.values())
        print(f"| {name} | **mean** | {cells} | |", flush=True)


if __name__ == "__main__":
    main()
