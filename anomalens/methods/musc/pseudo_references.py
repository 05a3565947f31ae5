"""Pseudo-references: the images of the batch that musc scores lowest become patchknn's references.

Mutual scoring ranks the batch without any known-good image; its lowest-scored images are nearly all
normal (on our data 0 of 14 on mpdd_metal_plate, 4 of 114 on magnetic_tile), so `patchknn` fitted
on them adds a second, reference-based opinion, as it does with real references (`reference_knn_weight`);
with real references they join their bank. A pseudo-reference is scored without its own patches in
the bank (no image vouches for itself).

patchknn's model side follows its references (`model_side`), which are known only once the whole
batch is scored, so the images are held until then: as read, or, when their short side exceeds the
largest side patchknn would choose (`side_up_to`, 384 px), as a copy reduced to that short side
(about 0.45 MB for a square image; what patchknn would read of them anyway).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ...images import LoadedImage
from ..base import MethodOutput
from ..patchknn import PatchKnn, PatchKnnSettings
from ..patchknn_settings import KNN_RECIPES, model_side, side_up_to


def pseudo_reference_count(share: float, minimum: int, batch: int) -> int:
    """How many of a batch of `batch` images become pseudo-references: `share` of them, rounded,
    and none when that is fewer than `minimum` (a bank of one image's patches leaves that image none)."""
    count = math.floor(share * batch + 0.5)
    return count if count >= minimum and count < batch else 0


def lowest_scored(scores: torch.Tensor | np.ndarray, paths: list[str], count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties broken by path: the choice does not depend on the order."""
    values = np.asarray(scores, dtype=np.float64)
    return sorted(range(len(paths)), key=lambda i: (values[i], str(paths[i])))[:count]


def reduced_copy(img: LoadedImage, short_side: int) -> LoadedImage:
    """`img` itself when its short side is at most `short_side`, else a copy reduced to it (as
    `to_model_input` resizes: bicubic with antialiasing)."""
    h, w = img.size_hw
    if min(h, w) <= short_side:
        return img
    scale = short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.array(img.rgb, dtype=np.float32)).permute(2, 0, 1)[None]  # a copy: rgb may be read-only
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    rgb = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return LoadedImage(path=img.path, rgb=rgb, original_hw=img.original_hw, notes=img.notes)


def pseudo_reference_settings(recipe: str = "default") -> PatchKnnSettings:
    """patchknn's defaults without reference flips: the batch shows its own variation, and many
    references get no flips anyway (`augment_max_references`). Without the bank's Gaussian: musc's
    shares and weights were measured before it existed (`musc_references_knn_settings`)."""
    return replace(musc_references_knn_settings(recipe), augment="none")


def musc_references_knn_settings(recipe: str = "default") -> PatchKnnSettings:
    """The patchknn that musc fits on real references: patchknn's defaults without the bank's Gaussian
    (`gaussian_weight`, patchknn's default since issue 17 session 15), changed by the named recipe
    (`KNN_RECIPES`, musc's `knn_recipe`). Measured inside musc (README "Inside `musc`"): the Gaussian gains
    mpdd_metal_plate 0.0-0.2 and costs magnetic_tile 0.5 image AUROC and steel_strip 0.8 AUPRO, so musc's
    share goes without it. Never `fused_recipe`: musc weighs its share in the default recipe's own units,
    and a fused map is in standardised units."""
    return replace(PatchKnnSettings(), **{"gaussian_weight": 0.0, "fused_recipe": "none", **KNN_RECIPES[recipe]})


class HeldImages:
    """The batch's images, as patchknn will read them, until the pseudo-references are known."""

    def __init__(self, settings: PatchKnnSettings):
        self.settings = settings  # the patchknn that will read them (`PseudoReferenceKnn`)
        self.cap = side_up_to(settings)
        self.images: list[LoadedImage] = []
        self.sizes: list[tuple[int, int]] = []  # each image's own size, where its output map goes

    def add(self, batch: list[LoadedImage]) -> None:
        for img in batch:
            self.images.append(reduced_copy(img, self.cap))
            self.sizes.append(img.size_hw)


class PseudoReferenceKnn:
    """patchknn fitted on the chosen images of `held` (with `references`, a patchknn fitted on real
    references: those images join its bank, at its model side); `output(i)` scores held image i,
    a pseudo-reference against the bank without its own patches."""

    def __init__(
        self,
        held: HeldImages,
        chosen: list[int],
        device: torch.device,
        settings: PatchKnnSettings | None = None,
        references: PatchKnn | None = None,
        region=None,
    ):
        self.held, self.chosen = held, chosen
        if references is not None:
            self.knn, groups = references, [references.bank_.banks["patches"].cpu()]  # group 0: the references
        else:
            self.knn, groups = PatchKnn(settings or pseudo_reference_settings()).to(device), []
            self.knn.region = region  # an inspection region (anomalens.inspection_region), or None
            sides = [min(held.images[i].size_hw) for i in chosen]
            self.knn.use_image_size(model_side(self.knn.requested_settings, sides))
        # each pseudo-reference is encoded once: its features are its bank patches and what it is scored by
        self.features_ = {i: self.knn.image_features(held.images[i]) for i in chosen}
        if chosen:  # with a region, only the patches that count
            per_image = [self.knn.counted_patches(*self.features_[i], name=held.images[i].path) for i in chosen]
            self.bank_, self.origin_ = self.knn.bank_with_origin(groups + per_image)
        else:  # the references' bank as fitted (no second coreset)
            self.bank_, self.origin_ = groups[0], torch.zeros(groups[0].shape[0], dtype=torch.long)
        self.own_ = {image: len(groups) + j for j, image in enumerate(chosen)}

    def output(self, i: int) -> MethodOutput:
        """Image i's patchknn output at its own size."""
        j = self.own_.get(i)
        feats, layout = self.features_.pop(i) if i in self.features_ else self.knn.image_features(self.held.images[i])
        out = self.knn.score(feats, layout, self.bank_ if j is None else self.bank_[self.origin_ != j])
        size = self.held.sizes[i]
        if out.anomaly_map.shape == size:
            return out
        grown = F.interpolate(torch.from_numpy(out.anomaly_map)[None, None], size=size, mode="bilinear")
        return MethodOutput(out.score, grown[0, 0].numpy().astype(np.float32))
