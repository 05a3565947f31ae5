"""patchknn few-shot joined by its own single-image zero-shot map (a screen, session 29).

musc's `single_image_knn_weight` joins the image's own patches to the batch's opinion. The same question for
`patchknn` with references: does each image's single-image zero-shot map (its patches against its own patches
at patchknn's `zero_shot_quantile`) add to the references' map? For each category, shot count and reference
draw: patchknn's default fitted on the draw, patchknn's default zero-shot (no draw), each standardised by the
median and MAD of all the test images' maps (`recipe_fusion.map_level`), and for each weight w the pixelwise
(1 - w) x few-shot + w x single-image (the image score the same way). Prints image AUROC / pixel AUROC / AUPRO
(pixel metrics at 256 px, binned) per weight, the mean over draws.

    python benchmarks/fewshot_single_image.py --data ../shared/data --shots 1,4 --seeds 0,1,2 --weights 0,0.15,0.3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from musc_single_image import joined_metrics, standardised  # standardised by the batch's level

from anomalens import Detector
from anomalens.data import load_dataset
from anomalens.data.base import sample_references
from anomalens.images import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weights", default="0,0.15,0.3")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    print("| category | shots | " + " | ".join(f"w {w:g}" for w in weights) + " |")
    print("|---" * (len(weights) + 2) + "|")
    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        images = [load_image(s.path) for s in split.test]
        labels = [s.label for s in split.test]
        single = standardised(Detector("patchknn").fit([]).predict(images))
        for shots in [int(k) for k in args.shots.split(",")]:
            rows = []
            for seed in [int(s) for s in args.seeds.split(",")]:
                refs = [load_image(p) for p in sample_references(split, shots, seed)]
                few = standardised(Detector("patchknn").fit(refs).predict(images))
                metrics = [joined_metrics(split, labels, few, single, w) for w in weights]
                rows.append([[np.nan if v is None else v for v in m] for m in metrics])
            mean = np.mean(np.array(rows), axis=0)
            cells = [" / ".join(f"{v:.1f}" for v in m) for m in mean]
            print(f"| {category} | {shots} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
