"""LNAMD, Local Neighbourhood Aggregation with Multiple Degrees.

Each layer's feature map is layer-normalised over (C, H, W) per image (the official code's
nn.LayerNorm([C, H, W]) without learned scale), then, for each degree r, every patch is
replaced by the mean of its r x r neighbourhood (r = 1: the patch alone) and L2-normalised.
Small r keeps small defects sharp, large r lets a patch describe a larger defect.

`patch_norm="none"` (not in the paper) skips the per-patch L2 normalisation: MSM then compares
the layer-normalised features by Euclidean distance, so a patch with the texture of its
neighbours but a larger or smaller activation (a brighter or darker region: magnetic_tile's
"uneven", steel_strip's "patches") is far from the normal patches, while the per-image layer
norm still removes each image's global gain (lighting). Every layer is divided by sqrt(C): a
layer-normalised element has unit variance, so a degree-1 patch has expected squared length
1 in every layer, whatever its channel count, and the layers weigh alike in MSM's average.

`patch_norm="l2_length"` (not in the paper) keeps the paper's unit direction and appends the
patch's length (|x| / sqrt(C), as in "none") as one more channel, so the Euclidean distance is
||u_a - u_b||^2 + w (m_a - m_b)^2: direction as in the paper plus a length difference, without
"none"'s scaling of direction differences by the lengths (|a| |b| (2 - 2 cos)). The weight w
(`length_weight`) is applied at scoring time (`weigh_length`), so stored features do not depend
on it.

The official code unfolds r x r patches with zero padding and averages each channel over them
with adaptive average pooling; that is an r x r average pool whose border patches count the
padding. Counting it or not changes only a border patch's length, which the L2 normalisation
removes, so a plain average pool gives the same unit vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...backbones.cnn import layer_normalise  # one home: also patchknn's `magnitudes`

DEFAULT_DEGREES = (1, 3, 5)  # paper and official code
PATCH_NORMS = ("l2", "none", "l2_length")  # l2: paper and official code (unit patches); others: see above


def aggregate(feature_map: torch.Tensor, degree: int, patch_norm: str = "l2") -> torch.Tensor:
    """(B, C, H, W) layer-normalised map -> (B, H*W, C) patch features averaged over r x r.

    "l2": unit vectors (paper). "none": the averages divided by sqrt(C) (border patches average
    only the cells inside the map, so their length is comparable to inner patches').
    "l2_length": (B, H*W, C + 1), the unit vector and then the "none" length.
    """
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"aggregation degree must be an odd number >= 1, got {degree}")
    if patch_norm not in PATCH_NORMS:
        raise ValueError(f"unknown patch_norm {patch_norm!r}; use one of {', '.join(PATCH_NORMS)}")
    x = feature_map
    if degree > 1:
        x = F.avg_pool2d(x, degree, stride=1, padding=degree // 2, count_include_pad=False)
    x = x.flatten(2).transpose(1, 2)
    if patch_norm == "none":
        return x / math.sqrt(x.shape[-1])
    if patch_norm == "l2_length":
        length = x.norm(dim=-1, keepdim=True) / math.sqrt(x.shape[-1])
        return torch.cat([F.normalize(x, dim=-1), length], dim=-1)
    return F.normalize(x, dim=-1)


def weigh_length(features: torch.Tensor, weight: float) -> torch.Tensor:
    """Features of patch_norm "l2_length" (..., C + 1) -> the length channel times sqrt(weight) (a copy)."""
    out = features.clone()
    out[..., -1] *= math.sqrt(weight)
    return out


def intensity_map(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], grid: tuple[int, int]
) -> torch.Tensor:
    """(B, 3, S, S) normalised model inputs -> (B, 1, h, w) grey level (0..1, mean of the channels)
    average-pooled to `grid`, minus each image's median cell.

    Not in the paper: the "intensity layer". A dark blotch or a brighter band is a local offset
    of the grey level, which the CNN's edge and texture features hardly show; relative to the
    image's median (not its spread: a flat image must stay flat) it is scored like any layer,
    by Euclidean distance without layer norm (`MuSc.features`).
    """
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    grey = (images * s + m).mean(dim=1, keepdim=True)
    pooled = F.adaptive_avg_pool2d(grey, grid)
    return pooled - pooled.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ViT tokens (B, 1 + H*W, D) with the class token first -> (B, D, H, W)."""
    patches = tokens[:, 1:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def lnamd(
    layer_maps: Sequence[torch.Tensor], degrees: Sequence[int] = DEFAULT_DEGREES, patch_norm: str = "l2"
) -> dict[tuple[int, int], torch.Tensor]:
    """{(layer index, degree): (B, H_l*W_l, C_l) features} for every layer and degree."""
    out = {}
    for li, fmap in enumerate(layer_maps):
        normed = layer_normalise(fmap)
        for r in degrees:
            out[(li, r)] = aggregate(normed, r, patch_norm)
    return out
