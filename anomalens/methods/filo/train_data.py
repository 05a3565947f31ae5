"""FiLo's training data: samples, one item per image (or a 2x2 mosaic), batches for worker processes.

Every random choice (epoch order, whether a step is a mosaic, which images fill it) is a pure
function of (seed, stage, epoch, step), so a resumed run and any number of DataLoader workers
see exactly the batches a straight single-process run sees.

Mosaic (released code, probability 0.2 there): four images of the item's category tiled 2x2 at
the first one's size, their masks tiled the same way. The released code keeps the original
image's label for the mosaic; here the label is 1 when any tile is anomalous (the mask says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data import Sample, load_dataset, load_mask
from ...geometry import to_model_input
from ...images import load_image
from ...text.prompts import position_word


@dataclass
class TrainItem:
    image: torch.Tensor  # (3, S, S) normalised
    mask: torch.Tensor  # (S, S) float 0/1 on the model input
    label: int
    category: str
    position: str


@dataclass(frozen=True)
class ItemRecipe:
    """How to build items: model input size, resize policy and normalisation."""

    size: int
    resize: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def mask_position(mask: np.ndarray) -> str:
    """Position word of the centre of the mask's bounding box ("center" for an empty mask).

    Training has the ground truth, so the abnormal prompts get the position an ideal detector
    box would give, rather than running Grounding DINO on every training image.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return "center"
    h, w = mask.shape
    return position_word((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, w, h)


def _to_item(rgb: np.ndarray, mask: np.ndarray, label: int, category: str, recipe: ItemRecipe) -> TrainItem:
    size = recipe.size
    x, (top, left, bh, bw) = to_model_input(rgb, size, recipe.mean, recipe.std, recipe.resize)
    g = torch.zeros(size, size)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    g[top : top + bh, left : left + bw] = F.interpolate(m, size=(bh, bw), mode="nearest")[0, 0]
    return TrainItem(x, g, int(label), category, mask_position(mask))


def load_item(sample: Sample, recipe: ItemRecipe) -> TrainItem:
    img = load_image(sample.path)
    return _to_item(img.rgb, load_mask(sample, img.size_hw), sample.label, sample.category, recipe)


def mosaic_item(samples: list[Sample], recipe: ItemRecipe) -> TrainItem:
    """Four samples tiled 2x2 (row-major) at the first one's size; masks tiled alike."""
    if len(samples) != 4:
        raise ValueError(f"a mosaic needs 4 samples, got {len(samples)}")
    first = load_image(samples[0].path)
    h, w = first.size_hw
    canvas = np.zeros((2 * h, 2 * w, 3), dtype=np.uint8)
    mask = np.zeros((2 * h, 2 * w), dtype=bool)
    for i, sample in enumerate(samples):
        img = first if i == 0 else load_image(sample.path)
        rgb = img.rgb if img.size_hw == (h, w) else np.asarray(Image.fromarray(img.rgb).resize((w, h), Image.BICUBIC))
        r, c = divmod(i, 2)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = rgb
        mask[r * h : (r + 1) * h, c * w : (c + 1) * w] = load_mask(sample, (h, w))
    label = int(mask.any() or any(s.label for s in samples))
    return _to_item(canvas, mask, label, samples[0].category, recipe)


def collect_samples(data: str, dataset: str, categories: tuple[str, ...] | None) -> list[Sample]:
    splits = load_dataset(data, kind=dataset, categories=categories)
    samples = [s for split in splits.values() for s in split.test]
    if not samples:
        raise ValueError(f"{data}: no labelled test images to train on")
    return sorted(samples, key=lambda s: str(s.path))


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch, a pure function of (seed, stage, epoch) for resume."""
    return np.random.default_rng([seed, stage, epoch]).permutation(n).tolist()


class EpochBatches(torch.utils.data.Dataset):
    """Batch `step` of one epoch: loaded, resized and stacked (in a worker process if asked).

    Returns (images (B, 3, S, S), masks (B, S, S), labels (B,), categories, positions).
    """

    def __init__(
        self,
        samples: list[Sample],
        order: list[int],
        batch_size: int,
        recipe: ItemRecipe,
        mosaic_probability: float = 0.0,
        rng_key: tuple[int, int, int] = (0, 0, 0),
    ):
        self.samples, self.order, self.batch_size = samples, order, batch_size
        self.recipe, self.mosaic_probability, self.rng_key = recipe, mosaic_probability, rng_key
        self.by_category: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            self.by_category.setdefault(s.category, []).append(i)

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def item(self, step: int, slot: int, index: int) -> TrainItem:
        sample = self.samples[index]
        if self.mosaic_probability > 0:
            rng = np.random.default_rng([*self.rng_key, step, slot])
            if rng.random() < self.mosaic_probability:
                pool = self.by_category[sample.category]
                others = [self.samples[pool[j]] for j in rng.integers(0, len(pool), size=3)]
                return mosaic_item([sample, *others], self.recipe)
        return load_item(sample, self.recipe)

    def __getitem__(self, step: int):
        indices = self.order[step * self.batch_size : (step + 1) * self.batch_size]
        items = [self.item(step, slot, i) for slot, i in enumerate(indices)]
        return (
            torch.stack([it.image for it in items]),
            torch.stack([it.mask for it in items]),
            torch.tensor([it.label for it in items]),
            [it.category for it in items],
            [it.position for it in items],
        )
