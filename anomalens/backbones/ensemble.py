"""Several EfficientNet-Lite backbones read as one (patchknn `backbone="efficientnet-lite0+efficientnet-lite2"`).

Each member embeds the image as patchknn's EfficientNet does (unit directions of its stride-8 and
stride-16 stage ends, then their weighted log lengths). The ensemble joins them per patch: every
member's directions, then every member's lengths, all divided by sqrt(members). Against a bank the
squared Euclidean distance is then the mean of the members' own squared distances, with one
nearest neighbour for all of them; zero-shot, which drops the trailing length channels, compares
the joined directions, whose cosine is the mean of the members' cosines.

Measured (README "EfficientNet-Lite1, Lite2 and an ensemble"): Lite0 + Lite2 raise every few-shot mean
on the dev data (about a point) at 1.6 times the CPU per image; zero-shot it loses on reflective parts.
"""

from __future__ import annotations

import torch
from torch import nn

from .cnn import VARIANT_BLOCKS, EfficientNetPatchBackbone

SEPARATOR = "+"


def ensemble_members(name: str) -> tuple[str, ...]:
    """The member variants of an ensemble name ("a+b"), or () for any other name."""
    if SEPARATOR not in name:
        return ()
    members = tuple(part.strip() for part in name.split(SEPARATOR))
    unknown = [m for m in members if m not in VARIANT_BLOCKS]
    if unknown or len(members) < 2 or len(set(members)) < len(members):
        raise ValueError(
            f"backbone {name!r}: an ensemble joins two or more different EfficientNet-Lite variants "
            f"with '{SEPARATOR}' ({', '.join(VARIANT_BLOCKS)})"
        )
    return members


def is_efficientnet(name: str) -> bool:
    """Whether `name` is an EfficientNet-Lite variant or an ensemble of them."""
    return name in VARIANT_BLOCKS or bool(ensemble_members(name))


def direction_blocks(name: str) -> int:
    """How many blocks give directions (and, with lengths, length channels) by default: summed over members."""
    return sum(len(VARIANT_BLOCKS[m]) for m in ensemble_members(name) or (name,))


class EfficientNetEnsemble(nn.Module):
    """EfficientNet-Lite members on the same input, their patch features joined (see the module docstring)."""

    coarse_channels = 0  # no coarse map: its channels would interleave with the members' lengths

    def __init__(self, members: list[EfficientNetPatchBackbone]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs two or more backbones")
        if any(m.magnitudes or m.coarse_blocks for m in members):
            raise ValueError("an ensemble joins unit directions and lengths: no magnitudes, no coarse blocks")
        first = members[0]
        if any(tuple(m.mean) != tuple(first.mean) or tuple(m.std) != tuple(first.std) for m in members):
            raise ValueError("the members of an ensemble must take the same input normalisation")
        self.members = nn.ModuleList(members)
        self.mean, self.std = first.mean, first.std
        self.image_size = first.image_size
        self.name = SEPARATOR.join(m.name for m in members)

    @property
    def length_channels(self) -> int:
        return sum(m.length_channels for m in self.members)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, h, w, C) joined features (directions, then lengths)."""
        feats = [m(images) for m in self.members]
        grids = {tuple(int(n) for n in f.shape[1:3]) for f in feats}
        if len(grids) > 1 and not torch.onnx.is_in_onnx_export():  # exported shapes are traced values
            raise ValueError(f"{self.name}: the members' patch grids differ at this input size: {sorted(grids)}")
        directions = [f[..., : f.shape[-1] - m.length_channels] for f, m in zip(feats, self.members)]
        lengths = [f[..., f.shape[-1] - m.length_channels :] for f, m in zip(feats, self.members)]
        return torch.cat(directions + lengths, dim=-1) / len(feats) ** 0.5
