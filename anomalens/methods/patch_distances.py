"""How `patchknn` compares patches: nearest-neighbour distances to the bank or to the image's own
patches, the metric its features call for, and which channels zero-shot compares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..backbones import VARIANT_BLOCKS
from ..scoring import knn_anomaly

if TYPE_CHECKING:  # pragma: no cover
    from .patchknn import PatchKnnSettings


def window_mask(tiles: int, h: int, w: int, radius: int) -> torch.Tensor:
    """(N, N) True where two patches of the same tile lie within `radius` grid cells of each other."""
    rows = torch.arange(h).repeat_interleave(w).repeat(tiles)
    cols = torch.arange(w).repeat(h * tiles)
    tile = torch.arange(tiles).repeat_interleave(h * w)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
    return near & (tile[:, None] == tile[None])


def patch_scores(
    feats: torch.Tensor,
    bank: torch.Tensor | None,
    few_shot_k: int,
    zero_shot_k: int,
    zero_shot_exclusion: int = 0,
    metric: str = "cosine",
) -> torch.Tensor:
    """(T, h, w, C) features of one image's tiles -> (T, h, w) patch anomalies.

    Against the bank (few-shot) or, without one, against all the image's own patches (zero-shot).
    Zero-shot with `zero_shot_exclusion` r > 0: the patches within r cells of a patch (itself
    included) are not its neighbours, so a defect larger than one patch cannot vouch for itself;
    the k-th neighbour is then counted among the others (k = zero_shot_k - 1).
    """
    t, h, w, c = feats.shape
    flat = feats.reshape(-1, c)
    if bank is not None:
        return knn_anomaly(flat, bank, k=few_shot_k, metric=metric).view(t, h, w)
    if zero_shot_exclusion <= 0:
        return knn_anomaly(flat, flat, k=zero_shot_k, metric=metric).view(t, h, w)
    excluded = window_mask(t, h, w, zero_shot_exclusion)
    k = max(1, zero_shot_k - 1)
    if metric == "euclidean":
        dist = torch.cdist(flat.float(), flat.float()).masked_fill(excluded, float("inf"))
        return dist.topk(k, dim=1, largest=False).values[:, k - 1].view(t, h, w)
    unit = F.normalize(flat.float(), dim=-1)
    sim = (unit @ unit.T).masked_fill(excluded, -1.0)
    kth = sim.topk(k, dim=1).values[:, k - 1]
    return (0.5 * (1.0 - kth)).clamp(0.0, 1.0).view(t, h, w)


# patchknn's few-shot length weight on EfficientNet, with log lengths (README "Lengths beside the
# directions": 4 raised every few-shot number over 3 seeds; 16 and 64 cost some)
DEFAULT_LENGTH_WEIGHT = 4.0


def length_weight(settings: PatchKnnSettings) -> float:
    """The length channels' weight: the setting, or when unset the default for the backbone."""
    if settings.length_weight is not None:
        return float(settings.length_weight)
    return DEFAULT_LENGTH_WEIGHT if settings.backbone in VARIANT_BLOCKS and not settings.magnitudes else 0.0


def length_channels(settings: PatchKnnSettings) -> int:
    """How many trailing feature channels are lengths (one per length block)."""
    if length_weight(settings) <= 0:
        return 0
    return len(settings.length_blocks or settings.blocks or VARIANT_BLOCKS[settings.backbone])


def distance_metric(settings: PatchKnnSettings, few_shot: bool = True) -> str:
    """How patch features are compared: Euclidean for `magnitudes` and for lengths against a bank, else cosine."""
    return "euclidean" if settings.magnitudes or (few_shot and length_channels(settings)) else "cosine"


def zero_shot_features(feats: torch.Tensor, settings: PatchKnnSettings) -> torch.Tensor:
    """Zero-shot compares the unit directions alone: the length channels are dropped."""
    n = length_channels(settings)
    return feats[..., : feats.shape[-1] - n] if n else feats
