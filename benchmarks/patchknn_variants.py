"""How patchknn's settings change its accuracy (the README's variant table), one change at a time.

Every variant changes one setting of a base (the old default, then the new one) and runs on
every category of the data, all test images, at the given shots and seeds (the same reference
draws as `anomalens benchmark`). Rows give the mean over categories (steel_strip_sd900 has no
normals: pixel metrics only, zero-shot only) and magnetic_tile / mpdd_metal_plate on their own.

Backbone features are cached on disk per (category, image, feature settings) under --cache,
so scoring variants (k, smoothing, top fraction, reweighting, coreset) reuse them; only
backbone, resolution, tiling, block and pooling variants extract again.

    python benchmarks/patchknn_variants.py --data ../shared/data --shots 0,1,4 --seeds 0,1,2

Scores come from `PatchKnn.score` itself (the detector's own code), on the cached features: one
recipe at a time. The default since session 25 fuses the texture recipe beside the default recipe
(`fused_recipe`, README "Both recipes at once"); that fusion is measured by `anomalens benchmark`, and
"default" here is the default recipe alone (`fused_recipe=none`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomalens.benchmark import IMAGE_METRICS, PIXEL_METRICS
from anomalens.data import load_dataset, load_mask, sample_references
from anomalens.images import load_image
from anomalens.methods.patch_distances import coarse_blocks, gaussian_weight, patch_anomalies
from anomalens.methods.patchknn import (
    PatchKnn,
    PatchKnnSettings,
    coreset_target,
    model_side,
    reference_augmentation,
)
from anomalens.metrics import PixelMetricAccumulator, image_metrics

# The settings before issue 17, and the levers tried on top of a base, one at a time.
OLD_DEFAULT = {"smoothing_sigma": 0.0, "coreset_size": 0, "edge_weighting": False}
FEATURE_KEYS = (
    "backbone",
    "image_size",
    "resize",
    "tile_above_aspect",
    "blocks",
    "neighbourhood",
    "magnitudes",
    "length_weight",
    "length_log",
    "length_blocks",
)
VARIANTS = {
    "defaults": [{"edge_weighting": False}],  # the old and the new default, and the step between them
    "scoring": [
        {"edge_weighting": False},
        {"smoothing_sigma": 2.0},
        {"smoothing_sigma": 8.0},
        {"top_fraction": 0.01},
        {"reweight_neighbours": 9},
        {"augment": "flips"},
        {"augment": "dihedral"},
        {"zero_shot_k": 5},
    ],
    "zero_shot": [
        {"zero_shot_exclusion": 1},
        {"zero_shot_exclusion": 2},
        {"top_fraction": 0.01},
        {"zero_shot_exclusion": 1, "top_fraction": 0.01},
    ],
    "features": [
        {"image_size": 320},
        {"tile_above_aspect": 1.5},
        {"tile_above_aspect": 2.0},
        {"blocks": (4, 7)},
        {"blocks": (3, 4, 10)},
        {"neighbourhood": 5},
        {"backbone": "efficientnet-lite1"},
        {"backbone": "efficientnet-lite2"},
    ],
    # issue 17, session 6: square tiles of the short side over elongated images instead of squashing them
    "tiling": [{"tile_above_aspect": 2.0}, {"tile_above_aspect": 1.5}],
    # issue 17, session 4: Euclidean distances of per-image layer-normalised features (the texture recipe)
    "magnitudes": [
        {"magnitudes": True},
        {"magnitudes": True, "blocks": (4, 10, 14)},
        {"blocks": (4, 10, 14)},
    ],
    # issue 17, session 8: the stride-32 block compared on its own grid, its map added (few-shot)
    "coarse": [{"coarse_weight": 0.25}, {"coarse_weight": 0.5}, {"coarse_weight": 1.0}],
    # issue 17, session 9: PatchCore's share of the bank on few-shot banks (the kNN's time scales with it)
    "coreset_ratio": [{"coreset_ratio": 0.5}, {"coreset_ratio": 0.25}, {"coreset_ratio": 0.1}],
    # issue 17, session 10: mirrored / turned references (the default is flips since then); the coreset
    # keeps a share of the references' own patches, so ratios 0.4 / 0.8 keep 4 / 8 x as many (the bank x4/x8)
    "augment": [
        {"augment": "none"},
        {"augment": "flips", "coreset_ratio": 0.4},
        {"augment": "dihedral", "coreset_ratio": 0.8},
        {"augment": "dihedral"},
    ],
    # issue 17, session 10: the other ImageNet EfficientNet-Lite weights (measured with augment=none)
    "backbones": [
        {"backbone": "efficientnet-lite1"},
        {"backbone": "efficientnet-lite2"},
        {"backbone": "efficientnet-lite0+efficientnet-lite1"},
        {"backbone": "efficientnet-lite0+efficientnet-lite2"},
    ],
    # issue 17, session 5: each block's length beside the unit direction (few-shot; zero-shot is the cosine)
    "lengths": [
        {"length_weight": 16.0},
        {"length_weight": 16.0, "length_log": True},
        {"length_weight": 4.0},
        {"length_weight": 64.0},
        {"length_weight": 4.0, "length_log": True},
        {"length_weight": 4.0, "length_log": True, "length_blocks": (4, 10, 14)},
    ],
    # issue 17, session 36: the k-th nearest bank patch (unset resolves to 3 with up to 16 references; README
    # "The third-nearest reference patch" measured it with `anomalens benchmark --set few_shot_k=K`)
    "rank": [{"few_shot_k": 1}, {"few_shot_k": 2}, {"few_shot_k": 5}, {"few_shot_k": 9}],
    # issue 17, session 17: the image score joins each pixel of the map (pixel metrics pool all images)
    "image_in_map": [
        {"map_image_share": 0.0},
        {"map_image_share": 0.25},
        {"map_image_share": 0.5},
        {"map_image_share": 0.5, "map_image_mode": "multiply"},
        {"map_image_share": 1.0, "map_image_mode": "multiply"},
    ],
}
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def feature_key(settings: PatchKnnSettings) -> str:
    values = {k: getattr(settings, k) for k in FEATURE_KEYS}
    if coarse_blocks(settings):  # the coarse map's channels; its weight only changes the scores
        values["coarse_blocks"] = coarse_blocks(settings)
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()[:12]


class FeatureCache:
    """Per (category, feature settings): {image path: (T, h, w, C) float16 features, layout}."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.memory: dict[tuple[str, str, str], dict] = {}

    def get(self, method: PatchKnn, category: str, paths: list[Path], augment: str = "none") -> dict:
        key = (category, feature_key(method.settings), augment)
        file = self.root / f"{category}-{key[1]}-{augment}.pt"
        if key not in self.memory:
            self.memory[key] = torch.load(file, weights_only=False) if file.exists() else {}
        store = self.memory[key]
        missing = [p for p in paths if str(p) not in store]
        for path in missing:
            img = load_image(path)
            if augment == "none":
                feats, layouts = method._features([img])
                store[str(path)] = (feats[0].half(), layouts[0])
            else:
                store[str(path)] = (method.reference_patches(img, augment).half(), None)
        if missing:  # write then rename: a concurrent or interrupted run never sees half a file
            partial = file.with_suffix(f".{os.getpid()}.part")
            torch.save(store, partial)
            os.replace(partial, file)
        return store


