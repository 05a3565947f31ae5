"""FADE's released text behaviour (the defaults) and released prompt files, by hand on a tiny CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalens.images import LoadedImage
from anomalens.methods.fade import Fade, FadeSettings, class_words
from anomalens.text.features import TextFeatureCache
from anomalens.text.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES, load_ensemble, wrap_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"backbone": "test-tiny", "classification_size": 32, "segmentation_sizes": (32, 64)}
EARLIER = {
    "prompt_template": "none",
    "renormalize_class_embedding": True,
    "class_name": "clean",
    "keep_duplicate_prompts": False,
}


def _image(seed: int = 0) -> LoadedImage:
    rng = np.random.default_rng(seed)
    return LoadedImage("q.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def _released_file(tmp_path, name, normal, abnormal):
    path = tmp_path / name
    path.write_text(
        json.dumps(
            {
                "abnormal": {"instruction": "write anomalous prompts", "prompts": abnormal},
                "normal": {"instruction": "write normal prompts", "prompts": normal},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prompts")
    a = _released_file(tmp, "a.json", ["A clean {classname}.", "A clean {classname}."], ["A cracked part."])
    b = _released_file(tmp, "b.json", ["A smooth surface."], ["A dented {classname}.", "A cracked part."])
    return a, b


@pytest.fixture(scope="module")
def fade(tiny_clip, prompt_files):
    settings = FadeSettings(**TINY, category="metal_nut", prompts=tuple(map(str, prompt_files)))
    return Fade(settings, backbone=tiny_clip, text_cache=TextFeatureCache(cache_dir=None))


def _by_hand_prompts(name: str, states) -> list[str]:
    """The released strings: "a photo of a " + template without its period + "."."""
    return [f"a photo of a {t[:-1].format(s.format(name))}." for s in states for t in TEMPLATES]


# ---- prompt files ---------------------------------------------------------------------------


def test_released_prompt_files_load_as_they_are(prompt_files):
    ens = load_ensemble(prompt_files)
    # concatenated in order, duplicates kept within and across files, placeholders kept
    assert ens.normal == ["A clean {classname}.", "A clean {classname}.", "A smooth surface."]
    assert ens.anomalous == ["A cracked part.", "A dented {classname}.", "A cracked part."]
    assert ens.for_class("metal nut").normal[0] == "A clean metal nut."
    single = load_ensemble(prompt_files[0])
    assert single.normal == ["A clean {classname}.", "A clean {classname}."]


def test_released_and_own_format_mix(tmp_path, prompt_files):
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"normal": ["a b.", "a  b."], "anomalous": ["c d."]}))
    ens = load_ensemble([own, prompt_files[1]])
    assert ens.normal == ["a b.", "A smooth surface."]  # our format is deduplicated as before
    assert ens.anomalous == ["c d.", "A dented {classname}.", "A cracked part."]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"abnormal": {"prompts": ["x"]}}, r"'normal' must be an object"),
        ({"normal": {"prompts": []}, "abnormal": {"prompts": ["x"]}}, r"normal\.prompts must be a non-empty list"),
        ({"normal": {"prompts": ["x"]}, "abnormal": {"prompts": ["x", 3]}}, r"abnormal\.prompts\[1\]"),
    ],
)
def test_bad_released_file_names_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        load_ensemble([path])
    assert str(path) in str(err.value)


def test_wrap_prompts():
    assert wrap_prompts(["x {y}", "z."], "a photo of a {}.") == ["a photo of a x {y}.", "a photo of a z.."]
    assert wrap_prompts(["x"], "{}") == ["x"]
    with pytest.raises(ValueError, match="exactly one"):
        wrap_prompts(["x"], "no placeholder")


def test_class_words():
    assert class_words("metal_nut", "released") == "metal nut"
    assert class_words("pcb1", "released") == "pcb1"
    assert class_words("pcb1", "clean") == "pcb"
    assert class_words("chewinggum", "released") == "chewinggum"
    assert class_words("", "released") == "object"
    with pytest.raises(ValueError, match="class_name"):
        class_words("x", "other")


# ---- text features by hand -------------------------------------------------------------------


def test_classification_embeddings_are_released_means(fade, tiny_clip):
    text = fade.text_features()
    normal = tiny_clip.encode_text(_by_hand_prompts("metal nut", NORMAL_STATES))
    anomalous = tiny_clip.encode_text(_by_hand_prompts("metal nut", ANOMALOUS_STATES))
    torch.testing.assert_close(text.class_normal, normal.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text.class_anomalous, anomalous.mean(0), atol=1e-6, rtol=1e-5)
    assert float(text.class_normal.norm()) < 0.999  # not re-normalised


def test_segmentation_embeddings_keep_duplicates(fade, tiny_clip):
    text = fade.text_features()
    normal = _by_hand_prompts("object", NORMAL_STATES) + [
        "a photo of a A clean object..", "a photo of a A clean object..", "a photo of a A smooth surface..",
    ]
    anomalous = _by_hand_prompts("object", ANOMALOUS_STATES) + [
        "a photo of a A cracked part..", "a photo of a A dented object..", "a photo of a A cracked part..",
    ]
    torch.testing.assert_close(text.seg_normal, tiny_clip.encode_text(normal).mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text.seg_anomalous, tiny_clip.encode_text(anomalous).mean(0), atol=1e-6, rtol=1e-5)
    # descriptions are for people: unwrapped, filled in, once each
    assert text.descriptions.count("A cracked part.") == 1 and "A dented metal nut." in text.descriptions


def test_zero_shot_score_is_softmax_of_100_times_dot_with_the_plain_means(fade, tiny_clip):
    img = _image(1)
    fade.fit([])
    score = fade.predict([img])[0].score
    text = fade.text_features()
    encoded = fade.encode([img])
    e = F.normalize(encoded["image_embedding"][0], dim=-1)
    logits = 100.0 * torch.stack([e @ text.class_normal, e @ text.class_anomalous])
    assert score == pytest.approx(float(logits.softmax(0)[1]), abs=1e-6)


def test_earlier_text_behaviour_is_reachable(tiny_clip, prompt_files):
    files = tuple(map(str, prompt_files))
    settings = FadeSettings(**TINY, **EARLIER, category="pcb1", prompts=files)
    det = Fade(settings, backbone=tiny_clip, text_cache=TextFeatureCache(cache_dir=None))
    text = det.text_features()
    raw = [t.format(s.format("pcb")) for s in NORMAL_STATES for t in TEMPLATES]  # periods kept, not wrapped
    expected = F.normalize(tiny_clip.encode_text(raw).mean(0), dim=-1)
    torch.testing.assert_close(text.class_normal, expected, atol=1e-6, rtol=1e-5)
    assert float(text.class_normal.norm()) == pytest.approx(1.0, abs=1e-5)


def test_settings_are_checked(tiny_clip):
    from anomalens.settings import build_settings

    with pytest.raises(ValueError, match="class_name"):
        build_settings(FadeSettings, {**TINY, "class_name": "raw"})
    with pytest.raises(ValueError, match="exactly one"):
        Fade(FadeSettings(**TINY, prompt_template="a photo of a thing"), backbone=tiny_clip)


# ---- map quantisation -----------------------------------------------------------------------


def test_quantized_maps_are_8_bit_steps_of_the_float_map(fade, tiny_clip):
    img = _image(2)
    settings = {**TINY, "category": "metal_nut", "prompts": fade.settings.prompts}
    quantized = Fade(FadeSettings(**settings, quantize_maps=True), backbone=tiny_clip, text_cache=fade.text_cache)
    plain = Fade(FadeSettings(**settings), backbone=tiny_clip, text_cache=fade.text_cache)
    quantized.fit([]), plain.fit([])
    q = quantized.predict([img])[0]
    f = plain.predict([img])[0]
    steps = q.anomaly_map * 255.0
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # multiples of 1/255
    # floor on the grid loses less than one step; the 8-bit resize rounds by at most half a step
    assert np.abs(q.anomaly_map - f.anomaly_map).max() <= 1.5 / 255 + 1e-6
    assert q.score == f.score  # scores are not quantised


# ---- command line ---------------------------------------------------------------------------


def _write_png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_cli_takes_several_released_prompt_files(tmp_path, prompt_files):
    from typer.testing import CliRunner

    from anomalens.cli import app

    rng = np.random.default_rng(4)
    _write_png(tmp_path / "q" / "0.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    args = ["detect", str(tmp_path / "q"), "--method", "fade", "--backbone", "test-tiny", "--category", "metal_nut",
            "--prompts", str(prompt_files[0]), "--prompts", str(prompt_files[1]),
            "--set", "classification_size=32", "--set", "segmentation_sizes=[32]", "--no-report", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "o" / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok"
    settings = json.dumps(json.loads((tmp_path / "o" / "settings.json").read_text()))
    assert json.dumps([str(prompt_files[0]), str(prompt_files[1])]) in settings  # both files, in order


def test_benchmark_quantize_maps_only_for_fade(tmp_path):
    from typer.testing import CliRunner

    from anomalens.cli import app

    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    for i in range(2):
        _write_png(root / "cat" / "train" / "good" / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        _write_png(root / "cat" / "test" / "good" / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    res = CliRunner().invoke(app, ["benchmark", "--data", str(root), "--method", "patchknn", "--quantize-maps",
                                   "--no-progress", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "quantize_maps" in res.output
    res = CliRunner().invoke(app, ["benchmark", "--data", str(root), "--method", "fade", "--backbone", "test-tiny",
                                   "--quantize-maps", "--set", "classification_size=32", "--set", "segmentation_sizes=[32]",
                                   "--no-progress", "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "f" / "results.json").read_text())
    assert result["settings"]["method_settings"]["quantize_maps"] is True
    assert result["settings"]["device"] == "auto"
