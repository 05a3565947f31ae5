"""FiLo's sentences: grammar of every state x description, and the released templates."""

from __future__ import annotations

import re

import pytest

from anomalens.methods.filo.prompts import (
    ABNORMAL_STATES,
    NORMAL_STATES,
    abnormal_phrase,
    build_prompts,
    released_class_name,
    state_phrase,
)
from anomalens.text.prompts import POSITIONS, load_defect_vocabulary


def test_state_words() -> None:
    assert {"flawless", "perfect", "unblemished", "without defect"} <= set(NORMAL_STATES)
    assert {"damaged", "broken", "defective", "flawed"} <= set(ABNORMAL_STATES)
    assert not set(NORMAL_STATES) & set(ABNORMAL_STATES)
    assert state_phrase("flawless", "screw") == "flawless screw"
    assert state_phrase("without defect", "screw") == "screw without defect"
    assert state_phrase("with flaw", "screw") == "screw with flaw"
    assert state_phrase("", "screw") == "screw"


def _all_descriptions() -> list[tuple[str, str]]:
    vocab = load_defect_vocabulary()
    pairs = [(cat, d) for cat, phrases in vocab.categories.items() for d in phrases]
    return pairs + [("object", d) for d in vocab.generic]


def test_every_abnormal_sentence_is_grammatical() -> None:
    """One 'with' introducing the defect, one 'at' before the position, no doubled words."""
    count = 0
    for category, description in _all_descriptions():
        prompts = build_prompts(category, [description], "top left")
        assert len(prompts.abnormal) == len(ABNORMAL_STATES)
        for sentence in prompts.abnormal:
            count += 1
            words = sentence.rstrip(".").split()
            assert sentence.endswith(" at top left."), sentence
            assert words.count("with") == 1, sentence
            assert sum(1 for w in words if w == "at") == 1, sentence
            assert not re.search(r"\b(\w+) \1\b", sentence), sentence
            assert f"with {description} at top left." in sentence, sentence
    assert count > 1000


@pytest.mark.parametrize("state", ["with defect", "with damage"])
def test_with_states_join_with_and(state: str) -> None:
    assert abnormal_phrase(state, "pcb", "bent component") == f"pcb {state} and bent component"
    assert abnormal_phrase("damaged", "pcb", "bent component") == "damaged pcb with bent component"
    with pytest.raises(ValueError, match="normal state"):
        abnormal_phrase("without defect", "pcb", "bent component")


def test_unknown_position_is_rejected() -> None:
    with pytest.raises(ValueError, match="position"):
        build_prompts("screw", ["bent tip"], "middle")


def test_released_templates() -> None:
    p = build_prompts("pcb1", ["oxidation on the copper traces", "bowing of the board"], POSITIONS, style="released")
    assert p.normal == (
        "pcb.",
        "flawless pcb.",
        "perfect pcb.",
        "unblemished pcb.",
        "pcb without flaw.",
        "pcb without defect.",
        "pcb without damage.",
    )
    # 2 descriptions + 5 generic states, each at all nine positions, position innermost.
    assert len(p.abnormal) == 7 * 9
    assert p.abnormal[0] == "abnormal pcb with oxidation on the copper traces at top left."
    assert p.abnormal[8] == "abnormal pcb with oxidation on the copper traces at bottom right."
    assert p.abnormal[9] == "abnormal pcb with bowing of the board at top left."
    assert p.abnormal[18:23:1][0] == "damaged pcb at top left."
    assert p.abnormal[27] == "broken pcb at top left."
    assert p.abnormal[36] == "pcb with flaw at top left."
    assert p.abnormal[45] == "pcb with defect at top left."
    assert p.abnormal[54] == "pcb with damage at top left."
    single = build_prompts("pcb1", ["bowing of the board"], "center", style="released")
    assert single.abnormal[0] == "abnormal pcb with bowing of the board at center."


def test_released_class_names() -> None:
    assert released_class_name("metal_nut") == "metal nut"
    assert released_class_name("macaroni2") == "macaroni"
    assert released_class_name("pipe_fryum") == "pipe fryum"
    assert released_class_name("chewinggum") == "chewinggum"  # the released code keeps it