# Patch maps per (feature key, bank settings, k, references, image): post-processing variants reuse them.
PATCH_MAPS: dict[tuple, torch.Tensor] = {}


def evaluate(method: PatchKnn, cache: FeatureCache, split, refs: list[Path]) -> dict:
    method.use_rank_for(len(refs))  # as fit resolves `few_shot_k` for this many references
    s = method.settings
    aug = reference_augmentation(s, len(refs))
    bank = None
    ref_patches = []
    if refs:
        ref_feats = cache.get(method, split.category, refs, aug)
        ref_patches = [ref_feats[str(p)][0].reshape(-1, ref_feats[str(p)][0].shape[-1]) for p in refs]
    # The coreset only matters once the bank is larger than it.
    coreset = coreset_target(s, sum(p.shape[0] for p in ref_patches), len(refs))
    k = s.few_shot_k if refs else (s.zero_shot_k, s.zero_shot_exclusion)
    bank_key = (feature_key(s), aug, coreset, k, s.coarse_weight, gaussian_weight(s), s.gaussian_shrinkage)
    bank_key += (tuple(map(str, refs)),)
    if refs and (s.reweight_neighbours or not all((*bank_key, str(t.path)) in PATCH_MAPS for t in split.test)):
        bank = method.build_bank([p.float() for p in ref_patches])
    test = cache.get(method, split.category, [s.path for s in split.test])
    labels, scores = [], []
    pixels = PixelMetricAccumulator()
    for sample in split.test:
        feats, layout = test[str(sample.path)]
        feats = feats.float()
        key = (*bank_key, str(sample.path))
        if key not in PATCH_MAPS:
            PATCH_MAPS[key] = patch_anomalies(feats, bank, s, method.coarse_layout).half()
        out = method.score(feats, layout, bank, PATCH_MAPS[key].float())
        labels.append(sample.label)
        scores.append(out.score)
        if split.has_masks:
            pixels.update(out.anomaly_map, load_mask(sample, out.anomaly_map.shape))
    metrics = dict(image_metrics(labels, scores))
    metrics.update(pixels.compute() if split.has_masks else dict.fromkeys(PIXEL_METRICS))
    return metrics


