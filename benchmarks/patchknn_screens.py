"""Two patchknn levers screened outside the library (issue 17, session 20; README "Two more levers").

* `--screen own`: the query's own patches as extra references. Each patch's kNN distance to the
  references d_ref is lowered towards its distance to the image's own patches outside a window of
  `--exclusion` cells, d_own (k-th neighbour, k = 2): d_ref - lambda * max(d_ref - d_own, 0).
  lambda = 1 is the kNN over the union of both. Idea: a texture far from 1-4 references but common
  in its own image is normal variation.
* `--screen scales`: patchknn's maps and scores at several fixed model sides, averaged per image
  (small defects are seen at the larger side, wide ones at the smaller).

Everything else is patchknn's default (`PatchKnn.score` on the variant script's cached features,
the same reference draws as `anomalens benchmark`); rows are means over the seeds.

    python benchmarks/patchknn_screens.py --screen own --lambdas 0,0.5,1 --categories magnetic_tile,mpdd_metal_plate
    python benchmarks/patchknn_screens.py --screen scales --sides auto 256 192,384 256,384
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patchknn_variants as variants

from anomalens.data import load_dataset, load_mask, sample_references
from anomalens.methods import patch_distances as distances
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings, model_side, reference_augmentation
from anomalens.metrics import PixelMetricAccumulator, image_metrics

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
OWN_K = 2  # the image's own k-th patch, as zero-shot


def own_patch_anomalies(lam: float, exclusion: int):
    """patch_anomalies with the kNN term lowered towards the image's own patches (see the docstring)."""

    def anomalies(feats, bank, settings, coarse=None):
        scores = distances.patch_anomalies(feats, bank, settings, coarse)
        if bank is None or lam == 0:
            return scores
        metric = distances.distance_metric(settings, few_shot=True)
        fine, _ = distances.split_coarse(feats, coarse)
        fine_bank, _ = distances.split_coarse(bank, coarse)
        to_refs = distances.patch_scores(fine, fine_bank, settings.few_shot_k, OWN_K, exclusion, metric)
        to_own = distances.patch_scores(fine, None, settings.few_shot_k, OWN_K, exclusion, metric)
        return scores - lam * torch.relu(to_refs - to_own)

    return anomalies


def outputs(method: PatchKnn, cache, split, refs, anomalies=None) -> list[tuple[float, np.ndarray]]:
    """(score, map) of every test image, the references' bank built as patchknn builds it."""
    bank = None
    if refs:
        feats = cache.get(method, split.category, refs, reference_augmentation(method.settings, len(refs)))
        bank = method.build_bank([feats[str(p)][0].reshape(-1, feats[str(p)][0].shape[-1]).float() for p in refs])
    test = cache.get(method, split.category, [s.path for s in split.test])
    out = []
    for sample in split.test:
        feats, layout = test[str(sample.path)]
        feats = feats.float()
        patches = None if anomalies is None else anomalies(feats, bank, method.settings, method.coarse_layout)
        result = method.score(feats, layout, bank, patches)
        out.append((result.score, result.anomaly_map))
    return out


def metrics_of(split, per_side: list[list[tuple[float, np.ndarray]]]) -> dict:
    labels, scores, pixels = [], [], PixelMetricAccumulator()
    for i, sample in enumerate(split.test):
        score = float(np.mean([side[i][0] for side in per_side]))
        anomaly_map = np.mean([side[i][1] for side in per_side], axis=0)
        labels.append(sample.label)
        scores.append(score)
        if split.has_masks:
            pixels.update(anomaly_map, load_mask(sample, anomaly_map.shape))
    result = dict(image_metrics(labels, scores))
    result.update(pixels.compute())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screen", choices=("own", "scales"), required=True)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lambdas", default="0,0.5,1", help="own: the weights lambda (0 = the default)")
    parser.add_argument("--exclusion", type=int, default=2, help="own: cells around a patch that are not its own")
    parser.add_argument(
        "--sides", nargs="+", default=["auto", "192,384"], help="scales: comma-separated sides (auto: fit's choice)"
    )
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = load_dataset(args.data, categories=args.categories.split(","))
    cache = variants.FeatureCache(Path(args.cache))
    methods: dict[int, PatchKnn] = {}

    def method_at(side: int) -> PatchKnn:
        if side not in methods:
            methods[side] = PatchKnn(PatchKnnSettings(image_size=side, image_size_up_to=0))
        return methods[side]

    if args.screen == "own":
        rows = [(f"lambda {lam}, exclusion {args.exclusion}", float(lam)) for lam in args.lambdas.split(",")]
    else:
        rows = [(f"sides {sides}", sides.split(",")) for sides in args.sides]
    print("| variant | category | shots | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|---|")
    for name, value in rows:
        for category, split in splits.items():
            for k in shots:
                runs = []
                for seed in seeds if k else seeds[:1]:
                    refs = sample_references(split, k, seed) if k else []
                    # "auto": the side `fit` chooses for these references (the default)
                    auto = model_side(PatchKnnSettings(), [min(variants.Image.open(p).size) for p in refs])
                    if args.screen == "own":
                        per_side = [
                            outputs(method_at(auto), cache, split, refs, own_patch_anomalies(value, args.exclusion))
                        ]
                    else:
                        sides = [auto if side == "auto" else int(side) for side in value]
                        per_side = [outputs(method_at(side), cache, split, refs) for side in sides]
                    runs.append(metrics_of(split, per_side))
                cells = [
                    f"{100 * np.mean([r[m] for r in runs]):.1f}" if runs[0][m] is not None else "N/A" for m in METRICS
                ]
                print(f"| {name} | {category} | {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
