"""musc's pseudo-reference share as patchknn's `fused_recipe`: the screen before it was built into musc
(session 25: musc's `knn_fused`, `anomalens/methods/musc/fused_share.py`).

Zero-shot, each category's test images are the batch: musc's mutual score (its defaults, partner seed 0)
picks the lowest-scored tenth as pseudo-references, patchknn scores every image against them (each
pseudo-reference without its own patches) with its default and with the texture recipe, and the two are
fused as `fused_recipe` fuses them (`anomalens.methods.recipe_fusion`: each map standardised by the median
and MAD of the pseudo-references' own maps, pixelwise maximum, larger score), expressed back in the
default's units so that musc's share (`pseudo_reference_weight` 0.375) weighs it as it weighs the default.
Prints image AUROC / pixel AUROC / AUPRO of the fused batch score for the default share, the recipe's
(`knn_recipe=textured-surface`) and the fused one. Pixel metrics at 256 px, binned, as
`musc_batch_fusion.py` (whose feature caches it reads).

    python benchmarks/musc_fused_share.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import musc_batch_fusion as fusion
import patchknn_variants

from anomalens.data import load_dataset
from anomalens.data.base import load_mask
from anomalens.methods.base import MethodOutput
from anomalens.methods.musc.pseudo_references import lowest_scored
from anomalens.methods.musc.settings import DEFAULT_PSEUDO_REFERENCE_SHARE, DEFAULT_PSEUDO_REFERENCE_WEIGHT
from anomalens.methods.patchknn_settings import KNN_RECIPES
from anomalens.methods.recipe_fusion import map_level


def fused_outputs(default, recipe, own: list[int]):
    """(scores, maps) of the two shares fused, in the default's units (levels from the pseudo-references' maps)."""
    first = map_level([MethodOutput(0.0, default[1][i]) for i in own])
    second = map_level([MethodOutput(0.0, recipe[1][i]) for i in own])
    scores = np.maximum(first.standardise(default[0]), second.standardise(recipe[0]))
    maps = [np.maximum(first.standardise(a), second.standardise(b)) for a, b in zip(default[1], recipe[1])]
    return scores * first.spread + first.median, [m * first.spread + first.median for m in maps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate,steel_strip_sd900")
    parser.add_argument("--musc-cache", default="/tmp/musc-cache")
    parser.add_argument("--patchknn-cache", default="/tmp/anomalens-features")
    args = parser.parse_args()
    cache = patchknn_variants.FeatureCache(Path(args.patchknn_cache))
    print("| category | default share | texture recipe's share | fused share |\n|---|---|---|---|")
    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        labels = np.array([s.label for s in split.test])
        mutual = fusion.mutual(split, Path(args.musc_cache), 0, {})
        masks = [load_mask(s, mutual[1][i].shape) for i, s in enumerate(split.test)]
        count = max(1, round(DEFAULT_PSEUDO_REFERENCE_SHARE * len(split.test)))
        chosen = lowest_scored(mutual[0], [str(s.path) for s in split.test], count)
        refs, own = [split.test[i].path for i in chosen], {i: j for j, i in enumerate(chosen)}
        default = fusion.knn_outputs(split, cache, refs, own, 0, {})
        recipe = fusion.knn_outputs(split, cache, refs, own, 0, KNN_RECIPES["textured-surface"])
        cells = []
        for share in (default, recipe, fused_outputs(default, recipe, chosen)):
            r = fusion.fused_metrics(split, labels, masks, mutual, share, DEFAULT_PSEUDO_REFERENCE_WEIGHT, False)
            cells.append(" / ".join("-" if r[k] is None else f"{100 * r[k]:.1f}" for k in fusion.KEYS))
        print(f"| {category} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
