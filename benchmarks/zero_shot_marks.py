"""A part's own marks in zero-shot: the same normal mark on every image, single-image zero-shot against the batch.

Issue 17 reports single-image zero-shot near chance on parts "whose normal texture carries unique
marks". This script makes that case on real data: it copies categories of an MVTec-layout dataset
(`../shared/data`) to `--work` with one normal mark drawn at the same relative place on every image
(train and test, normal and defective; the masks are unchanged, so the mark is normal everywhere):

* `none`: the images as they are (the control; the original folders are read);
* `stamp`: an engraved code (dark strokes with a light lower edge, 14 % of the short side), as parts
  carry a stamped part number;
* `hole`: a drilled hole (a dark disk with a bright rim, 12 % of the short side);
* `serial`: a stamped serial number that differs from part to part (three digits from the file's name,
  10 % of the short side): unique in the batch and among the references too, as date codes are.

Marked images are written as PNG (lossless), so the only change is the mark. Then it runs the
library's own benchmark zero-shot (`run_benchmark`, shots 0) for each method and prints image AUROC /
pixel AUROC / AUPRO. `patchknn` zero-shot scores each image against its own patches: a mark that
occurs once in the image is as unique as a defect. `musc` scores each image against the others of
the batch, where the mark recurs. `patchknn-region` (and `musc-region`) is the method with an inspection
region (`--region`, `anomalens.inspection_region`) that leaves out a box around the mark's place
(REGION_HALF_SIZE of each side, about 6 % of the image), as a plant masks a date code, once per
`--region-margins` value (patchknn's `region_margin`: model-input pixels beside the box that do not
count either); on the unmarked images it shows what ignoring the box costs.

    python benchmarks/zero_shot_marks.py --data ../shared/data --categories magnetic_tile,mpdd_metal_plate \
        --methods patchknn,patchknn-region,musc --region-margins 0,8,16,24
"""

from __future__ import annotations

import argparse
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anomalens.benchmark import BenchmarkSettings, run_benchmark

MARKS = ("none", "stamp", "hole", "serial")
KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MARK_CENTRE = (0.22, 0.25)  # relative (x, y) of the mark's centre: off the middle, where defects cluster
STAMP_SIZE = 0.14  # share of the short side (the code's height)
HOLE_SIZE = 0.12  # share of the short side (the hole's diameter)
STAMP_TEXT = "A7"
SERIAL_SIZE = 0.10  # share of the short side (the serial number's height)
REGION_HALF_SIZE = 0.12  # patchknn-region ignores MARK_CENTRE +- this share of the width and of the height


def ignore_mark_region(path: Path) -> Path:
    """A 100 x 100 region mask (white: inspected) without the box around MARK_CENTRE (stretched to each image)."""
    mask = np.full((100, 100), 255, dtype=np.uint8)
    (cx, cy), r = MARK_CENTRE, REGION_HALF_SIZE
    mask[round(100 * (cy - r)) : round(100 * (cy + r)), round(100 * (cx - r)) : round(100 * (cx + r))] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask, mode="L").save(path)
    return path


def serial_number(name: str) -> str:
    """Three digits that differ from part to part (from the file's name, so every run draws the same)."""
    return f"{zlib.crc32(name.encode()) % 1000:03d}"


