"""The ``meta.json`` index used by FiLo, AnomalyCLIP and APRIL-GAN.

Shape: ``{"train": {category: [entry, ...]}, "test": {...}}`` where an entry is
``{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}``; paths are relative to the
dataset root, ``mask_path`` is ``""`` when there is none, ``specie_name`` is the defect type
("good" for normals) and ``anomaly`` is 0 or 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from anomalens.data.base import CategorySplit, Sample

META_FILE = "meta.json"


def _relative(root: Path, path: Path) -> str:
    try:
        relative = path.relative_to(root)
    except ValueError:
        try:
            relative = path.resolve().relative_to(root.resolve())
        except ValueError:
            # A path outside the root cannot be written relative to it and read back unchanged.
            raise ValueError(f"{path} is not inside the dataset root {root}") from None
    return relative.as_posix()


def _entry(root: Path, category: str, path: Path, mask: Path | None, defect_type: str, label: int) -> dict:
    return {
        "img_path": _relative(root, path),
        "mask_path": "" if mask is None else _relative(root, mask),
        "cls_name": category,
        "specie_name": defect_type,
        "anomaly": label,
    }


def write_meta(
    root: Path | str,
    splits: dict[str, CategorySplit],
    path: Path | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``splits`` as a meta.json (default ``<root>/meta.json``) and return its path."""
    root = Path(root)
    target = Path(path) if path is not None else root / META_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {target} (pass overwrite=True)")
    meta: dict[str, dict[str, list[dict]]] = {"train": {}, "test": {}}
    for category, split in splits.items():
        meta["train"][category] = [_entry(root, category, p, None, "good", 0) for p in split.train_good]
        meta["test"][category] = [
            _entry(root, category, s.path, s.mask_path, s.defect_type, s.label) for s in split.test
        ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(meta, indent=2) + "\n")
    return target


def read_meta(root: Path | str, path: Path | str | None = None) -> dict[str, CategorySplit]:
    """The splits indexed by a meta.json (default ``<root>/meta.json``).

    Anomalous training entries are skipped: a CategorySplit trains on normal images only.
    """
    root = Path(root)
    source = Path(path) if path is not None else root / META_FILE
    if not source.is_file():
        raise FileNotFoundError(f"meta.json not found: {source}")
    meta = json.loads(source.read_text())
    train_part, test_part = meta.get("train", {}), meta.get("test", {})
    splits: dict[str, CategorySplit] = {}
    for category in sorted(set(train_part) | set(test_part)):
        train_good = [root / e["img_path"] for e in train_part.get(category, []) if int(e["anomaly"]) == 0]
        test = []
        for entry in test_part.get(category, []):
            label = int(entry["anomaly"])
            mask = entry.get("mask_path") or ""
            test.append(
                Sample(
                    path=root / entry["img_path"],
                    label=label,
                    mask_path=root / mask if mask else None,
                    category=category,
                    defect_type=entry.get("specie_name") or ("good" if label == 0 else "anomaly"),
                )
            )
        splits[category] = CategorySplit(category=category, train_good=train_good, test=test)
    return splits
