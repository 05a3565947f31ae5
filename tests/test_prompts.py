"""Tests for anomalens.text: WinCLIP prompts, FADE ensemble, FiLo vocabulary and helpers."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from anomalens.text import (
    ANOMALOUS_STATES,
    MVTEC_CATEGORIES,
    NORMAL_STATES,
    POSITIONS,
    TEMPLATES,
    VISA_CATEGORIES,
    PromptEnsemble,
    clean_class_name,
    ensemble_fingerprint,
    fade_segmentation_prompts,
    load_defect_vocabulary,
    load_ensemble,
    position_word,
    winclip_prompts,
)

DATA = resources.files("anomalens.text").joinpath("data")

#: Category names that must not appear in the object-agnostic FADE ensemble.
FORBIDDEN = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "chewing gum",
    "fryum",
    "macaroni",
    "pcb",
    "pipe fryum",
)

EXPECTED_CATEGORIES = (
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
    "magnetic_tile",
    "steel_strip",
)


def _keys(texts: list[str]) -> list[str]:
    return [" ".join(t.split()).casefold() for t in texts]


# ----------------------------------------------------------------------------- WinCLIP


def test_winclip_state_and_template_counts() -> None:
    assert len(NORMAL_STATES) == 7
    assert len(ANOMALOUS_STATES) == 4
    assert len(TEMPLATES) == 22
    assert len(set(TEMPLATES)) == 22
    for text in (*NORMAL_STATES, *ANOMALOUS_STATES, *TEMPLATES):
        assert text.count("{}") == 1


def test_winclip_prompts() -> None:
    normal, anomalous = winclip_prompts("metal nut")
    assert len(normal) == 7 * 22 == 154
    assert len(anomalous) == 4 * 22 == 88
    assert len(set(normal)) == 154 and len(set(anomalous)) == 88
    assert not set(normal) & set(anomalous)
    assert "a cropped photo of the metal nut." in normal
    assert "a photo of a flawless metal nut for visual inspection." in normal
    assert "a close-up photo of a damaged metal nut." in anomalous
    assert "a photo of the metal nut with defect for anomaly detection." in anomalous
    assert all("{" not in p for p in normal + anomalous)


def test_winclip_prompts_rejects_empty_name() -> None:
    with pytest.raises(ValueError):
        winclip_prompts("  ")


# ----------------------------------------------------------------------------- FADE ensemble


def test_packaged_ensemble_counts_and_duplicates() -> None:
    ens = load_ensemble()
    assert len(ens.normal) >= 410
    assert len(ens.anomalous) >= 430
    assert len(set(_keys(ens.normal))) == len(ens.normal)
    assert len(set(_keys(ens.anomalous))) == len(ens.anomalous)
    assert not set(_keys(ens.normal)) & set(_keys(ens.anomalous))


def test_packaged_ensemble_file_is_already_deduplicated() -> None:
    raw = json.loads(DATA.joinpath("fade_ensemble.json").read_text(encoding="utf-8"))
    assert raw["version"] == 1
    assert isinstance(raw["source"], str) and raw["source"]
    ens = load_ensemble()
    assert raw["normal"] == ens.normal
    assert raw["anomalous"] == ens.anomalous


def test_packaged_ensemble_names_no_category() -> None:
    ens = load_ensemble()
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(w).replace(r"\ ", r"\s*") for w in FORBIDDEN) + r")(s|es)?\b",
        re.IGNORECASE,
    )
    hits = [t for t in ens.normal + ens.anomalous if pattern.search(t)]
    assert hits == []


def test_build_script_reproduces_committed_file() -> None:
    from anomalens.text import build_ensemble

    committed = DATA.joinpath("fade_ensemble.json").read_text(encoding="utf-8")
    assert build_ensemble.render() == committed
    assert build_ensemble.main(["--check"]) == 0


def test_build_script_check_flags_stale_file(tmp_path: Path) -> None:
    from anomalens.text import build_ensemble

    stale = tmp_path / "stale.json"
    stale.write_text("{}", encoding="utf-8")
    assert build_ensemble.main(["--check", "--output", str(stale)]) == 1


def test_user_ensemble_is_normalised_and_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    data = {"normal": ["a clean  part.", "A clean part.", " a smooth part. "], "anomalous": ["a dent."]}
    path.write_text(json.dumps(data), encoding="utf-8")
    ens = load_ensemble(path)
    assert ens.normal == ["a clean part.", "a smooth part."]
    assert ens.anomalous == ["a dent."]
    assert ens.source == str(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"anomalous": ["a dent."]}, "missing key 'normal'"),
        ({"normal": ["a clean part."]}, "missing key 'anomalous'"),
        ({"normal": "a clean part.", "anomalous": ["a dent."]}, "normal must be a list"),
        ({"normal": ["a clean part."], "anomalous": []}, "anomalous is empty"),
        ({"normal": ["a clean part.", ""], "anomalous": ["a dent."]}, r"normal\[1\] must be a non-empty"),
        ({"normal": ["a clean part.", 3], "anomalous": ["a dent."]}, r"normal\[1\] must be a non-empty"),
        ({"version": 2, "normal": ["a"], "anomalous": ["b"]}, "unsupported version"),
        (["a clean part."], "top level must be a JSON object"),
    ],
)
def test_bad_user_ensemble(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_ensemble(path)
    assert str(path) in str(info.value)


def test_invalid_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_ensemble(path)
    assert str(path) in str(info.value)


def test_fade_segmentation_prompts() -> None:
    ens = PromptEnsemble(normal=["a clean part.", "a photo of a flawless object."], anomalous=["a dent."])
    normal, anomalous = fade_segmentation_prompts(ens)
    win_normal, win_anomalous = winclip_prompts("object")
    assert normal[:154] == win_normal
    assert anomalous[:88] == win_anomalous
    # The second normal sentence is already a WinCLIP prompt, so it is not added twice.
    assert normal[154:] == ["a clean part."]
    assert anomalous[88:] == ["a dent."]

    full_normal, full_anomalous = fade_segmentation_prompts(load_ensemble())
    assert len(full_normal) >= 154 + 410
    assert len(full_anomalous) >= 88 + 430


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_hex_sha256_and_deterministic() -> None:
    fp = ensemble_fingerprint(["a", "b"], ["c"])
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert fp == ensemble_fingerprint(["a", "b"], ["c"])


def test_fingerprint_changes_with_content() -> None:
    base = ensemble_fingerprint(["a clean part."], ["a dent."])
    assert ensemble_fingerprint(["a clean part."], ["a scratch."]) != base
    assert ensemble_fingerprint(["a clean part.", "a smooth part."], ["a dent."]) != base
    assert ensemble_fingerprint(["A clean part."], ["a dent."]) != base  # case is kept


def test_fingerprint_ignores_whitespace_only() -> None:
    base = ensemble_fingerprint(["a clean part."], ["a dent."])
    assert ensemble_fingerprint(["  a clean   part.\n"], ["a dent. "]) == base


def test_fingerprint_is_order_and_grouping_sensitive() -> None:
    # Documented choice: cached feature rows follow prompt order, so reordering must miss.
    assert ensemble_fingerprint(["a", "b"]) != ensemble_fingerprint(["b", "a"])
    assert ensemble_fingerprint(["a", "b"], ["c"]) != ensemble_fingerprint(["a"], ["b", "c"])
    assert ensemble_fingerprint(["a"], ["b"]) != ensemble_fingerprint(["b"], ["a"])


def test_fingerprint_rejects_bare_string() -> None:
    with pytest.raises(TypeError):
        ensemble_fingerprint("a clean part.")  # type: ignore[arg-type]


def test_ensemble_fingerprint_method() -> None:
    ens = load_ensemble()
    assert ens.fingerprint() == ensemble_fingerprint(ens.normal, ens.anomalous)


# ----------------------------------------------------------------------------- FiLo vocabulary


def test_defect_vocabulary_covers_categories() -> None:
    vocab = load_defect_vocabulary()
    assert set(EXPECTED_CATEGORIES) <= set(vocab.categories)
    assert set(MVTEC_CATEGORIES) | set(VISA_CATEGORIES) <= set(vocab.categories)
    for name, phrases in vocab.categories.items():
        assert 4 <= len(phrases) <= 10, name
        assert len(set(_keys(phrases))) == len(phrases), name
    assert 10 <= len(vocab.generic) <= 20
    assert {"scratch", "crack", "hole", "stain", "contamination"} <= set(vocab.generic)


def test_defect_vocabulary_lookup() -> None:
    vocab = load_defect_vocabulary()
    assert vocab.for_category("screw") == vocab.categories["screw"]
    assert vocab.for_category("metal_nut") == vocab.categories["metal_nut"]
    assert vocab.for_category("metal nut") == vocab.categories["metal_nut"]
    assert vocab.for_category("Metal-Nut") == vocab.categories["metal_nut"]
    assert vocab.for_category("pipe fryum") == vocab.categories["pipe_fryum"]
    assert vocab.for_category("chewing_gum") == vocab.categories["chewinggum"]
    assert vocab.for_category("steel_strip") == vocab.categories["steel_strip"]
    assert vocab.for_category("gearwheel") == vocab.generic
    # "pcb" matches pcb1..pcb4: their union, first occurrences kept.
    union = vocab.for_category("pcb")
    assert set(union) == {p for k in ("pcb1", "pcb2", "pcb3", "pcb4") for p in vocab.categories[k]}
    assert len(union) == len(set(union))
    # The returned list is a copy; editing it must not change the vocabulary.
    vocab.for_category("screw").append("x")
    assert "x" not in vocab.categories["screw"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"generic": ["scratch"]}, "missing key 'categories'"),
        ({"categories": {"a": ["dent"]}}, "missing key 'generic'"),
        ({"categories": ["a"], "generic": ["scratch"]}, "categories must be an object"),
        ({"categories": {"a": []}, "generic": ["scratch"]}, "is empty"),
        ({"categories": {"a": "dent"}, "generic": ["scratch"]}, "must be a list"),
    ],
)
def test_bad_defect_vocabulary(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "defects.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_defect_vocabulary(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pcb1", "pcb"),
        ("pcb4", "pcb"),
        ("macaroni2", "macaroni"),
        ("metal_nut", "metal nut"),
        ("pipe_fryum", "pipe fryum"),
        ("chewinggum", "chewing gum"),
        ("magnetic-tile", "magnetic tile"),
        ("steel_strip", "steel strip"),
        ("bottle", "bottle"),
        ("  Metal__Nut ", "metal nut"),
        ("part_12", "part"),
    ],
)
def test_clean_class_name(name: str, expected: str) -> None:
    assert clean_class_name(name) == expected


def test_positions() -> None:
    assert POSITIONS == (
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


# A 300 x 150 image: columns split at x = 100 and 200, rows at y = 50 and 100.
@pytest.mark.parametrize(
    ("cx", "cy", "expected"),
    [
        (0, 0, "top left"),
        (99.9, 49.9, "top left"),
        (100, 0, "top"),  # on the first vertical line: the middle column
        (199.9, 49.9, "top"),
        (200, 0, "top right"),
        (300, 0, "top right"),  # right edge included
        (0, 50, "left"),  # on the first horizontal line: the middle row
        (150, 75, "center"),
        (100, 50, "center"),
        (299, 99.9, "right"),
        (0, 100, "bottom left"),
        (150, 150, "bottom"),
        (300, 150, "bottom right"),
        (-5, -5, "top left"),  # outside: clamped
        (400, 400, "bottom right"),
    ],
)
def test_position_word(cx: float, cy: float, expected: str) -> None:
    assert position_word(cx, cy, 300, 150) == expected


def test_position_word_thirds_that_do_not_divide_exactly() -> None:
    # w = 10: the lines are at 10/3 and 20/3.
    assert position_word(3.33, 0, 10, 10) == "top left"
    assert position_word(10 / 3, 0, 10, 10) == "top"
    assert position_word(6.66, 0, 10, 10) == "top"
    assert position_word(20 / 3, 0, 10, 10) == "top right"


def test_position_word_rejects_empty_image() -> None:
    with pytest.raises(ValueError):
        position_word(0, 0, 0, 10)
