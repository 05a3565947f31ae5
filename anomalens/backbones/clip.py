"""CLIP backbones on open_clip: any input size, dense features (loading: clip_loading.py).

`create_clip(arch, pretrained, image_size)` returns a `ClipBackbone`, a frozen wrapper that
runs the vision tower block by block so the methods can read what they need:

* the patch tokens after any block (optionally projected into the joint image-text space),
* a V-V attention path (CLIP Surgery; FiLo) and a GEM self-self attention path (FADE), both
  computed beside the normal path from each block's own weights and accumulated over the
  blocks they cover, without the feed-forward part,
* positional embeddings interpolated (bicubic) to the patch grid of any input size, with the
  class token's embedding kept.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from ..errors import MissingWeightsError
from .attention import (
    gem_attention,
    gem_inverse_temperature,
    merge_heads,
    qk_attention,
    split_qkv,
    vv_attention,
)
from .clip_loading import DEFAULT_TAGS, is_tiny, load_clip_model, weights_hint

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Resample (1 + N, D) positional embeddings to a new patch grid; the class token's is kept.

    Bicubic with antialiasing, as timm and GEM resample (antialias=False: plain bicubic, as the
    FiLo release's copy of open_clip does; the two kernels differ even when upsampling); the
    original grid is returned untouched when the size matches.
    """
    n_old = pos_embed.shape[0] - 1
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise ValueError(f"positional embedding of {n_old} patches is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", antialias=antialias, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


@dataclass
class ClipFeatures:
    """What one forward pass of the vision tower produced.

    Token tensors are (B, 1 + H*W, width) with the class token first, before ln_post/proj.
    """

    grid: tuple[int, int]
    image_embedding: torch.Tensor  # (B, embed_dim) CLIP's own projected class embedding
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # normal path after block l (1-based)
    vv: dict[int, torch.Tensor] = field(default_factory=dict)  # V-V path after block l
    gem: torch.Tensor | None = None  # GEM path after the last block


class ClipBackbone(nn.Module):
    """A frozen open_clip model with dense, multi-path access to its vision tower."""

    def __init__(self, model: nn.Module, arch: str, pretrained: str | None, image_size: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.arch = arch
        self.pretrained = None if pretrained is None else str(pretrained)
        visual = model.visual
        self.patch_size = visual.conv1.kernel_size[0]
        self.native_size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        self.image_size = image_size or self.native_size
        self.width = visual.conv1.out_channels
        self.num_layers = len(visual.transformer.resblocks)
        self.embed_dim = visual.output_dim
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        self.pos_embed_antialias = True  # False: plain bicubic resampling (FiLo's released code)

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.pretrained or 'random'}"

    # ---- text ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), embed_dim)."""
        chunks = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.model.visual.conv1.weight.device)
            chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(chunks)

    # ---- vision --------------------------------------------------------------------------
    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map vision tokens into the joint image-text space (ln_post then proj)."""
        visual = self.model.visual
        x = visual.ln_post(tokens)
        return x @ visual.proj if visual.proj is not None else x

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patchify, add the class token and (interpolated) positional embeddings, ln_pre."""
        visual = self.model.visual
        x = visual.conv1(images)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_pos_embed(visual.positional_embedding, grid, self.pos_embed_antialias).to(x.dtype)
        return visual.ln_pre(x), grid

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding from the final tokens (class token, ln_post, proj)."""
        return self.project(tokens[:, 0])

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        layers: tuple[int, ...] = (),
        vv_from: int | None = None,
        gem_from: int | None = None,
        gem_iterations: int = 1,
    ) -> ClipFeatures:
        """Run the vision tower once and collect the requested features.

        layers: 1-based block indices whose outputs to keep (normal path; V-V path too when
        vv_from is set and the block is at or after it). vv_from / gem_from: the first block
        (1-based) of the V-V / GEM path. Each extra path starts from the normal path's input
        to that block and adds, block after block, the variant attention computed on the
        normal path's normalised input: the papers' dual path, without feed-forward.
        """
        x, grid = self.embed(images)
        feats = ClipFeatures(grid=grid, image_embedding=torch.empty(0))
        x_vv = x_gem = None
        for index, block in enumerate(self.model.visual.transformer.resblocks, start=1):
            wants_vv = vv_from is not None and index >= vv_from
            wants_gem = gem_from is not None and index >= gem_from
            if not (wants_vv or wants_gem):
                x = block(x)
            else:
                if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
                    raise TypeError(f"{self.arch}: block {index} is not a standard attention block")
                if wants_vv and x_vv is None:
                    x_vv = x
                if wants_gem and x_gem is None:
                    x_gem = x
                h = block.ln_1(x)
                q, k, v = split_qkv(h, block.attn)
                if wants_vv:
                    x_vv = x_vv + block.ls_1(merge_heads(vv_attention(v), block.attn))
                if wants_gem:
                    inv_temp = gem_inverse_temperature(h, q.shape[-1])
                    gem = gem_attention(q, k, v, inv_temp, gem_iterations)
                    x_gem = x_gem + block.ls_1(merge_heads(gem, block.attn))
                x = x + block.ls_1(merge_heads(qk_attention(q, k, v), block.attn))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if index in layers:
                feats.layers[index] = x  # x is rebound each block, never changed in place
                if wants_vv:
                    feats.vv[index] = x_vv
        feats.image_embedding = self.pool(x)
        feats.gem = x_gem
        return feats

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (B, embed_dim)."""
        return F.normalize(self.forward(images).image_embedding, dim=-1)


def create_clip(
    arch: str = "ViT-B-16-plus-240",
    pretrained: str | os.PathLike | None = "default",
    image_size: int | None = None,
    quick_gelu: bool | None = None,
) -> ClipBackbone:
    """Build a frozen CLIP backbone.

    pretrained: an open_clip tag (downloads where a network exists), a local checkpoint file
    or folder (.safetensors, or .pt/.bin read with weights_only=True; open_clip or OpenAI
    layout), "default" for the tag the papers use, or None for random weights.
    Raises MissingWeightsError with what to fetch and which flag to pass.
    """
    if pretrained == "default":
        if arch not in DEFAULT_TAGS:
            raise MissingWeightsError(f"No default weights for {arch}.{weights_hint(arch, None)}")
        pretrained = DEFAULT_TAGS[arch]
    # open_clip logs "No pretrained weights loaded" at WARNING for random init: expected here.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = load_clip_model(arch, pretrained, quick_gelu)
    finally:
        root_logger.setLevel(level)
    return ClipBackbone(model, arch, None if pretrained is None else str(pretrained), image_size)


def create_method_clip(
    arch: str, weights: str | None = "default", image_size: int | None = None, quick_gelu: bool | None = None
) -> ClipBackbone:
    """The weight rule the CLIP methods share: "random" (speed measurements) and the tiny test
    configs without explicit weights get random weights; otherwise a tag, a file, or "default"."""
    if weights == "random" or (is_tiny(arch) and weights in (None, "default")):
        return create_clip(arch, pretrained=None, image_size=image_size, quick_gelu=quick_gelu)
    return create_clip(arch, pretrained=weights or "default", image_size=image_size, quick_gelu=quick_gelu)


def native_image_size(arch: str) -> int | None:
    """The input side an open_clip architecture's config (and its weights) was made for; None when
    open_clip has no config of that name (creating the model then says what is wrong)."""
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        return None
    size = config["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, (list, tuple)) else int(size)
