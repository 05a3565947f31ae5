"""`musc`'s features of one batch: LNAMD patches per (layer, degree), image features, boxes, and
which image each model input (tile) belongs to."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...images import LoadedImage
from ...inspection_region import InspectionRegion, counted_pixels
from ...tiling import Box


@dataclass
class BatchFeatures:
    """LNAMD features of a batch, one row per model input: {(layer, degree): (T, P_l, C_l)}, grids,
    (T, D) image features, boxes. An image is one input, or several tiles (`tile_above_aspect`):
    `owner[t]` is input t's image and `tiles[i]` image i's tile boxes (empty lists: one input
    per image, as features saved before tiles)."""

    patches: dict[tuple[int, int], torch.Tensor]
    grids: list[tuple[int, int]]
    image_features: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    paths: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    tiles: list[list[Box]] = field(default_factory=list)

    def owners(self) -> list[int]:
        """The image of each input."""
        return list(self.owner) if self.owner else list(range(self.image_features.shape[0]))

    @property
    def num_images(self) -> int:
        owners = self.owners()
        return max(owners) + 1 if owners else 0

    def inputs_of(self) -> list[list[int]]:
        """Per image, its inputs (tiles) in order."""
        out: list[list[int]] = [[] for _ in range(self.num_images)]
        for t, i in enumerate(self.owners()):
            out[i].append(t)
        return out

    def counted_pixels(
        self, region: InspectionRegion, i: int, size: int, margin: int, inputs: list[int] | None = None
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Image i's pixels that count under `region`, and the same on each of its `inputs` (default:
        `inputs_of()[i]`), at model side `size` with `margin` (`inspection_region.counted_pixels`)."""
        inputs = self.inputs_of()[i] if inputs is None else inputs
        tiles = self.tiles[i] if self.tiles else [(0, 0, *self.sizes[i])]
        return counted_pixels(region, self.sizes[i], tiles, [self.boxes[t] for t in inputs], size, margin)

    def counted_cells(
        self, region: InspectionRegion, grid: tuple[int, int], size: int, margin: int
    ) -> list[torch.Tensor]:
        """Per input, its `grid` cells that count under `region` (most of their pixels do)."""
        out: list[torch.Tensor | None] = [None] * len(self.owners())
        for i, inputs in enumerate(self.inputs_of()):
            for t, on_input in zip(inputs, self.counted_pixels(region, i, size, margin, inputs)[1]):
                out[t] = F.interpolate(on_input[None, None].float(), size=grid, mode="area")[0, 0] >= 0.5
        return out

    def per_image_features(self) -> torch.Tensor:
        """(N, D) image features, the mean over each image's tiles (RsCIN compares images)."""
        owners = self.owners()
        if len(owners) == self.num_images:
            return self.image_features
        index = torch.as_tensor(owners, dtype=torch.long)
        total = torch.zeros(self.num_images, self.image_features.shape[1]).index_add_(0, index, self.image_features)
        return total / torch.bincount(index, minlength=self.num_images).clamp_min(1)[:, None]

    def select(self, index: list[int]) -> BatchFeatures:
        """The features of images `index` (all their tiles), in that order."""
        inputs = self.inputs_of()
        rows = [t for i in index for t in inputs[i]]
        idx = torch.as_tensor(rows, dtype=torch.long)
        return BatchFeatures(
            {k: v.index_select(0, idx) for k, v in self.patches.items()},
            self.grids,
            self.image_features.index_select(0, idx),
            [self.boxes[t] for t in rows],
            [self.paths[i] for i in index] if self.paths else [],
            [self.sizes[i] for i in index] if self.sizes else [],
            [new for new, i in enumerate(index) for _ in inputs[i]],
            [self.tiles[i] for i in index] if self.tiles else [],
        )

    def tile_partners(
        self, image_partners: list[list[int]], known_normal: BatchFeatures | None
    ) -> tuple[list[list[int]], list[list[int]] | None, list[int] | None]:
        """Per input (tile): the partner inputs (all tiles of its image's partner images) and, when
        any image has several tiles, the partner image of each (None otherwise: one row per image)."""
        owners, inputs = self.owners(), self.inputs_of()
        known_owners = None if known_normal is None else known_normal.owners()
        known_tiled = known_owners is not None and len(known_owners) != known_normal.num_images
        tiled = len(owners) != len(inputs) or known_tiled
        if not tiled:  # one row per image: the partner rows are the partner images
            return [image_partners[i] for i in owners], None, None
        partners = [[t for j in image_partners[i] for t in inputs[j]] for i in owners]
        groups = [[g for g, j in enumerate(image_partners[i]) for _ in inputs[j]] for i in owners]
        return partners, groups, known_owners


def batched(images: Iterable[LoadedImage], size: int) -> Iterator[list[LoadedImage]]:
    batch: list[LoadedImage] = []
    for img in images:
        batch.append(img)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
