"""Reading image files of every mode users meet (decoding only; no torch here).

Fitting a decoded image to a model's input, and maps back to the image, is in
`anomalens.geometry`; its names are still importable from here (loaded on first use).
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .bit_depth import full_scale, png_significant_bits, tiff_significant_bits
from .errors import ImageLoadError
from .image_reading import DEFAULT_MAX_PIXELS, ImageReading
from .paths import PathResolver

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "OUTPUT_MARKER",
    "ImageReading",
    "LoadedImage",
    "decode_image",
    "list_images",
    "load_image",
    "load_image_bytes",
    "missing_reason",
    "read_ahead",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# Decompression bombs: every image's pixel count is read from its header and checked against
# `ImageReading.max_pixels` (default DEFAULT_MAX_PIXELS) before any pixel is decoded, with the
# true numbers in the message. That check replaces Pillow's process-wide one, whose warning and
# doubled error limit (2 x MAX_IMAGE_PIXELS) would otherwise say other numbers than ours.
Image.MAX_IMAGE_PIXELS = None

# Working resolution cap. Models see at most a few hundred pixels per side, so an image above
# this many pixels is reduced right after decoding (JPEG: decoded at 1/2, 1/4 or 1/8 scale;
# others: box-filter reduction by an integer factor) to at most MAX_WORKING_PIXELS; its anomaly
# map, mask and overlay then have the reduced size (LoadedImage.original_hw keeps the file's
# size). A 20000 x 20000 image is worked on at 4000 x 4000: its float32 map is 64 MB instead
# of 1.6 GB. Decoding a PNG or TIFF still needs the full image once (3 bytes per pixel for RGB),
# which `ImageReading.max_pixels` bounds.
MAX_WORKING_PIXELS = 4096 * 4096


@dataclass
class LoadedImage:
    """An RGB uint8 image (H x W x 3, EXIF orientation applied) and where it came from."""

    path: str
    rgb: np.ndarray
    # (height, width) of the file (after EXIF rotation) when it was reduced to the working
    # resolution on reading (see MAX_WORKING_PIXELS); None when `rgb` has the file's size.
    original_hw: tuple[int, int] | None = None
    # What was read when it was not simply the whole image: "first frame of 12", "1 x 1 pixels: ...".
    notes: tuple[str, ...] = ()

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def _to_rgb_uint8(img: Image.Image, full_scale: float | None = None) -> np.ndarray:
    """Convert any Pillow mode to RGB uint8 without clipping high-bit-depth data.

    `full_scale` is the sample value that is white for 16-bit greyscale (`anomalens.bit_depth`;
    default 65535); 32-bit integer and float greyscale are stretched from their minimum to maximum.
    """
    sixteen_bit = full_scale is not None or img.mode.startswith("I;16")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if sixteen_bit:
            lo, hi = 0.0, full_scale or 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency onto white so transparent regions do not read as black defects.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def missing_reason(path: str | os.PathLike) -> str:
    """Why a path that does not exist cannot be read: a symlink loop, a broken link, or absent."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (following the links never reaches a file)"
        if os.path.islink(path):
            return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
        if err.errno == errno.EACCES:
            return "permission denied (a folder on the way is not accessible)"
    return "file does not exist"


