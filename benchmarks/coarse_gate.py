"""Does the coarse map help magnetic_tile through its local peaks or through its offset? (issue 17)

`coarse_weight` w adds the stride-32 distance map to the stride-8 map everywhere. This script
keeps only the part of the coarse map above a baseline, `fine + w * max(0, coarse - baseline)`,
with the baseline taken one of two ways:

- `self:q`  the q-quantile of the query image's own coarse map (0.5: its median), so an offset
  shared by the whole image is dropped;
- `loo:q`   the q-quantile of the references' leave-one-out coarse distances (each reference's
  cells against the bank's cells from the other references; 1.0: the largest a good part
  reached), so only what lies outside the references' own range is added. It needs 2+ references.

`none` adds the coarse map as the library does (`coarse_weight` w alone). Everything else is
patchknn's own code (`PatchKnn.bank_with_origin`, `patch_anomalies`, `coarse_scores`,
`PatchKnn.score`) on the variant benchmark's feature cache, so a `none` row equals the variant
script's `coarse_weight` row.

    python benchmarks/coarse_gate.py --data ../shared/data --categories magnetic_tile,mpdd_metal_plate \\
        --shots 4 --seeds 0,1,2 1:none 1:self:0.5 1:loo:0.5 1:loo:0.9 1:loo:1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from patchknn_variants import FeatureCache

from anomalens.data import load_dataset, load_mask, sample_references
from anomalens.methods.patch_distances import coarse_scores, distance_metric, patch_anomalies, split_coarse
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings, reference_augmentation
from anomalens.metrics import PixelMetricAccumulator, image_metrics
from anomalens.scoring import knn_anomaly

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def parse_gate(text: str) -> tuple[float, str, float]:
    """'w:none' | 'w:self:q' | 'w:loo:q' -> (weight, kind, quantile)."""
    parts = text.split(":")
    if len(parts) == 2 and parts[1] == "none":
        return float(parts[0]), "none", 0.0
    if len(parts) == 3 and parts[1] in ("self", "loo"):
        return float(parts[0]), parts[1], float(parts[2])
    raise SystemExit(f"bad gate {text!r}: use w:none, w:self:q or w:loo:q")


def leave_one_out_coarse(per_reference, bank, origin, layout, metric) -> torch.Tensor | None:
    """Every reference patch's coarse distance to the bank's coarse cells from the other references."""
    _, coarse_bank = split_coarse(bank, layout)
    distances = []
    for r, patches in enumerate(per_reference):
        others = coarse_bank[origin != r]
        if len(others):
            distances.append(knn_anomaly(split_coarse(patches, layout)[1], others, k=1, metric=metric))
    return torch.cat(distances) if distances else None


def run(split, cache, shots: int, seed: int, gates) -> dict:
    method = PatchKnn(PatchKnnSettings(coarse_weight=1.0))  # builds the coarse channels; weights are the gates'
    layout, fine_only = method.coarse_layout, PatchKnnSettings(coarse_weight=0.0)
    metric = distance_metric(method.settings, few_shot=True)
    refs = sample_references(split, shots, seed)
    ref_feats = cache.get(method, split.category, refs, reference_augmentation(method.settings, len(refs)))
    per_reference = [ref_feats[str(p)][0].reshape(-1, ref_feats[str(p)][0].shape[-1]).float() for p in refs]
    bank, origin = method.bank_with_origin(per_reference)
    loo = leave_one_out_coarse(per_reference, bank, origin, layout, metric)
    test = cache.get(method, split.category, [t.path for t in split.test])
    parts = []
    for sample in split.test:
        feats, image_layout = test[str(sample.path)]
        feats = feats.float()
        fine = patch_anomalies(feats, bank, fine_only, layout)
        coarse = coarse_scores(split_coarse(feats, layout)[1], split_coarse(bank, layout)[1], layout.grid, 1, metric)
        parts.append((sample, feats, image_layout, fine, coarse))
    results = {}
    for gate in gates:
        weight, kind, q = gate
        if kind == "loo" and loo is None:
            continue  # one reference: no leave-one-out distances
        labels, scores, pixels = [], [], PixelMetricAccumulator()
        for sample, feats, image_layout, fine, coarse in parts:
            baseline = 0.0
            if kind == "self":
                baseline = float(torch.quantile(coarse.flatten(), q))
            elif kind == "loo":
                baseline = float(torch.quantile(loo, q))
            out = method.score(feats, image_layout, bank, fine + weight * (coarse - baseline).clamp_min(0))
            labels.append(sample.label)
            scores.append(out.score)
            pixels.update(out.anomaly_map, load_mask(sample, out.anomaly_map.shape))
        metrics = dict(image_metrics(labels, scores))
        metrics.update(pixels.compute())
        results[gate] = metrics
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gates", nargs="+", help="w:none, w:self:q or w:loo:q")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--shots", default="4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gates = [parse_gate(g) for g in args.gates]
    splits = load_dataset(args.data, categories=args.categories.split(","))
    cache = FeatureCache(Path(args.cache))
    print("| category | shots | gate | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|---|")
    for category, split in splits.items():
        for shots in map(int, args.shots.split(",")):
            runs = [run(split, cache, shots, int(seed), gates) for seed in args.seeds.split(",")]
            for gate, text in zip(gates, args.gates):
                got = [r[gate] for r in runs if gate in r]
                if got:
                    cells = " | ".join(f"{100 * np.mean([g[m] for g in got]):.1f}" for m in METRICS)
                    print(f"| {category} | {shots} | {text} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
