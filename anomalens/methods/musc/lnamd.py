"""LNAMD, Local Neighbourhood Aggregation with Multiple Degrees.

Each layer's feature map is layer-normalised over (C, H, W) per image (the official code's
nn.LayerNorm([C, H, W]) without learned scale), then, for each degree r, every patch is
replaced by the mean of its r x r neighbourhood (r = 1: the patch alone) and L2-normalised.
Small r keeps small defects sharp, large r lets a patch describe a larger defect.

The official code unfolds r x r patches with zero padding and averages each channel over them
with adaptive average pooling; that is an r x r average pool whose border patches count the
padding. Counting it or not changes only a border patch's length, which the L2 normalisation
removes, so a plain average pool gives the same unit vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_DEGREES = (1, 3, 5)  # paper and official code


def layer_normalise(feature_map: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) -> zero mean, unit variance over each image's whole (C, H, W) map."""
    flat = feature_map.float().flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).view_as(feature_map)


def aggregate(feature_map: torch.Tensor, degree: int) -> torch.Tensor:
    """(B, C, H, W) layer-normalised map -> (B, H*W, C) unit patch features averaged over r x r."""
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"aggregation degree must be an odd number >= 1, got {degree}")
    x = feature_map
    if degree > 1:
        x = F.avg_pool2d(x, degree, stride=1, padding=degree // 2, count_include_pad=False)
    return F.normalize(x.flatten(2).transpose(1, 2), dim=-1)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ViT tokens (B, 1 + H*W, D) with the class token first -> (B, D, H, W)."""
    patches = tokens[:, 1:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def lnamd(
    layer_maps: Sequence[torch.Tensor], degrees: Sequence[int] = DEFAULT_DEGREES
) -> dict[tuple[int, int], torch.Tensor]:
    """{(layer index, degree): (B, H_l*W_l, C_l) features} for every layer and degree."""
    out = {}
    for li, fmap in enumerate(layer_maps):
        normed = layer_normalise(fmap)
        for r in degrees:
            out[(li, r)] = aggregate(normed, r)
    return out
