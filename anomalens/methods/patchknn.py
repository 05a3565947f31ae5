"""`patchknn`: FADE's vision guidance alone, on any backbone with patch features, with PatchCore's scoring.

Few-shot: patches of the k reference images (optionally also rotated and flipped, optionally
reduced by a greedy k-centre coreset) form the memory bank and each query patch scores its
distance to the nearest one. Zero-shot: each query patch against the query's own patches,
second nearest neighbour (the first is itself). The patch map is upsampled to the model input,
smoothed with a Gaussian (PatchCore: sigma 4), and the image score is its maximum (or the mean
of its top fraction), optionally reweighted by PatchCore's neighbourhood density. Elongated
images can be covered by square tiles instead of being squashed (`anomalens.tiling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import augment_input
from ..backbones import create_patch_backbone
from ..coreset import greedy_coreset
from ..images import LoadedImage, to_model_input
from ..scoring import (
    FEW_SHOT_K,
    ZERO_SHOT_K,
    MemoryBank,
    gaussian_smooth,
    image_score,
    knn_anomaly,
    reweighting_factor,
)
from ..tiling import Box, assemble, crop, tile_boxes
from .base import Method, MethodOutput, register_method


@dataclass
class PatchKnnSettings:
    backbone: str = "efficientnet-lite0"  # efficientnet-lite0/1/2, or an open_clip architecture (then pass weights)
    weights: str | None = None  # CLIP weights (tag or file) when backbone is a CLIP architecture
    image_size: int = 256  # model input side in pixels (256 beat 320 on magnetic_tile: see README)
    resize: str = "squash"  # "squash" (papers) or "pad" (keep aspect ratio)
    tile_above_aspect: float = 0.0  # long/short side ratio above which square tiles replace squashing; 0 = never
    blocks: tuple[int, ...] | None = None  # EfficientNet blocks read; None = the stride-8 and stride-16 stage ends
    neighbourhood: int = 3  # local aggregation window, in patches
    clip_layers: tuple[int, ...] = (6, 9)  # CLIP blocks whose tokens are used (1-based)
    few_shot_k: int = FEW_SHOT_K
    zero_shot_k: int = ZERO_SHOT_K
    zero_shot_exclusion: int = 0  # zero-shot: patches within this many grid cells are not neighbours; 0 = only itself
    smoothing_sigma: float = 4.0  # Gaussian on the input-resolution map before the image score (PatchCore: 4)
    top_fraction: float = 0.0  # image score = mean of this top fraction of the smoothed map; 0 = its maximum
    reweight_neighbours: int = 0  # PatchCore's density reweighting of the image score over b neighbours (paper: 9); 0 = off
    augment: str = "none"  # reference rotations/flips: "none", "flips" (x4) or "dihedral" (x8)
    coreset_size: int = 16384  # a bank above this many patches is reduced to it by greedy k-centre; 0 = never
    batch_size: int = 8


def valid_grid_region(
    box: tuple[int, int, int, int], size: int, grid: tuple[int, int]
) -> tuple[slice, slice]:
    """Grid cells whose centres lie inside the image's box on the model input (for "pad")."""
    top, left, bh, bw = box
    gh, gw = grid
    ch, cw = size / gh, size / gw
    rows = [i for i in range(gh) if top <= (i + 0.5) * ch < top + bh] or [
        min(gh - 1, int((top + bh / 2) / ch))
    ]
    cols = [j for j in range(gw) if left <= (j + 0.5) * cw < left + bw] or [
        min(gw - 1, int((left + bw / 2) / cw))
    ]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def window_mask(tiles: int, h: int, w: int, radius: int) -> torch.Tensor:
    """(N, N) True where two patches of the same tile lie within `radius` grid cells of each other."""
    rows = torch.arange(h).repeat_interleave(w).repeat(tiles)
    cols = torch.arange(w).repeat(h * tiles)
    tile = torch.arange(tiles).repeat_interleave(h * w)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
    return near & (tile[:, None] == tile[None])


