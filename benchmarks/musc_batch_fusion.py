"""Screens for musc + patchknn on a batch (README "musc with references"), on cached features.

Each category's test images are the batch. musc's mutual score (its defaults or --musc, partner seed 0,
no references) is averaged with patchknn's map and score, weighted by --weights (patchknn's share):

* `--shots K --seeds 0,1,2`: patchknn fitted on K references (the benchmark's draws), as
  `reference_knn_weight` does; `--normalise` first divides each method's scores and maps by the
  batch's median and MAD (the screen that showed raw distances need no normalisation).
* `--pseudo N`: zero-shot; musc's N lowest-scored images of the batch (N < 1: that share of it)
  are patchknn's references, each image scored against the bank without its own patches; one draw
  per partner seed in --seeds (the mutual score that chooses them). `--side S` fixes patchknn's
  model side (0: as `fit` chooses it for the chosen images). `--shots K --with-pseudo S`: the K
  references and the batch's lowest-scored share S together (the pseudo ones without their own patches).

Pixel metrics at a longer side of 256 px (binned beyond 5e7 pixels), so they read higher than
`anomalens benchmark`'s full-resolution ones. Features come from the caches of musc_screen.py
(--musc-cache) and patchknn_variants.py (--patchknn-cache).

    python benchmarks/musc_batch_fusion.py --data ../shared/data --categories magnetic_tile --shots 4 --weights 0.25,0.5
    python benchmarks/musc_batch_fusion.py --data ../shared/data --categories mpdd_metal_plate --pseudo 16
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import musc_screen
import patchknn_variants

from anomalens import Detector
from anomalens.data import load_dataset, sample_references
from anomalens.data.base import load_mask
from anomalens.methods.musc.pseudo_references import lowest_scored, musc_references_knn_settings
from anomalens.methods.patchknn import reference_augmentation
from anomalens.metrics import image_metrics
from anomalens.pixel_accumulator import PixelMetricAccumulator
from anomalens.scoring import image_score_in_map

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def robust(sample: np.ndarray) -> tuple[float, float]:
    """(median, MAD) of `sample`: the offset and scale of a method's normalisation."""
    med = float(np.median(sample))
    return med, float(np.median(np.abs(sample - med))) + 1e-12


def mutual(split, cache: Path, partner_seed: int = 0, settings: dict | None = None) -> tuple[np.ndarray, list]:
    det = Detector("musc", progress=False, partner_seed=partner_seed, **(settings or {}))
    feats = musc_screen.cached_features(det, split, cache)
    maps, scores = det.method.score_features(feats, feats.paths)
    inputs = feats.inputs_of()
    return scores.numpy(), [det.method.image_map(feats, i, maps, inputs[i]) for i in range(len(split.test))]


def knn_outputs(split, cache, refs: list, exclude: dict | None = None, side: int = 0, knn: dict | None = None):
    """patchknn's scores and maps for the batch with these references (`exclude`: image -> its index in
    refs; `side`: its model side, 0 = the one `fit` would choose for the references; `knn`: changes to
    the patchknn settings)."""
    sized = {} if not side else {"image_size": side, "image_size_up_to": side}
    settings = replace(musc_references_knn_settings(), **sized, **(knn or {}))  # musc's own patchknn, changed
    method = patchknn_variants.sized_method(settings, refs, {})
    aug = "none" if exclude is not None else reference_augmentation(method.settings, len(refs))
    bank_feats = cache.get(method, split.category, refs, aug)
    per_ref = [bank_feats[str(p)][0].reshape(-1, bank_feats[str(p)][0].shape[-1]).float() for p in refs]
    bank, origin = method.bank_with_origin(per_ref)
    test = cache.get(method, split.category, [s.path for s in split.test])
    scores, maps = [], []
    for i, sample in enumerate(split.test):
        feats, layout = test[str(sample.path)]
        own = None if exclude is None else exclude.get(i)
        out = method.score(feats.float(), layout, bank if own is None else bank[origin != own])
        scores.append(out.score)
        maps.append(out.anomaly_map)
    return np.array(scores), maps


def fused_metrics(
    split, labels, masks, mutual_out, knn_out, weight: float, normalise: bool, image_share: tuple = (0.0, "add")
) -> dict:
    (ms, mm), (ks, km) = mutual_out, knn_out
    if normalise:
        sample = lambda maps: np.concatenate([m[::8, ::8].ravel() for m in maps])  # noqa: E731
        (a, b), (c, d) = robust(ms), robust(ks)
        ms, ks = (ms - a) / b, (ks - c) / d
        (a, b), (c, d) = robust(sample(mm)), robust(sample(km))
        mm = [(m - a) / b for m in mm]
        km = [(m - c) / d for m in km]
    scores = weight * ks + (1 - weight) * ms
    result = {"image_auroc": image_metrics(labels, scores)["image_auroc"]}
    share, mode = image_share  # the image score joins each pixel of its map (patchknn's map_image_share)
    pixels = PixelMetricAccumulator(resolution=256)
    for i in range(len(split.test)):
        pixels.update(image_score_in_map(weight * km[i] + (1 - weight) * mm[i], scores[i], share, mode), masks[i])
    result.update(pixels.compute())
    return result


