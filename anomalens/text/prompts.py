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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

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
# Data files: FADE's sentence ensemble and FiLo's defect vocabulary.
# --------------------------------------------------------------------------------------

_DATA_PACKAGE = "anomalens.text"
ENSEMBLE_FILE = "fade_ensemble.json"
DEFECTS_FILE = "defects.json"


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


def _read_json(path: str | Path | None, default_name: str) -> tuple[object, str]:
    """Parsed JSON of ``path`` (or the packaged ``default_name``) and a label for errors."""
    if path is None:
        resource = resources.files(_DATA_PACKAGE).joinpath("data", default_name)
        label = f"packaged {default_name}"
        text = resource.read_text(encoding="utf-8")
    else:
        label = str(path)
        text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text), label
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}: not valid JSON ({exc})") from exc


def _check_version(data: dict, label: str) -> None:
    if "version" in data and data["version"] != 1:
        raise ValueError(f"{label}: unsupported version {data['version']!r} (expected 1)")


# A wrong JSON type in a data file is bad file content, not a programming error, so every
# format problem is a ValueError (callers catch one exception type); hence the TRY004 noqa.


def _string_list(value: object, label: str, what: str) -> list[str]:
    """A deduplicated, non-empty list of non-empty strings, or a ValueError saying why not."""
    if not isinstance(value, list):
        raise ValueError(f"{label}: {what} must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{label}: {what}[{i}] must be a non-empty string, got {item!r}")
    items = dedupe(value)
    if not items:
        raise ValueError(f"{label}: {what} is empty")
    return items


CLASSNAME_PLACEHOLDER = "{classname}"


@dataclass
class PromptEnsemble:
    """Normal and anomalous sentences; ``source`` says where they came from.

    Sentences may hold the released files' ``{classname}`` placeholder; :meth:`for_class`
    fills it in.
    """

    normal: list[str]
    anomalous: list[str]
    source: str = ""

    def fingerprint(self) -> str:
        """Cache key of this ensemble's content (see :func:`ensemble_fingerprint`)."""
        return ensemble_fingerprint(self.normal, self.anomalous)

    def for_class(self, name: str) -> PromptEnsemble:
        """The ensemble with ``{classname}`` replaced by ``name`` (as the released code's format call)."""
        fill = lambda texts: [t.replace(CLASSNAME_PLACEHOLDER, name) for t in texts]  # noqa: E731
        return PromptEnsemble(fill(self.normal), fill(self.anomalous), self.source)


def _is_released_format(data: dict) -> bool:
    """FADE's released prompt files: {"normal"|"abnormal": {"instruction": ..., "prompts": [...]}}."""
    return isinstance(data.get("abnormal"), dict) or isinstance(data.get("normal"), dict)


def _released_prompts(data: dict, label: str, key: str) -> list[str]:
    """One side of a released prompt file, duplicates and order kept as the released code keeps them."""
    side = data.get(key)
    if not isinstance(side, dict):
        raise ValueError(f"{label}: {key!r} must be an object with a 'prompts' list (released FADE format)")
    prompts = side.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise ValueError(f"{label}: {key}.prompts must be a non-empty list of strings")
    for i, item in enumerate(prompts):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{label}: {key}.prompts[{i}] must be a non-empty string, got {item!r}")
    return list(prompts)


def _load_one_ensemble(path: str | Path | None) -> PromptEnsemble:
    data, label = _read_json(path, ENSEMBLE_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{label}: top level must be a JSON object, got {type(data).__name__}")
    if _is_released_format(data):
        return PromptEnsemble(
            normal=_released_prompts(data, label, "normal"),
            anomalous=_released_prompts(data, label, "abnormal"),
            source=label,
        )
    _check_version(data, label)
    for key in ("normal", "anomalous"):
        if key not in data:
            raise ValueError(
                f"{label}: missing key {key!r} (expected {{'normal': [...], 'anomalous': [...]}} or FADE's "
                "released {'normal'|'abnormal': {'prompts': [...]}})"
            )
    return PromptEnsemble(
        normal=_string_list(data["normal"], label, "normal"),
        anomalous=_string_list(data["anomalous"], label, "anomalous"),
        source=label,
    )


def load_ensemble(path: str | Path | Sequence[str | Path] | None = None) -> PromptEnsemble:
    """Load a sentence ensemble: the packaged FADE file, or one or more user JSON files.

    Two formats are read:

    * ours: a JSON object with non-empty ``normal`` and ``anomalous`` lists of strings
      (``version``, if present, must be 1); entries are whitespace-normalised and
      deduplicated case-insensitively;
    * FADE's released prompt files: ``{"normal"|"abnormal": {"instruction": ..., "prompts":
      [...]}}``, read as they are (duplicates and order kept, ``{classname}`` placeholders
      left for :meth:`PromptEnsemble.for_class`).

    Several files are concatenated in the order given, duplicates kept (the released code
    concatenates its files the same way). Raises ValueError naming the file and the problem.
    """
    if path is None or isinstance(path, (str, Path)):
        return _load_one_ensemble(path)
    paths = list(path)
    if not paths:
        return _load_one_ensemble(None)
    parts = [_load_one_ensemble(p) for p in paths]
    return PromptEnsemble(
        normal=[t for part in parts for t in part.normal],
        anomalous=[t for part in parts for t in part.anomalous],
        source=", ".join(part.source for part in parts),
    )


@dataclass
class DefectVocabulary:
    """Per-category defect phrases with a generic fallback."""

    categories: dict[str, list[str]]
    generic: list[str]
    source: str = ""
    _by_clean: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # Several keys can share a cleaned name (pcb1..pcb4 -> "pcb"); a lookup by the
        # cleaned name then gets the union, which is still more specific than "generic".
        merged: dict[str, list[str]] = {}
        for key, phrases in self.categories.items():
            merged.setdefault(clean_class_name(key), []).extend(phrases)
        self._by_clean = {k: dedupe(v) for k, v in merged.items()}

    def for_category(self, name: str) -> list[str]:
        """Phrases for ``name``: exact key, else by cleaned name, else the generic list."""
        if name in self.categories:
            return list(self.categories[name])
        return list(self._by_clean.get(clean_class_name(name), self.generic))


def load_defect_vocabulary(path: str | Path | None = None) -> DefectVocabulary:
    """Load the packaged FiLo defect vocabulary, or a user JSON with the same keys.

    Format: ``{"version": 1, "categories": {name: [phrases]}, "generic": [phrases]}``.
    Raises ValueError naming the file and the problem.
    """
    data, label = _read_json(path, DEFECTS_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{label}: top level must be a JSON object, got {type(data).__name__}")
    _check_version(data, label)
    for key in ("categories", "generic"):
        if key not in data:
            raise ValueError(f"{label}: missing key {key!r}")
    raw = data["categories"]
    if not isinstance(raw, dict):
        raise ValueError(f"{label}: categories must be an object, got {type(raw).__name__}")
    categories = {
        str(name): _string_list(phrases, label, f"categories[{name!r}]") for name, phrases in raw.items()
    }
    return DefectVocabulary(
        categories=categories, generic=_string_list(data["generic"], label, "generic"), source=label
    )


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
