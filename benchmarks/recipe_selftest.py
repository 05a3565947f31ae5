"""Can good images alone choose between patchknn's default and its texture recipe? (README "musc with references")

For each reference draw, every reference is held out in turn: patchknn (each candidate) is fitted on
the others and scores the held-out reference and synthetic defects made from it (brightness blobs,
thin scratches, cut-and-paste patches, noisy texture; 8 per reference). The table gives each
candidate's image and pixel AUROC on these pseudo-defects; a useful rule would pick the texture
recipe on magnetic_tile and the default on mpdd_metal_plate, as the real test sets do.

    python benchmarks/recipe_selftest.py --data ../shared/data --categories magnetic_tile,mpdd_metal_plate --shots 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anomalens.data import load_dataset, sample_references
from anomalens.images import LoadedImage, load_image
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings

CANDIDATES = {"default": {}, "texture recipe": {"magnitudes": True, "blocks": (4, 10, 14)}}
KINDS = ("brightness", "scratch", "cut-paste", "noise")


def blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular ellipse covering 4-15 % of the short side in radius."""
    r = rng.uniform(0.04, 0.15) * min(h, w)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    noise = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=max(1.0, r / 3))
    yy, xx = np.mgrid[:h, :w]
    distance = np.hypot((yy - cy) / r, (xx - cx) / (r * rng.uniform(0.5, 2)))
    return distance + 0.18 * noise / (noise.std() + 1e-9) < 1


def scratch(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A slightly bending line, 15-50 % of the short side long, 0.5-1.5 % wide."""
    side = min(h, w)
    mask = np.zeros((h, w), bool)
    y, x, angle = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
    length = rng.uniform(0.15, 0.5) * side
    half = max(1, round(rng.uniform(0.005, 0.015) * side)) // 2
    for t in np.linspace(0, length, int(length * 2)):
        angle += rng.normal(0, 0.03)
        yy, xx = int(y + t * np.sin(angle)), int(x + t * np.cos(angle))
        if 0 <= yy < h and 0 <= xx < w:
            mask[max(0, yy - half) : yy + half + 1, max(0, xx - half) : xx + half + 1] = True
    return mask


def synthetic_defect(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    img = rgb.astype(np.float32)
    if kind == "scratch":
        mask = scratch(h, w, rng)
        out = img.copy()
        out[mask] = np.clip(img.mean() + rng.choice([-1, 1]) * rng.uniform(0.15, 0.4) * 255, 0, 255)
        return out.astype(np.uint8), mask
    mask = blob(h, w, rng)
    if kind == "brightness":
        changed = np.clip(img * rng.choice([rng.uniform(0.5, 0.8), rng.uniform(1.25, 1.6)]), 0, 255)
    elif kind == "cut-paste":
        shift = (int(rng.integers(-h // 2, h // 2)), int(rng.integers(-w // 2, w // 2)))
        changed = np.roll(img, shift, axis=(0, 1))[::-1]
    else:
        changed = np.clip(ndimage.gaussian_filter(img, (1.5, 1.5, 0)) + rng.normal(0, 25, img.shape), 0, 255)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)[..., None]
    return (img * (1 - soft) + changed * soft).astype(np.uint8), mask


def self_test(settings: dict, refs: list[Path], per_reference: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    images = [load_image(p) for p in refs]
    labels, scores, pixel_labels, pixel_scores = [], [], [], []
    for i, held in enumerate(images):
        method = PatchKnn(PatchKnnSettings(**settings)).fit(images[:i] + images[i + 1 :])
        queries, masks = [held], [np.zeros(held.size_hw, bool)]
        for j in range(per_reference):
            rgb, mask = synthetic_defect(held.rgb, KINDS[j % len(KINDS)], rng)
            queries.append(LoadedImage(path=f"{held.path}#synthetic{j}", rgb=rgb))
            masks.append(mask)
        for out, mask in zip(method.predict(queries), masks, strict=True):
            labels.append(int(mask.any()))
            scores.append(out.score)
            pixel_labels.append(mask[::2, ::2].ravel())
            pixel_scores.append(out.anomaly_map[::2, ::2].ravel())
    image = roc_auc_score(labels, scores)
    return image, roc_auc_score(np.concatenate(pixel_labels), np.concatenate(pixel_scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--shots", type=int, default=4, help="at least 2: each reference is held out once")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-reference", type=int, default=8)
    args = parser.parse_args()
    print("| category | seed | " + " | ".join(f"{name} image / pixel AUROC" for name in CANDIDATES) + " |")
    print("|---|---|" + "---|" * len(CANDIDATES))
    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        for seed in map(int, args.seeds.split(",")):
            refs = sample_references(split, args.shots, seed)
            cells = []
            for settings in CANDIDATES.values():
                image, pixel = self_test(settings, refs, args.per_reference, seed)
                cells.append(f"{100 * image:.1f} / {100 * pixel:.1f}")
            print(f"| {category} | {seed} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
