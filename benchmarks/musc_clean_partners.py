"""Cleaner partners for the mutual score: does drawing them from the likely-normal images help?

MuSc's premise is that a normal patch finds close patches in most other images and a defect in few.
A defect type in many images of a batch (steel_strip's "patches" in a third, magnetic_tile's defects in
a third of its test images) breaks it: the partners that show the same defect vouch for it. Two ways
to draw each image's partners (the same count, `max_partners`, and the same seeded draw) from a
cleaner pool than the whole batch:

* oracle: the batch's normal images only (ground truth; an upper bound, not a method);
* lowest share s: a second pass, drawing from the share s of the batch that the first pass
  (the default mutual score) ranks lowest.

The mutual score alone (no pseudo-references' patchknn share), on `musc_screen.py`'s feature cache
and with its pixel metrics (longer side 256, binned beyond 5e7 pixels).

    python benchmarks/musc_clean_partners.py --data ../shared/data --shares 0.3,0.5,0.7
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import musc_screen

import anomalens.methods.musc.method as musc_method
from anomalens import Detector
from anomalens.data import load_dataset
from anomalens.methods.musc.msm import stable_key_hash

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def drawn_from(pool_of: Callable[[int], list[int]], seed: int):
    """A `choose_partners` that draws each image's partners from `pool_of(i)` (never i itself)."""

    def choose(keys, max_partners, _seed=0):
        chosen = []
        for i, key in enumerate(keys):
            pool = [j for j in pool_of(i) if j != i]
            rng = random.Random(stable_key_hash(f"{seed}:{key}"))
            chosen.append(sorted(rng.sample(pool, min(max_partners, len(pool)))))
        return chosen

    return choose


def cells(metrics: dict) -> str:
    return " / ".join("-" if metrics[k] is None else f"{100 * metrics[k]:.1f}" for k in KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--cache", default="/tmp/musc-cache")
    parser.add_argument("--shares", default="0.3,0.5,0.7")
    parser.add_argument("--seed", type=int, default=0, help="partner seed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.data, categories=args.categories.split(",") if args.categories else None)
    shares = [float(s) for s in args.shares.split(",")]
    print("mutual score alone; image AUROC / pixel AUROC / AUPRO; partner seed", args.seed, "\n")
    print("| category | partners drawn from | metrics |\n|---|---|---|")
    default_choice = musc_method.choose_partners
    for category, split in splits.items():
        det = Detector("musc", progress=False, partner_seed=args.seed)
        feats = musc_screen.cached_features(det, split, Path(args.cache))
        labels = [s.label for s in split.test]
        first = musc_screen.evaluate(det, split, feats, 256)
        print(f"| {category} | the whole batch (default) | {cells(first)} |", flush=True)
        _, scores = det.method.score_features(feats, feats.paths)
        pools = []
        if 0 < sum(labels) < len(labels):
            pools.append(("the normal images (oracle)", [j for j, y in enumerate(labels) if y == 0]))
        ranked = sorted(range(len(labels)), key=lambda j: float(scores[j]))
        min_pool = det.method.settings.max_partners + 1
        pools += [(f"the lowest-scored {s:.0%}", ranked[: max(min_pool, int(s * len(labels)))]) for s in shares]
        try:
            for name, pool in pools:
                musc_method.choose_partners = drawn_from(lambda i, pool=pool: pool, args.seed)
                print(f"| {category} | {name} | {cells(musc_screen.evaluate(det, split, feats, 256))} |", flush=True)
        finally:
            musc_method.choose_partners = default_choice


if __name__ == "__main__":
    main()
