"""Square tiles over the long side of an elongated image, and their maps put back together.

Squashing a 1130 x 460 part to a square input shrinks its long side 2.5 times more than its
short side, so small defects along it blur away. Tiling instead covers the long side with
square tiles of the short side's size that overlap by at least `overlap`; each tile is
resized to the model input without distortion, and a defect cut by one tile's edge lies well
inside its neighbour.

Where tiles overlap their maps are blended (`TILE_BLENDS`): with "ramps" each tile's weight rises
linearly from 0 to 1 over the first `TILE_RAMP_SHARE` of its overlap with the tile before and falls
the same way at its overlap with the tile after, so the map passes from one tile to the next without
a step; "mean" averages them evenly as before session 33, which left a visible seam where a tile
begins or ends (README "Tiles for elongated images").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # (top, left, height, width) in image pixels
TILE_OVERLAP = 0.25
TILE_BLENDS = ("ramps", "mean")
# The ramps span a quarter of each overlap: the rest is averaged evenly (two estimates of a pixel are
# less noisy than one). Ramps over the whole overlap cost magnetic_tile 0.2 pixel AUROC at 1 and 4
# shots, a quarter 0.1 (README "Tiles for elongated images", session 33).
TILE_RAMP_SHARE = 0.25


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


def tile_weights(boxes: list[Box], blend: str = "ramps") -> list[torch.Tensor]:
    """Each tile's (h, w) weight in `assemble`: ones for "mean"; for "ramps", along the tiled axis, a ramp
    from 0 to 1 over the first `TILE_RAMP_SHARE` of its overlap with the tile before and from 1 to 0 over
    the last of its overlap with the tile after (at pixel centres), 1 elsewhere."""
    if blend not in TILE_BLENDS:
        raise ValueError(f"tile blend must be one of {', '.join(TILE_BLENDS)}, got {blend!r}")
    weights = [torch.ones(h, w) for _, _, h, w in boxes]
    if blend == "mean" or len(boxes) < 2:
        return weights
    along_x = len({top for top, _, _, _ in boxes}) == 1  # tiles side by side (else stacked)
    spans = [(left, left + w) if along_x else (top, top + h) for top, left, h, w in boxes]
    order = sorted(range(len(boxes)), key=lambda i: spans[i][0])
    for k, i in enumerate(order):
        start, end = spans[i]
        centres = torch.arange(start, end, dtype=torch.float32) + 0.5
        ramp = torch.ones_like(centres)
        if k > 0 and spans[order[k - 1]][1] > start:  # rises where the tile before still covers
            ramp = torch.minimum(ramp, (centres - start) / (TILE_RAMP_SHARE * (spans[order[k - 1]][1] - start)))
        if k + 1 < len(order) and spans[order[k + 1]][0] < end:  # falls where the tile after already covers
            ramp = torch.minimum(ramp, (end - centres) / (TILE_RAMP_SHARE * (end - spans[order[k + 1]][0])))
        weights[i] = weights[i] * (ramp[None, :] if along_x else ramp[:, None])
    return weights


def assemble(
    tile_maps: list[torch.Tensor], boxes: list[Box], out_hw: tuple[int, int], blend: str = "ramps"
) -> np.ndarray:
    """Tile maps (any resolution each) resized onto their boxes of an out_hw map, blended where they overlap
    (`tile_weights`)."""
    total = torch.zeros(out_hw)
    count = torch.zeros(out_hw)
    for tile_map, (top, left, h, w), weight in zip(tile_maps, boxes, tile_weights(boxes, blend)):
        resized = F.interpolate(tile_map.float()[None, None], size=(h, w), mode="bilinear", align_corners=False)
        total[top : top + h, left : left + w] += resized[0, 0] * weight
        count[top : top + h, left : left + w] += weight
    # every pixel has a tile whose weight there is positive: the ramps reach 0 only beyond a pixel centre
    return (total / count.clamp_min(1e-12)).numpy().astype(np.float32)
