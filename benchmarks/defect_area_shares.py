"""How much of each defective image its mask covers, per defect type: quantiles of the masked share.

A defect type whose masks cover a large share of the image dominates pixel AUROC (a pixel count), and
one whose masks mark one of two look-alike parts of the image (magnetic_tile's "uneven": two surface
finishes, the smaller part masked) asks for more than local appearance. Also prints, per type, how often
the masked part is brighter than the rest and how often it has more column-to-column grey-level change
(vertical streaks, as grinding leaves them).

    python benchmarks/defect_area_shares.py --data ../shared/data --categories magnetic_tile
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from PIL import Image

from anomalens.data import load_dataset, load_mask

QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


def percent_true(votes: list[bool]) -> str:
    return f"{100 * np.mean(votes):.0f} %" if votes else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    args = parser.parse_args()
    splits = load_dataset(args.data, categories=args.categories.split(",") if args.categories else None)
    print("| category | defect type | images | masked share: " + " / ".join(f"q{q:g}" for q in QUANTILES), end="")
    print(" | masked part brighter | masked part more streaked |\n|---|---|---|---|---|---|")
    for category, split in splits.items():
        shares, brighter, streaked = defaultdict(list), defaultdict(list), defaultdict(list)
        for sample in split.test:
            if not sample.label:
                continue
            grey = np.asarray(Image.open(sample.path).convert("L"), dtype=np.float32)
            mask = load_mask(sample, grey.shape) > 0.5
            kind = sample.defect_type
            shares[kind].append(float(mask.mean()))
            if 0 < mask.mean() < 1:
                brighter[kind].append(grey[mask].mean() > grey[~mask].mean())
                change, inside = np.abs(np.diff(grey, axis=1)), mask[:, 1:]
                streaked[kind].append(change[inside].mean() > change[~inside].mean())
        for kind in sorted(shares):
            q = " / ".join(f"{100 * v:.0f} %" for v in np.quantile(shares[kind], QUANTILES))
            votes = f"{percent_true(brighter[kind])} | {percent_true(streaked[kind])}"
            print(f"| {category} | {kind} | {len(shares[kind])} | {q} | {votes} |")


if __name__ == "__main__":
    main()