def load_image(path: str | os.PathLike, reading: ImageReading | None = None) -> LoadedImage:
    """Read an image file as RGB uint8 with EXIF rotation applied (`reading`: limits, bit depth).

    Raises ImageLoadError (naming the file) for missing, unreadable, empty, truncated,
    too large or non-image files.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, missing_reason(path))
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image file")
    if not os.access(path, os.R_OK):
        raise ImageLoadError(path, "permission denied (file is not readable)")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    return decode_image(path, str(path), reading)


def load_image_bytes(data: bytes, name: str, reading: ImageReading | None = None) -> LoadedImage:
    """Decode an image held in memory (e.g. an upload) exactly as `load_image` reads a file.

    `name` stands in for the path in the result and in error messages.
    """
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    return decode_image(io.BytesIO(data), name, reading)


# One image decoded beyond the working size at a time: threads reading ahead never hold two
# large full-resolution images at once, so a batch's peak memory is bounded by max_pixels.
_LARGE_DECODE = threading.Lock()
TINY_SIDE = 16  # images with a side below this many pixels get a note: they are upscaled a lot


def decode_image(
    source: str | os.PathLike | BinaryIO, name: str, reading: ImageReading | None = None
) -> LoadedImage:
    """Decode a file path or binary stream to RGB uint8 (the shared core of both loaders)."""
    reading = reading or ImageReading()
    try:
        with Image.open(source) as img:  # reads the header only
            full_wh = img.size
            if img.size[0] * img.size[1] > MAX_WORKING_PIXELS:
                # JPEG only: decode at a reduced DCT scale that stays at least the target size.
                f = _reduction_factor(*img.size)
                img.draft(None, (max(1, img.size[0] // f), max(1, img.size[1] // f)))
            _check_pixels(name, full_wh, img.size, reading.max_pixels)
            notes = _frame_notes(img)
            significant = _significant_bits(img, reading)
            large = img.size[0] * img.size[1] > MAX_WORKING_PIXELS
            with _LARGE_DECODE if large else contextlib.nullcontext():
                img.load()
                scale = _full_scale(img, significant, name)
                img = _reduce_to_working_size(img)
            reduced_wh = img.size
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb_uint8(img, scale)
    except PermissionError as err:
        raise ImageLoadError(name, "permission denied (file is not readable)") from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageLoadError):
            raise
        reason = str(err) or type(err).__name__
        if "cannot identify image file" in reason:
            reason = "not an image file Pillow can read"
        elif "truncated" in reason.lower() or "broken data stream" in reason:
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageLoadError(name, reason) from err
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageLoadError(name, f"unexpected image shape {rgb.shape}")
    if min(full_wh) < TINY_SIDE:
        notes += (f"{full_wh[0]} x {full_wh[1]} pixels: upscaled to the model's input",)
    original_hw = None
    if reduced_wh != full_wh:
        w, h = full_wh
        # EXIF rotation by 90 or 270 degrees swapped the reduced image's sides: swap these too.
        rotated = rgb.shape[1] != reduced_wh[0] and rgb.shape[0] == reduced_wh[0]
        original_hw = (w, h) if rotated else (h, w)
    return LoadedImage(path=name, rgb=np.ascontiguousarray(rgb), original_hw=original_hw, notes=notes)


def _check_pixels(name: str, full_wh: tuple[int, int], decoded_wh: tuple[int, int], limit: int) -> None:
    """Refuse an image whose decoded size is above `limit`, from its header, with the true numbers."""
    w, h = decoded_wh
    if w * h <= limit:
        return
    reduced = f" (decoded at reduced scale from {full_wh[0]} x {full_wh[1]})" if decoded_wh != full_wh else ""
    raise ImageLoadError(
        name,
        f"{w} x {h} = {w * h:,} pixels{reduced} is more than the limit of {limit:,} pixels (max_pixels); "
        "refused without decoding (a decompression bomb, or a genuine huge image: raise the limit with "
        "--max-pixels)",
    )


def _frame_notes(img: Image.Image) -> tuple[str, ...]:
    """"first frame of 12" for animations, "first page of 3" for multi-page TIFFs."""
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames <= 1:
        return ()
    unit = "page" if img.format == "TIFF" else "frame"
    return (f"first {unit} of {frames} read",)


def _container_bits(img: Image.Image) -> int:
    """Bits per sample as stored: 16 for 16-bit greyscale and colour, else 8 (or less)."""
    if img.mode.startswith("I;16"):
        return 16
    rawmodes = [t[3] if isinstance(t[3], str) else t[3][0] for t in getattr(img, "tile", None) or [] if t[3]]
    return 16 if any(";16" in str(r) for r in rawmodes) else 8


def _significant_bits(img: Image.Image, reading: ImageReading) -> int | None:
    """Significant bits of a 16-bit file's samples (None for 8-bit files): --bit-depth, else the
    file's own information (PNG sBIT, TIFF tags), else the container's 16."""
    if _container_bits(img) <= 8:
        return None
    if reading.bit_depth != "auto":
        return int(reading.bit_depth)
    found = None
    if img.format == "PNG" and getattr(img, "fp", None) is not None:
        found = png_significant_bits(img.fp)
    elif img.format == "TIFF":
        found = tiff_significant_bits(img)
    return found if found and 1 <= found <= 16 else 16


def _full_scale(img: Image.Image, significant: int | None, name: str) -> float | None:
    """White's sample value for a 16-bit greyscale image; colour: checks Pillow's 8-bit reading."""
    if significant is None:
        return None
    if img.mode.startswith("I;16"):
        return full_scale(np.asarray(img), significant)
    if significant < 16 and img.mode in ("RGB", "RGBA"):
        # Pillow keeps the top 8 bits of 16-bit colour: right for data scaled to 16 bits, while
        # values that fit `significant` bits would keep only a few levels.
        top = int(np.asarray(img)[..., :3].max())
        if top < 2 ** max(0, significant - 8):
            raise ImageLoadError(
                name,
                f"16-bit colour image holding {significant}-bit values: colour is read at 8 bits per "
                f"sample, which keeps only {max(0, significant - 8)} of them; save it as 16-bit "
                "greyscale or as 8-bit colour (or pass --bit-depth 16 to read it as it is)",
            )
    return None


def _reduction_factor(width: int, height: int, max_pixels: int | None = None) -> int:
    """The smallest integer factor that brings width x height to at most max_pixels."""
    max_pixels = MAX_WORKING_PIXELS if max_pixels is None else max_pixels
    factor = max(1, math.ceil(math.sqrt(width * height / max_pixels)))
    while math.ceil(width / factor) * math.ceil(height / factor) > max_pixels:
        factor += 1
    return factor


def _reduce_to_working_size(img: Image.Image) -> Image.Image:
    """`img` reduced by an integer box filter to at most MAX_WORKING_PIXELS pixels."""
    sixteen_bit = img.mode.startswith("I;16")
    factor = _reduction_factor(*img.size)
    if factor == 1:
        return img
    # Image.reduce works on L, LA, RGB(A/X), CMYK, YCbCr, I and F; bring other modes there.
    if sixteen_bit:
        img = img.convert("I")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):  # averaging palette indices would be meaningless
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode not in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"):
        img = img.convert("RGB")
    return img.reduce(factor)


def read_ahead(
    items: Iterable[Any], load: Callable[[Any], LoadedImage], jobs: int = 0
) -> Iterator[LoadedImage | ImageLoadError]:
    """`load(item)` for each item in order, an ImageLoadError in place of a failed one; with
    jobs > 0, up to 2 * jobs items are decoded ahead in threads (Pillow releases the GIL)."""

    def attempt(item: Any) -> LoadedImage | ImageLoadError:
        try:
            return load(item)
        except ImageLoadError as err:
            return err

    if jobs <= 0:
        yield from map(attempt, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(attempt, item))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
    seen: set[str] = set()
    result: list[Path] = []
    resolve = PathResolver()
    for item in paths:
        item = Path(item)
        found = _image_files_under(item, recursive) if item.is_dir() else [item]
        for p in found:
            key = resolve(p)
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
