"""musc's single-image share (`single_image_knn_weight`): patchknn zero-shot on each image alone.

Mutual scoring asks whether a patch has twins in the *other* images of the batch. A defect kind that
many images of the batch share (steel_strip's blotches, magnetic_tile's uneven finish) finds twins
there and escapes it, yet within its own image it still stands out. patchknn's single-image zero-shot
asks that second question: each patch against the image's own patches (its `zero_shot_quantile`: a
defect covering less than that share of the image must reach into the rest), patchknn's default
recipe. Without references, each image's output (the mutual score with its pseudo-reference share) and
its single-image output are standardised by their levels on the batch's most normal images
(`recipe_fusion`'s median and MAD; the images: `level_images`), averaged with weight w, and expressed
back in musc's own units (so thresholds and the report read as before). With references musc has a
better second opinion (patchknn on them: `reference_knn_weight`) and this share is off.

The levels are taken before any output is given, and the level images' outputs are not kept (a large
batch of large images would hold hundreds of full-size maps): each is made twice, once for its level
sample and once when it is given.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ...inspection_region import apply_to_map
from ..base import MethodOutput
from ..patchknn import PatchKnn, PatchKnnSettings
from ..recipe_fusion import MapLevel, level_of_samples, level_sample
from .fused_share import in_units
from .pseudo_references import HeldImages, at_size, lowest_scored

# the level of an output already in standardised units
STANDARD_LEVEL = MapLevel(0.0, 1.0)
SINGLE_IMAGE_GATES = ("none", "pseudo-references")
# Levels from the pseudo-references, or from at least this many of the lowest-scored images (a small
# batch, or pseudo-references off): a median and a MAD over a handful of maps.
LEVEL_IMAGES_MINIMUM = 16


def level_images(scores: torch.Tensor | np.ndarray, paths: list[str], pseudo_references: list[int]) -> list[int]:
    """The images whose outputs set both levels: the pseudo-references (the batch's lowest-scored tenth),
    or, when they are fewer than LEVEL_IMAGES_MINIMUM, that many of the lowest-scored images (all of a
    smaller batch). Ties are broken by path: the choice does not depend on the order."""
    if len(pseudo_references) >= LEVEL_IMAGES_MINIMUM:
        return list(pseudo_references)
    return lowest_scored(scores, paths, min(len(paths), LEVEL_IMAGES_MINIMUM))


def joined(
    mutual: MethodOutput, single: MethodOutput, levels: tuple[MapLevel, MapLevel], weight: float
) -> MethodOutput:
    """One image's output: (1 - weight) x its standardised musc output + weight x its standardised
    single-image output, in musc's units (x * spread + median of musc's level)."""
    a, b = levels
    anomaly_map = (1.0 - weight) * a.standardise(mutual.anomaly_map) + weight * b.standardise(single.anomaly_map)
    score = (1.0 - weight) * a.standardise(mutual.score) + weight * b.standardise(single.score)
    out = in_units(MethodOutput(float(score), anomaly_map.astype(np.float32)), a)
    if mutual.inspected is None:
        return out
    return MethodOutput(out.score, apply_to_map(out.anomaly_map, mutual.inspected), inspected=mutual.inspected)


class SingleImageShare:
    """patchknn's single-image zero-shot (its defaults, fitted on nothing) on the held images of a batch."""

    def __init__(self, held: HeldImages, device: torch.device, region=None):
        self.held = held
        self.knn = PatchKnn(PatchKnnSettings()).to(device)
        self.knn.region = region  # an inspection region (anomalens.inspection_region), or None
        self.knn.fit([])

    def output(self, i: int) -> MethodOutput:
        """Held image i's single-image output at the image's own size."""
        return at_size(self.knn.predict([self.held.images[i]])[0], self.held.sizes[i])

    def joined_outputs(self, outputs_of, indices: list[int], gate: bool, weight: float) -> Iterator[MethodOutput]:
        """Every held image's output joined by its single-image output (`joined`), levelled on the images
        `indices` first. `outputs_of(i)` makes image i's musc output and, with the `gate`, its pseudo-reference
        share alone (`gated`)."""
        levels = self.levels(outputs_of, indices)
        for i in range(len(self.held.images)):
            out, *share = outputs_of(i)
            own, own_level = self.output(i), levels[-1]
            if gate:
                own, own_level = gated(own, share[0], (levels[-1], levels[1])), STANDARD_LEVEL
            yield joined(out, own, (levels[0], own_level), weight)

    def levels(self, outputs_of, indices: list[int]) -> list[MapLevel]:
        """The level of each output `outputs_of(i)` makes for image i (musc's, then any others), on the images
        `indices`, and last the single-image output's level (no output is kept)."""
        samples: list[list[np.ndarray]] = []
        for i in indices:
            outputs = [*outputs_of(i), self.output(i)]
            samples = samples or [[] for _ in outputs]
            for kept, out in zip(samples, outputs, strict=True):
                kept.append(level_sample(out))
        return [level_of_samples(kept) for kept in samples]


def gated(single: MethodOutput, share: MethodOutput, levels: tuple[MapLevel, MapLevel]) -> MethodOutput:
    """`single_image_gate=pseudo-references`: the single-image output counted only where the pseudo-reference
    share also finds the image unusual, the smaller of the two standardised (a mark recurs on the
    pseudo-references; a defect kind the batch shares, less so). Standardised units: its level is (0, 1)."""
    a, b = levels
    anomaly_map = np.minimum(a.standardise(single.anomaly_map), b.standardise(share.anomaly_map))
    return MethodOutput(float(min(a.standardise(single.score), b.standardise(share.score))), anomaly_map)
