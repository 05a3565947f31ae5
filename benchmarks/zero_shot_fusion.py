"""Single-image zero-shot with both recipes: patchknn's default and its texture recipe, fused (a screen).

With references, `fused_recipe` standardises each recipe's map by the references' normal spread. Zero-shot
there are no references; this screen tries the two levels that remain (`recipe_fusion.map_level`, median
and MAD of a map's pixels):

* `image`: each image's own map (single-image: the bulk of an image is normal when its defect is small),
* `batch`: every test image's map of the category pooled (transductive: what an unlabeled folder allows),

then the pixelwise maximum of the two standardised maps and the larger standardised image score, as
`fused_recipe` does. A third rule keeps the default's own values and brings the recipe into them per image
(`in the default's units`: the recipe's map standardised by its image level, times the default's image
spread plus its image median), so that the default's level still separates images. Prints image AUROC /
pixel AUROC / AUPRO (pixel metrics at 256 px, binned) for the
default alone, the recipe alone and each fusion, one row per category. Reads and writes the variant
script's feature cache.

    python benchmarks/zero_shot_fusion.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import patchknn_variants

from anomalens.data import load_dataset, load_mask
from anomalens.methods.base import MethodOutput
from anomalens.methods.patchknn import PatchKnn
from anomalens.methods.patchknn_settings import KNN_RECIPES, PatchKnnSettings
from anomalens.methods.recipe_fusion import map_level
from anomalens.metrics import PixelMetricAccumulator, image_metrics


def outputs(method: PatchKnn, cache, split) -> tuple[np.ndarray, list[np.ndarray]]:
    feats = cache.get(method, split.category, [s.path for s in split.test])
    scores, maps = [], []
    for sample in split.test:
        f, layout = feats[str(sample.path)]
        out = method.score(f.float(), layout, None)
        scores.append(out.score)
        maps.append(out.anomaly_map.astype(np.float32))
    return np.array(scores), maps


def fused(first, second, first_levels: list, second_levels: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each image's two outputs standardised by its levels: the pixelwise maximum, the larger score."""
    scores, maps = [], []
    for i, (a, b) in enumerate(zip(first[1], second[1], strict=True)):
        la, lb = first_levels[i], second_levels[i]
        scores.append(max(la.standardise(first[0][i]), lb.standardise(second[0][i])))
        maps.append(np.maximum(la.standardise(a), lb.standardise(b)))
    return np.array(scores), maps


def in_first_units(first, second, first_levels: list, second_levels: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """The second recipe brought into the first's values by each image's two levels; the larger of the two."""
    scores, maps = [], []
    for i, (a, b) in enumerate(zip(first[1], second[1], strict=True)):
        la, lb = first_levels[i], second_levels[i]
        scores.append(max(first[0][i], lb.standardise(second[0][i]) * la.spread + la.median))
        maps.append(np.maximum(a, lb.standardise(b) * la.spread + la.median))
    return np.array(scores), maps


def metrics(split, labels, result) -> str:
    scores, maps = result
    pixels = PixelMetricAccumulator(resolution=256)
    for sample, m in zip(split.test, maps, strict=True):
        pixels.update(m, load_mask(sample, m.shape))
    p = pixels.compute()
    image = image_metrics(labels, scores)["image_auroc"] if len(set(labels)) > 1 else None
    cell = "-" if image is None else f"{100 * image:.1f}"
    return f"{cell} / {100 * p['pixel_auroc']:.1f} / {100 * p['pixel_aupro']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate,steel_strip_sd900")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    parser.add_argument("--recipe", default="textured-surface", help="the recipe fused beside the default")
    args = parser.parse_args()
    cache = patchknn_variants.FeatureCache(Path(args.cache))
    default = PatchKnn(PatchKnnSettings(fused_recipe="none"))
    recipe = PatchKnn(replace(PatchKnnSettings(), **KNN_RECIPES[args.recipe]))
    print(
        "| category | default | recipe | fused, image levels | fused, batch levels "
        "| image levels, in the default's units |\n|---|---|---|---|---|---|"
    )
    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        labels = [s.label for s in split.test]
        both = outputs(default, cache, split), outputs(recipe, cache, split)
        own = [[map_level([MethodOutput(0.0, m)]) for m in r[1]] for r in both]
        pooled = [map_level([MethodOutput(0.0, m) for m in r[1]]) for r in both]
        cells = [
            metrics(split, labels, both[0]),
            metrics(split, labels, both[1]),
            metrics(split, labels, fused(*both, *own)),
            metrics(split, labels, fused(*both, *([level] * len(labels) for level in pooled))),
            metrics(split, labels, in_first_units(*both, *own)),
        ]
        print(f"| {category} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
