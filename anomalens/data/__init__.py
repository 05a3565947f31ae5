"""Datasets: MVTec-layout folders, VisA, plain folders and meta.json indexes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from anomalens.data.base import (
    IMAGE_EXTENSIONS,
    CategorySplit,
    Sample,
    load_mask,
    sample_references,
    select_categories,
)
from anomalens.data.folder import load_folder_root
from anomalens.data.meta import read_meta, write_meta
from anomalens.data.mvtec import load_mvtec
from anomalens.data.visa import load_visa, visa_split_file

DatasetKind = Literal["auto", "mvtec", "visa", "folder", "meta"]

__all__ = [
    "IMAGE_EXTENSIONS",
    "CategorySplit",
    "Sample",
    "load_dataset",
    "load_mask",
    "read_meta",
    "sample_references",
    "write_meta",
]


def load_dataset(
    root: Path | str,
    kind: DatasetKind = "auto",
    categories: Iterable[str] | None = None,
) -> dict[str, CategorySplit]:
    """The categories of the dataset at ``root``, by category name.

    ``kind="auto"`` reads VisA when ``split_csv/1cls.csv`` exists and the MVTec layout
    otherwise; ``"meta"`` reads ``<root>/meta.json``; ``"folder"`` reads one category from the
    ``good``, ``bad``, ``masks`` and ``train_good`` subfolders of ``root``. Unknown names in
    ``categories`` raise ValueError listing the available ones.
    """
    root = Path(root)
    if kind == "auto":
        kind = "visa" if visa_split_file(root).is_file() else "mvtec"
    if kind == "mvtec":
        return load_mvtec(root, categories)
    if kind == "visa":
        return load_visa(root, categories)
    if kind == "meta":
        splits = read_meta(root)
    elif kind == "folder":
        split = load_folder_root(root)
        splits = {split.category: split}
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; use one of auto, mvtec, visa, folder, meta")
    return {name: splits[name] for name in select_categories(splits, categories)}
