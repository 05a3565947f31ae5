"""patchknn's model side follows the references (`image_size_up_to`, `model_side`): the rule by hand,
fit raising the side and starting again from the requested one, zero-shot at `image_size`, saved,
older and exported models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from older_models import forget_settings

from anomalens.detector import Detector, load_detector
from anomalens.export.graph import synthetic_image
from anomalens.images import LoadedImage
from anomalens.methods.patchknn import PatchKnnSettings, model_side
from anomalens.methods.recipe_fusion import output_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "short_sides,expected",
    [
        ([], 256),  # zero-shot
        ([100], 256),  # smaller references are not shrunk below image_size
        ([319], 256),  # 320 would upsample them
        ([320], 320),
        ([383], 320),
        ([384], 384),
        ([512], 384),  # at most image_size_up_to
        ([131, 194, 244, 269], 256),  # magnetic_tile's 4-shot draw 0: lower median 194
        ([263, 269, 331, 357], 256),  # draw 1: lower median 269
        ([512, 512, 512, 512], 384),  # mpdd_metal_plate
        ([100, 512], 256),  # the lower median: half of the references are not upsampled
        ([100, 512, 512], 384),
    ],
)
def test_the_side_by_hand(short_sides, expected):
    assert model_side(PatchKnnSettings(), short_sides) == expected


def test_a_side_you_choose_is_kept_unless_you_let_it_grow():
    assert model_side(PatchKnnSettings(image_size=128), [512]) == 128
    assert model_side(PatchKnnSettings(image_size=320), [512]) == 320
    assert model_side(PatchKnnSettings(image_size=128, image_size_up_to=256), [512]) == 256


def test_the_growth_can_be_turned_off_or_capped():
    assert model_side(PatchKnnSettings(image_size_up_to=0), [512]) == 256
    assert model_side(PatchKnnSettings(image_size_up_to=200), [512]) == 256  # a cap below image_size: no growth
    assert model_side(PatchKnnSettings(image_size_up_to=350), [512]) == 320  # whole steps only
    assert model_side(PatchKnnSettings(image_size=64, image_size_up_to=1000), [300]) == 256


def picture(seed: int, side: int, defect: bool = False) -> LoadedImage:
    rgb = synthetic_image(side, side + 10, seed=seed)
    if defect:
        rgb[side // 3 : side // 3 + side // 6, side // 2 : side // 2 + side // 6] = 10
    return LoadedImage(f"p{seed}-{side}.png", rgb)


def test_fit_raises_the_side_and_starts_again_from_the_requested_one(tmp_path):
    det = Detector("patchknn", image_size=64, image_size_up_to=192, coreset_ratio=1.0)  # the whole bank
    large = [picture(i, 140) for i in range(2)]
    det.fit(large)
    assert det.method.settings.image_size == 128 and det.settings["image_size"] == 128
    assert det.method.requested_settings.image_size == 64
    query = [picture(9, 140, defect=True), picture(10, 140)]
    grown = det.predict(query)
    assert grown[0].anomaly_map.shape == (140, 150)  # maps come back at the image's size
    assert grown[0].score > grown[1].score
    # the bank holds patches of the grown input: (128 / 8)^2 per copy, 4 copies (flips), 2 references
    assert det.method.bank_.banks["patches"].shape[0] == 2 * 4 * 16 * 16
    # the same references at the requested side give other scores: the side was really used
    fixed = Detector("patchknn", image_size=64, image_size_up_to=0, coreset_ratio=1.0).fit(large)
    assert fixed.method.settings.image_size == 64 and fixed.method.bank_.banks["patches"].shape[0] == 2 * 4 * 8 * 8
    assert abs(fixed.predict(query)[0].score - grown[0].score) > 1e-3
    # a saved model keeps the side it was fitted at
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method.settings.image_size == 128
    assert again.predict(query)[0].score == pytest.approx(grown[0].score, abs=1e-6)
    # refitting on small references (and zero-shot) starts from the requested side
    det.fit([picture(i, 70) for i in range(2)])
    assert det.method.settings.image_size == 64
    det.fit([])
    assert det.method.settings.image_size == 64


def test_models_saved_before_the_setting_keep_their_side(tmp_path):
    det = Detector("patchknn", image_size=64, image_size_up_to=0).fit([picture(i, 140) for i in range(2)])
    det.save(tmp_path / "m")
    forget_settings(tmp_path / "m", "image_size_up_to")
    loaded = load_detector(tmp_path / "m")
    assert loaded.method.settings.image_size_up_to == 0
    assert loaded.method.settings.image_size == 64


def test_leave_one_out_runs_at_the_fitted_side():
    refs = [picture(i, 140) for i in range(3)]
    alone = {"coreset_ratio": 1.0, "fused_recipe": "none"}  # leave-one-out = refitting (test_leave_one_out.py)
    det = Detector("patchknn", image_size=64, image_size_up_to=192, **alone).fit(refs)
    held_out = det.method.leave_one_out(refs, [0])[0]
    # the same as fitting the other two at the side the three chose (both at 128 px)
    other_two = Detector("patchknn", image_size=64, image_size_up_to=192, **alone).fit(refs[1:])
    assert other_two.method.settings.image_size == 128
    expected = other_two.method.predict([refs[0]])[0]
    assert held_out.score == pytest.approx(expected.score, abs=1e-5)
    assert np.abs(held_out.anomaly_map - expected.anomaly_map).max() < 1e-5


def test_an_exported_grown_model_gives_the_pytorch_results(tmp_path):
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_onnx, load_onnx_detector

    torch.manual_seed(0)
    det = Detector("patchknn", image_size=64, image_size_up_to=128).fit([picture(i, 140) for i in range(2)])
    assert det.method.settings.image_size == 128
    export_onnx(det, tmp_path / "m.onnx", verify=False)
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert exported.settings["image_size"] == 128
    query = [picture(9, 140, defect=True), picture(10, 130)]
    tol = 1e-4 * output_scale(det.method)  # a fused recipe's outputs are in units of its spreads
    for a, b in zip(det.predict(query), exported.predict(query)):
        assert abs(a.score - b.score) <= tol
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= tol


def test_fit_says_which_side_it_chose(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from anomalens.cli import app

    (tmp_path / "refs").mkdir()
    for i in range(2):
        Image.fromarray(picture(i, 140).rgb).save(tmp_path / "refs" / f"good_{i}.png")
    args = ["fit", "--refs", tmp_path / "refs", "--out", tmp_path / "m", "--image-size", "64", "--threshold", "none"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--set", "image_size_up_to=192"]])
    assert result.exit_code == 0, result.output
    assert "model input: 128 px, not 64: the references are large enough (up to 192: image_size_up_to" in result.output
    assert json.loads((tmp_path / "m" / "detector.json").read_text())["settings"]["image_size"] == 128


def test_detect_with_references_says_which_side_it_chose(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from anomalens.cli import app

    for folder, seeds in (("refs", (0, 1)), ("queries", (5,))):
        (tmp_path / folder).mkdir()
        for i in seeds:
            Image.fromarray(picture(i, 140).rgb).save(tmp_path / folder / f"img_{i}.png")
    args = ["detect", tmp_path / "queries", "--refs", tmp_path / "refs", "--out", tmp_path / "out"]
    args += ["--image-size", "64", "--set", "image_size_up_to=192", "--threshold", "none"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "model input: 128 px, not 64" in result.output
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["settings"]["image_size"] == 128
