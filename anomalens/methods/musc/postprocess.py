"""Optional steps around mutual scoring that are not in the paper (all off by default = paper).

* `standardise_photometry`: each image's grey levels brought to a common mean and spread before
  the backbone, so a darker or lower-contrast image does not look unlike all its partners.
* `smooth_maps`: a Gaussian blur of the patch maps (PatchCore / patchknn smooth with sigma 4 px),
  so one noisy patch does not decide the image score.
* `subtract_baseline`: each map minus the image's own median level (relative maps).
* `image_scores`: the maximum of each image's map (paper and code) or the mean of its top
  fraction, optionally with grid-edge cells down-weighted (`anomalens.scoring.edge_weights`).
"""

from __future__ import annotations

import numpy as np
import torch

from ...geometry import valid_grid_region
from ...inspection_region import NOTHING_COUNTS
from ...scoring import edge_weights, gaussian_smooth, image_score

PHOTOMETRIC_MODES = ("none", "standardise")
BASELINES = ("none", "median")
TARGET_MEAN, TARGET_STD = 0.45, 0.225  # about ImageNet's grey mean and spread


def standardise_photometry(rgb: np.ndarray, mode: str = "none") -> np.ndarray:
    """uint8 (H, W, 3) -> the same image with its pixel mean and standard deviation (over all
    channels) moved to TARGET_MEAN / TARGET_STD of full scale, clipped to 0..255."""
    if mode == "none":
        return rgb
    if mode not in PHOTOMETRIC_MODES:
        raise ValueError(f"unknown photometric mode {mode!r}; use one of {', '.join(PHOTOMETRIC_MODES)}")
    x = rgb.astype(np.float32) / 255.0
    spread = float(x.std())
    x = (x - float(x.mean())) / max(spread, 1e-3) * TARGET_STD + TARGET_MEAN
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def smooth_maps(maps: torch.Tensor, sigma_pixels: float, image_size: int) -> torch.Tensor:
    """(N, h, w) grid maps blurred by a Gaussian of `sigma_pixels` model-input pixels (0: as is)."""
    if sigma_pixels <= 0:
        return maps
    return gaussian_smooth(maps, sigma_pixels * maps.shape[-1] / image_size)


def subtract_baseline(
    maps: torch.Tensor, boxes: list[tuple[int, int, int, int]], image_size: int, baseline: str = "none"
) -> torch.Tensor:
    """(N, h, w) maps minus each image's median cell inside its box ("median"), or as is ("none").

    An image whose whole texture is rare in the batch scores high everywhere; relative to its
    own typical level only the cells that stand out of the image remain high.
    """
    if baseline == "none":
        return maps
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")
    grid = tuple(maps.shape[-2:])
    levels = torch.stack([maps[i][valid_grid_region(box, image_size, grid)].median() for i, box in enumerate(boxes)])
    return maps - levels.view(-1, 1, 1)


def image_scores(
    maps: torch.Tensor,
    boxes: list[tuple[int, int, int, int]],
    image_size: int,
    top_fraction: float = 0.0,
    edge_neighbourhood: int = 1,
    inputs_of: list[list[int]] | None = None,
    counted: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N,) image scores from (T, h, w) grid maps, each over the cells inside its input's box.

    top_fraction 0: the maximum (paper). edge_neighbourhood n > 1: each cell first weighted by
    the share of its n x n window inside the grid (edge cells of a 3 x 3 window: 6/9).
    `inputs_of[i]`: the maps (tiles) of image i, scored together (default: one map per image).
    `counted[t]`: (h, w) bool, input t's cells that count under an inspection region.
    """
    grid = tuple(maps.shape[-2:])
    weights = edge_weights(grid, edge_neighbourhood, grid[0]) if edge_neighbourhood > 1 else None
    if weights is not None and grid[0] != grid[1]:
        weights = torch.nn.functional.interpolate(weights[None, None], size=grid, mode="bilinear")[0, 0]
    out = []
    for rows in inputs_of if inputs_of is not None else [[i] for i in range(len(boxes))]:
        values = []
        for t in rows:
            rs, cs = valid_grid_region(boxes[t], image_size, grid)
            cells = (maps[t] if weights is None else maps[t] * weights)[rs, cs]
            values.append(cells.reshape(-1) if counted is None else cells[counted[t][rs, cs]])
        scored = torch.cat(values)
        if scored.numel() == 0:
            raise ValueError(NOTHING_COUNTS)
        out.append(image_score(scored, top_fraction))
    return torch.stack(out) if out else torch.zeros(0)
