"""Fitting a decoded image to a model's square input, and maps back to the image's size.

Two resize policies: "squash" (both sides to the input size, as the papers do) and "pad"
(aspect ratio kept, the rest filled with the image's mean colour). `input_box` is the one
place that computes where the image lies on the input; maps are cropped back with it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ResizePolicy = Literal["squash", "pad"]
RESIZE_POLICIES = ("squash", "pad")  # squash to a square (the papers), or pad keeping the aspect ratio


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
        box = top, left, nh, nw = input_box(h, w, size, policy)
        resized = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        fill = resized.mean(dim=(2, 3), keepdim=True)
        x = fill.expand(1, 3, size, size).clone()
        x[:, :, top : top + nh, left : left + nw] = resized
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
    m = patch_map.detach().float().cpu()[None, None]  # maps come back to the CPU (any --device)
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


def valid_grid_region(box: tuple[int, int, int, int], size: int, grid: tuple[int, int]) -> tuple[slice, slice]:
    """Grid cells whose centres lie inside the image's box on the model input (for "pad")."""
    top, left, bh, bw = box
    gh, gw = grid
    ch, cw = size / gh, size / gw
    rows = [i for i in range(gh) if top <= (i + 0.5) * ch < top + bh] or [min(gh - 1, int((top + bh / 2) / ch))]
    cols = [j for j in range(gw) if left <= (j + 0.5) * cw < left + bw] or [min(gw - 1, int((left + bw / 2) / cw))]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
