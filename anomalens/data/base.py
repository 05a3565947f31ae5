"""Dataset types shared by every layout: samples, per-category splits, masks, reference draws."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anomalens.images import IMAGE_EXTENSIONS, list_images  # noqa: F401  (IMAGE_EXTENSIONS re-exported)


@dataclass(frozen=True)
class Sample:
    """One test image with its ground truth."""

    path: Path
    label: int  # 0 good, 1 anomalous
    mask_path: Path | None
    category: str
    defect_type: str  # "good" for normals


@dataclass
class CategorySplit:
    """The normal training images and the labelled test images of one category."""

    category: str
    train_good: list[Path]
    test: list[Sample]

    @property
    def has_normals(self) -> bool:
        return any(sample.label == 0 for sample in self.test)

    @property
    def has_anomalies(self) -> bool:
        return any(sample.label == 1 for sample in self.test)

    @property
    def has_masks(self) -> bool:
        return any(sample.label == 1 and sample.mask_path is not None for sample in self.test)


def images_in(directory: Path) -> list[Path]:
    """The image files directly inside ``directory``, sorted; hidden files skipped; [] if it is missing."""
    return list_images([directory], recursive=False) if Path(directory).is_dir() else []


def find_mask(masks_dir: Path, image: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The mask file of `image` in `masks_dir`: <stem><suffix> for the first suffix that exists."""
    for suffix in suffixes:
        candidate = Path(masks_dir) / f"{image.stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def select_categories(available: Iterable[str], requested: Iterable[str] | None) -> list[str]:
    """``requested`` (in its order) checked against ``available``; all available (sorted) when None."""
    available = sorted(available)
    if requested is None:
        return available
    requested = list(requested)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; available: {available}")
    return requested


def load_mask(sample: Sample, shape_hw: tuple[int, int]) -> np.ndarray:
    """The boolean ground-truth mask of ``sample`` at ``shape_hw`` (height, width).

    Any non-zero value is anomalous. Normal samples and samples without a mask give an
    all-False mask. A mask of another size is resized with nearest neighbour so that it
    stays binary.
    """
    height, width = shape_hw
    if sample.label == 0 or sample.mask_path is None:
        return np.zeros((height, width), dtype=bool)
    with Image.open(sample.mask_path) as image:
        values = np.asarray(image)
    binary = values != 0
    if binary.ndim == 3:  # RGB(A) masks: anomalous where any channel is set
        binary = binary.any(axis=2)
    if binary.shape != (height, width):
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
        binary = np.asarray(resized) != 0
    return binary


def sample_references(split: CategorySplit, k: int, seed: int) -> list[Path]:
    """A reproducible draw of ``k`` normal training images of ``split``.

    The candidates are sorted first so that the draw does not depend on directory order.
    """
    candidates = sorted(split.train_good)
    if k > len(candidates):
        raise ValueError(
            f"category {split.category!r} has {len(candidates)} normal training images, {k} requested"
        )
    return random.Random(seed).sample(candidates, k)
