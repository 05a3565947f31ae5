"""Reading image files of every mode users meet (decoding only; no torch here).

Fitting a decoded image to a model's input, and maps back to the image, is in
`anomalens.geometry`; its names are still importable from here (loaded on first use).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageLoadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# Decompression-bomb guard: Pillow's default warns at ~89 MP and refuses at twice that.
# Industrial line-scan images can be large, so allow 400 MP explicitly and say so.
MAX_IMAGE_PIXELS = 400_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Working resolution cap. Models see at most a few hundred pixels per side, so an image above
# this many pixels is reduced right after decoding (JPEG: decoded at 1/2, 1/4 or 1/8 scale;
# others: box-filter reduction by an integer factor) to at most MAX_WORKING_PIXELS; its anomaly
# map, mask and overlay then have the reduced size (LoadedImage.original_hw keeps the file's
# size). A 20000 x 20000 image is worked on at 4000 x 4000: its float32 map is 64 MB instead
# of 1.6 GB. Decoding a PNG or TIFF still needs the full image once (3 bytes per pixel for RGB).
MAX_WORKING_PIXELS = 4096 * 4096


@dataclass
class LoadedImage:
    """An RGB uint8 image (H x W x 3, EXIF orientation applied) and where it came from."""

    path: str
    rgb: np.ndarray
    # (height, width) of the file (after EXIF rotation) when it was reduced to the working
    # resolution on reading (see MAX_WORKING_PIXELS); None when `rgb` has the file's size.
    original_hw: tuple[int, int] | None = None

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def _to_rgb_uint8(img: Image.Image, sixteen_bit: bool = False) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8 without clipping high-bit-depth data.

    `sixteen_bit` says an "I" image was a 16-bit file (converted to "I" to be reduced).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: scale the used range to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if sixteen_bit or img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto white so transparent regions do not read as black defects.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read an image file as RGB uint8 with EXIF rotation applied.

    Raises ImageLoadError (naming the file) for missing, unreadable, empty, truncated or
    non-image files.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file does not exist")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image file")
    if not os.access(path, os.R_OK):
        raise ImageLoadError(path, "permission denied (file is not readable)")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    return decode_image(path, str(path))


def load_image_bytes(data: bytes, name: str) -> LoadedImage:
    """Decode an image held in memory (e.g. an upload) exactly as `load_image` reads a file.

    `name` stands in for the path in the result and in error messages.
    """
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    return decode_image(io.BytesIO(data), name)


def decode_image(source: str | os.PathLike | BinaryIO, name: str) -> LoadedImage:
    """Decode a file path or binary stream to RGB uint8 (the shared core of both loaders)."""
    try:
        with Image.open(source) as img:
            full_wh = img.size
            if img.size[0] * img.size[1] > MAX_WORKING_PIXELS:
                # JPEG only: decode at a reduced DCT scale that stays at least the target size.
                f = _reduction_factor(*img.size)
                img.draft(None, (max(1, img.size[0] // f), max(1, img.size[1] // f)))
            img.load()
            img, sixteen_bit = _reduce_to_working_size(img)
            reduced_wh = img.size
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb_uint8(img, sixteen_bit)
    except Image.DecompressionBombError as err:
        raise ImageLoadError(name, f"image too large ({err}); limit is {MAX_IMAGE_PIXELS} pixels") from err
    except PermissionError as err:
        raise ImageLoadError(name, "permission denied (file is not readable)") from err
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err) or type(err).__name__
        if "cannot identify image file" in reason:
            reason = "not an image file Pillow can read"
        elif "truncated" in reason.lower() or "broken data stream" in reason:
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageLoadError(name, reason) from err
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageLoadError(name, f"unexpected image shape {rgb.shape}")
    original_hw = None
    if reduced_wh != full_wh:
        w, h = full_wh
        # EXIF rotation by 90 or 270 degrees swapped the reduced image's sides: swap these too.
        rotated = rgb.shape[1] != reduced_wh[0] and rgb.shape[0] == reduced_wh[0]
        original_hw = (w, h) if rotated else (h, w)
    return LoadedImage(path=name, rgb=np.ascontiguousarray(rgb), original_hw=original_hw)


def _reduction_factor(width: int, height: int, max_pixels: int | None = None) -> int:
    """The smallest integer factor that brings width x height to at most max_pixels."""
    max_pixels = MAX_WORKING_PIXELS if max_pixels is None else max_pixels
    factor = max(1, math.ceil(math.sqrt(width * height / max_pixels)))
    while math.ceil(width / factor) * math.ceil(height / factor) > max_pixels:
        factor += 1
    return factor


def _reduce_to_working_size(img: Image.Image) -> tuple[Image.Image, bool]:
    """(img reduced by an integer box filter to at most MAX_WORKING_PIXELS, was it 16-bit)."""
    sixteen_bit = img.mode.startswith("I;16")
    factor = _reduction_factor(*img.size)
    if factor == 1:
        return img, sixteen_bit
    # Image.reduce works on L, LA, RGB(A/X), CMYK, YCbCr, I and F; bring other modes there.
    if sixteen_bit:
        img = img.convert("I")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):  # averaging palette indices would be meaningless
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode not in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"):
        img = img.convert("RGB")
    return img.reduce(factor), sixteen_bit


OUTPUT_MARKER = ".anomalens-output"  # written into every --out folder; such folders are never inputs


def _image_files_under(root: Path, recursive: bool) -> list[Path]:
    """Image files under `root`, sorted; folders anomalens wrote (holding OUTPUT_MARKER) are skipped,
    so overlays and masks of an earlier run never become inputs or references."""
    found: list[Path] = []
    for current, dirs, files in os.walk(root):  # does not follow symlinked folders: no loops
        if OUTPUT_MARKER in files:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        folder = Path(current)
        found.extend(
            folder / name
            for name in files
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".") and (folder / name).is_file()
        )
    return sorted(found)


def list_images(paths: list[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and directories into image files, sorted per directory, duplicates removed.

    Files given explicitly are kept whatever their extension (so a wrong file is reported,
    not silently skipped); files found inside directories are filtered by extension, and
    anomalens' own output folders inside them are skipped.
    """
    seen: set[Path] = set()
    result: list[Path] = []
    for item in paths:
        item = Path(item)
        found = _image_files_under(item, recursive) if item.is_dir() else [item]
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                result.append(p)
    return result


_GEOMETRY = ("to_model_input", "map_to_image", "input_box", "ResizePolicy", "RESIZE_POLICIES")


def __getattr__(name: str) -> Any:  # the names that moved to anomalens.geometry
    if name in _GEOMETRY:
        from . import geometry

        return getattr(geometry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
