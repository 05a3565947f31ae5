"""A category's elongated images only, as a dataset of its own (symbolic links, MVTec AD layout).

magnetic_tile is the one dev category with images longer than 2 : 1, mixed with square-ish ones of many
sizes. To see what tiles (`tile_above_aspect`) do on a batch of elongated parts alone, this writes a copy
of a category (links to its files, nothing copied) that keeps only the images whose long side is more than
`--above` times their short side, optionally only the landscape ones (`--wide`: one orientation, as a
production line's images are), with their masks (README "Tiles for elongated images", session 31):

    python benchmarks/aspect_subset.py --data ../shared/data --category magnetic_tile --above 2 --out /tmp/elong
    python benchmarks/aspect_subset.py --data ../shared/data --category magnetic_tile --above 2 --wide --out /tmp/wide

The copies are named `<category>_elongated` and `<category>_wide`.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def keeps(path: Path, above: float, wide: bool) -> bool:
    with Image.open(path) as img:
        w, h = img.size
    return max(w, h) / min(w, h) > above and (w > h or not wide)


def write_subset(category: Path, out: Path, above: float, wide: bool) -> Counter:
    """Link every kept image of `category`'s train and test folders (and each defect's mask) under `out`."""
    counts: Counter = Counter()
    for split in ("train", "test"):
        for image in sorted((category / split).glob("*/*")):
            if image.suffix.lower() not in IMAGE_SUFFIXES or not keeps(image, above, wide):
                continue
            kind = image.parent.name
            target = out / split / kind
            target.mkdir(parents=True, exist_ok=True)
            (target / image.name).symlink_to(os.path.abspath(image))
            counts[f"{split}/{kind}"] += 1
            if split == "test" and kind != "good":
                mask = category / "ground_truth" / kind / f"{image.stem}_mask.png"
                if not mask.exists():
                    raise SystemExit(f"{image}: no mask at {mask}")
                (out / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                (out / "ground_truth" / kind / mask.name).symlink_to(os.path.abspath(mask))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--above", type=float, default=2.0, help="keep images longer than this ratio")
    parser.add_argument("--wide", action="store_true", help="only landscape images")
    parser.add_argument("--out", type=Path, required=True, help="a new folder: the dataset root")
    args = parser.parse_args()
    name = f"{args.category}_{'wide' if args.wide else 'elongated'}"
    if (args.out / name).exists():
        raise SystemExit(f"{args.out / name} exists: give another --out")
    counts = write_subset(args.data / args.category, args.out / name, args.above, args.wide)
    for key, n in sorted(counts.items()):
        print(f"{key}: {n}")


if __name__ == "__main__":
    main()