def sized_method(settings: PatchKnnSettings, refs: list[Path], methods: dict[int, PatchKnn]) -> PatchKnn:
    """patchknn at the model side `fit` would choose for these references (`model_side`), one per side."""
    side = model_side(settings, [min(Image.open(p).size) for p in refs])
    if side not in methods:
        methods[side] = PatchKnn(replace(settings, image_size=side))
    return methods[side]


def run_variant(settings: dict, splits: dict, shots: list[int], seeds: list[int], cache: FeatureCache) -> dict:
    """{(category, shots): {metric: mean over seeds}}."""
    requested, methods = PatchKnnSettings(**settings), {}
    results = {}
    for category, split in splits.items():
        for k in shots:
            if k > len(split.train_good):
                continue
            draws = [sample_references(split, k, seed) if k else [] for seed in (seeds if k else seeds[:1])]
            runs = [evaluate(sized_method(requested, refs, methods), cache, split, refs) for refs in draws]
            results[(category, k)] = {
                m: (float(np.mean([r[m] for r in runs])) if runs[0][m] is not None else None)
                for m in IMAGE_METRICS + PIXEL_METRICS
            }
    return results


def rows(name: str, results: dict, shots: list[int], seconds: float) -> list[str]:
    out = []
    for k in shots:
        cats = {c: r for (c, kk), r in results.items() if kk == k}
        if not cats:
            continue
        cells = []
        for m in METRICS:
            vals = [r[m] for r in cats.values() if r[m] is not None]
            cells.append(f"{100 * np.mean(vals):.1f}" if vals else "N/A")
        for c in ("magnetic_tile", "mpdd_metal_plate"):
            for m in METRICS:
                v = cats.get(c, {}).get(m)
                cells.append("N/A" if v is None else f"{100 * v:.1f}")
        out.append(f"| {k} | {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None, help="comma-separated; default all")
    parser.add_argument("--shots", default="0,1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--groups", default="defaults,scoring,features", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--base", default="new", choices=("old", "new"), help="variants change the old or new default")
    parser.add_argument("--set", action="append", default=[], help="an extra variant key=value (JSON value)")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    categories = args.categories.split(",") if args.categories else None
    splits = load_dataset(args.data, categories=categories)
    cache = FeatureCache(Path(args.cache))
    base = OLD_DEFAULT if args.base == "old" else {}
    groups = args.groups.split(",") if args.groups else []
    named = [("old default", OLD_DEFAULT), ("default", {})] if "defaults" in groups else []
    variants = [v for g in groups for v in VARIANTS[g]]
    if args.set:
        variants.append({k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)})
    for variant in variants:
        name = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in variant.items())
        named.append((f"{args.base} + {name}", {**base, **variant}))
    metric_names = " | ".join(["image AUROC", "pixel AUROC", "AUPRO"] * 3)
    print(f"base: {args.base} default; mean over categories | magnetic_tile | mpdd_metal_plate; seeds {seeds}\n")
    print(f"| shots | variant | {metric_names} | seconds |")
    print("|---" * 12 + "|")
    for name, settings in named:
        start = time.perf_counter()
        results = run_variant(settings, splits, shots, seeds, cache)
        for line in rows(name, results, shots, time.perf_counter() - start):
            print(line, flush=True)


if __name__ == "__main__":
    main()
