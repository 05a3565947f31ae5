"""The prompt data files: FADE's sentence ensemble (ours, packaged, or the authors' released
files) and FiLo's per-category defect vocabulary, read and checked with one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .prompts import clean_class_name, dedupe, ensemble_fingerprint

_DATA_PACKAGE = "anomalens.text"
ENSEMBLE_FILE = "fade_ensemble.json"
DEFECTS_FILE = "defects.json"


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


