"""Time and size of the overlay and mask PNGs: Pillow's encoder against `anomalens.png_encoding` (zlib, ISA-L).

Overlays are made as `anomalens detect` makes them (the image, a smooth random map on a run's
colour scale with its bar, a mask outline) from the first N images of a folder, then encoded
each way; the best of 3 repetitions per image, one thread, summed over the images.

    python benchmarks/png_speed.py                                  # ../shared/data/magnetic_tile/test
    python benchmarks/png_speed.py --images path/to/folder --count 50
"""

from __future__ import annotations

import argparse
import io
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from anomalens.colour_scale import ColourScale, with_colour_bar
from anomalens.images import list_images, load_image
from anomalens.overlay import heatmap_overlay, mask_image
from anomalens.png_encoding import encode_png

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "magnetic_tile" / "test"


def pillow(array: np.ndarray, strategy: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1, compress_type=strategy)
    return buffer.getvalue()


def best_time(encode, array: np.ndarray, repeat: int = 3) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        size = len(encode(array))
        best = min(best, time.perf_counter() - start)
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    files = sorted(list_images([args.images]))
    files = [files[int(i * len(files) / args.count)] for i in range(min(args.count, len(files)))]
    rng = np.random.default_rng(0)
    scale = ColourScale(0.0, 0.5, 1.0, "benchmark")
    overlays, masks = [], []
    for path in files:
        rgb = load_image(path).rgb
        h, w = rgb.shape[:2]
        coarse = rng.random((max(2, h // 32), max(2, w // 32))).astype(np.float32)
        amap = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
        mask = amap > 0.8
        overlays.append(with_colour_bar(heatmap_overlay(rgb, amap, mask, scale=scale), scale))
        masks.append(mask_image(mask))
    encoders = {
        "Pillow, zlib level 1, Huffman only (before)": lambda a: pillow(a, zlib.Z_HUFFMAN_ONLY),
        "Pillow, zlib level 1, deflate (before, masks)": lambda a: pillow(a, zlib.Z_DEFAULT_STRATEGY),
        "encode_png, Up filter, zlib level 1, Huffman only (overlays before session 37)": lambda a: encode_png(
            a, 1, zlib.Z_HUFFMAN_ONLY, deflate="zlib"
        ),
        "encode_png, Up filter, zlib level 1, deflate (masks before session 37)": lambda a: encode_png(
            a, 1, zlib.Z_DEFAULT_STRATEGY, deflate="zlib"
        ),
        "encode_png, Up filter, ISA-L level 0": lambda a: encode_png(a, 0, deflate="isal"),
        "encode_png, Up filter, ISA-L level 1 (overlays and masks)": lambda a: encode_png(a, 1, deflate="isal"),
    }
    print(f"{len(files)} images from {args.images}; ms per file (best of 3) and KB per file, mean over the files\n")
    print("| encoder | overlay ms | overlay KB | mask ms | mask KB |")
    print("|---|---|---|---|---|")
    for name, encode in encoders.items():
        over = [best_time(encode, a) for a in overlays]
        mk = [best_time(encode, a) for a in masks]
        print(
            f"| {name} | {1000 * np.mean([t for t, _ in over]):.2f} | {np.mean([s for _, s in over]) / 1024:.0f} "
            f"| {1000 * np.mean([t for t, _ in mk]):.2f} | {np.mean([s for _, s in mk]) / 1024:.1f} |"
        )


if __name__ == "__main__":
    main()
