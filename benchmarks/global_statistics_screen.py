"""Image-level statistics as a mutual score, and the squash's shape cue (a screen, session 27).

Each test image is described by the per-channel means and standard deviations of EfficientNet-Lite0's
blocks (7, 10, 14), and scored as musc scores patches: the mean of its smallest 30 % of cosine distances
to the other images of the batch. Two views of each image: squashed to 256 x 256 (what musc and patchknn's
squash see) and at its own aspect ratio (short side 256, the long side rounded to 32 px). The image's
aspect ratio alone is printed as a score too: on magnetic_tile defect classes and normals differ in it
(`../shared/data`'s README), and a descriptor of the squashed image can carry that instead of the surface.
Prints image AUROC overall and per defect type.

    python benchmarks/global_statistics_screen.py --data ../shared/data --categories magnetic_tile
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

BLOCKS = (7, 10, 14)


def view(path: Path, squash: bool, side: int = 256) -> Image.Image:
    img = Image.open(path).convert("RGB")
    if squash:
        return img.resize((side, side), Image.BILINEAR)
    w, h = img.size
    f = side / min(w, h)
    return img.resize((max(32, round(w * f / 32) * 32), max(32, round(h * f / 32) * 32)), Image.BILINEAR)


def statistics(paths: list[Path], squash: bool) -> dict[str, np.ndarray]:
    from anomalens.backbones.cnn import EfficientNetPatchBackbone

    net = EfficientNetPatchBackbone(image_size=256, blocks=BLOCKS)
    mean, std = torch.tensor(net.mean).view(1, 3, 1, 1), torch.tensor(net.std).view(1, 3, 1, 1)
    out: dict[str, list] = {}
    for path in paths:
        x = torch.from_numpy(np.asarray(view(path, squash), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            blocks = net.run_blocks_in_torch((x - mean) / std)
        for b in BLOCKS:
            f = blocks[b][0].float()
            out.setdefault(f"block {b} means", []).append(f.mean((1, 2)).numpy())
            out.setdefault(f"block {b} standard deviations", []).append(f.std((1, 2)).numpy())
    return {k: np.array(v) for k, v in out.items()}


def mutual(descriptors: np.ndarray, to: float = 0.3) -> np.ndarray:
    """Each image's mean cosine distance to the smallest `to` of its distances to the other images."""
    x = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
    d = 1 - x @ x.T
    np.fill_diagonal(d, np.inf)
    ranked = np.sort(d, axis=1)[:, :-1]
    return ranked[:, : max(1, int(to * ranked.shape[1]))].mean(axis=1)


def row(name: str, scores: np.ndarray, labels: np.ndarray, types: np.ndarray, kinds: list[str]) -> str:
    cells = [roc_auc_score(labels, scores)]
    for kind in kinds:
        keep = (types == kind) | (labels == 0)
        cells.append(roc_auc_score(labels[keep], scores[keep]))
    return f"| {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from anomalens.data import load_dataset

    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        paths = [Path(s.path) for s in split.test]
        labels = np.array([s.label for s in split.test])
        types = np.array([p.parent.name for p in paths])
        kinds = sorted({t for t, y in zip(types, labels) if y == 1})
        print(f"\n{category}, image AUROC\n\n| score | all | " + " | ".join(kinds) + " |")
        print("|---" * (len(kinds) + 2) + "|")
        sizes = [Image.open(p).size for p in paths]
        aspect = np.array([max(w, h) / min(w, h) for w, h in sizes])
        print(row("the aspect ratio (long / short side)", aspect, labels, types, kinds))
        for squash in (True, False):
            label = "squashed to 256 x 256" if squash else "own aspect ratio, short side 256"
            for name, descriptors in statistics(paths, squash).items():
                print(row(f"{name}, {label}", mutual(descriptors), labels, types, kinds), flush=True)


if __name__ == "__main__":
    main()
