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
from ...inspection_region import counted_patches
from ...scoring import FEW_SHOT_K
from ..base import MethodOutput
from ..patchknn import PatchKnn, PatchKnnSettings
from ..patchknn_settings import KNN_RECIPES, model_side, side_up_to
from . import fused_share
from .progress import progress_bar


def pseudo_reference_count(share: float, minimum: int, batch: int) -> int:
    """How many of a batch of `batch` images become pseudo-references: `share` of them, rounded,
    and none when that is fewer than `minimum` (a bank of one image's patches leaves that image none)."""
    count = math.floor(share * batch + 0.5)
    return count if count >= minimum and count < batch else 0


def lowest_scored(scores: torch.Tensor | np.ndarray, paths: list[str], count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties broken by path: the choice does not depend on the order."""
    values = np.asarray(scores, dtype=np.float64)
    return sorted(range(len(paths)), key=lambda i: (values[i], str(paths[i])))[:count]


def picked_again(first, fitted, scores, paths: list[str], weight: float, rounds: int, progress: bool = False):
    """The pseudo-reference patchknn after `rounds` picks (`first` itself for 1, or when it has no
    pseudo-references): `first` was fitted on the images the mutual score `scores` ranks lowest; each further
    round scores the batch with the patchknn of the round before, ranks it by the joined score ((1 - `weight`) x
    mutual + `weight` x patchknn's, as the outputs join them) and fits `fitted(indices)` on as many images that
    rank lowest. The joined score ranks the batch better than the mutual score alone, so fewer defects enter
    the bank (README "Pseudo-references picked twice"). The returned patchknn's `ranked_by` holds the scores
    its pick was made by (the mutual scores for the first)."""
    knn, count = first, len(first.chosen)
    knn.ranked_by = [float(x) for x in scores]
    for round_ in range(2, rounds + 1 if count else 0):
        joined = []
        bar = progress_bar(len(paths), f"pseudo-references, round {round_}", progress)
        for i in range(len(paths)):
            joined.append((1.0 - weight) * float(scores[i]) + weight * knn.score(i))
            bar.update(1)
        bar.close()
        knn = fitted(lowest_scored(joined, paths, count))
        knn.ranked_by = joined
    return knn


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


def at_size(out: MethodOutput, size: tuple[int, int]) -> MethodOutput:
    """A held (reduced) image's output with its map resized (bilinear) to the image's own `size` (musc
    applies its own inspection region to the joined map: the mask is not carried)."""
    if out.anomaly_map.shape == tuple(size):
        return out
    grown = F.interpolate(torch.from_numpy(out.anomaly_map)[None, None], size=tuple(size), mode="bilinear")
    return MethodOutput(out.score, grown[0, 0].numpy().astype(np.float32))


def pseudo_reference_settings(recipe: str = "default", fused: str = "none") -> PatchKnnSettings:
    """patchknn's defaults without reference flips: the batch shows its own variation, and many
    references get no flips anyway (`augment_max_references`). Without the bank's Gaussian: musc's
    shares and weights were measured before it existed (`musc_references_knn_settings`)."""
    return musc_references_knn_settings(recipe, fused, augment="none")


def musc_references_knn_settings(
    recipe: str = "default", fused: str = "none", augment: str = "none"
) -> PatchKnnSettings:
    """The patchknn that musc fits on real references (their copies: `augment`, musc's `reference_augment`;
    none since session 34, as the pseudo-references): patchknn's defaults without the bank's Gaussian
    (`gaussian_weight`, patchknn's default since issue 17 session 15), changed by the named recipe
    (`KNN_RECIPES`, musc's `knn_recipe`). Measured inside musc (README "Inside `musc`"): the Gaussian gains
    mpdd_metal_plate 0.0-0.2 and costs magnetic_tile 0.5 image AUROC and steel_strip 0.8 AUPRO, so musc's
    share goes without it. `fused` is musc's `knn_fused` as resolved (`resolved_knn_fused`): musc weighs its
    share in the first recipe's own units, so it never takes patchknn's fused (standardised) outputs as they are but
    fuses the two recipes itself and brings them back to those units (`fused_share`). The recipe fused
    beside itself would only repeat the share: then there is no second one."""
    fused = "none" if fused == recipe else fused
    # the nearest bank patch (`few_shot_k` 1), as musc's shares were measured: patchknn's 3rd nearest (issue 17
    # session 36) on the pseudo-references cost magnetic_tile zero-shot 1.9 / 2.7 / 0.7 (README "The
    # third-nearest reference patch")
    # and each recipe's bank up to coreset_size, as measured (patchknn's fused banks share it since session 37)
    changes = {
        "gaussian_weight": 0.0,
        "few_shot_k": FEW_SHOT_K,
        "fused_coreset_share": 1.0,
        **KNN_RECIPES[recipe],
        "fused_recipe": fused,
        "augment": augment,
    }
    return replace(PatchKnnSettings(), **changes)


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
    a pseudo-reference against the bank without its own patches. With a `fused_recipe` partner
    (musc's `knn_fused`) both recipes score each image and `output` is their fusion in the first
    recipe's units (`fused_share`), levelled on the pseudo-references' own outputs (none chosen: the
    references' levels)."""

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
        self.ranked_by: list[float] | None = None  # the batch's scores that picked `chosen` (`picked_again`)
        if references is not None:
            self.knn = references
        else:
            self.knn = PatchKnn(settings or pseudo_reference_settings()).to(device)
            side = model_side(self.knn.requested_settings, [min(held.images[i].size_hw) for i in chosen])
            self.knn.region = region  # an inspection region (anomalens.inspection_region), or None: both recipes'
            for knn in fused_share.recipes_of(self.knn):
                knn.use_image_size(side)
        recipes = fused_share.recipes_of(self.knn)
        # each pseudo-reference is encoded once: its features are its bank patches and what it is scored by
        self.features_ = {i: fused_share.encode(self.knn, held.images[i]) for i in chosen}
        self.banks_ = []  # per recipe: (bank, each bank patch's group)
        for r, knn in enumerate(recipes):
            # group 0: the references' own (fitted) bank
            groups = [knn.bank_.banks["patches"].cpu()] if references is not None else []
            if chosen:  # with a region, only the patches that count
                per_image = [
                    counted_patches(
                        self.features_[i][0][r], self.features_[i][1].input_regions, name=held.images[i].path
                    )
                    for i in chosen
                ]
                self.banks_.append(knn.bank_with_origin(groups + per_image))
            else:  # the references' bank as fitted (no second coreset)
                self.banks_.append((groups[0], torch.zeros(groups[0].shape[0], dtype=torch.long)))
        offset = 1 if references is not None else 0  # the pseudo-references' groups follow the references'
        self.own_ = {image: offset + j for j, image in enumerate(chosen)}
        self.levels_ = None
        self.pairs_: dict[int, list[MethodOutput]] = {}  # the pseudo-references' outputs, made for the levels
        if len(recipes) > 1:  # the fused share: each recipe's level on the pseudo-references' own outputs
            self.pairs_ = {i: self._each_recipe(i) for i in chosen}
            self.levels_ = fused_share.pair_levels(list(self.pairs_.values())) if chosen else references.fusion_levels_

    def _each_recipe(self, i: int) -> list[MethodOutput]:
        """Image i's output from each recipe, at patchknn's side (a pseudo-reference without its own patches)."""
        j = self.own_.get(i)
        image = self.held.images[i]
        feats, layout = self.features_.pop(i) if i in self.features_ else fused_share.encode(self.knn, image)
        outputs = []
        for knn, f, (bank, origin) in zip(fused_share.recipes_of(self.knn), feats, self.banks_):
            outputs.append(knn.score(f, layout, bank if j is None else bank[origin != j]))
        return outputs

    def output(self, i: int) -> MethodOutput:
        """Image i's patchknn output at its own size."""
        return at_size(self._output(i), self.held.sizes[i])

    def score(self, i: int) -> float:
        """Image i's patchknn score (its map is not made at the image's size)."""
        return float(self._output(i).score)

    def _output(self, i: int) -> MethodOutput:
        outputs = self.pairs_.pop(i) if i in self.pairs_ else self._each_recipe(i)
        return outputs[0] if self.levels_ is None else fused_share.fuse_in_first_units(*outputs, self.levels_)
