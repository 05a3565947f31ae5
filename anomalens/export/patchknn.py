"""`patchknn` as one graph: normalised image -> backbone patch features -> kNN distances to the
memory bank (few-shot) or to the image's own patches (zero-shot) -> anomaly map and score.

The backbone is the method's own module (so its blocks, neighbourhood and input size follow the
settings); the bank is a constant of the graph, or for large banks a second input fed from a
.npy file written beside the model (ONNX protobufs stop at 2 GB).
"""

from __future__ import annotations

import base64

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.cnn import coarse_cells
from ..methods.patch_distances import (
    distance_metric,
    few_shot_rank,
    gaussian_weight,
    length_channels,
    pooling_window,
    split_coarse,
    zero_shot_scores_nearest,
)
from ..methods.patch_gaussian import PatchGaussian, bank_gaussian
from ..methods.recipe_fusion import fuse_zero_shot, output_scale
from ..scoring import edge_weights, gaussian_smooth
from .graph import (
    GraphSpec,
    bank_distance,
    euclidean_bank_distance,
    register_exporter,
    require,
    self_distance,
    upsample,
)

# With an inspection region: the graph input of each model input's pixels that count (1) or not (0).
REGION_INPUT = "inspected_pixels"
# Banks above this many bytes go to a second input when bank="auto".
MAX_CONSTANT_BANK_BYTES = 1 << 30
BANK_MODES = ("auto", "constant", "input")


