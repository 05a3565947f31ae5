"""References from unlabeled images (`fit --unlabeled`) against single-image zero-shot and real references.

For each seed the category's test images are split in two random halves: the first is the unlabeled
folder (`choose_typical_images`, musc's defaults, share 0.1), the second is scored one image at a time
by `patchknn` fitted on the chosen images, by `patchknn` zero-shot (each image against its own
patches) and, for context, by `patchknn` on 4 real references (`train/good`, the benchmark's draw for
that seed). Also printed: how many chosen images are defective (the labels are used only here).
Run it on `zero_shot_marks.py`'s marked copies (`--data /tmp/anomalens-marks/stamp`) to see a part's
own mark; metrics as `anomalens benchmark` computes them (`evaluate_category`).

    python benchmarks/unlabeled_references.py --data ../shared/data --categories magnetic_tile,mpdd_metal_plate
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from anomalens.benchmark import evaluate_category
from anomalens.data import load_dataset, sample_references
from anomalens.detector import Detector
from anomalens.typical_images import DEFAULT_TYPICAL_SHARE, choose_typical_images

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")
ROWS = ("zero-shot (single image)", "typical images of the other half", "4 real references")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--share", type=float, default=DEFAULT_TYPICAL_SHARE)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"data: {args.data}; typical share {args.share}; mean over seeds {args.seeds}")
    print("| category | references | image AUROC | pixel AUROC | AUPRO | chosen (defective) |")
    print("|---|---|---|---|---|---|")
    for category in args.categories.split(","):
        split = load_dataset(args.data, categories=[category])[category]
        results: dict[str, list[dict]] = {row: [] for row in ROWS}
        chosen_counts: list[tuple[int, int]] = []
        for seed in map(int, args.seeds.split(",")):
            order = np.random.default_rng(seed).permutation(len(split.test))
            pool = [split.test[i] for i in order[: len(order) // 2]]
            held_out = replace(split, test=[split.test[i] for i in order[len(order) // 2 :]])
            typical = choose_typical_images([s.path for s in pool], share=args.share, progress=False)
            label = {str(s.path): s.label for s in pool}
            chosen_counts.append((len(typical.chosen), sum(label[p] for p in typical.chosen)))
            draws = {
                ROWS[0]: [],
                ROWS[1]: typical.chosen,
                ROWS[2]: sample_references(split, 4, seed),
            }
            for row, refs in draws.items():
                results[row].append(evaluate_category(Detector("patchknn"), held_out, refs))
        for row in ROWS:
            cells = " | ".join(f"{100 * np.mean([r[k] for r in results[row]]):.1f}" for k in KEYS)
            extra = ""
            if row == ROWS[1]:
                extra = " + ".join(f"{n} ({bad})" for n, bad in chosen_counts)
            print(f"| {category} | {row} | {cells} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
