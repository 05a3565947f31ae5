"""Square tiles over the long side of an elongated image, and their maps put back together.

Squashing a 1130 x 460 part to a square input shrinks its long side 2.5 times more than its
short side, so small defects along it blur away. Tiling instead covers the long side with
square tiles of the short side's size that overlap by at least `overlap`; each tile is
resized to the model input without distortion, and a defect cut by one tile's edge lies well
inside its neighbour. Maps are averaged where tiles overlap.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # (top, left, height, width) in image pixels
TILE_OVERLAP = 0.25


def tile_boxes(height: int, width: int, above_aspect: float, overlap: float = TILE_OVERLAP) -> list[Box]:
    """The tiles of a height x width image: the whole image when its aspect ratio is at most
    `above_aspect` (or `above_aspect` <= 0), else short-side squares along the long side."""
    short, long = min(height, width), max(height, width)
    if above_aspect <= 0 or long <= above_aspect * short:
        return [(0, 0, height, width)]
    count = math.ceil((long - short) / ((1.0 - overlap) * short)) + 1
    starts = [round(i * (long - short) / (count - 1)) for i in range(count)]
    if width >= height:
        return [(0, s, short, short) for s in starts]
    return [(s, 0, short, short) for s in starts]


def crop(rgb: np.ndarray, box: Box) -> np.ndarray:
    top, left, h, w = box
    return rgb[top : top + h, left : left + w]


def assemble(tile_maps: list[torch.Tensor], boxes: list[Box], out_hw: tuple[int, int]) -> np.ndarray:
    """Tile maps (any resolution each) resized onto their boxes of an out_hw map, averaged where they overlap."""
    total = torch.zeros(out_hw)
    count = torch.zeros(out_hw)
    for tile_map, (top, left, h, w) in zip(tile_maps, boxes):
        resized = F.interpolate(tile_map.float()[None, None], size=(h, w), mode="bilinear", align_corners=False)
        total[top : top + h, left : left + w] += resized[0, 0]
        count[top : top + h, left : left + w] += 1
    return (total / count.clamp_min(1)).numpy().astype(np.float32)