def patch_scores(
    feats: torch.Tensor, bank: torch.Tensor | None, few_shot_k: int, zero_shot_k: int, zero_shot_exclusion: int = 0
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
        return knn_anomaly(flat, bank, k=few_shot_k).view(t, h, w)
    if zero_shot_exclusion <= 0:
        return knn_anomaly(flat, flat, k=zero_shot_k).view(t, h, w)
    unit = F.normalize(flat.float(), dim=-1)
    sim = (unit @ unit.T).masked_fill(window_mask(t, h, w, zero_shot_exclusion), -1.0)
    k = max(1, zero_shot_k - 1)
    kth = sim.topk(k, dim=1).values[:, k - 1]
    return (0.5 * (1.0 - kth)).clamp(0.0, 1.0).view(t, h, w)


def score_image(
    feats: torch.Tensor,
    bank: torch.Tensor | None,
    settings: PatchKnnSettings,
    input_boxes: list[Box] | None = None,
    patches: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """patchknn's scoring as one torch function: (T, h, w, C) features and the bank -> (T, S, S) maps, score.

    S is the model input size; the maps are upsampled and smoothed; the score is taken over the
    part of each map that shows the image (`input_boxes`, default: all of it). `patches` may
    pass `patch_scores(feats, bank, ...)` computed before (the variant benchmark reuses them).
    """
    s = settings
    if patches is None:
        patches = patch_scores(feats, bank, s.few_shot_k, s.zero_shot_k, s.zero_shot_exclusion)
    maps = F.interpolate(patches[:, None], size=(s.image_size, s.image_size), mode="bilinear", align_corners=False)
    maps = gaussian_smooth(maps[:, 0], s.smoothing_sigma)
    if input_boxes is None:
        values = maps
    else:
        values = torch.cat([m[t : t + h, l : l + w].reshape(-1) for m, (t, l, h, w) in zip(maps, input_boxes)])
    score = image_score(values, s.top_fraction)
    if bank is not None and s.reweight_neighbours > 0:
        score = score * reweighting_factor(feats.reshape(-1, feats.shape[-1]), bank, patches, s.reweight_neighbours)
    return maps, score


@dataclass
class Layout:
    """How one image was fed to the model: its tiles (image pixels) and where each sits on the input."""

    size_hw: tuple[int, int]
    tiles: list[Box]
    input_boxes: list[Box]


@register_method
class PatchKnn(Method):
    name = "patchknn"
    Settings = PatchKnnSettings

    def __init__(self, settings: PatchKnnSettings):
        super().__init__(settings)
        self.backbone = create_patch_backbone(
            settings.backbone,
            image_size=settings.image_size,
            weights=settings.weights,
            blocks=settings.blocks,
            neighbourhood=settings.neighbourhood,
            clip_layers=settings.clip_layers,
        )
        self.bank = MemoryBank()

    def describe_backbone(self) -> str:
        return self.backbone.name

    def model_inputs(self, img: LoadedImage) -> tuple[list[torch.Tensor], Layout]:
        """The normalised (3, S, S) inputs of one image (one per tile) and its layout."""
        s = self.settings
        tiles = tile_boxes(*img.size_hw, s.tile_above_aspect)
        inputs, boxes = [], []
        for tile in tiles:
            x, box = to_model_input(crop(img.rgb, tile), s.image_size, self.backbone.mean, self.backbone.std, s.resize)
            inputs.append(x)
            boxes.append(box)
        return inputs, Layout(img.size_hw, tiles, boxes)

    def _encode(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        b = self.settings.batch_size
        return torch.cat([self.backbone(torch.stack(inputs[i : i + b])) for i in range(0, len(inputs), b)])

    def _features(self, images: list[LoadedImage]) -> tuple[list[torch.Tensor], list[Layout]]:
        """Per image: (T, h, w, C) features of its T tiles, and its layout."""
        inputs, layouts = zip(*(self.model_inputs(img) for img in images)) if images else ((), ())
        feats = self._encode([x for per_image in inputs for x in per_image])
        counts = [len(per_image) for per_image in inputs]
        return list(torch.split(feats, counts)), list(layouts)

    def reference_patches(self, img: LoadedImage) -> torch.Tensor:
        """(P, C) bank patches of one reference: every tile, in every augmentation."""
        inputs, _ = self.model_inputs(img)
        augmented = [y for x in inputs for y in augment_input(x, self.settings.augment)]
        feats = self._encode(augmented)
        return feats.reshape(-1, feats.shape[-1])

    def build_bank(self, per_reference: list[torch.Tensor]) -> torch.Tensor:
        """All references' patches as one bank, reduced by greedy k-centre above `coreset_size`."""
        bank = F.normalize(torch.cat(per_reference).float(), dim=-1)
        size = self.settings.coreset_size
        if size > 0 and bank.shape[0] > size:
            indices, _ = greedy_coreset(bank, size)
            bank = bank[indices]
        return bank

    def fit(self, references: list[LoadedImage]) -> None:
        self.bank = MemoryBank()
        self.num_references = len(references)
        if references:
            self.bank.banks["patches"] = self.build_bank([self.reference_patches(r) for r in references])

    def predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        feats, layouts = self._features(images)
        bank = self.bank.banks.get("patches")
        return [self.score(f, layout, bank) for f, layout in zip(feats, layouts)]

    def score(
        self, feats: torch.Tensor, layout: Layout, bank: torch.Tensor | None, patches: torch.Tensor | None = None
    ) -> MethodOutput:
        """One image's tile features -> its score and its map at the image's size."""
        maps, score = score_image(feats, bank, self.settings, layout.input_boxes, patches)
        tile_maps = [m[t : t + h, l : l + w] for m, (t, l, h, w) in zip(maps, layout.input_boxes)]
        return MethodOutput(float(score), assemble(tile_maps, layout.tiles, layout.size_hw))

    def leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Features once; each held-out reference against the bank of all the other references."""
        per_reference = [self.reference_patches(r) for r in references]
        self.fit_features(per_reference)
        feats, layouts = self._features([references[i] for i in held_out])
        outputs = []
        for i, f, layout in zip(held_out, feats, layouts):
            others = self.build_bank(per_reference[:i] + per_reference[i + 1 :])
            outputs.append(self.score(f, layout, others))
        return outputs

    def fit_features(self, per_reference: list[torch.Tensor] | torch.Tensor) -> None:
        """Fit from precomputed bank patches: a list of (P, C) (or (..., C)) tensors, one per reference."""
        if isinstance(per_reference, torch.Tensor):
            per_reference = list(per_reference)
        self.num_references = len(per_reference)
        self.bank = MemoryBank()
        self.bank.banks["patches"] = self.build_bank([p.reshape(-1, p.shape[-1]) for p in per_reference])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.bank.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.bank.load_state_dict(state)
        if "patches" in self.bank:
            self.num_references = max(self.num_references, 1)
