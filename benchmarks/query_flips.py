"""Test-time flips of the query: does averaging a test image's patch map with its mirror image's help patchknn?

The references already enter the bank mirrored and half-turned (`augment=flips`), so a mirrored query
meets the same bank; EfficientNet's features are not mirror-equivariant, so the mirrored query's patch
distances (mirrored back) are a second, slightly different measurement of the same patches. Variants:

* none: patchknn's default;
* one: the mean of the patch maps of the image and of its mirror across the axis that holds a single
  tile (top-bottom for wide images, left-right for tall ones: the tiles stay where they are);
* two: also the mirror across the other axis (single-tile images only; tiled ones keep "one").

The maps are averaged before smoothing and the image score (`PatchKnn.score` on the mean patch map).
Features come from (and go to) the variant script's cache; the mirrored queries are extracted here.
Prints image AUROC / pixel AUROC / AUPRO, means over the seeds, all test images.

    python benchmarks/query_flips.py --data ../shared/data --categories mpdd_metal_plate,magnetic_tile --shots 1,4
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
from anomalens.images import LoadedImage, load_image
from anomalens.methods.patch_distances import patch_anomalies
from anomalens.methods.patchknn import PatchKnnSettings, reference_augmentation
from anomalens.metrics import PixelMetricAccumulator, image_metrics

VARIANTS = ("none", "one", "two")
KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")


# Mirrored queries' features per (model side, image, axis): they do not depend on the references, so
# every seed and shot count at the same side reuses them (about 1.6 GB for magnetic_tile's test set).
MIRRORED: dict[tuple[int, str, int], torch.Tensor] = {}


def mirrored_features(method, path, axis: int) -> torch.Tensor:
    """(T, h, w, C) features of the image mirrored across `axis` (0: top-bottom, 1: left-right)."""
    key = (method.settings.image_size, str(path), axis)
    if key not in MIRRORED:
        img = load_image(path)
        rgb = np.ascontiguousarray(np.flip(img.rgb, axis=axis))
        feats, _ = method._features([LoadedImage(img.path, rgb)])
        MIRRORED[key] = feats[0]
    return MIRRORED[key]


def patch_maps(method, bank, feats, layout, path) -> dict[str, torch.Tensor]:
    """Each variant's (T, h, w) patch map of one test image."""
    s, coarse = method.settings, method.coarse_layout
    height, width = layout.size_hw
    axis = 0 if width >= height else 1  # the tiles (if any) run along the other axis
    plain = patch_anomalies(feats, bank, s, coarse)
    first = patch_anomalies(mirrored_features(method, path, axis).float(), bank, s, coarse).flip(1 + axis)
    maps = {"none": plain, "one": (plain + first) / 2, "two": (plain + first) / 2}
    if len(layout.tiles) == 1:
        other = 1 - axis
        second = patch_anomalies(mirrored_features(method, path, other).float(), bank, s, coarse).flip(1 + other)
        maps["two"] = (plain + first + second) / 3
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="mpdd_metal_plate,magnetic_tile")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = patchknn_variants.FeatureCache(Path(args.cache))
    print("| category | shots | query flips | image AUROC / pixel AUROC / AUPRO |")
    print("|---|---|---|---|")
    for category in args.categories.split(","):
        split = load_dataset(args.data, categories=[category])[category]
        for shots in map(int, args.shots.split(",")):
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            methods: dict = {}
            for seed in map(int, args.seeds.split(",")):
                refs = sample_references(split, shots, seed)
                method = patchknn_variants.sized_method(PatchKnnSettings(), refs, methods)
                ref_feats = cache.get(method, category, refs, reference_augmentation(method.settings, len(refs)))
                bank = method.build_bank([ref_feats[str(p)][0].flatten(0, -2).float() for p in refs])
                test = cache.get(method, category, [t.path for t in split.test])
                pixels = {v: PixelMetricAccumulator() for v in VARIANTS}
                scores: dict[str, list[float]] = {v: [] for v in VARIANTS}
                for sample in split.test:
                    feats, layout = test[str(sample.path)]
                    feats = feats.float()
                    mask = None
                    for variant, patches in patch_maps(method, bank, feats, layout, sample.path).items():
                        out = method.score(feats, layout, bank, patches)
                        scores[variant].append(out.score)
                        if split.has_masks:
                            mask = load_mask(sample, out.anomaly_map.shape) if mask is None else mask
                            pixels[variant].update(out.anomaly_map, mask)
                labels = [t.label for t in split.test]
                for variant in VARIANTS:
                    runs[variant].append({**image_metrics(labels, scores[variant]), **pixels[variant].compute()})
            for variant in VARIANTS:
                cells = " / ".join(f"{100 * np.mean([r[k] for r in runs[variant]]):.1f}" for k in KEYS)
                print(f"| {category} | {shots} | {variant} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
