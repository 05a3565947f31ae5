"""Backbones: CLIP (open_clip) with dense multi-path features, and the embedded CNN."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import VARIANT_BLOCKS, EfficientNetPatchBackbone
from .ensemble import EfficientNetEnsemble, ensemble_members, is_efficientnet

if TYPE_CHECKING:  # pragma: no cover
    from .clip import ClipBackbone, ClipFeatures, MissingWeightsError, create_clip, interpolate_pos_embed

# Imported on first use: open_clip takes seconds to import and the embedded backbone needs none of it.
_CLIP_NAMES = ("ClipBackbone", "ClipFeatures", "MissingWeightsError", "create_clip", "interpolate_pos_embed")


def __getattr__(name: str) -> Any:
    if name in _CLIP_NAMES:
        from . import clip

        return getattr(clip, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

EMBEDDED_BACKBONE = "efficientnet-lite0"


class ClipPatchBackbone(nn.Module):
    """CLIP patch tokens of some blocks as generic patch features (for `patchknn`)."""

    def __init__(self, clip: ClipBackbone, layers: tuple[int, ...]):
        super().__init__()
        self.clip = clip
        self.layers = tuple(layers)
        self.mean, self.std = clip.mean, clip.std
        self.name = clip.name

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.clip(images, layers=self.layers)
        gh, gw = feats.grid
        levels = [F.normalize(feats.layers[i][:, 1:], dim=-1) for i in self.layers]
        out = F.normalize(torch.cat(levels, dim=-1), dim=-1)
        return out.view(out.shape[0], gh, gw, -1)


def create_patch_backbone(
    name: str = EMBEDDED_BACKBONE,
    image_size: int = 320,
    weights: str | None = None,
    blocks: tuple[int, ...] | None = None,
    neighbourhood: int = 3,
    clip_layers: tuple[int, ...] = (6, 9),
    magnitudes: bool = False,
    length_weight: float = 0.0,
    length_log: bool = False,
    length_blocks: tuple[int, ...] | None = None,
    coarse_blocks: tuple[int, ...] = (),
) -> nn.Module:
    """A module mapping (B, 3, S, S) normalised images to (B, h, w, C) patch features: unit-norm, or
    for an EfficientNet with `magnitudes`, layer-normalised with their lengths kept, or with
    `length_weight`, unit-norm followed by one weighted length channel per block; `coarse_blocks`
    append the channels of patchknn's coarse map (EfficientNet only). "a+b" joins EfficientNet
    variants (`ensemble.EfficientNetEnsemble`)."""
    members = ensemble_members(name)
    if members:
        if blocks or length_blocks or magnitudes or coarse_blocks:
            raise ValueError(
                f"backbone {name!r}: an ensemble reads each member's default blocks, with unit directions "
                "and lengths; blocks, length_blocks, magnitudes and the coarse map are for one backbone"
            )
        return EfficientNetEnsemble(
            [
                EfficientNetPatchBackbone(
                    image_size=image_size,
                    neighbourhood=neighbourhood,
                    variant=member,
                    length_weight=length_weight,
                    length_log=length_log,
                )
                for member in members
            ]
        )
    if name in VARIANT_BLOCKS:
        return EfficientNetPatchBackbone(
            image_size=image_size,
            blocks=blocks,
            neighbourhood=neighbourhood,
            variant=name,
            magnitudes=magnitudes,
            length_weight=length_weight,
            length_log=length_log,
            length_blocks=length_blocks,
            coarse_blocks=coarse_blocks,
        )
    if magnitudes or length_weight > 0 or coarse_blocks:
        raise ValueError(
            "magnitudes, length_weight and coarse_blocks need an EfficientNet backbone "
            f"({', '.join(VARIANT_BLOCKS)}, or an ensemble of them), not {name!r}"
        )
    from .clip import create_method_clip

    clip = create_method_clip(name, weights)
    layers = tuple(min(layer, clip.num_layers) for layer in clip_layers)
    return ClipPatchBackbone(clip, layers)


__all__ = [
    "EMBEDDED_BACKBONE",
    "ClipBackbone",
    "ClipFeatures",
    "ClipPatchBackbone",
    "EfficientNetEnsemble",
    "EfficientNetPatchBackbone",
    "MissingWeightsError",
    "create_clip",
    "create_patch_backbone",
    "ensemble_members",
    "interpolate_pos_embed",
    "is_efficientnet",
]
