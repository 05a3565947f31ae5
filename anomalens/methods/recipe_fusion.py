"""Two patchknn recipes on the same references, each map in units of its own normal spread.

patchknn's default (unit directions and log lengths) wins on parts whose lighting varies; the texture
recipe (per-image layer-normalised magnitudes, blocks 4, 10, 14) wins on textured surfaces and loses
on those parts (README "Which setting for which surface"). With `fused_recipe`, both score every
image. Each map is first standardised by the level it reaches on the references themselves (their
leave-one-out maps: the median and the MAD of their pixels; one reference: it against its own
mirrored and turned copies), so a distance counts by how unusual it is for *that* recipe on *these*
references. The image's map is the pixelwise maximum of the two standardised maps and its score the
larger of the two standardised scores: a recipe whose distances are noisy on these references (the
texture recipe on a reflective part: its normal spread is wide) rarely exceeds the other, and one
that separates a defect better (the texture recipe on a finish change) does. README "Both recipes at
once" has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..inspection_region import apply_to_map
from .base import MethodOutput

# Every 4th pixel of each reference map along both axes: ~4,000 pixels of a 256 px map, more than
# enough for a median and a MAD, and the references' maps are not kept.
LEVEL_PIXEL_STEP = 4
# A MAD below this (a map that is constant on the references) is taken as this: no division by zero.
MIN_SPREAD = 1e-6


@dataclass(frozen=True)
class MapLevel:
    """Where one recipe's maps lie on normal images: their median and median absolute deviation."""

    median: float
    spread: float

    def standardise(self, values: np.ndarray | float) -> np.ndarray | float:
        return (values - self.median) / self.spread


def map_level(outputs: list[MethodOutput]) -> MapLevel:
    """The median and MAD of the pixels (every LEVEL_PIXEL_STEP-th, those that count) of normal maps."""
    if not outputs:
        raise ValueError("map_level needs at least one map of a normal image")
    pixels = []
    for out in outputs:
        step = (slice(None, None, LEVEL_PIXEL_STEP),) * 2
        values = out.anomaly_map[step]
        pixels.append(values[out.inspected[step]] if out.inspected is not None else values.ravel())
    sample = np.concatenate(pixels).astype(np.float64)
    median = float(np.median(sample))
    spread = float(np.median(np.abs(sample - median)))
    return MapLevel(median, max(spread, MIN_SPREAD))


def fuse(first: MethodOutput, second: MethodOutput, levels: tuple[MapLevel, MapLevel]) -> MethodOutput:
    """One image's two outputs -> the pixelwise maximum of their standardised maps and the larger standardised score."""
    a, b = levels
    fused = np.maximum(a.standardise(first.anomaly_map), b.standardise(second.anomaly_map)).astype(np.float32)
    if first.inspected is not None:  # pixels outside the inspection region stay at the map's lowest value
        fused = apply_to_map(fused, first.inspected)
    score = max(float(a.standardise(first.score)), float(b.standardise(second.score)))
    return MethodOutput(score, fused, inspected=first.inspected)


def levels_tensor(levels: tuple[MapLevel, MapLevel]) -> torch.Tensor:
    """The two levels as the (4,) tensor a saved model keeps: median, spread, median, spread."""
    return torch.tensor([levels[0].median, levels[0].spread, levels[1].median, levels[1].spread], dtype=torch.float64)


def levels_from_tensor(values: torch.Tensor) -> tuple[MapLevel, MapLevel]:
    v = [float(x) for x in values.flatten().tolist()]
    if len(v) != 4 or v[1] <= 0 or v[3] <= 0:
        raise ValueError(f"fusion levels must be 4 numbers with positive spreads, got {v}")
    return MapLevel(v[0], v[1]), MapLevel(v[2], v[3])