def _mean_cell(values: list) -> str:
    """Percent, or N/A for a metric the category does not have (image AUROC without normals)."""
    return "N/A" if any(v is None for v in values) else f"{100 * np.mean(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--shots", type=int, default=0, help="references drawn as the benchmark does")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--pseudo", type=float, default=0, help="zero-shot: musc's N lowest-scored images as references (< 1: a share)"
    )
    parser.add_argument("--side", type=int, default=0, help="patchknn's model side (0: as fit chooses)")
    parser.add_argument(
        "--with-pseudo", type=float, default=0, help="with --shots: this share of the batch joins the references"
    )
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="patchknn's share")
    parser.add_argument("--normalise", action="store_true", help="batch median / MAD per method first")
    parser.add_argument(
        "--musc", default="{}", help="musc settings, JSON (session 13's screens: '{\"intensity_weight\": 0}')"
    )
    parser.add_argument(
        "--knn",
        action="append",
        help="changes to musc's patchknn, JSON; repeat for several variants on the same mutual scores "
        "(default one: '{}', patchknn without the bank's Gaussian as musc runs it)",
    )
    parser.add_argument(
        "--image-share",
        action="append",
        help="the fused image score joins each pixel of its map: 'SHARE' (added: (1 - s) map + s score) or "
        "'SHARE:multiply' (map x score^s); repeat for several (default: 0, off)",
    )
    parser.add_argument("--musc-cache", default="/tmp/musc-cache")
    parser.add_argument("--patchknn-cache", default="/tmp/anomalens-features")
    args = parser.parse_args()
    if bool(args.shots) == bool(args.pseudo):
        raise SystemExit("give either --shots K or --pseudo N")
    weights = [float(w) for w in args.weights.split(",")]
    musc_settings = json.loads(args.musc)
    knn_variants = [json.loads(text) for text in (args.knn or ["{}"])]
    shares = [(float(t.split(":")[0]), (t.split(":") + ["add"])[1]) for t in (args.image_share or ["0"])]
    cache = patchknn_variants.FeatureCache(Path(args.patchknn_cache))
    print("| category | references | patchknn | patchknn weight | image AUROC / pixel AUROC / AUPRO |")
    print("|---|---|---|---|---|")
    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        labels = np.array([s.label for s in split.test])
        paths = [str(s.path) for s in split.test]  # the library's tie-break (`lowest_scored`)
        mutual_out = mutual(split, Path(args.musc_cache), 0, musc_settings)
        masks = [load_mask(s, mutual_out[1][i].shape) for i, s in enumerate(split.test)]
        if args.pseudo:  # one draw per partner seed: the mutual score chooses the pseudo-references
            count = int(args.pseudo) if args.pseudo >= 1 else max(1, round(args.pseudo * len(split.test)))
            draws = []
            for seed in map(int, args.seeds.split(",")):
                seeded = mutual_out if seed == 0 else mutual(split, Path(args.musc_cache), seed, musc_settings)
                chosen = lowest_scored(seeded[0], paths, count)
                name = f"{count} pseudo (partner seed {seed}: {int(labels[chosen].sum())} defective)"
                draws.append((name, [split.test[i].path for i in chosen], {i: j for j, i in enumerate(chosen)}, seeded))
        else:
            draws = [
                (f"{args.shots}-shot seed {seed}", sample_references(split, args.shots, seed), None, mutual_out)
                for seed in map(int, args.seeds.split(","))
            ]
            if args.with_pseudo:  # the references and the batch's lowest-scored share together
                count = round(args.with_pseudo * len(split.test))
                chosen = lowest_scored(mutual_out[0], paths, count)
                pseudo = [split.test[i].path for i in chosen]
                draws = [
                    (f"{name} + {count} pseudo", refs + pseudo, {i: len(refs) + j for j, i in enumerate(chosen)}, m)
                    for name, refs, _, m in draws
                ]
        results: dict[tuple[str, float], list[dict]] = {}
        for name, refs, exclude, mutual_draw in draws:
            print(f"<!-- {category}: {name} -->", flush=True)
            for knn in knn_variants:
                knn_out = knn_outputs(split, cache, refs, exclude, args.side, knn)
                for w in weights:
                    for share in shares:
                        results.setdefault((json.dumps(knn), w, share), []).append(
                            fused_metrics(split, labels, masks, mutual_draw, knn_out, w, args.normalise, share)
                        )
        for (knn_name, w, share), runs in results.items():
            cell = " / ".join(_mean_cell([r[k] for r in runs]) for k in KEYS)
            refs_name = (
                f"{count} pseudo, {len(draws)} partner seeds"
                if args.pseudo
                else f"{args.shots}-shot{f' + {count} pseudo' if args.with_pseudo else ''}, {len(draws)} seeds"
            )
            share_name = "" if share[0] == 0 else f", image share {share[0]:g} ({share[1]})"
            print(f"| {category} | {refs_name} | {knn_name} | {w:g}{share_name} | {cell} |", flush=True)


if __name__ == "__main__":
    main()
