"""Fast screening of musc variants on ALL test images of each category, features cached on disk.

The backbone pass is the only costly step that scoring variants (interval, partners, RsCIN,
smoothing, image score rule) do not change, so each category's LNAMD features are computed once
per *feature settings* (backbone, image size, resize, blocks, stride, degrees, photometric
normalisation, patch_norm) and cached under --cache (atomic writes: a temporary file renamed into place).
Every variant then runs the method's own `score_features` on the cached features.

Rows = variants, columns = each category's metrics and their mean. Variants are JSON objects of
settings changed from the defaults (`--variant`, repeatable); `--seeds 0,1,2` re-runs each
variant with other partner samples (`partner_seed`) and prints mean +- std, when partners are
sampled; with all partners (max_partners 0 or >= N-1) one run suffices (no randomness).

Pixel metrics: maps and masks are resized so the longer side is --pixel-resolution (default
256) before accumulation (anomalens.pixel_accumulator), exact up to 5e7 pixels, beyond that
binned in 2^16 score bins; the table says which. The full benchmark uses the masks' resolution.

    python benchmarks/musc_screen.py --data ../shared/data --seeds 0,1,2 \
        --variant '{}' --variant '{"interval": [0, 0.5]}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from anomalens import Detector
from anomalens.data import load_dataset
from anomalens.data.base import load_mask
from anomalens.images import load_image
from anomalens.methods.musc.method import BatchFeatures
from anomalens.metrics import image_metrics
from anomalens.pixel_accumulator import PixelMetricAccumulator

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")
FEATURE_SETTINGS = (
    "backbone",
    "weights",
    "image_size",
    "resize",
    "blocks",
    "score_stride",
    "clip_layers",
    "degrees",
    "feature_dtype",
    "photometric",
    "patch_norm",
    "tile_above_aspect",
)


def feature_key(settings: dict, category: str, paths: list[str]) -> str:
    chosen = {k: settings[k] for k in FEATURE_SETTINGS if k in settings}
    for name, old in (("photometric", "none"), ("patch_norm", "l2"), ("tile_above_aspect", 0.0)):
        if chosen.get(name) == old:  # the key of caches made before this setting existed
            del chosen[name]
    if settings.get("intensity_weight", 0) > 0:  # the intensity layer is stored unweighted
        chosen["intensity"] = True
    text = json.dumps([category, chosen, sorted(paths)], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_features(det: Detector, split, cache: Path) -> BatchFeatures:
    paths = [str(s.path) for s in split.test]
    settings = det.settings if isinstance(det.settings, dict) else {}
    path = cache / f"{split.category}-{feature_key(settings, split.category, paths)}.pt"
    if path.exists():
        return BatchFeatures(**torch.load(path, weights_only=False))
    feats = det.method.features((load_image(p) for p in paths), "features")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(feats.__dict__, tmp)
    os.replace(tmp, path)  # atomic: a parallel run never reads a half-written file
    return feats


def evaluate(
    det: Detector, split, feats: BatchFeatures, resolution: int, save: Path | None = None, base: Path | None = None
) -> dict:
    if base is not None:  # only the steps after mutual scoring change: reuse a saved run's raw maps
        saved = torch.load(base, weights_only=False)
        raw = saved["raw_maps"] if saved.get("raw_maps") is not None else saved["maps"]  # sigma 0: the same
        maps, scores = det.method.finish(raw.float(), feats)
    else:
        raw = {}
        finish = det.method.finish
        det.method.finish = lambda m, f: (raw.setdefault("maps", m), finish(m, f))[1]
        maps, scores = det.method.score_features(feats, feats.paths)
        det.method.finish = finish
    if save is not None and len(feats.owners()) != len(feats.paths):
        raise SystemExit("--save keeps one map per image: run it with tile_above_aspect 0")
    if save is not None:  # for musc_analyse.py: per-class and per-image looks without re-scoring
        save.parent.mkdir(parents=True, exist_ok=True)
        tmp = save.with_suffix(f".tmp{os.getpid()}")
        torch.save(
            {
                "maps": maps.half(),
                "raw_maps": raw["maps"] if base is None else None,
                "scores": scores,
                "boxes": feats.boxes,
                "paths": feats.paths,
            },
            tmp,
        )
        os.replace(tmp, save)
    labels = [s.label for s in split.test]
    metrics = {"image_auroc": image_metrics(labels, scores.numpy())["image_auroc"]}
    pixels = PixelMetricAccumulator(resolution=resolution)
    inputs = feats.inputs_of()
    for i, sample in enumerate(split.test):
        full = det.method.image_map(feats, i, maps, inputs[i])
        pixels.update(full, load_mask(sample, full.shape))
    metrics.update({k: v for k, v in pixels.compute().items() if k in KEYS})
    metrics["exact"] = pixels.is_exact
    return metrics


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "N/A"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f}±{100 * statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--cache", default="/tmp/musc-cache")
    parser.add_argument("--seeds", default="0", help="partner seeds, comma-separated")
    parser.add_argument("--pixel-resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", default=None, help="JSON settings (repeatable)")
    parser.add_argument("--jsonl", default=None, help="also append one JSON line per row here")
    parser.add_argument("--save-maps", default=None, help="folder: save each run's grid maps and scores")
    parser.add_argument(
        "--from-maps",
        default=None,
        help="JSON variant whose saved raw maps (--save-maps folder) are reused: only smoothing, "
        "image score and RsCIN settings may differ from it",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.data, categories=args.categories.split(",") if args.categories else None)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    cats = list(splits)
    head = " | ".join(f"{c} {k.replace('pixel_', '').replace('image_', 'img ')}" for c in cats for k in KEYS)
    print(f"all test images; pixel metrics at longer side {args.pixel_resolution}; partner seeds {seeds}\n")
    print(f"| variant | {head} | mean img AUROC | mean pixel AUROC | mean AUPRO | s |")
    print("|---|" + "---|" * (len(cats) * len(KEYS) + 4), flush=True)
    for variant in variants:
        name = ", ".join(f"{k}={v}" for k, v in variant.items()) or "default"
        start = time.perf_counter()
        per_cat: dict[str, dict[str, list]] = {}
        exact = True
        for cat, split in splits.items():
            n = len(split.test)
            det = Detector("musc", progress=False, **variant)
            feats = cached_features(det, split, Path(args.cache))
            partners = det.method.settings.max_partners
            run_seeds = seeds if 0 < partners < n - 1 else seeds[:1]
            rows = []
            for seed in run_seeds:
                det.method.settings.partner_seed = seed
                save = None
                if args.save_maps:
                    tag = hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:10]
                    save = Path(args.save_maps) / f"{cat}-{tag}-seed{seed}.pt"
                base = None
                if args.from_maps is not None:
                    tag0 = hashlib.sha256(json.dumps(json.loads(args.from_maps), sort_keys=True).encode()).hexdigest()[
                        :10
                    ]
                    base = Path(args.save_maps) / f"{cat}-{tag0}-seed{seed}.pt"
                    save = None
                rows.append(evaluate(det, split, feats, args.pixel_resolution, save, base))
                exact &= rows[-1]["exact"]
            per_cat[cat] = {k: [r[k] for r in rows] for k in KEYS}
        cells = " | ".join(_cell(per_cat[c][k]) for c in cats for k in KEYS)
        means = []
        for k in KEYS:
            vals = [statistics.mean(v) for c in cats if (v := [x for x in per_cat[c][k] if x is not None])]
            means.append(_cell([statistics.mean(vals)]) if vals else "N/A")
        flag = "" if exact else " (binned)"
        print(f"| {name}{flag} | {cells} | {' | '.join(means)} | {time.perf_counter() - start:.0f} |", flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps({"variant": variant, "seeds": seeds, "metrics": per_cat}) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
