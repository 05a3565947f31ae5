"""The inspection region: the part of every image that is inspected, drawn once per product.

A plant masks what must not raise an alarm: a printed date code, an engraved serial number, a
label, the fixture around the part. The region is a mask image (white or any value >= 128:
inspected; black: ignored) of any size; it is stretched to each image's size, so it suits parts
that sit in the same place in every image (a fixture, a conveyor stop).

Outside the region nothing counts: the image score is taken over the region's pixels only (with
the method's own rule: smoothing and edge weights as without a region), the anomaly map there is
set to the image's lowest map value (so the overlay shows it calm and no mask pixel lies there),
and only the references' patches that count enter the memory bank (a serial number that differs
on every part would otherwise take the coreset's places). A region that covers the whole image
changes nothing.

Patch features see their neighbourhood, so a mark just outside the region still colours the
patches next to it: the method's margin (patchknn's `region_margin`, pixels of the model input)
is left out beside every ignored area too (not at the image's edges). `on_image` gives what counts.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .augment import augment_input
from .errors import ImageLoadError

REGION_LEVEL = 128  # mask pixels at or above this grey level are inspected
REGION_FILE = "region.png"  # the region's file in a saved model's folder
COUNTED_CACHE_SIZE = 64  # image geometries whose counted pixels a region keeps


@dataclass(frozen=True, eq=False)
class InspectionRegion:
    """A (H, W) boolean mask, True where images are inspected, at the resolution it was drawn."""

    mask: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 2 or min(mask.shape) < 1:
            raise ValueError(f"{self.source or 'inspection region'}: a region is a 2-D mask, got shape {mask.shape}")
        mask = mask.astype(bool)
        if not mask.any():
            raise ValueError(
                f"{self.source or 'inspection region'}: the region inspects nothing (every pixel is below "
                f"{REGION_LEVEL}); white (or any grey level >= {REGION_LEVEL}) marks what is inspected"
            )
        object.__setattr__(self, "mask", mask)
        # what counts per image geometry (size, tiles, margin): a production line repeats a few sizes
        object.__setattr__(self, "_counted", {})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> InspectionRegion:
        """Read a mask image (any mode; grey level >= REGION_LEVEL is inspected); errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise ImageLoadError(
                path, "inspection region: file does not exist" if not path.exists() else "is not a file"
            )
        try:
            with Image.open(path) as img:
                img.load()
                grey = np.asarray(_as_grey(img))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageLoadError(path, f"inspection region: not a readable image ({err})") from err
        return cls(grey >= REGION_LEVEL, source=str(path))

    @classmethod
    def from_png_bytes(cls, data: bytes, source: str = "") -> InspectionRegion:
        with Image.open(io.BytesIO(data)) as img:
            return cls(np.asarray(_as_grey(img)) >= REGION_LEVEL, source=source)

    def png_bytes(self) -> bytes:
        """The mask as a 0/255 greyscale PNG (how a saved model keeps it)."""
        buffer = io.BytesIO()
        Image.fromarray(self.mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
        return buffer.getvalue()

    @property
    def digest(self) -> str:
        """sha256 (16 hex digits) of the mask's shape and pixels: what makes two regions the same."""
        h = hashlib.sha256(f"{self.mask.shape}".encode())
        h.update(np.packbits(self.mask).tobytes())
        return h.hexdigest()[:16]

    @property
    def share(self) -> float:
        """The share of the image that is inspected."""
        return float(self.mask.mean())

    def on_image(self, size_hw: tuple[int, int], margin_hw: tuple[int, int] = (0, 0)) -> np.ndarray:
        """What counts on an image of `size_hw`: the mask stretched to it (nearest neighbour), less
        `margin_hw` (rows, columns) of pixels beside every ignored area. (H, W) bool."""
        if tuple(size_hw) == self.mask.shape:
            inspected = self.mask
        else:
            resized = Image.fromarray(self.mask.astype(np.uint8) * 255, mode="L").resize(
                (int(size_hw[1]), int(size_hw[0])), Image.Resampling.NEAREST
            )
            inspected = np.asarray(resized) >= REGION_LEVEL
        my, mx = (max(0, int(m)) for m in margin_hw)
        if (my or mx) and not inspected.all():
            from scipy import ndimage

            near_ignored = ndimage.maximum_filter(
                ~inspected, size=(2 * my + 1, 2 * mx + 1), mode="constant", cval=False
            )
            inspected = inspected & ~near_ignored
        return inspected

    def __repr__(self) -> str:
        return (
            f"InspectionRegion({self.mask.shape[1]}x{self.mask.shape[0]}, {self.share:.0%} inspected, {self.source!r})"
        )


def on_input(
    inspected: np.ndarray, tile: tuple[int, int, int, int], size: int, box: tuple[int, int, int, int]
) -> torch.Tensor:
    """(size, size) bool: an image's inspected pixels (`InspectionRegion.on_image`) on one model input,
    the `tile` (top, left, h, w) resized onto `box` (top, left, h, w) as its pixels were; False off the box."""
    top, left, h, w = tile
    cut = torch.tensor(inspected[top : top + h, left : left + w])  # a copy: `inspected` may be read-only
    b_top, b_left, bh, bw = box
    resized = F.interpolate(cut[None, None].float(), size=(bh, bw), mode="nearest")[0, 0] > 0.5
    out = torch.zeros(size, size, dtype=torch.bool)
    out[b_top : b_top + bh, b_left : b_left + bw] = resized
    return out


def input_margin(margin: int, tile: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> tuple[int, int]:
    """`margin` pixels of the model input as (rows, columns) of image pixels, for a `tile` resized onto `box`."""
    return math.ceil(margin * tile[2] / box[2]), math.ceil(margin * tile[3] / box[3])


def counted_pixels(
    region: InspectionRegion, size_hw: tuple[int, int], tiles: list, boxes: list, size: int, margin: int
) -> tuple[np.ndarray, list[torch.Tensor]]:
    """What counts on an image of `size_hw` cut into `tiles`, each resized onto its `box` of a size x size
    model input, `margin` input pixels beside ignored parts left out: (H, W) bool, and (size, size) bool
    per input. Every tile has the same size and place on its input, so one margin in image pixels."""
    key = (tuple(size_hw), tuple(map(tuple, tiles)), tuple(map(tuple, boxes)), size, margin)
    cached = region._counted.get(key)
    if cached is None:
        inspected = region.on_image(size_hw, input_margin(margin, tiles[0], boxes[0]))
        inspected.setflags(write=False)  # shared by every image of this geometry (and their results)
        cached = inspected, [on_input(inspected, t, size, b) for t, b in zip(tiles, boxes)]
        if len(region._counted) >= COUNTED_CACHE_SIZE:
            region._counted.clear()
        region._counted[key] = cached
    return cached


def counted_patches(
    feats: torch.Tensor, input_regions: list[torch.Tensor] | None, augment: str = "none", name: str = ""
) -> torch.Tensor:
    """(P, C) of an image's (T', h, w, C) features (its inputs in `augment`'s copies): the patches whose cells
    count under the inspection region, each input's `input_regions` mask (a cell counts when most of its
    pixels do); all of them without a region."""
    flat = feats.reshape(-1, feats.shape[-1])
    if input_regions is None:
        return flat
    masks = [m for r in input_regions for m in augment_input(r[None].float(), augment)]
    grid = tuple(feats.shape[1:3])
    keep = torch.cat([F.interpolate(m[None], size=grid, mode="area").reshape(-1) for m in masks]) >= 0.5
    if not keep.any():
        raise ValueError(f"{name}: the inspection region leaves no patch of this reference to compare with")
    return flat[keep.to(flat.device)]


NOTHING_COUNTS = "the inspection region covers no pixel of this image at the model's input size; draw it larger"


Box = tuple[float, float, float, float]  # left, top, right, bottom: pixels, or shares of the side when all <= 1


def region_from_boxes(size_hw: tuple[int, int], ignore: list[Box] = (), inspect: list[Box] = ()) -> InspectionRegion:
    """A region of `size_hw` made of rectangles: everything (or, with `inspect` boxes, only those) is
    inspected, less the `ignore` boxes. A box whose four numbers are all at most 1 is in shares of the
    width and height; otherwise in pixels (right and bottom exclusive)."""
    h, w = size_hw
    mask = np.zeros((h, w), bool) if inspect else np.ones((h, w), bool)
    for boxes, value in ((inspect, True), (ignore, False)):
        for box in boxes:
            left, top, right, bottom = _pixel_box(box, h, w)
            mask[top:bottom, left:right] = value
    return InspectionRegion(mask, source="boxes")


def _pixel_box(box: Box, h: int, w: int) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ValueError(f"a box is left,top,right,bottom; got {len(box)} numbers: {box}")
    relative = all(0 <= v <= 1 for v in box)
    left, top, right, bottom = (
        (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)) if relative else map(round, box)
    )
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(f"box {box} is empty or outside the {w} x {h} image (left,top,right,bottom)")
    return left, top, right, bottom


def preview(rgb: np.ndarray, region: InspectionRegion) -> np.ndarray:
    """The image with its ignored pixels dimmed as overlays show them (the mask as drawn, no margin)."""
    from .overlay import dim_ignored

    return dim_ignored(np.array(rgb, copy=True), rgb, ~region.on_image(rgb.shape[:2]))


def _as_grey(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit grey; transparent pixels are not inspected."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        grey = np.asarray(rgba.convert("L"), dtype=np.uint16)
        alpha = np.asarray(rgba, dtype=np.uint16)[..., 3]
        return Image.fromarray((grey * alpha // 255).astype(np.uint8), mode="L")
    return img.convert("L")


def as_region(value: InspectionRegion | str | os.PathLike | np.ndarray | None) -> InspectionRegion | None:
    """A region from a file path, a boolean/0-255 array or a region (None stays None)."""
    if value is None or isinstance(value, InspectionRegion):
        return value
    if isinstance(value, (str, os.PathLike)):
        return InspectionRegion.from_file(value)
    arr = np.asarray(value)
    if arr.dtype != bool:  # 0/1 or 0/255
        arr = arr > 0.5 if arr.size and float(arr.max()) <= 1 else arr >= REGION_LEVEL
    return InspectionRegion(arr, source="array")


def apply_to_map(anomaly_map: np.ndarray, inspected: np.ndarray) -> np.ndarray:
    """The map with every pixel that does not count (`inspected` False) set to the map's lowest value (a copy)."""
    out = np.array(anomaly_map, dtype=np.float32, copy=True)
    out[~inspected] = float(out.min())
    return out
