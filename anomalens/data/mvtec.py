"""The MVTec AD folder layout, which many other datasets also follow.

``<root>/<category>/train/good/*``, ``<root>/<category>/test/<defect or good>/*`` and
``<root>/<category>/ground_truth/<defect>/<stem>_mask.png``. Masks and ``train/good`` may be
missing (e.g. a category that only has defects).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from anomalens.data.base import CategorySplit, Sample, find_mask, images_in, select_categories

GOOD = "good"
# MVTec names masks <stem>_mask.png; some derived datasets drop the suffix.
MASK_SUFFIXES = ("_mask.png", ".png")


def mvtec_categories(root: Path) -> list[str]:
    """The subfolders of ``root`` that have a ``test`` folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return sorted(
        entry.name for entry in root.iterdir() if not entry.name.startswith(".") and (entry / "test").is_dir()
    )


def load_mvtec_category(root: Path, category: str) -> CategorySplit:
    """The split of one category of an MVTec-layout dataset."""
    category_dir = Path(root) / category
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"no test folder for category {category!r}: {test_dir}")
    test: list[Sample] = []
    defect_dirs = sorted(d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    for defect_dir in defect_dirs:
        defect_type = defect_dir.name
        is_good = defect_type == GOOD
        ground_truth_dir = category_dir / "ground_truth" / defect_type
        for image in images_in(defect_dir):
            test.append(
                Sample(
                    path=image,
                    label=0 if is_good else 1,
                    mask_path=None if is_good else find_mask(ground_truth_dir, image, MASK_SUFFIXES),
                    category=category,
                    defect_type=defect_type,
                )
            )
    train_good = images_in(category_dir / "train" / GOOD)
    return CategorySplit(category=category, train_good=train_good, test=test)


def load_mvtec(root: Path | str, categories: Iterable[str] | None = None) -> dict[str, CategorySplit]:
    """Every category (or the requested ones) of an MVTec-layout dataset."""
    root = Path(root)
    names = select_categories(mvtec_categories(root), categories)
    return {name: load_mvtec_category(root, name) for name in names}