class PatchKnnGraph(nn.Module):
    def __init__(
        self,
        method,
        bank: torch.Tensor | None,
        bank_as_input: bool,
        with_valid: bool,
        grid: tuple[int, int],
        with_region: bool = False,
    ):
        super().__init__()
        self.backbone = method.backbone
        self.image_size = method.settings.image_size
        self.few_shot_k = few_shot_rank(method.settings)
        self.zero_shot_k = method.settings.zero_shot_k
        self.zero_shot_quantile = method.settings.zero_shot_quantile
        # as patch_distances.zero_shot_score_patches: the score may read the nearest-neighbour map
        self.score_nearest = zero_shot_scores_nearest(method.settings)
        self.smoothing_sigma = method.settings.smoothing_sigma
        self.few_shot = bank is not None
        self.metric = distance_metric(method.settings, few_shot=self.few_shot)
        self.length_channels = length_channels(method.settings)  # dropped zero-shot, as patchknn.score_image
        self.bank_as_input = bank_as_input
        # the coarse map (patchknn.patch_anomalies): its channels are dropped zero-shot, compared on
        # its own grid with references; the cells it reads are constants of the graph
        self.coarse = method.coarse_layout
        self.coarse_weight = method.settings.coarse_weight
        # the bank's Gaussian (patch_distances.gaussian_distances) is fitted here, a constant of the graph
        # even when the bank itself is an input
        self.gaussian_weight = gaussian_weight(method.settings) if bank is not None else 0.0
        if self.gaussian_weight > 0:
            channels = bank.shape[-1] - (self.coarse.channels if self.coarse is not None else 0)
            gaussian = bank_gaussian(bank, method.settings.gaussian_shrinkage, channels)
            self.register_buffer("gaussian_mean", gaussian.mean.contiguous())
            self.register_buffer("gaussian_factor", gaussian.factor.contiguous())
            self.gaussian_baseline = gaussian.baseline
        if self.coarse is not None:
            rows, cols = coarse_cells(grid[0], self.coarse.grid[0]), coarse_cells(grid[1], self.coarse.grid[1])
            self.register_buffer("coarse_rows", torch.tensor(rows), persistent=False)
            self.register_buffer("coarse_cols", torch.tensor(cols), persistent=False)
            if bank is not None:
                bank, coarse_bank = split_coarse(bank, self.coarse)
                if not bank_as_input:
                    self.register_buffer("coarse_bank", coarse_bank.float().contiguous())
        # zero-shot on tiles compares a patch with every patch of the image's tiles (patch_scores):
        # the runner feeds one image's tiles as the batch and the graph pools over it
        self.pool_batch = not self.few_shot and method.settings.tile_above_aspect > 0
        self.with_valid = with_valid
        # an inspection region: the runner feeds each input's pixels that count (anomalens.inspection_region)
        self.with_region = with_region
        s = method.settings
        # as patchknn.score_image: the score reads the edge-weighted map (a constant of the graph)
        weights = edge_weights(grid, pooling_window(s), s.image_size) if s.edge_weighting else torch.ones(1, 1)
        self.register_buffer("score_weights", weights)
        if bank is not None and not bank_as_input:
            if self.metric == "euclidean":  # stored as the distance reads it (see euclidean_bank_distance)
                self.register_buffer("bank_t", bank.float().T.contiguous())
                self.register_buffer("bank_squared_norms", (bank.float() ** 2).sum(-1))
            else:
                self.register_buffer("bank", bank.float().contiguous())

    def forward(self, images: torch.Tensor, *extra: torch.Tensor):
        return self.score_features(self.backbone(images), *extra)

    def score_features(self, feats: torch.Tensor, *extra: torch.Tensor):
        """(B, h, w, C) backbone features and the graph's other inputs -> (B, S, S) maps, (B,) scores."""
        extra = list(extra)
        valid = extra.pop(0) if self.with_valid else None
        inspected = extra.pop(0) if self.with_region else None
        feats, coarse_feats = split_coarse(feats, self.coarse)
        b, h, w, c = feats.shape
        flat = feats.reshape(b, h * w, c)
        coarse_bank = getattr(self, "coarse_bank", None)
        score_map = None  # the map the score reads, when it is not patch_map
        if self.few_shot:
            if self.bank_as_input:
                bank, coarse_bank = split_coarse(extra.pop(0), self.coarse)
                patch_map = bank_distance(flat, bank, self.few_shot_k, self.metric)
            elif self.metric == "euclidean":
                patch_map = euclidean_bank_distance(flat, self.bank_t, self.bank_squared_norms, self.few_shot_k)
            else:
                patch_map = bank_distance(flat, self.bank, self.few_shot_k, self.metric)
        else:
            directions = flat[..., : c - self.length_channels]
            if self.pool_batch:
                directions = directions.reshape(1, b * h * w, -1)
            patch_map = self_distance(directions, self.zero_shot_k, self.metric, self.zero_shot_quantile)
            if self.score_nearest:
                score_map = self_distance(directions, self.zero_shot_k, self.metric).reshape(b, h, w)
        if self.gaussian_weight > 0:
            query = F.normalize(flat, dim=-1) if self.metric == "cosine" else flat
            gaussian = PatchGaussian(self.gaussian_mean, self.gaussian_factor, self.gaussian_baseline)
            patch_map = patch_map + self.gaussian_weight * gaussian.excess(query)
        patch_map = patch_map.reshape(b, h, w)
        if self.few_shot and coarse_feats is not None and self.coarse_weight > 0:
            patch_map = patch_map + self.coarse_weight * self._coarse_map(coarse_feats, coarse_bank)
        # as patchknn.score_image: upsample, smooth, score over the pixels of the valid cells
        maps = gaussian_smooth(upsample(patch_map, self.image_size), self.smoothing_sigma)
        read = (
            maps if score_map is None else gaussian_smooth(upsample(score_map, self.image_size), self.smoothing_sigma)
        )
        if valid is not None:
            pixels = torch.nn.functional.interpolate(valid[:, None], size=maps.shape[-2:], mode="nearest")[:, 0]
            scored = torch.where(pixels > 0.5, read * self.score_weights, torch.full_like(read, -float("inf")))
        else:
            scored = read * self.score_weights
        if inspected is not None:  # as score_image with input_regions: only the pixels that count
            scored = torch.where(inspected > 0.5, scored, torch.full_like(scored, -float("inf")))
        score = scored.flatten(1).amax(1)
        return maps, score

    def _coarse_map(self, coarse_feats: torch.Tensor, coarse_bank: torch.Tensor) -> torch.Tensor:
        """As patch_distances.coarse_scores: each coarse cell against the bank's, upsampled to (h, w)."""
        b, h, w, c = coarse_feats.shape
        cells = coarse_feats.index_select(1, self.coarse_rows).index_select(2, self.coarse_cols)
        gh, gw = self.coarse.grid
        dist = bank_distance(cells.reshape(b, gh * gw, c), coarse_bank, self.few_shot_k, self.metric)
        return F.interpolate(dist.reshape(b, 1, gh, gw), size=(h, w), mode="bilinear", align_corners=False)[:, 0]


class FusedPatchKnnGraph(nn.Module):
    """patchknn with its `fused_recipe` partner (`anomalens.methods.recipe_fusion`): one backbone pass, the
    partner's features made from its blocks. With references (`levels`): each graph's maps and score
    standardised by its level on the references, the pixelwise maximum and the larger score, as
    `recipe_fusion.fuse_inputs`. Zero-shot (`levels` None, `zero_shot_fused`): the partner's map brought into
    ours by each image's own levels (`recipe_fusion.fuse_zero_shot`, the same code), our score; one image per
    input, or one image's tiles as the batch when the graph pools them."""

    def __init__(self, ours: PatchKnnGraph, theirs: PatchKnnGraph, levels=None):
        super().__init__()
        self.ours, self.theirs = ours, theirs
        self.levels = None if levels is None else [(float(level.median), float(level.spread)) for level in levels]
        # the writer's `tiles_scored_together`: zero-shot with tiles one image's tiles are a call, levels pooled
        self.pool_batch = ours.pool_batch

    def forward(self, images: torch.Tensor, *extra: torch.Tensor):
        feats, blocks = self.ours.backbone.forward_with_blocks(images)
        maps, score = self.ours.score_features(feats, *extra)
        their_maps, their_score = self.theirs.score_features(self.theirs.backbone.features_from_blocks(blocks), *extra)
        if self.levels is None:
            return fuse_zero_shot(maps, their_maps, pooled=self.pool_batch), score
        (a_median, a_spread), (b_median, b_spread) = self.levels
        a_maps, a_score = (maps - a_median) / a_spread, (score - a_median) / a_spread
        b_maps, b_score = (their_maps - b_median) / b_spread, (their_score - b_median) / b_spread
        return torch.maximum(a_maps, b_maps), torch.maximum(a_score, b_score)


