"""The cleaning filter between a language model's text and a vocabulary a user can trust.

Every item goes through the same steps, in this order; the first rule that fails drops the
item and names the reason (reported to the user, never silently lost):

1. normalise: lowercase, strip list numbering and bullets ("1.", "2)", "-", "*"), quotes,
   brackets and end punctuation, collapse whitespace; an article at the start is removed
   so phrases fit "a photo of a screw with {defect}".
2. ``empty``: nothing left.
3. ``too long``: more than ``max_words`` words or ``max_chars`` characters (a sentence,
   not a defect phrase).
4. ``not words``: characters other than letters, spaces, hyphens, apostrophes, commas and
   slashes (digits, code, markup), or no letter at all.
5. ``category name``: the object name alone (with or without a plural "s").
6. ``not a defect``: no word starts with one of :data:`DEFECT_STEMS` (a small list of
   defect and damage word stems written for this project); this drops "blue color",
   "good condition", "etc" and run-on text.
7. ``duplicate``: the same as an item already kept.
8. ``near-duplicate``: the same content words as a kept item, ignoring articles, small
   words, plural "s" and word order ("scratch on the cap" ~ "cap scratches"), or a string
   similarity of at least ``near_ratio`` to a kept item (typos, "crack"/"cracks").
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..text.prompts import clean_class_name

#: Word stems of defects and damage. A cleaned item must contain a word starting with one of them.
DEFECT_STEMS: tuple[str, ...] = (
    "abras", "absent", "advers", "air bubble", "asymmetr", "bend", "bent", "blemish", "blister", "blob",
    "blot", "blur", "break", "bump", "broke", "bubbl", "buckl", "bulg", "burn", "burr", "burst", "chafe", "chip",
    "clog", "collaps", "contamin", "corro", "crack", "cras", "crater", "crease", "crimp", "crook",
    "crumbl", "crush", "cut", "damag", "debris", "decay", "defect", "deform", "delamin", "dent", "deteri",
    "detach", "discolo", "dirt", "dirty", "displac", "distort", "drip", "dust", "erod", "erosion", "excess",
    "extra", "fade", "faded", "fail", "fault", "flake", "flaki", "flaw", "fold", "foreign", "fracture",
    "fray", "fungus", "gap", "gash", "gouge", "grease", "groove", "hole", "impur",
    "incomplet", "incorrect", "inclusion",
    "indent", "irregul", "kink", "knot", "leak", "loose", "lump", "malform", "mark", "melt", "misalign", "misplac",
    "misprint", "misshap", "miss", "mold", "mould", "nick", "notch", "oil", "overflow", "oxid", "patch", "peel",
    "pinhole", "pit", "poke", "porous", "poros", "protru", "punctur", "residu", "rip", "rough", "rot",
    "rust", "sag", "scald", "scorch", "scrap", "scratch", "scuff", "seam", "shatter", "short", "shrink",
    "shrunk", "smear", "smudg", "snag", "soil", "speck", "spill", "splinter", "split", "spot", "squash",
    "squeez", "stain", "stray", "streak", "stripped", "swell", "swollen", "tangl", "tear", "thin", "torn", "twist",
    "uneven", "unfinish", "warp", "wear", "worn", "wrinkl", "wrong",
)  # fmt: skip

_SMALL_WORDS = frozenset({"a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "from", "its", "is"})
_LEADING_ARTICLE = re.compile(r"^(a|an|the)\s+")
_NUMBERING = re.compile(r"^\s*(?:[-*\u2022\u2013\u2014>#]+|\(?\d+[.):\]]|\(?[a-z][.)])\s*")
_EDGE_PUNCT = "\"'`\u201c\u201d\u2018\u2019()[]{}<>.,;:!?*_ \t-"
_ALLOWED = re.compile(r"^[a-z][a-z '\-,/]*$")


@dataclass(frozen=True)
class CleaningRules:
    """Limits of the cleaning filter (see the module docstring)."""

    max_words: int = 6
    max_chars: int = 60
    near_ratio: float = 0.9  # difflib ratio at or above which two items count as the same
    require_defect_word: bool = True


@dataclass
class CleanResult:
    """Items kept (in order) and items dropped with the reason, for the user to see."""

    kept: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)


def split_items(text: str) -> list[str]:
    """One model completion -> raw items: split on newlines, commas and semicolons."""
    return [part for part in re.split(r"[\n;,]", text) if part.strip()]


def normalise_item(text: str) -> str:
    """Lowercase, numbering/bullets/quotes/end punctuation stripped, whitespace collapsed."""
    item = " ".join(text.lower().split())
    previous = None
    while previous != item:  # "1. - 'crack'" needs several passes
        previous = item
        item = _NUMBERING.sub("", item).strip(_EDGE_PUNCT)
    return _LEADING_ARTICLE.sub("", item)


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("es") and word[-3] in "sxh":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _content_key(item: str) -> frozenset[str]:
    words = re.findall(r"[a-z]+", item)
    return frozenset(_singular(w) for w in words if w not in _SMALL_WORDS)


def is_defect_phrase(item: str) -> bool:
    """Does ``item`` contain a word (or two-word stem) starting with one of :data:`DEFECT_STEMS`?"""
    words = re.findall(r"[a-z]+", item)
    candidates = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return any(c.startswith(stem) for c in candidates for stem in DEFECT_STEMS)


def clean_items(
    raw: Iterable[str], category: str = "", rules: CleaningRules | None = None, keep: Iterable[str] = ()
) -> CleanResult:
    """Apply the filter to ``raw`` items; ``keep`` are items already accepted (a merge target).

    Items equal or near-equal to one in ``keep`` are dropped as duplicates, so a merge
    never adds a second spelling of a phrase the user already has.
    """
    rules = rules or CleaningRules()
    name = clean_class_name(category) if category.strip() else ""
    raw_name = " ".join(re.sub(r"[_\-]+", " ", category.lower()).split())
    name_forms = {raw_name, name, f"{name}s", f"{name}es"} - {"", "s", "es"}
    result = CleanResult()
    accepted = [normalise_item(k) for k in keep]
    keys = [_content_key(k) for k in accepted]
    for original in raw:
        item = normalise_item(original)
        reason = None
        if not item:
            reason = "empty"
        elif len(item.split()) > rules.max_words or len(item) > rules.max_chars:
            reason = "too long"
        elif not _ALLOWED.match(item):
            reason = "not words"
        elif item in name_forms:
            reason = "category name"
        elif rules.require_defect_word and not is_defect_phrase(item):
            reason = "not a defect"
        elif item in accepted:
            reason = "duplicate"
        else:
            key = _content_key(item)
            for other, other_key in zip(accepted, keys):
                if key == other_key or difflib.SequenceMatcher(None, item, other).ratio() >= rules.near_ratio:
                    reason = f"near-duplicate of {other!r}"
                    break
        if reason is None:
            accepted.append(item)
            keys.append(_content_key(item))
            result.kept.append(item)
        else:
            result.dropped.append((original.strip(), reason))
    return result
