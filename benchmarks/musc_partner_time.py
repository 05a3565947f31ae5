"""Mutual-scoring time per image against the number of partner images, on real cached features.

Loads one category's LNAMD features from the musc_screen.py cache (default settings), times
the scoring of --queries images against P partners for each P of --partners (all layers and
degrees, one thread), and extrapolates to the whole category (N images x seconds per image).
P = 0 means all N - 1 others (the paper). Run it on a quiet core: it measures wall time.

    python benchmarks/musc_partner_time.py --cache /tmp/musc-cache --category magnetic_tile \
        --partners 32,64,128,0 --queries 20
"""

from __future__ import annotations

import argparse
import glob
import time

import torch

from anomalens.methods.musc.msm import interval_average, nearest_patch_distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="/tmp/musc-cache")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--features", default=None, help="cache file (default: the category's first)")
    parser.add_argument("--partners", default="32,64,128,0")
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.features or sorted(glob.glob(f"{args.cache}/{args.category}-*.pt"))[0]
    patches = torch.load(path, weights_only=False)["patches"]
    n = next(iter(patches.values())).shape[0]
    print(f"{args.category}: N = {n} images, {len(patches)} (layer, degree) feature sets, {path}\n")
    print("| partners | s / image (scoring) | whole category, minutes | relative to 32 |")
    print("|---|---|---|---|")
    base = None
    for p in [int(v) for v in args.partners.split(",")]:
        p = n - 1 if p <= 0 else p
        start = time.perf_counter()
        for i in range(args.queries):
            others = torch.tensor([(i + 1 + k) % n for k in range(p)])
            for z in patches.values():
                interval_average(nearest_patch_distances(z[i], z.index_select(0, others)))
        per_image = (time.perf_counter() - start) / args.queries
        base = base or per_image
        print(f"| {p} | {per_image:.3f} | {per_image * n / 60:.1f} | {per_image / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
