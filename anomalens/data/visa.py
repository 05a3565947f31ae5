"""The VisA dataset, read through its one-class split file ``<root>/split_csv/1cls.csv``.

Images live under ``<category>/Data/Images/{Normal,Anomaly}`` and masks under
``<category>/Data/Masks/Anomaly``; the split file lists them with paths relative to the root.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from anomalens.data.base import CategorySplit, Sample, select_categories

SPLIT_FILE = Path("split_csv") / "1cls.csv"
REQUIRED_COLUMNS = ("object", "split", "label", "image", "mask")
ANOMALY_DEFECT_TYPE = "anomaly"  # VisA does not name defect types


def visa_split_file(root: Path | str) -> Path:
    return Path(root) / SPLIT_FILE


def load_visa(root: Path | str, categories: Iterable[str] | None = None) -> dict[str, CategorySplit]:
    """Every category (or the requested ones) of a VisA dataset, as the split file defines them."""
    root = Path(root)
    split_file = visa_split_file(root)
    if not split_file.is_file():
        raise FileNotFoundError(f"VisA split file not found: {split_file}")
    splits: dict[str, CategorySplit] = {}
    with split_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{split_file} lacks the columns {missing}")
        for line, row in enumerate(reader, start=2):
            category = row["object"].strip()
            split = splits.setdefault(category, CategorySplit(category, [], []))
            label_name = row["label"].strip().lower()
            if label_name not in ("normal", "anomaly"):
                raise ValueError(
                    f"{split_file}:{line}: label must be 'normal' or 'anomaly', got {label_name!r}"
                )
            image = root / row["image"].strip()
            split_name = row["split"].strip().lower()
            if split_name == "train":
                # The one-class protocol trains on normals only.
                if label_name == "normal":
                    split.train_good.append(image)
            elif split_name == "test":
                is_anomaly = label_name == "anomaly"
                mask = (row["mask"] or "").strip()
                split.test.append(
                    Sample(
                        path=image,
                        label=int(is_anomaly),
                        mask_path=root / mask if is_anomaly and mask else None,
                        category=category,
                        defect_type=ANOMALY_DEFECT_TYPE if is_anomaly else "good",
                    )
                )
            else:
                raise ValueError(f"{split_file}:{line}: split must be 'train' or 'test', got {split_name!r}")
    names = select_categories(splits, categories)
    result = {}
    for name in names:
        split = splits[name]
        split.train_good.sort()
        split.test.sort(key=lambda sample: sample.path)
        result[name] = split
    return result
