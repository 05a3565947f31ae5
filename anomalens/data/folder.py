"""A plain folder of good images and a folder of bad images, with optional masks.

Masks are matched to bad images by file stem: ``<stem>.png`` or ``<stem>_mask.png``.
"""

from __future__ import annotations

from pathlib import Path

from anomalens.data.base import CategorySplit, Sample, find_mask, images_in

ANOMALY_DEFECT_TYPE = "anomaly"  # a plain folder does not name defect types

# load_dataset(root, kind="folder") looks for these subfolders of root.
GOOD_DIR, BAD_DIR, MASKS_DIR, TRAIN_GOOD_DIR = "good", "bad", "masks", "train_good"
MASK_SUFFIXES = (".png", "_mask.png")  # masks/<stem>.png, or MVTec's <stem>_mask.png


def load_folder_dataset(
    good_dir: Path | str | None,
    bad_dir: Path | str | None,
    masks_dir: Path | str | None = None,
    train_good_dir: Path | str | None = None,
    category: str = "folder",
) -> CategorySplit:
    """One category from plain folders; ``good_dir`` or ``bad_dir`` may be None (or missing)."""
    folders = {
        "good_dir": good_dir,
        "bad_dir": bad_dir,
        "masks_dir": masks_dir,
        "train_good_dir": train_good_dir,
    }
    for name, folder in folders.items():
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{name} is not a folder: {folder}")
    if good_dir is None and bad_dir is None:
        raise ValueError("give at least one of good_dir and bad_dir")
    test: list[Sample] = []
    if good_dir is not None:
        test += [Sample(path, 0, None, category, "good") for path in images_in(Path(good_dir))]
    if bad_dir is not None:
        for path in images_in(Path(bad_dir)):
            mask = find_mask(Path(masks_dir), path, MASK_SUFFIXES) if masks_dir is not None else None
            test.append(Sample(path, 1, mask, category, ANOMALY_DEFECT_TYPE))
    train_good = images_in(Path(train_good_dir)) if train_good_dir is not None else []
    return CategorySplit(category=category, train_good=train_good, test=test)


def load_folder_root(root: Path | str) -> CategorySplit:
    """The category named after ``root`` from its ``good``, ``bad``, ``masks`` and ``train_good`` subfolders."""
    root = Path(root)

    def optional(name: str) -> Path | None:
        return root / name if (root / name).is_dir() else None

    good, bad = optional(GOOD_DIR), optional(BAD_DIR)
    if good is None and bad is None:
        raise FileNotFoundError(f"{root} has neither a {GOOD_DIR!r} nor a {BAD_DIR!r} subfolder")
    return load_folder_dataset(good, bad, optional(MASKS_DIR), optional(TRAIN_GOOD_DIR), category=root.name)
