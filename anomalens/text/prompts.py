"""Text prompts for the language-guided methods (WinCLIP, FADE, FiLo).

* WinCLIP's compositional prompt ensemble (state words x templates).
* FADE's object-agnostic, LLM-style sentence ensemble (packaged ``data/fade_ensemble.json``).
* FiLo's fine-grained per-category defect vocabulary (packaged ``data/defects.json``),
  state words and position words.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

# --------------------------------------------------------------------------------------
# WinCLIP compositional prompt ensemble (Jeong et al., CVPR 2023, supplementary material).
# --------------------------------------------------------------------------------------

#: State words describing a normal object; ``{}`` is replaced by the object name.
NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

#: State words describing an anomalous object, as listed in the WinCLIP paper.
ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

#: The 22 template-level prompts of the WinCLIP paper; ``{}`` receives a state phrase.
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of a {}.",
    "a dark photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
    "a photo of the {} for anomaly detection.",
)


def winclip_prompts(object_name: str, period: bool = True) -> tuple[list[str], list[str]]:
    """Every state x template prompt for ``object_name``: (normal, anomalous).

    period=False drops each template's final "." (FADE's released code keeps its WinCLIP prompts
    without one and lets its text wrapper add it: see :func:`wrap_prompts`).
    """
    name = object_name.strip()
    if not name:
        raise ValueError("object_name must not be empty")
    templates = TEMPLATES if period else tuple(t.removesuffix(".") for t in TEMPLATES)
    normal = [t.format(s.format(name)) for s in NORMAL_STATES for t in templates]
    anomalous = [t.format(s.format(name)) for s in ANOMALOUS_STATES for t in templates]
    return normal, anomalous


def defect_prompts(object_name: str, defects: Sequence[str], period: bool = True) -> list[str]:
    """Extra anomalous prompts from specific defects: every template x "{object} with {defect}"
    (period as in :func:`winclip_prompts`)."""
    name = object_name.strip() or "object"
    templates = TEMPLATES if period else tuple(t.removesuffix(".") for t in TEMPLATES)
    return dedupe([t.format(f"{name} with {normalize_prompt(d)}") for d in defects if d.strip() for t in templates])


def wrap_prompts(prompts: Iterable[str], template: str) -> list[str]:
    """Every prompt put into ``template`` at "{}" ("a photo of a {}." is FADE's released wrapper,
    "{}" leaves prompts as they are). Done by replacement, so braces in a prompt are harmless."""
    if template.count("{}") != 1:
        raise ValueError(f"prompt template must contain exactly one '{{}}', got {template!r}")
    before, after = template.split("{}")
    return [f"{before}{p}{after}" for p in prompts]


# --------------------------------------------------------------------------------------
# Category names, FiLo state words and positions.
# --------------------------------------------------------------------------------------

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
VISA_CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

#: Dataset folder names that are run-together words rather than a name plus a digit.
_NAME_FIXES: dict[str, str] = {"chewinggum": "chewing gum"}


def released_class_name(name: str) -> str:
    """Dataset folder name -> prompt words as FADE's released code forms them: underscores become
    spaces, nothing else ("metal_nut" -> "metal nut", "pcb1" stays "pcb1")."""
    return name.replace("_", " ")


def clean_class_name(name: str) -> str:
    """Dataset folder name -> words for a prompt ("metal_nut" -> "metal nut", "pcb1" -> "pcb")."""
    text = re.sub(r"[_\-\s]+", " ", name).strip().lower()
    # Trailing digits number variants of one object (pcb1..pcb4, macaroni1/2), not a new kind.
    text = re.sub(r"\s*\d+$", "", text).strip()
    return _NAME_FIXES.get(text, text)


#: The nine cells of a 3x3 grid in row-major order (top row first, left to right).
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)


def position_word(cx: float, cy: float, width: float, height: float) -> str:
    """The position word of the 3x3 grid cell holding the point (cx, cy).

    Cells are half-open: x in [0, w/3) is the left column, [w/3, 2w/3) the middle
    column and [2w/3, w] the right column (rows likewise with h), so a point exactly on
    a dividing line belongs to the cell right of / below it. Points outside the image
    are clamped to the nearest border cell.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width} x {height}")

    # Compare 3*c against multiples of the size instead of dividing, so that boundary
    # points such as c = w/3 are not pushed across a line by rounding.
    def cell(c: float, size: float) -> int:
        if 3 * c < size:
            return 0
        if 3 * c < 2 * size:
            return 1
        return 2

    return POSITIONS[3 * cell(cy, height) + cell(cx, width)]


# --------------------------------------------------------------------------------------
# Prompt text helpers (the data files are read in anomalens.text.prompt_files).
# --------------------------------------------------------------------------------------


def normalize_prompt(text: str) -> str:
    """Strip and collapse runs of whitespace (the CLIP tokenizers ignore them too)."""
    return " ".join(text.split())


def dedupe(texts: Iterable[str]) -> list[str]:
    """Whitespace-normalised texts, first occurrence kept, compared case-insensitively."""
    seen: set[str] = set()
    out: list[str] = []
    for text in texts:
        clean = normalize_prompt(text)
        key = clean.casefold()
        if key not in seen:
            seen.add(key)
            out.append(clean)
    return out


# --------------------------------------------------------------------------------------
# FADE and cache keys.
# --------------------------------------------------------------------------------------


def fade_segmentation_prompts(
    ensemble: PromptEnsemble, period: bool = True, keep_duplicates: bool = False
) -> tuple[list[str], list[str]]:
    """FADE's segmentation prompts: WinCLIP's ensemble for "object" plus the sentence ensemble.

    ``{classname}`` in the sentences becomes "object" (the released code writes no class name
    into its segmentation prompts). period=False drops the WinCLIP templates' final period (as
    the released prompt file has them). keep_duplicates=True concatenates the lists as they
    are, as the released code does (a repeated sentence then weighs twice in the mean);
    False deduplicates them (the earlier anomalens form).
    """
    normal, anomalous = winclip_prompts("object", period=period)
    ensemble = ensemble.for_class("object")
    if keep_duplicates:
        return [*normal, *ensemble.normal], [*anomalous, *ensemble.anomalous]
    return dedupe([*normal, *ensemble.normal]), dedupe([*anomalous, *ensemble.anomalous])


def ensemble_fingerprint(*texts: Sequence[str]) -> str:
    """SHA-256 hex digest of one or more prompt lists, for text-feature cache keys.

    Each prompt is whitespace-normalised first; case is kept because not every tokenizer
    lower-cases. The digest depends on the order of the lists and of the prompts within
    each list, because a cache stores one feature row per prompt in that order: a
    reordered list must not reuse rows that no longer line up. Moving a prompt from one
    list to another also changes it.
    """
    if any(isinstance(group, str) for group in texts):
        # A bare string would silently be hashed character by character.
        raise TypeError("ensemble_fingerprint takes lists of strings, not strings")
    payload = json.dumps([[normalize_prompt(t) for t in group] for group in texts], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# The packaged and user prompt files, re-exported here where callers have always found them.
from .prompt_files import (  # noqa: E402, F401
    CLASSNAME_PLACEHOLDER,
    DEFECTS_FILE,
    ENSEMBLE_FILE,
    DefectVocabulary,
    PromptEnsemble,
    load_defect_vocabulary,
    load_ensemble,
)
