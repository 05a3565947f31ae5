"""Where musc's errors on one category come from: per defect type, and against image shape.

Reads the grid maps and scores that `musc_screen.py --save-maps DIR` saved for one run and
prints, without any backbone pass or re-scoring:

* per defect type: image AUROC (that type vs all normals), pixel AUROC and AUPRO over that
  type's images plus all normals, its share of the defect pixels;
* the normals' image scores against their aspect ratio (Spearman correlation with
  |log(width / height)|) and the image AUROC inside aspect-ratio bins;
* the image AUROC of seeded 100-image subsets of the same full-batch scores (how much a
  100-image subset's AUROC varies by the draw alone).

    python benchmarks/musc_analyse.py --data ../shared/data --category magnetic_tile \
        --maps /tmp/musc-maps/magnetic_tile-<tag>-seed0.pt
"""

from __future__ import annotations

import argparse
import itertools
import random

import numpy as np
import torch
from scipy.stats import spearmanr

from anomalens.data import load_dataset
from anomalens.data.base import load_mask
from anomalens.geometry import map_to_image
from anomalens.metrics import image_metrics
from anomalens.pixel_accumulator import PixelMetricAccumulator


def _auroc(labels, scores) -> float:
    value = image_metrics(labels, scores)["image_auroc"]
    return float("nan") if value is None else 100 * value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--category", required=True)
    parser.add_argument("--maps", required=True, help="a file saved by musc_screen.py --save-maps")
    parser.add_argument("--image-size", type=int, default=256, help="the run's image_size")
    parser.add_argument("--pixel-resolution", type=int, default=256)
    args = parser.parse_args()
    split = load_dataset(args.data, categories=[args.category])[args.category]
    saved = torch.load(args.maps, weights_only=False)
    by_path = {p: i for i, p in enumerate(saved["paths"])}
    samples = [s for s in split.test if str(s.path) in by_path]
    index = [by_path[str(s.path)] for s in samples]
    scores = saved["scores"].double().numpy()[index]
    labels = np.array([s.label for s in samples])
    sizes = []
    for s in samples:
        from PIL import Image

        with Image.open(s.path) as im:
            sizes.append((im.height, im.width))
    sizes = np.array(sizes)

    def full_map(k: int) -> np.ndarray:
        i = index[k]
        return map_to_image(saved["maps"][i].float(), saved["boxes"][i], args.image_size, tuple(sizes[k]))

    types = sorted({s.defect_type for s in samples if s.label == 1})
    normals = [k for k, s in enumerate(samples) if s.label == 0]
    overall = _auroc(labels, scores)
    print(f"{args.category}: {len(samples)} images, {len(normals)} normal; all: image AUROC {overall:.1f}\n")
    print("| defect type | images | share of defect pixels | image AUROC vs normals | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|---|")
    normal_maps = [(full_map(k), k) for k in normals]
    defect_pixels = {}
    rows = []
    for t in types:
        ks = [k for k, s in enumerate(samples) if s.defect_type == t]
        acc = PixelMetricAccumulator(resolution=args.pixel_resolution)
        pixels = 0
        for k in ks:
            m = full_map(k)
            mask = load_mask(samples[k], m.shape)
            pixels += int(mask.sum())
            acc.update(m, mask)
        for m, k in normal_maps:
            acc.update(m, load_mask(samples[k], m.shape))
        px = acc.compute()
        defect_pixels[t] = pixels
        sel = normals + ks
        rows.append((t, len(ks), _auroc(labels[sel], scores[sel]), 100 * px["pixel_auroc"], 100 * px["pixel_aupro"]))
    total = sum(defect_pixels.values()) or 1
    for t, n, img, pix, pro in rows:
        print(f"| {t} | {n} | {100 * defect_pixels[t] / total:.0f} % | {img:.1f} | {pix:.1f} | {pro:.1f} |")

    aspect = np.abs(np.log(sizes[:, 1] / sizes[:, 0]))
    rho = spearmanr(aspect[normals], scores[normals]).statistic
    print(f"\nnormals: Spearman(score, |log aspect|) = {rho:.2f}")
    print("| |log(w/h)| bin | normals | defects | image AUROC in bin |")
    print("|---|---|---|---|")
    edges = np.quantile(aspect, [0, 0.25, 0.5, 0.75, 1.0])
    for lo, hi in itertools.pairwise(edges):
        sel = (aspect >= lo) & (aspect <= hi)
        counts = f"{(sel & (labels == 0)).sum()} | {(sel & (labels == 1)).sum()}"
        print(f"| {lo:.2f}-{hi:.2f} | {counts} | {_auroc(labels[sel], scores[sel]):.1f} |")

    if len(samples) > 100 and len(normals) < len(samples):
        draws = []
        for seed in range(20):
            order = list(range(len(samples)))
            random.Random(seed).shuffle(order)
            sub = order[:100]
            draws.append(_auroc(labels[sub], scores[sub]))
        print(
            f"\nimage AUROC of 20 seeded 100-image subsets of these scores: mean {np.nanmean(draws):.1f}, "
            f"std {np.nanstd(draws):.1f}, min {np.nanmin(draws):.1f}, max {np.nanmax(draws):.1f}"
        )


if __name__ == "__main__":
    main()
