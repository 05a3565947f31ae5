"""A patchknn's references: through the backbone once, into a memory bank, and left out of it one at a time.

`encode_reference` passes a reference's augmented copies through the backbone once and keeps both its bank
patches and its unaugmented features (for the fused partner too, from the same pass); `bank_with_origin`
reduces all references' patches by greedy k-centre and remembers which reference each patch came from;
`held_out_maps` scores each held-out reference against the bank without its own patches, reusing what `fit`
kept for a few references (the fused levels and a threshold's calibration ask for the same maps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import augment_input
from ..coreset import greedy_coreset
from ..images import LoadedImage
from ..inspection_region import counted_patches
from ..tiling import Box
from . import recipe_fusion as fusion
from .patch_distances import distance_metric
from .patchknn_settings import PatchKnnSettings, coreset_target, model_side, reference_augmentation

if TYPE_CHECKING:  # pragma: no cover
    from .patchknn import PatchKnn


@dataclass
class Layout:
    """How one image was fed to the model: its tiles (image pixels) and where each sits on the input."""

    size_hw: tuple[int, int]
    tiles: list[Box]
    input_boxes: list[Box]
    # with an inspection region: the image's pixels that count ((H, W) bool) and the same on each
    # input ((S, S) bool); None: the whole image counts
    inspected: np.ndarray | None = None
    input_regions: list[torch.Tensor] | None = None


# With at most this many references `fit` keeps each one's unaugmented features (~2 MB per 256 px input with the
# fused recipe): its fused levels and a threshold's leave-one-out calibration (which holds out at most 32) read
# them instead of passing the references through the backbone again
REUSED_REFERENCES = 32


@dataclass
class EncodedReference:
    """One reference through the backbone: its bank patches (augmented copies, counted cells) and its
    unaugmented (T, h, w, C) features with the layout they were made in."""

    patches: torch.Tensor
    features: torch.Tensor
    layout: Layout


def encode_reference(method: PatchKnn, img: LoadedImage, augment: str, both: bool = False) -> list[EncodedReference]:
    """One backbone pass over a reference's augmented inputs -> its bank patches (`reference_patches`) and
    its unaugmented features (`image_features`'s: the identity copy comes first), for this recipe and,
    with `both`, also for the partner from the same pass (its inputs are ours: the same side and region)."""
    inputs, layout = method.model_inputs(img)
    copies = [augment_input(x, augment) for x in inputs]
    firsts = torch.tensor([0, *np.cumsum([len(c) for c in copies[:-1]])], dtype=torch.long)
    flat = [y for c in copies for y in c]
    encoded = fusion.encode_both(method, flat) if both else (method._encode(flat),)
    alone = len(flat) == len(inputs)  # no copies: the features are the encoded inputs (no second tensor)
    return [
        EncodedReference(counted_patches(e, layout.input_regions, augment, img.path), e if alone else e[firsts], layout)
        for e in encoded
    ]


def bank_with_origin(
    settings: PatchKnnSettings, per_reference: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All references' patches as one bank, reduced by greedy k-centre (`coreset_target`), and per bank patch
    the index of the reference it came from."""
    bank = torch.cat(per_reference).float()
    if distance_metric(settings) == "cosine":
        bank = F.normalize(bank, dim=-1)
    origin = torch.repeat_interleave(
        torch.arange(len(per_reference)), torch.tensor([p.shape[0] for p in per_reference])
    )
    size = coreset_target(settings, bank.shape[0], len(per_reference))
    if size:
        indices, _ = greedy_coreset(bank, size)
        bank, origin = bank[indices], origin[indices]
    return bank, origin


def fit_shares_pass(method: PatchKnn, short_sides: list[int], augment: str) -> bool:
    """Whether fitting the partner can take its reference features from the method's backbone pass: it reads the
    same network at the same side with the same copies of the references (the default fused recipe does)."""
    if method.partner is None or not method._shared_pass or not short_sides:
        return False
    partner = method.partner.requested_settings
    same_side = model_side(partner, short_sides) == method.settings.image_size
    return same_side and reference_augmentation(partner, len(short_sides)) == augment


def held_out_maps(
    method: PatchKnn, references: list[LoadedImage], held_out: list[int]
) -> list[tuple[torch.Tensor, float, Layout]]:
    """Features and bank once; each held-out reference's (maps on its inputs, score, layout) against the
    bank without its own patches. Without a coreset that is the bank of the other references; with one,
    it is chosen once over all references and r's chosen patches are dropped for r (others' patches
    were picked with r present, so held-out scores can come out slightly higher than with a refit:
    README "Choosing a threshold"), so `fit` with 64 references takes ~19 s, not over 15 minutes."""
    source = getattr(method, "_bank_source", None)
    fitted_on_these = source is not None and len(source[0]) == len(references)
    if not (fitted_on_these and all(a is b for a, b in zip(source[0], references)) and "patches" in method.bank_):
        method._fit(references)  # not fitted on these: fit on them (the bank, origins and features below)
    _, origin, reused = method._bank_source
    bank = method.bank_.banks["patches"].cpu()
    # a few references' maps are kept: `fit`'s fused levels and a threshold's calibration ask for the same
    # ones (for the settings they were made with: a benchmark may change them on a fitted method)
    if reused is None:
        done: dict = {}
        missing = list(dict.fromkeys(held_out))
        feats, layouts = method._features([references[i] for i in missing])
    else:
        if method._held_out_maps[0] is not method.settings:
            method._held_out_maps = (method.settings, {})
        done = method._held_out_maps[1]
        missing = [i for i in dict.fromkeys(held_out) if i not in done]
        feats, layouts = [reused[i][0] for i in missing], [reused[i][1] for i in missing]
    for i, f, layout in zip(missing, feats, layouts):
        others = bank[origin != i]
        if others.shape[0] == 0:  # every chosen patch was r's (a degenerate bank): refit without r
            augment = reference_augmentation(method.settings, len(references) - 1)
            rest = [r for j, r in enumerate(references) if j != i]
            others = method.build_bank([method.reference_patches(r, augment) for r in rest])
        done[i] = (*method.input_maps(f, layout, others), layout)
    return [(done[i][0].clone(), *done[i][1:]) for i in held_out]  # copies: callers may change a map