def draw_mark(image: Image.Image, mark: str, name: str = "") -> Image.Image:
    """`image` with `mark` drawn at MARK_CENTRE, in the image's own grey levels (`name`: the file's, for `serial`)."""
    rgb = image.convert("RGB")
    grey = np.asarray(rgb.convert("L"), dtype=np.float32)
    dark, light = float(np.percentile(grey, 2)) * 0.5, min(255.0, float(np.percentile(grey, 98)) * 1.1 + 20)
    w, h = rgb.size
    cx, cy = MARK_CENTRE[0] * w, MARK_CENTRE[1] * h
    draw = ImageDraw.Draw(rgb)
    short = min(w, h)
    if mark in ("stamp", "serial"):
        text, size = (STAMP_TEXT, STAMP_SIZE) if mark == "stamp" else (serial_number(name), SERIAL_SIZE)
        font = ImageFont.load_default(size=max(8, round(size * short)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x, y = cx - (right - left) / 2 - left, cy - (bottom - top) / 2 - top
        stroke = max(1, round(short / 200))
        draw.text((x, y + stroke), text, font=font, fill=(round(light),) * 3, stroke_width=stroke)
        draw.text((x, y), text, font=font, fill=(round(dark),) * 3, stroke_width=stroke)
    elif mark == "hole":
        r = HOLE_SIZE * short / 2
        rim = max(1.0, r / 5)
        draw.ellipse((cx - r - rim, cy - r - rim, cx + r + rim, cy + r + rim), fill=(round(light),) * 3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(round(dark),) * 3)
    else:
        raise ValueError(f"unknown mark {mark!r}; one of {MARKS}")
    return rgb.convert(image.mode) if image.mode in ("L", "RGB") else rgb


def marked_copy(data: Path, category: str, mark: str, work: Path) -> Path:
    """`data/category` copied to `work/mark/category` with `mark` on every image; the dataset root."""
    root = work / mark
    done = root / category / ".complete"
    if done.exists():
        return root
    source = data / category
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(source)
        target = root / category / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.parts[0] == "ground_truth" or path.suffix.lower() not in IMAGE_SUFFIXES:
            shutil.copy2(path, target)  # masks: the mark is normal, so they stay as they are
            continue
        with Image.open(path) as image:
            draw_mark(image, mark, path.name).save(target.with_suffix(".png"))
    done.touch()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--marks", default=",".join(MARKS))
    parser.add_argument("--methods", default="patchknn,musc")
    parser.add_argument("--shots", default="0", help="comma-separated; few-shot rows are means over --seeds")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--region-margins", default="8", help="patchknn-region: region_margin values, one row each")
    parser.add_argument("--work", default="/tmp/anomalens-marks", help="where the marked copies and runs go")
    parser.add_argument("--save-example", default=None, help="write one marked image of each kind here (PNG)")
    args = parser.parse_args()
    data, work = Path(args.data), Path(args.work)
    print("| category | mark | shots | method | image AUROC / pixel AUROC / AUPRO |")
    print("|---|---|---|---|---|")
    for category in args.categories.split(","):
        for mark in args.marks.split(","):
            root = data if mark == "none" else marked_copy(data, category, mark, work)
            if args.save_example and mark != "none":
                first = next(p for p in sorted((root / category / "test").rglob("*.png")))
                Path(args.save_example).mkdir(parents=True, exist_ok=True)
                shutil.copy2(first, Path(args.save_example) / f"{category}-{mark}.png")
            runs = []  # (row name, method, settings, region)
            for method in args.methods.split(","):
                if not method.endswith("-region"):
                    runs.append((method, method, {}, None))
                    continue
                region = str(ignore_mark_region(work / "region.png"))
                for margin in map(int, args.region_margins.split(",")):
                    base = method.removesuffix("-region")
                    runs.append((f"{method}, margin {margin}", base, {"region_margin": margin}, region))
            for name, method, method_settings, region in runs:
                settings = BenchmarkSettings(
                    data=str(root),
                    method=method,
                    categories=[category],
                    shots=[int(k) for k in args.shots.split(",")],
                    seeds=[int(s) for s in args.seeds.split(",")],
                    method_settings=method_settings,
                    region=region,
                )
                tag = name.replace(", margin ", "-m")
                summary = run_benchmark(settings, work / "runs" / f"{category}-{mark}-{tag}", progress=False)
                for shots in args.shots.split(","):
                    row = summary["shots"][shots]["categories"][category]
                    cells = " / ".join("N/A" if row.get(k) is None else f"{100 * row[k]:.1f}" for k in KEYS)
                    print(f"| {category} | {mark} | {shots} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
