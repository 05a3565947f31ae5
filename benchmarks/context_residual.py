"""A patch's place within its own image: patch feature minus the image's mean feature, against the references'.

On magnetic_tile an "uneven" tile shows two finishes, each normal on other tiles; its mask is always the
smaller of the two parts (under half the tile in all 99 images). What is abnormal is a patch's texture
*in its image*. Each patch's residual (its feature minus its image's mean feature, every channel
patchknn compares: unit direction and log length) is compared with the references' residuals (each
reference minus its own mean, all augmented copies; 8,192 drawn at random when there are more) by
nearest-neighbour Euclidean distance, and that distance map, weighed w, is added to patchknn's patch map
before smoothing and the image score. w = 0 is patchknn's default.

Features come from `patchknn_variants.py`'s cache (--cache); 3 reference draws, all test images.

    python benchmarks/context_residual.py --data ../shared/data --categories magnetic_tile,mpdd_metal_plate \\
        --shots 1,4 --weights 0,0.5,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import patchknn_variants

from anomalens.data import load_dataset, load_mask, sample_references
from anomalens.methods.patch_distances import patch_anomalies
from anomalens.methods.patchknn import PatchKnnSettings, reference_augmentation
from anomalens.metrics import PixelMetricAccumulator, image_metrics
from anomalens.scoring import knn_anomaly

RESIDUAL_BANK = 8192


def residuals(feats: torch.Tensor) -> torch.Tensor:
    """(..., C) patches of one image -> (P, C) each minus the image's mean patch."""
    flat = feats.reshape(-1, feats.shape[-1]).float()
    return flat - flat.mean(dim=0)


def run(split, refs: list[Path], weights: list[float], cache) -> dict[float, tuple[float, ...]]:
    method = patchknn_variants.sized_method(PatchKnnSettings(), refs, {})
    s = method.settings
    stored = cache.get(method, split.category, refs, reference_augmentation(s, len(refs)))
    ref_patches = [stored[str(p)][0].reshape(-1, stored[str(p)][0].shape[-1]).float() for p in refs]
    bank = method.build_bank(ref_patches)
    context_bank = torch.cat([residuals(p) for p in ref_patches])
    if context_bank.shape[0] > RESIDUAL_BANK:
        drawn = torch.randperm(context_bank.shape[0], generator=torch.Generator().manual_seed(0))
        context_bank = context_bank[drawn[:RESIDUAL_BANK]]
    test = cache.get(method, split.category, [t.path for t in split.test])
    runs = {w: ([], [], PixelMetricAccumulator()) for w in weights}
    for sample in split.test:
        feats, layout = test[str(sample.path)]
        feats = feats.float()
        patches = patch_anomalies(feats, bank, s, method.coarse_layout)
        context = knn_anomaly(residuals(feats), context_bank, k=1, metric="euclidean").view(patches.shape)
        mask = None
        for w, (labels, scores, pixels) in runs.items():
            out = method.score(feats, layout, bank, patches + w * context)
            labels.append(sample.label)
            scores.append(out.score)
            mask = load_mask(sample, out.anomaly_map.shape) if mask is None else mask
            pixels.update(out.anomaly_map, mask)
    result = {}
    for w, (labels, scores, pixels) in runs.items():
        pixel = pixels.compute()
        result[w] = (image_metrics(labels, scores)["image_auroc"], pixel["pixel_auroc"], pixel["pixel_aupro"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weights", default="0,0.5,1,2")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = [float(w) for w in args.weights.split(",")]
    cache = patchknn_variants.FeatureCache(Path(args.cache))
    print("image AUROC / pixel AUROC / AUPRO, mean over the reference draws\n")
    print("| category | shots | " + " | ".join(f"w {w:g}" for w in weights) + " |")
    print("|---|---|" + "---|" * len(weights))
    for category, split in load_dataset(args.data, categories=args.categories.split(",")).items():
        for k in (int(x) for x in args.shots.split(",")):
            seeds = [int(seed) for seed in args.seeds.split(",")]
            draws = [run(split, sample_references(split, k, seed), weights, cache) for seed in seeds]
            cells = [" / ".join(f"{100 * v:.1f}" for v in np.mean([d[w] for d in draws], axis=0)) for w in weights]
            print(f"| {category} | {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
