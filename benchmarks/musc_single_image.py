"""musc's batch output joined by patchknn's single-image zero-shot map (a screen, session 26).

musc scores each image against the others of its batch; patchknn zero-shot (since session 26 the default
recipe and the texture recipe fused by each image's own levels) scores each image against itself. A defect
type present in many images of the batch (steel_strip's blotches) escapes mutual scoring but may stand out
within its own image. Each category's test images are the batch: musc's default output (partner seed 0),
patchknn's default zero-shot output, each standardised by the median and MAD of all the batch's maps
(`recipe_fusion.map_level`), and for each weight w the pixelwise (1 - w) * musc + w * patchknn (scores the
same way). Prints image AUROC / pixel AUROC / AUPRO (pixel metrics at 256 px, binned) per weight.

    python benchmarks/musc_single_image.py --data ../shared/data --weights 0,0.25,0.5
    python benchmarks/musc_single_image.py --data ../shared/data --weights 0,0.25,0.5 --levels lowest
    python benchmarks/musc_single_image.py --data ../shared/data --weights 0,0.5,1 --levels lowest --rule max

`--rule max` (session 30) joins by the pixelwise larger of the two standardised maps (scores: the larger
score) instead of the average: (1 - w) x musc + w x max(musc, single-image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from anomalens import Detector
from anomalens.data import load_dataset, load_mask
from anomalens.images import load_image
from anomalens.methods.base import MethodOutput
from anomalens.methods.recipe_fusion import map_level
from anomalens.metrics import PixelMetricAccumulator, image_metrics


def standardised(results, level_images=None) -> tuple[np.ndarray, list[np.ndarray]]:
    chosen = results if level_images is None else [results[i] for i in level_images]
    level = map_level([MethodOutput(0.0, r.anomaly_map) for r in chosen])
    scores = np.array([level.standardise(r.score) for r in results])
    return scores, [level.standardise(r.anomaly_map).astype(np.float32) for r in results]


def joined_metrics(split, labels, first, second, w: float, join=None) -> tuple[float | None, float, float]:
    """Image AUROC (None without normal images) / pixel AUROC / AUPRO, in %, of (1 - w) x first + w x
    join(first, second) over standardised (scores, maps); `join` None: second itself (the average)."""
    join = join or (lambda a, b: b)
    scores = (1 - w) * first[0] + w * join(first[0], second[0])
    pixels = PixelMetricAccumulator(resolution=256)
    for sample, a, b in zip(split.test, first[1], second[1], strict=True):
        pixels.update((1 - w) * a + w * join(a, b), load_mask(sample, a.shape))
    p = pixels.compute()
    image = 100 * image_metrics(labels, scores)["image_auroc"] if len(set(labels)) > 1 else None
    return image, 100 * p["pixel_auroc"], 100 * p["pixel_aupro"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="steel_strip_sd900,magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--weights", default="0,0.25,0.5")
    parser.add_argument(
        "--levels", default="batch", choices=("batch", "lowest"),
        help="levels from all the batch's maps, or from the tenth musc scores lowest (at least 16 images)",
    )
    parser.add_argument("--rule", default="mean", choices=("mean", "max"), help="average, or towards the maximum")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    print("| category | " + " | ".join(f"w {w:g}" for w in weights) + " |\n" + "|---" * (len(weights) + 1) + "|")
    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        images = [load_image(s.path) for s in split.test]
        labels = [s.label for s in split.test]
        musc_out = Detector("musc", progress=False).fit([]).predict(images)
        lowest = None
        if args.levels == "lowest":
            order = np.argsort([r.score for r in musc_out], kind="stable")
            lowest = list(order[: max(16, round(0.1 * len(order)))])
        musc = standardised(musc_out, lowest)
        single = standardised(Detector("patchknn").fit([]).predict(images), lowest)
        cells = []
        join = np.maximum if args.rule == "max" else None
        for w in weights:
            image, pixel, aupro = joined_metrics(split, labels, musc, single, w, join)
            cells.append(f"{'-' if image is None else f'{image:.1f}'} / {pixel:.1f} / {aupro:.1f}")
        print(f"| {category} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
