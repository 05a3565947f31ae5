"""Reading image files of every mode users meet, and fitting them to a model's input size."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import ImageLoadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

ResizePolicy = Literal["squash", "pad"]

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
    try:
        with Image.open(path) as img:
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
        raise ImageLoadError(path, f"image too large ({err}); limit is {MAX_IMAGE_PIXELS} pixels") from err
    except PermissionError as err:
        raise ImageLoadError(path, "permission denied (file is not readable)") from err
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err) or type(err).__name__
        if "cannot identify image file" in reason:
            reason = "not an image file Pillow can read"
        elif "truncated" in reason.lower() or "broken data stream" in reason:
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageLoadError(path, reason) from err
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageLoadError(path, f"unexpected image shape {rgb.shape}")
    original_hw = None
    if reduced_wh != full_wh:
        w, h = full_wh
        # EXIF rotation by 90 or 270 degrees swapped the reduced image's sides: swap these too.
        rotated = rgb.shape[1] != reduced_wh[0] and rgb.shape[0] == reduced_wh[0]
        original_hw = (w, h) if rotated else (h, w)
    return LoadedImage(path=str(path), rgb=np.ascontiguousarray(rgb), original_hw=original_hw)


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


def list_images(paths: list[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and directories into image files, sorted per directory, duplicates removed.

    Files given explicitly are kept whatever their extension (so a wrong file is reported,
    not silently skipped); files found inside directories are filtered by extension.
    """
    seen: set[Path] = set()
    result: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p
                for p in item.glob(pattern)
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
        else:
            found = [item]
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                result.append(p)
    return result


def to_model_input(
    rgb: np.ndarray,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    policy: ResizePolicy = "squash",
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resize an RGB uint8 image to a size x size normalised tensor (3, size, size).

    "squash" resizes both sides to `size` (aspect ratio lost, as the papers do); "pad" keeps
    the aspect ratio and pads with the image mean colour. Returns the tensor and the box
    (top, left, height, width) that the image occupies inside it, to crop maps back.
    """
    h, w = rgb.shape[:2]
    x = torch.tensor(rgb).permute(2, 0, 1).float().div_(255.0).unsqueeze(0)
    if policy == "squash":
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        box = (0, 0, size, size)
    elif policy == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        fill = resized.mean(dim=(2, 3), keepdim=True)
        x = fill.expand(1, 3, size, size).clone()
        top, left = (size - nh) // 2, (size - nw) // 2
        x[:, :, top : top + nh, left : left + nw] = resized
        box = (top, left, nh, nw)
    else:
        raise ValueError(f"unknown resize policy {policy!r}; use 'squash' or 'pad'")
    x = x.clamp_(0.0, 1.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - m) / s)[0], box


def map_to_image(
    patch_map: torch.Tensor, box: tuple[int, int, int, int], input_size: int, out_hw: tuple[int, int]
) -> np.ndarray:
    """Bring a map on the model's square input (h x w, any resolution) back to the image's size.

    The map is first upsampled to the model input size, cropped to the image's box (for the
    "pad" policy), then resized to the original height and width.
    """
    m = patch_map.float()[None, None]
    m = F.interpolate(m, size=(input_size, input_size), mode="bilinear", align_corners=False)
    top, left, bh, bw = box
    m = m[:, :, top : top + bh, left : left + bw]
    m = F.interpolate(m, size=out_hw, mode="bilinear", align_corners=False)
    return m[0, 0].numpy().astype(np.float32)


def input_box(height: int, width: int, size: int, policy: ResizePolicy = "squash") -> tuple[int, int, int, int]:
    """The (top, left, height, width) box an image occupies on the size x size model input."""
    if policy == "squash":
        return (0, 0, size, size)
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    return ((size - nh) // 2, (size - nw) // 2, nh, nw)
