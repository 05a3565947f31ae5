"""How `patchknn` compares patches: nearest-neighbour distances to the bank or to the image's own
patches, the metric its features call for, which channels zero-shot compares, the coarse map
(deeper blocks compared on their own grid, added to the stride-8 map), and `score_image`, which
turns one image's patch distances into its maps and score."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..backbones import VARIANT_BLOCKS
from ..backbones.cnn import VARIANT_COARSE_BLOCKS, coarse_cells
from ..backbones.ensemble import direction_blocks, ensemble_members, is_efficientnet
from ..geometry import valid_grid_region
from ..inspection_region import NOTHING_COUNTS
from ..scoring import (
    FEW_SHOT_K,
    edge_weights,
    image_score,
    image_score_in_map,
    knn_anomaly,
    kth_largest_values,
    reweighting_factor,
    upsample_and_smooth,
)
from .patch_gaussian import DEFAULT_GAUSSIAN_WEIGHT, bank_gaussian

if TYPE_CHECKING:  # pragma: no cover
    from ..tiling import Box
    from .patchknn_settings import PatchKnnSettings


def window_mask(tiles: int, h: int, w: int, radius: int) -> torch.Tensor:
    """(N, N) True where two patches of the same tile lie within `radius` grid cells of each other."""
    rows = torch.arange(h).repeat_interleave(w).repeat(tiles)
    cols = torch.arange(w).repeat(h * tiles)
    tile = torch.arange(tiles).repeat_interleave(h * w)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
    return near & (tile[:, None] == tile[None])


def zero_shot_rank(patches: int, zero_shot_k: int, quantile: float = 0.0, excluded: int = 1) -> int:
    """Which of an image's own patches a patch is compared with zero-shot, counted nearest first among the
    `patches` - `excluded` that are not excluded (itself, and with `zero_shot_exclusion` its window).

    `quantile` 0: the (`zero_shot_k` - 1)-th (the k-th counting the patch itself first, as FADE's code does).
    `quantile` q > 0: the patch at that share of the others, round(q x (patches - 1)), at least the 1st and at
    most the last that remains: a texture covering more of the image than that share finds its match among
    its own kind, a defect smaller than it does not (README "Zero-shot: the share of the image that must
    look alike").
    """
    available = max(1, patches - excluded)
    if quantile <= 0:
        return min(max(1, zero_shot_k - 1), available)
    return min(max(1, round(quantile * (patches - 1))), available)


def patch_scores(
    feats: torch.Tensor,
    bank: torch.Tensor | None,
    few_shot_k: int,
    zero_shot_k: int,
    zero_shot_exclusion: int = 0,
    metric: str = "cosine",
    zero_shot_quantile: float = 0.0,
) -> torch.Tensor:
    """(T, h, w, C) features of one image's tiles -> (T, h, w) patch anomalies.

    Against the bank (few-shot) or, without one, against all the image's own patches (zero-shot): the
    distance to the other patch of rank `zero_shot_rank` (nearest first). With `zero_shot_exclusion` r > 0
    the patches within r cells of a patch (itself included) are not its neighbours, so a defect larger than
    one patch cannot vouch for itself.
    """
    t, h, w, c = feats.shape
    flat = feats.reshape(-1, c)
    if bank is not None:
        return knn_anomaly(flat, bank, k=few_shot_k, metric=metric).view(t, h, w)
    if zero_shot_exclusion <= 0:  # the patch itself is its own nearest: one rank further
        k = 1 + zero_shot_rank(flat.shape[0], zero_shot_k, zero_shot_quantile)
        return knn_anomaly(flat, flat, k=min(k, flat.shape[0]), metric=metric).view(t, h, w)
    excluded = window_mask(t, h, w, zero_shot_exclusion)
    k = zero_shot_rank(flat.shape[0], zero_shot_k, zero_shot_quantile, int(excluded.sum(1).max()))
    if metric == "euclidean":
        dist = torch.cdist(flat.float(), flat.float()).masked_fill(excluded, float("inf"))
        return (-kth_largest_values(-dist, k)).view(t, h, w)
    unit = F.normalize(flat.float(), dim=-1)
    kth = kth_largest_values((unit @ unit.T).masked_fill(excluded, -1.0), k)
    return (0.5 * (1.0 - kth)).clamp(0.0, 1.0).view(t, h, w)


# patchknn's few-shot length weight on EfficientNet, with log lengths (README "Lengths beside the
# directions": 4 raised every few-shot number over 3 seeds; 16 and 64 cost some)
DEFAULT_LENGTH_WEIGHT = 4.0


def length_weight(settings: PatchKnnSettings) -> float:
    """The length channels' weight: the setting, or when unset the default for the backbone."""
    if settings.length_weight is not None:
        return float(settings.length_weight)
    return DEFAULT_LENGTH_WEIGHT if is_efficientnet(settings.backbone) and not settings.magnitudes else 0.0


def gaussian_weight(settings: PatchKnnSettings) -> float:
    """The bank Gaussian's weight: the setting, or when unset the default for the backbone."""
    if settings.gaussian_weight is not None:
        return float(settings.gaussian_weight)
    return DEFAULT_GAUSSIAN_WEIGHT if is_efficientnet(settings.backbone) and not settings.magnitudes else 0.0


# Few-shot, EfficientNet, at most this many references: the distance to the 3rd nearest bank patch instead of
# the nearest (issue 17 session 36, README "The third-nearest reference patch"): every mean of the dev cells and
# the demo's AUPRO rose at 1 and 4 references (3 draws); with many references the coreset is sparse and its
# 3rd nearest too far (magnetic_tile, one recipe, one draw: 8 and 16 references even, 48 -2.0 pixel AUROC,
# 200 -2.9 image AUROC)
FEW_REFERENCES_FEW_SHOT_K = 3
FEW_REFERENCES = 16


def few_shot_rank(settings: PatchKnnSettings, references: int | None = None) -> int:
    """Which nearest bank patch gives a patch's few-shot distance: `few_shot_k`, or when unset 3 on
    EfficientNet with at most `FEW_REFERENCES` references, else 1. `fit` resolves it for its references
    (a fitted model's settings hold the number); unresolved, with no count, it is the nearest."""
    if settings.few_shot_k is not None:
        return settings.few_shot_k
    few = references is not None and 0 < references <= FEW_REFERENCES
    return FEW_REFERENCES_FEW_SHOT_K if few and is_efficientnet(settings.backbone) else FEW_SHOT_K


def gaussian_distances(feats: torch.Tensor, bank: torch.Tensor, settings: PatchKnnSettings) -> torch.Tensor:
    """(T, h, w, C) stride-8 features -> (T, h, w) Mahalanobis distances to the Gaussian of the bank's first
    C channels beyond what the bank's own patches reach (`PatchGaussian.excess`; the coarse map's trailing
    channels are not part of it), on the features as the bank holds them (unit vectors under cosine)."""
    if distance_metric(settings) == "cosine":
        feats = F.normalize(feats.float(), dim=-1)
    return bank_gaussian(bank, settings.gaussian_shrinkage, feats.shape[-1]).excess(feats)


def length_channels(settings: PatchKnnSettings) -> int:
    """How many trailing feature channels are lengths (one per length block)."""
    if length_weight(settings) <= 0:
        return 0
    return len(settings.length_blocks or settings.blocks or ()) or direction_blocks(settings.backbone)


def distance_metric(settings: PatchKnnSettings, few_shot: bool = True) -> str:
    """How patch features are compared: Euclidean for `magnitudes` and for lengths against a bank, else cosine."""
    return "euclidean" if settings.magnitudes or (few_shot and length_channels(settings)) else "cosine"


def zero_shot_features(feats: torch.Tensor, settings: PatchKnnSettings) -> torch.Tensor:
    """Zero-shot compares the unit directions alone: the length channels are dropped."""
    n = length_channels(settings)
    return feats[..., : feats.shape[-1] - n] if n else feats


@dataclass(frozen=True)
class CoarseLayout:
    """Where the coarse map's features sit: the trailing `channels` of each patch, on a `grid` of cells."""

    channels: int
    grid: tuple[int, int]


def coarse_blocks(settings: PatchKnnSettings) -> tuple[int, ...]:
    """The blocks of the coarse map: the setting, or when unset the backbone's stride-32 stage end
    (none with CLIP backbones or `coarse_weight` 0)."""
    if settings.coarse_weight > 0 and ensemble_members(settings.backbone):
        raise ValueError(f"coarse_weight needs one EfficientNet backbone, not the ensemble {settings.backbone!r}")
    if settings.coarse_weight <= 0 or settings.backbone not in VARIANT_BLOCKS:
        return ()
    return tuple(settings.coarse_blocks or VARIANT_COARSE_BLOCKS[settings.backbone])


def split_coarse(feats: torch.Tensor, coarse: CoarseLayout | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., C) features -> the stride-8 patch channels and the coarse channels (None without)."""
    if coarse is None or coarse.channels == 0:
        return feats, None
    cut = feats.shape[-1] - coarse.channels
    return feats[..., :cut], feats[..., cut:]


def coarse_scores(feats: torch.Tensor, bank: torch.Tensor, grid: tuple[int, int], k: int, metric: str) -> torch.Tensor:
    """(T, h, w, Cc) coarse channels on the stride-8 grid and the bank's -> (T, h, w) distances.

    Each coarse cell is compared once (its features repeat over the stride-8 cells it covers) and
    the (T, gh, gw) distance map is upsampled bilinearly to the stride-8 grid.
    """
    t, h, w, c = feats.shape
    cells = feats[:, coarse_cells(h, grid[0])][:, :, coarse_cells(w, grid[1])]
    dist = knn_anomaly(cells.reshape(-1, c), bank, k=k, metric=metric).view(t, 1, *grid)
    return F.interpolate(dist, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def patch_anomalies(
    feats: torch.Tensor, bank: torch.Tensor | None, settings: PatchKnnSettings, coarse: CoarseLayout | None = None
) -> torch.Tensor:
    """(T, h, w, C) features of one image's tiles -> (T, h, w) patch anomalies, as patchknn scores them.

    Against the bank: the stride-8 distances plus `gaussian_weight` x their Mahalanobis distances to the
    bank's Gaussian beyond the bank's own median (`gaussian_distances`) plus `coarse_weight` x the coarse
    map's. Zero-shot:
    the stride-8 directions alone (neither lengths nor the coarse map: a part's own highlights and
    large structures are unique in the image).
    """
    s = settings
    metric = distance_metric(s, few_shot=bank is not None)
    feats, coarse_feats = split_coarse(feats, coarse)
    if bank is None:
        compared = zero_shot_features(feats, s)
        return patch_scores(
            compared, None, FEW_SHOT_K, s.zero_shot_k, s.zero_shot_exclusion, metric, s.zero_shot_quantile
        )
    full_bank = bank
    bank, coarse_bank = split_coarse(bank, coarse)
    k = few_shot_rank(s)
    scores = patch_scores(feats, bank, k, s.zero_shot_k, s.zero_shot_exclusion, metric)
    if gaussian_weight(s) > 0:  # fitted on the whole bank tensor's leading channels: cached across images
        scores = scores + gaussian_weight(s) * gaussian_distances(feats, full_bank, s)
    if coarse_feats is not None and s.coarse_weight > 0:
        scores = scores + s.coarse_weight * coarse_scores(coarse_feats, coarse_bank, coarse.grid, k, metric)
    return scores


def zero_shot_scores_nearest(settings: PatchKnnSettings) -> bool:
    """Whether a zero-shot image score reads the nearest-neighbour map, not the map it returns: with
    `zero_shot_quantile` and `zero_shot_score` "nearest"."""
    return settings.zero_shot_quantile > 0 and settings.zero_shot_score == "nearest"


def zero_shot_score_patches(
    feats: torch.Tensor, settings: PatchKnnSettings, coarse: CoarseLayout | None = None
) -> torch.Tensor | None:
    """The (T, h, w) distances to each patch's zero_shot_k-th nearest that a zero-shot image score reads
    when `zero_shot_scores_nearest` (the map stays the quantile's); None when the score reads the map."""
    if not zero_shot_scores_nearest(settings):
        return None
    return patch_anomalies(feats, None, replace(settings, zero_shot_quantile=0.0), coarse)


def pooling_window(settings: PatchKnnSettings) -> int:
    """The neighbourhood the backbone averages patches over (CLIP tokens are not pooled)."""
    return settings.neighbourhood if is_efficientnet(settings.backbone) else 1


def score_image(
    feats: torch.Tensor,
    bank: torch.Tensor | None,
    settings: PatchKnnSettings,
    input_boxes: list[Box] | None = None,
    patches: torch.Tensor | None = None,
    coarse: CoarseLayout | None = None,
    input_regions: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """patchknn's scoring as one torch function: (T, h, w, C) features and the bank -> (T, S, S) maps, score.

    S is the model input size; the maps are upsampled and smoothed; the score is taken over the
    part of each map that shows the image (`input_boxes`, default: all of it) and, with
    `input_regions` ((S, S) bool per input: the inspection region on it), over its pixels there.
    `coarse` says which trailing channels are the coarse map's (`PatchKnn.coarse_layout`).
    `patches` may pass `patch_anomalies(feats, bank, ...)` computed before (the variant benchmark
    reuses them).
    """
    s = settings
    if patches is None:
        patches = patch_anomalies(feats, bank, s, coarse)
    maps = upsample_and_smooth(patches, s.image_size, s.smoothing_sigma)
    nearest = zero_shot_score_patches(feats, s, coarse) if bank is None else None
    scored = maps if nearest is None else upsample_and_smooth(nearest, s.image_size, s.smoothing_sigma)
    # The image score reads the (edge-weighted) smoothed map; the returned maps stay unweighted.
    weighted = (
        scored * edge_weights(patches.shape[-2:], pooling_window(s), s.image_size) if s.edge_weighting else scored
    )
    if input_boxes is None and input_regions is None:
        values = weighted
    else:  # the pixels of the grid cells whose centres lie on the image (as the ONNX graph's valid mask)
        grid = patches.shape[-2:]
        sy, sx = s.image_size // grid[0], s.image_size // grid[1]
        whole = (0, 0, s.image_size, s.image_size)
        parts = []
        for t, m in enumerate(weighted):
            r, c = valid_grid_region(whole if input_boxes is None else input_boxes[t], s.image_size, grid)
            rows, cols = slice(r.start * sy, r.stop * sy), slice(c.start * sx, c.stop * sx)
            part = m[rows, cols]  # and with an inspection region, its pixels there
            parts.append(part.reshape(-1) if input_regions is None else part[input_regions[t][rows, cols].to(m.device)])
        values = torch.cat(parts)
        if values.numel() == 0:
            raise ValueError(NOTHING_COUNTS)
    score = image_score(values, s.top_fraction)
    if bank is not None and s.reweight_neighbours > 0:
        score = score * reweighting_factor(
            feats.reshape(-1, feats.shape[-1]), bank, patches, s.reweight_neighbours, distance_metric(s)
        )
    return image_score_in_map(maps, score, s.map_image_share, s.map_image_mode), score
