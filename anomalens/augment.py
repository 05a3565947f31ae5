"""Rotations and flips of reference images, so a few references also cover turned textures.

They act on the normalised model input (C, H, W): a square input keeps its size under every
transform; a non-square one is only flipped (a quarter turn would change the grid's shape).
"""

from __future__ import annotations

import torch

# The 8 symmetries of a square (the dihedral group D4), as (quarter turns, flip left-right).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))
AUGMENTATIONS = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, False), (2, True)),  # identity, both mirrors, half turn
    "dihedral": DIHEDRAL,
}


def _transforms(mode: str) -> tuple[tuple[int, bool], ...]:
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {mode!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[mode]


def augmentation_copies(mode: str) -> int:
    """How many copies of a square input `mode` makes (identity included)."""
    return len(_transforms(mode))


def augment_input(x: torch.Tensor, mode: str = "none") -> list[torch.Tensor]:
    """The transformed copies of one (C, H, W) input for `mode` ("none", "flips", "dihedral"); identity first."""
    out = []
    for turns, flip in _transforms(mode):
        if turns % 2 and x.shape[-1] != x.shape[-2]:
            continue
        y = torch.flip(x, dims=(-1,)) if flip else x
        out.append(torch.rot90(y, turns, dims=(-2, -1)) if turns else y)
    return out
