"""Screen: partners that must explain the whole image, beside MSM's per-patch interval average (issue 11).

MSM scores a patch by its distances to the nearest patch of each partner image and averages the smallest of
them, patch by patch: every patch picks its own partners. A magnetic tile with an "uneven" band shows two
surface finishes that good tiles each have; the band's patches find tiles of their finish, the rest find
tiles of theirs, and nothing stands out. Here each image first ranks its partners by how well they explain
the whole image (the mean over its patches of the nearest-patch distance), keeps the best `share` of them, and
scores each patch by its mean distance to those; the patch score is (1 - c) x the interval average + c x that.
Run on musc_screen's cached features (the mutual score alone: no pseudo-reference share, no fused recipe).

    python benchmarks/musc_whole_image_partners.py --data ../shared/data --variants 0:0 0.3:0.5 0.3:1 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from musc_screen import KEYS, cached_features, evaluate

import anomalens.methods.musc.msm as msm
from anomalens import Detector
from anomalens.data import load_dataset
from anomalens.defect_type_metrics import DefectTypeMetrics
from anomalens.methods.base import MethodOutput

_plain_interval_average = msm.interval_average


def whole_image_average(share: float, weight: float):
    """MSM's reduction of one image's (P, J) partner distances with the whole-image partners mixed in."""

    def reduce(distances: torch.Tensor, interval=msm.DEFAULT_INTERVAL) -> torch.Tensor:
        plain = _plain_interval_average(distances, interval)
        if weight == 0:
            return plain
        d = distances.float()
        keep = max(1, round(share * d.shape[1]))
        best = torch.topk(d.mean(dim=0), keep, largest=False).indices  # partners fitting the whole image
        return (1.0 - weight) * plain + weight * d[:, best].mean(dim=1)

    return reduce


def by_type(det: Detector, split, feats, resolution: int) -> str:
    """Each defect type against the good images: image AUROC / pixel AUROC / AUPRO."""
    maps, scores = det.method.score_features(feats, feats.paths)
    types = DefectTypeMetrics(split.test, True, resolution)
    inputs = feats.inputs_of()
    for i, sample in enumerate(split.test):
        types.add(sample, MethodOutput(float(scores[i]), det.method.image_map(feats, i, maps, inputs[i])))
    return "; ".join(
        f"{name} " + " / ".join(f"{100 * m[k]:.1f}" if m.get(k) is not None else "-" for k in KEYS)
        for name, m in types.compute().items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None)
    parser.add_argument("--cache", default="/tmp/musc-cache")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", nargs="+", default=["0:0", "0.3:0.5"], help="share:weight pairs")
    parser.add_argument("--pixel-resolution", type=int, default=256)
    parser.add_argument("--by-type", action="store_true", help="also each defect type's metrics (first seed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset(args.data, categories=args.categories.split(",") if args.categories else None)
    seeds = [int(s) for s in args.seeds.split(",")]
    cats = list(splits)
    print(f"mutual score alone, all test images, pixel metrics at {args.pixel_resolution} px, partner seeds {seeds}")
    print("| share : weight | " + " | ".join(cats) + " | mean | s |\n" + "|---" * (len(cats) + 3) + "|", flush=True)
    for variant in args.variants:
        share, weight = (float(x) for x in variant.split(":"))
        msm.interval_average = whole_image_average(share, weight)
        start = time.perf_counter()
        cells, means = [], {k: [] for k in KEYS}
        for cat, split in splits.items():
            det = Detector("musc", progress=False)
            feats = cached_features(det, split, Path(args.cache))
            rows = []
            for seed in seeds:
                det.method.settings.partner_seed = seed
                rows.append(evaluate(det, split, feats, args.pixel_resolution))
            if args.by_type:
                det.method.settings.partner_seed = seeds[0]
                print(f"  {cat} {variant}: {by_type(det, split, feats, args.pixel_resolution)}", flush=True)
            values = {k: [r[k] for r in rows if r[k] is not None] for k in KEYS}
            for k in KEYS:
                if values[k]:
                    means[k].append(statistics.mean(values[k]))
            cells.append(" / ".join(f"{100 * statistics.mean(v):.1f}" if v else "-" for v in values.values()))
        mean = " / ".join(f"{100 * statistics.mean(v):.2f}" if v else "-" for v in means.values())
        seconds = time.perf_counter() - start
        print(f"| {share:g} : {weight:g} | {' | '.join(cells)} | {mean} | {seconds:.0f} |", flush=True)
    msm.interval_average = _plain_interval_average


if __name__ == "__main__":
    main()