def _require_exportable(method) -> None:
    s = method.settings
    require(s.resize in ("squash", "pad"), f"patchknn resize policy {s.resize!r} cannot be exported")
    require(s.reweight_neighbours == 0, "patchknn with reweighting (reweight_neighbours > 0) cannot be exported")
    require(s.top_fraction == 0, "patchknn with a top-fraction image score cannot be exported (use the maximum)")
    require(s.map_image_share == 0, "patchknn with the image score in its map (map_image_share > 0) cannot be exported")
    patches = method.bank_.banks.get("patches")
    require(
        patches is not None or s.zero_shot_exclusion == 0,
        "patchknn zero-shot with an exclusion window (zero_shot_exclusion > 0) cannot be exported",
    )
    if patches is not None:
        k = few_shot_rank(s)
        require(patches.shape[0] >= k, f"memory bank has fewer than few_shot_k={k} patches")


@register_exporter("patchknn")
def build(method, bank: str = "auto") -> GraphSpec:
    s = method.settings
    require(bank in BANK_MODES, f"bank must be one of {BANK_MODES}, got {bank!r}")
    _require_exportable(method)
    patches = method.bank_.banks.get("patches")
    size = s.image_size
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        grid = tuple(method.backbone(example[:1]).shape[1:3])
    as_input = patches is not None and (
        bank == "input" or (bank == "auto" and patches.numel() * 4 > MAX_CONSTANT_BANK_BYTES)
    )
    fused, zero_shot_fused = method._fits_partner(), method._fuses_zero_shot()
    partner = method.partner
    if fused or zero_shot_fused:
        _require_exportable(partner)
        require(method._shared_pass, "patchknn with fused_recipe exports only when its recipes share a backbone pass")
    if fused:  # the partner's bank is a constant too: the graph has one bank input at most
        require(not as_input, "patchknn with fused_recipe keeps its banks in the graph: use bank='constant'")
        partner_bank = partner.bank_.banks["patches"]
        require(partner_bank.numel() * 4 <= MAX_CONSTANT_BANK_BYTES, "the fused_recipe partner's bank is too large")
    with_valid = s.resize == "pad"
    inputs = {"images": example}
    valid_meta = None
    if with_valid:
        inputs["valid_patches"] = torch.ones(2, *grid)
        valid_meta = {"name": "valid_patches", "grid": list(grid), "size": size}
    metadata = {"grid": list(grid)}
    region = method.region
    if region is not None:
        inputs[REGION_INPUT] = torch.ones(2, size, size)
        metadata["inspection_region"] = {
            "input": REGION_INPUT,
            "png": base64.b64encode(region.png_bytes()).decode("ascii"),
            "digest": region.digest,
            "source": region.source,
            "margin": s.region_margin,
        }
    bank_meta = None
    if patches is not None:
        bank_meta = {"mode": "input" if as_input else "constant", "shape": list(patches.shape)}
        if as_input:
            inputs["memory_bank"] = patches.float()
            bank_meta.update(input="memory_bank", array=patches.float().numpy())
    module = PatchKnnGraph(method, patches, as_input, with_valid, grid, region is not None)
    if fused or zero_shot_fused:  # zero-shot: no bank, the levels are each image's own
        levels = method.fusion_levels_ if fused else None
        theirs = PatchKnnGraph(partner, partner_bank if fused else None, False, with_valid, grid, region is not None)
        module = FusedPatchKnnGraph(module, theirs, levels)
        how = {"levels": [[lv.median, lv.spread] for lv in levels]} if fused else {"zero_shot": "image levels"}
        metadata["fused_recipe"] = {"recipe": s.fused_recipe, **how}
    return GraphSpec(
        module=module.eval(),
        example_inputs=inputs,
        output_names=["anomaly_map", "score"],
        image_inputs=[{"name": "images", "size": size}],
        map_size=size,
        dynamic_batch=True,
        metadata=metadata,
        valid_patches=valid_meta,
        memory_bank=bank_meta,
        output_scale=output_scale(method),
    )
