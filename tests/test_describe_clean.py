"""The cleaning filter on messy hand-written model outputs, and vocabulary/ensemble files merged without loss."""

from __future__ import annotations

import json

import pytest

from anomalens.describe import DescribeError, clean_items, split_items, write_ensemble, write_vocabulary
from anomalens.describe.clean import CleaningRules, is_defect_phrase, normalise_item
from anomalens.text.prompts import load_defect_vocabulary, load_ensemble


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1. Cracked cap", "cracked cap"),
        ("  2)  'Broken   Pin'. ", "broken pin"),
        ("- * a scratch on the lid!", "scratch on the lid"),
        ("\u2022 \u201cThe dent\u201d", "dent"),
        ("(b) hole", "hole"),
        ("...", ""),
    ],
)
def test_normalise(raw, clean):
    assert normalise_item(raw) == clean


def test_messy_gemma_line():
    line = (
        "Cracked cap, broken cap, leaking cap, damaged cap, cracked caps, Capsule, capsules, "
        "blue and white, 3 mm, the capsule is broken and it leaks out of the side of the box, , <b>dent</b>"
    )
    result = clean_items(split_items(line), "capsule")
    assert result.kept == ["cracked cap", "broken cap", "leaking cap", "damaged cap"]
    assert result.dropped == [
        ("cracked caps", "near-duplicate of 'cracked cap'"),
        ("Capsule", "category name"),
        ("capsules", "category name"),
        ("blue and white", "not a defect"),
        ("3 mm", "not words"),
        ("the capsule is broken and it leaks out of the side of the box", "too long"),
        ("<b>dent</b>", "not words"),
    ]


def test_near_duplicates_by_content_words_and_spelling():
    result = clean_items(["scratch on the cap", "cap scratches", "scratch on teh cap", "scratch on the body"])
    assert result.kept == ["scratch on the cap", "scratch on the body"]
    assert [why for _, why in result.dropped] == ["near-duplicate of 'scratch on the cap'"] * 2


def test_existing_items_count_as_kept():
    result = clean_items(["Bent Tip", "bent tips", "stripped thread"], "screw", keep=["bent tip"])
    assert result.kept == ["stripped thread"]
    assert [why for _, why in result.dropped] == ["duplicate", "near-duplicate of 'bent tip'"]


def test_rules_are_settings():
    assert clean_items(["very long but real crack in the glass wall"]).kept == []
    assert clean_items(["very long but real crack in the glass wall"], rules=CleaningRules(max_words=9)).kept
    assert clean_items(["blue"], rules=CleaningRules(require_defect_word=False)).kept == ["blue"]
    assert is_defect_phrase("air bubble") and is_defect_phrase("misaligned print") and not is_defect_phrase("red")


def test_split_items():
    assert split_items("a, b; c\nd,,  ") == ["a", " b", " c", "d"]


# ---- files ---------------------------------------------------------------------------------


def test_new_vocabulary_is_readable_and_not_overwritten(tmp_path):
    path = tmp_path / "vocabulary.json"
    write_vocabulary(path, {"ball screw drive": ["worn ball track", "pitted nut"]}, source="test")
    vocab = load_defect_vocabulary(path)
    assert vocab.for_category("ball screw drive") == ["worn ball track", "pitted nut"]
    assert vocab.generic == load_defect_vocabulary().generic
    before = path.read_text()
    with pytest.raises(DescribeError, match=r"--merge.*--overwrite"):
        write_vocabulary(path, {"x": ["dent"]})
    assert path.read_text() == before
    write_vocabulary(path, {"x": ["dent"]}, overwrite=True)
    assert load_defect_vocabulary(path).categories == {"x": ["dent"]}


def test_merge_keeps_every_user_entry(tmp_path):
    path = tmp_path / "mine.json"
    user = {
        "version": 1,
        "note": "my own key",
        "categories": {"screw": ["Bent Tip", "my special flaw"], "gear": ["chipped tooth"]},
        "generic": ["anything odd"],
    }
    path.write_text(json.dumps(user))
    data = write_vocabulary(path, {"screw": ["bent tip", "stripped thread"], "nut": ["cracked face"]}, merge=True)
    on_disk = json.loads(path.read_text())
    assert on_disk == data
    assert on_disk["note"] == "my own key" and on_disk["generic"] == ["anything odd"]
    assert on_disk["categories"]["screw"] == ["Bent Tip", "my special flaw", "stripped thread"]
    assert on_disk["categories"]["gear"] == ["chipped tooth"]
    assert on_disk["categories"]["nut"] == ["cracked face"]
    # Merging the same again changes nothing.
    write_vocabulary(path, {"screw": ["stripped thread"]}, merge=True)
    assert json.loads(path.read_text())["categories"] == on_disk["categories"]


def test_merge_refuses_a_broken_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"categories": {"screw": "not a list"}, "generic": ["x"]}')
    with pytest.raises(DescribeError, match=r"cannot merge into .*bad.json"):
        write_vocabulary(path, {"screw": ["dent"]}, merge=True)
    assert "not a list" in path.read_text()


def test_ensemble_file_is_what_prompts_reads(tmp_path):
    path = tmp_path / "ensemble.json"
    write_ensemble(path, "abnormal", ["a photo of a dented part.", "a close-up of a torn seal."], source="test")
    loaded = load_ensemble(path)
    assert loaded.anomalous == ["a photo of a dented part.", "a close-up of a torn seal."]
    assert loaded.normal == load_ensemble().normal  # the other side comes from the packaged file
    write_ensemble(path, "normal", ["a photo of a clean part."], merge=True)
    loaded = load_ensemble(path)
    assert loaded.normal[-1] == "a photo of a clean part." and len(loaded.normal) == len(load_ensemble().normal) + 1
    assert loaded.anomalous == ["a photo of a dented part.", "a close-up of a torn seal."]
    with pytest.raises(DescribeError, match="already exists"):
        write_ensemble(path, "normal", ["x."])
