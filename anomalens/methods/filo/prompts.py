"""FiLo's sentences: state words, the abnormal template, and the released code's templates.

Paper (Sec. 3.2), after n learnable context vectors:

* normal:   ``[STATE] [CLASS].``
* abnormal: ``[STATE] [CLASS] with [ANOMALY CLASS] at [POS].``

Ours (`style="paper"`): adjective states only in the abnormal template, so every sentence
reads "damaged screw with bent tip at top left."; a "with ..." state (older checkpoints
stored some) is joined to the description with "and" instead of a second "with".

Released code (`style="released"`): 7 normal sentences (the bare class name, "flawless",
"perfect", "unblemished", "without flaw / defect / damage"); abnormal sentences "abnormal
[CLASS] with [DESCRIPTION]" for each description, then 5 generic ones ("damaged", "broken",
"with flaw / defect / damage"), each followed by "at [POS].". Class names as the released code
forms them: underscores to spaces, a trailing variant number dropped (pcb1 -> pcb).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...text.prompts import POSITIONS, clean_class_name

#: Our normal state words ("flawless screw", "screw without defect").
NORMAL_STATES: tuple[str, ...] = (
    "flawless",
    "perfect",
    "unblemished",
    "normal",
    "intact",
    "pristine",
    "good",
    "without defect",
    "without flaw",
    "without damage",
)

#: Our abnormal state words: adjectives in front of the class, so the template's "with
#: [DESCRIPTION]" is the sentence's only "with".
ABNORMAL_STATES: tuple[str, ...] = (
    "damaged",
    "broken",
    "defective",
    "flawed",
    "abnormal",
    "imperfect",
    "faulty",
)

#: The released code's normal states; "" is the bare class name.
RELEASED_NORMAL_STATES: tuple[str, ...] = (
    "",
    "flawless",
    "perfect",
    "unblemished",
    "without flaw",
    "without defect",
    "without damage",
)

#: The state put in front of every description in the released abnormal sentences.
RELEASED_DESCRIPTION_STATE = "abnormal"

#: The released code's generic abnormal states, one sentence each (no description).
RELEASED_GENERIC_STATES: tuple[str, ...] = ("damaged", "broken", "with flaw", "with defect", "with damage")

PromptStyle = str  # "paper" | "released"


@dataclass(frozen=True)
class PromptSet:
    """The sentence parts after the learnable context: normal and abnormal sentences."""

    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    descriptions: tuple[str, ...]  # the defect description of each abnormal sentence (same order)


def state_phrase(state: str, object_name: str) -> str:
    """Attach a state word to an object: "flawless bottle", "bottle without defect", "bottle"."""
    if not state:
        return object_name
    if state.startswith(("with ", "without ")):
        return f"{object_name} {state}"
    return f"{state} {object_name}"


def abnormal_phrase(state: str, object_name: str, description: str) -> str:
    """One state, object and defect description as a grammatical noun phrase.

    "damaged" + "pcb" + "bent component" -> "damaged pcb with bent component";
    "with defect" + ... -> "pcb with defect and bent component" (never "with ... with").
    """
    if state.startswith("without "):
        raise ValueError(f"{state!r} is a normal state; it cannot describe a defect")
    if state.startswith("with "):
        return f"{object_name} {state} and {description}"
    return f"{state_phrase(state, object_name)} with {description}"


def released_class_name(category: str) -> str:
    """The released code's class words: underscores to spaces, a trailing variant number dropped."""
    name = re.sub(r"\d+$", "", category.replace("_", " ").strip().lower()).strip()
    return name or "object"


def _positions(position: str | tuple[str, ...]) -> tuple[str, ...]:
    positions = (position,) if isinstance(position, str) else tuple(position)
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise ValueError(f"unknown position word(s) {unknown}; use one of {list(POSITIONS)}")
    return positions


def build_prompts(
    category: str,
    descriptions: list[str],
    position: str | tuple[str, ...],
    normal_states: tuple[str, ...] = NORMAL_STATES,
    abnormal_states: tuple[str, ...] = ABNORMAL_STATES,
    style: PromptStyle = "paper",
) -> PromptSet:
    """FiLo's sentences for one object: every state x every defect description x position(s).

    Several positions (e.g. all nine when no detector locates the defect) give one abnormal
    sentence per position, so the grouped feature Fa averages over them. `style="released"`
    uses the released code's templates (its states; `normal_states`/`abnormal_states` unused).
    """
    positions = _positions(position)
    if style == "released":
        return _released_prompts(category, descriptions, positions)
    if style != "paper":
        raise ValueError(f"unknown prompt style {style!r}; use 'paper' or 'released'")
    name = clean_class_name(category) or "object"
    normal = tuple(f"{state_phrase(s, name)}." for s in normal_states)
    abnormal, described = [], []
    for description in descriptions:
        for s in abnormal_states:
            phrase = abnormal_phrase(s, name, description)
            for where in positions:
                abnormal.append(f"{phrase} at {where}.")
                described.append(description)
    return PromptSet(normal, tuple(abnormal), tuple(described))


def _released_prompts(category: str, descriptions: list[str], positions: tuple[str, ...]) -> PromptSet:
    name = released_class_name(category)
    normal = tuple(f"{state_phrase(s, name)}." for s in RELEASED_NORMAL_STATES)
    phrases = [(f"{RELEASED_DESCRIPTION_STATE} {name} with {d}", d) for d in descriptions]
    phrases += [(state_phrase(s, name), s) for s in RELEASED_GENERIC_STATES]
    abnormal, described = [], []
    for phrase, description in phrases:
        for where in positions:
            abnormal.append(f"{phrase} at {where}.")
            described.append(description)
    return PromptSet(normal, tuple(abnormal), tuple(described))
