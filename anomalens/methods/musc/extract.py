"""Layer feature maps and a global image feature per image, from the embedded CNN or a CLIP ViT."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import EMBEDDED_BACKBONE, VARIANT_BLOCKS
from ...geometry import to_model_input
from ...images import LoadedImage
from ...tiling import crop, tile_boxes
from .batch_features import BatchFeatures, batched
from .lnamd import aggregate, intensity_map, lnamd
from .postprocess import standardise_photometry
from .settings import MuScSettings

DTYPES = {"float16": torch.float16, "float32": torch.float32}


class CnnLayers(nn.Module):
    """EfficientNet-Lite block outputs; the image feature is the deepest block, mean-pooled.

    Blocks finer than `score_stride` pixels are average-pooled to it: mutual scoring costs
    (patches per image)^2 per image pair, so a stride-8 map costs 16 times a stride-16 one.
    """

    def __init__(
        self, blocks: tuple[int, ...], image_size: int, score_stride: int = 16, variant: str = EMBEDDED_BACKBONE
    ):
        super().__init__()
        from ...backbones.cnn import EfficientNetPatchBackbone

        self.net = EfficientNetPatchBackbone(
            image_size=image_size, blocks=tuple(sorted(blocks)), neighbourhood=1, variant=variant
        )
        self.name, self.mean, self.std = self.net.name, self.net.mean, self.net.std
        self.max_grid = image_size // score_stride if score_stride > 0 else 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps = self.net.block_outputs(images)
        image_feature = F.normalize(maps[-1].mean(dim=(2, 3)), dim=-1)
        if self.max_grid:
            maps = [F.adaptive_avg_pool2d(m, self.max_grid) if m.shape[-1] > self.max_grid else m for m in maps]
        return maps, image_feature


class ClipLayers(nn.Module):
    """Patch tokens of some ViT blocks as maps; the image feature is CLIP's image embedding.

    released: away from the architecture's own input size, build CLIP as the released MuSc code
    does (its `create_model` rebuilds the model from the config: nn.GELU, and its
    `resize_pos_embed`: plain bicubic); at the native size it loads the weights as they are.
    """

    def __init__(
        self, arch: str, weights: str | None, layers: tuple[int, ...], image_size: int, released: bool = False
    ):
        super().__init__()
        from ...backbones.clip import create_method_clip, native_image_size

        native = native_image_size(arch)
        rebuilt = released and native is not None and image_size != native
        self.clip = create_method_clip(arch, weights, image_size=image_size, quick_gelu=False if rebuilt else None)
        if rebuilt:
            self.clip.pos_embed_antialias = False
        self.layers = tuple(sorted({min(max(1, layer), self.clip.num_layers) for layer in layers}))
        self.name, self.mean, self.std = self.clip.name, self.clip.mean, self.clip.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        from .lnamd import tokens_to_map

        feats = self.clip(images, layers=self.layers)
        maps = [tokens_to_map(feats.layers[i], feats.grid) for i in self.layers]
        return maps, F.normalize(feats.image_embedding.float(), dim=-1)


def create_layer_backbone(
    name: str,
    weights: str | None,
    image_size: int,
    blocks: tuple[int, ...],
    clip_layers: tuple[int, ...],
    score_stride: int = 16,
    released_clip: bool = False,
) -> nn.Module:
    if name in VARIANT_BLOCKS:  # Lite1 / Lite2 have more blocks per stage: pass their stage ends
        return CnnLayers(blocks, image_size, score_stride, variant=name)
    return ClipLayers(name, weights, clip_layers, image_size, released=released_clip)


def extract_batch_features(
    backbone: nn.Module,
    settings: MuScSettings,
    images: Iterable[LoadedImage],
    bar,
    also: Callable[[list[LoadedImage]], None] | None = None,
) -> BatchFeatures:
    """LNAMD features (`settings`: musc's) of images read `settings.batch_size` at a time; the pixels are not
    kept (`also` is called with each batch of images while they are in memory; `bar` counts images)."""
    s = settings
    dtype = DTYPES[s.feature_dtype]
    chunks: dict[tuple[int, int], list[torch.Tensor]] = {}
    grids: list[tuple[int, int]] = []
    globals_, boxes, paths, sizes, owner, tiles = [], [], [], [], [], []
    for batch in batched(images, s.batch_size):
        inputs = []
        for img in batch:
            rgb = standardise_photometry(img.rgb, s.photometric)
            boxes_of_image = tile_boxes(*img.size_hw, s.tile_above_aspect)
            for tile in boxes_of_image:
                x, box = to_model_input(crop(rgb, tile), s.image_size, backbone.mean, backbone.std, s.resize)
                inputs.append(x)
                boxes.append(box)
                owner.append(len(paths))
            tiles.append(boxes_of_image)
            paths.append(img.path)
            sizes.append(img.size_hw)
        maps, image_feats = backbone(torch.stack(inputs))
        grids = [tuple(m.shape[-2:]) for m in maps]
        for key, value in lnamd(maps, s.degrees, s.patch_norm).items():
            chunks.setdefault(key, []).append(value.to(dtype))
        if s.intensity_weight > 0:  # one more layer, last: see lnamd.intensity_map
            grid = max(grids, key=lambda g: g[0] * g[1])
            grey = intensity_map(torch.stack(inputs), backbone.mean, backbone.std, grid)
            for r in s.degrees:
                chunks.setdefault((len(grids), r), []).append(aggregate(grey, r, "none").to(dtype))
            grids.append(grid)
        globals_.append(image_feats.float())
        if also is not None:
            also(batch)
        bar.update(len(batch))
    patches = {k: torch.cat(v) for k, v in chunks.items()}
    image_features = torch.cat(globals_) if globals_ else torch.empty(0)
    return BatchFeatures(patches, grids, image_features, boxes, paths, sizes, owner, tiles)
