"""ONNX export: the exported model gives the PyTorch detector's maps, scores, descriptions and
decisions (max |difference| <= 1e-4), and bad models or configurations are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")

from cli_helpers import run

from anomalens.calibration import Threshold
from anomalens.detector import Detector, load_detector
from anomalens.export import ExportError, OnnxDetector, OnnxModelError, export_onnx, load_onnx_detector
from anomalens.export.graph import synthetic_image
from anomalens.images import LoadedImage
from anomalens.methods.recipe_fusion import output_scale
from anomalens.outputs import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-4


def image(seed: int, h: int = 70, w: int = 90, defect: bool = False) -> LoadedImage:
    rgb = synthetic_image(h, w, seed=seed)
    if defect:
        rgb[20:34, 30:44] = 10
    return LoadedImage(f"img{seed}.png", rgb)


REFS = [image(i) for i in range(3)]
QUERIES = [image(20), image(21, 50, 96, defect=True), image(22, 80, 40)]  # squares and both orientations


def tolerance(det) -> float:
    """TOL, or for patchknn with a fused recipe TOL in units of the recipes' spreads (its outputs are
    distances divided by them: the float differences of the distances grow by as much)."""
    return TOL * output_scale(det.method) if det.method_name == "patchknn" else TOL


def assert_same_results(torch_det, onnx_det, images=QUERIES, tol=None):
    tol = tolerance(torch_det) if tol is None else tol
    expected, got = torch_det.predict(images), onnx_det.predict(images)
    for a, b in zip(expected, got):
        assert b.anomaly_map.shape == a.anomaly_map.shape
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= tol
        assert abs(a.score - b.score) <= tol
        assert [t for t, _ in a.descriptions] == [t for t, _ in b.descriptions]
        assert np.allclose([s for _, s in a.descriptions], [s for _, s in b.descriptions], atol=TOL)
        assert (a.decision, a.threshold, a.pixel_threshold) == (b.decision, b.threshold, b.pixel_threshold)
        if a.mask is not None:
            assert np.array_equal(a.mask, b.mask)
    # The maps carry information (a constant map would make the comparison vacuous).
    assert max(float(r.anomaly_map.std()) for r in expected) > 1e-3
    return expected, got


@pytest.mark.parametrize(
    "resize,fit,bank",
    [("squash", True, "constant"), ("pad", True, "input"), ("squash", False, "auto")],
)
def test_patchknn_export_gives_the_pytorch_maps_scores_and_decisions(tmp_path, resize, fit, bank):
    # a bank as an input: for the recipe alone (a fused recipe keeps both banks in the graph)
    alone = {"fused_recipe": "none"} if bank == "input" else {}
    det = Detector("patchknn", image_size=64, resize=resize, **alone).fit(REFS if fit else [])
    scores = [r.score for r in det.predict(QUERIES)]  # thresholds between the scores: both decisions occur
    det.threshold, det.pixel_threshold = Threshold.given((min(scores) + max(scores)) / 2), 0.9 * min(scores)
    report = export_onnx(det, tmp_path / "m.onnx", bank=bank, verify=False)
    assert (report.bank_file is not None) == (bank == "input")
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert isinstance(exported, OnnxDetector) and exported.method_name == "patchknn"
    assert exported.settings == json.loads(json.dumps(det.settings)) and exported.threshold == det.threshold
    assert exported.meta["preprocessing"]["resize"] == resize
    assert exported.meta["preprocessing"]["inputs"] == [{"name": "images", "size": 64}]
    expected, _ = assert_same_results(det, exported)
    assert {r.decision for r in expected} == {"OK", "NG"} or not fit


@pytest.mark.parametrize("resize,fit,blend", [("squash", True, "ramps"), ("pad", False, "mean")])
def test_patchknn_export_with_tiles_gives_the_pytorch_results(tmp_path, resize, fit, blend):
    # images longer than 1.5 short sides are scored as square tiles: the runner cuts them as the
    # method does, takes the maximum of the tiles' scores and blends the maps where tiles overlap
    det = Detector("patchknn", image_size=64, resize=resize, tile_above_aspect=1.5, tile_blend=blend)
    det.fit(REFS if fit else [])
    export_onnx(det, tmp_path / "m.onnx", verify=False)
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert exported.meta["preprocessing"]["tile_above_aspect"] == 1.5
    assert exported.meta["preprocessing"]["tile_blend"] == blend
    elongated = image(23, 40, 130, defect=True)  # 4 tiles; the defect lies across the first two
    assert [len(exported._tiles([q])[1][0]) for q in [*QUERIES, elongated]] == [1, 3, 3, 4]  # tiling is exercised
    assert_same_results(det, exported, [*QUERIES, elongated])


@pytest.mark.parametrize("fit", [True, False])
def test_patchknn_export_with_magnitudes_gives_the_pytorch_results(tmp_path, fit):
    # Euclidean distances of the layer-normalised features, few- and zero-shot, through the graph
    det = Detector("patchknn", image_size=64, magnitudes=True).fit(REFS if fit else [])
    det.threshold, det.pixel_threshold = Threshold.given(0.5), 0.4
    export_onnx(det, tmp_path / "m.onnx", verify=False)
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert exported.settings["magnitudes"] is True
    expected, _ = assert_same_results(det, exported)
    assert max(float(r.anomaly_map.max()) for r in expected) > 0  # distances, not the cosine's [0, 1] by design


@pytest.mark.parametrize("fit,length_blocks", [(True, None), (False, None), (True, (4, 10, 14))])
def test_patchknn_export_with_length_channels_gives_the_pytorch_results(tmp_path, fit, length_blocks):
    # few-shot: Euclidean distance of directions and log lengths; zero-shot: the directions alone
    det = Detector("patchknn", image_size=64, length_weight=16.0, length_log=True, length_blocks=length_blocks)
    det.fit(REFS if fit else [])
    scores = [r.score for r in det.predict(QUERIES)]
    det.threshold, det.pixel_threshold = Threshold.given((min(scores) + max(scores)) / 2), min(scores)
    export_onnx(det, tmp_path / "m.onnx", verify=False)
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert exported.settings["length_weight"] == 16.0
    expected, _ = assert_same_results(det, exported)
    assert {r.decision for r in expected} == {"OK", "NG"}


@pytest.mark.parametrize(
    "fit,bank,extra",
    [
        (True, "constant", {}),
        (True, "input", {"length_weight": 0.0, "fused_recipe": "none"}),
        (False, "auto", {}),
        (True, "auto", {"resize": "pad", "tile_above_aspect": 1.5}),
    ],
)
def test_patchknn_export_with_the_coarse_map_gives_the_pytorch_results(tmp_path, fit, bank, extra):
    # the coarse cells against the bank's coarse channels (Euclidean with lengths, cosine without,
    # the bank a constant or an input), upsampled and added; zero-shot without them
    det = Detector("patchknn", image_size=64, coarse_weight=1.0, **extra).fit(REFS if fit else [])
    assert det.method.coarse_layout is not None
    export_onnx(det, tmp_path / "m.onnx", bank=bank, verify=False)
    exported = load_onnx_detector(tmp_path / "m.onnx")
    assert exported.settings["coarse_weight"] == 1.0
    elongated = image(23, 40, 130, defect=True)
    assert_same_results(det, exported, [*QUERIES, elongated])


def test_export_verification_refuses_a_graph_that_disagrees(tmp_path, monkeypatch):
    from anomalens.export import patchknn as exporter

    det = Detector("patchknn", image_size=64).fit(REFS[:1])
    real = exporter.upsample
    monkeypatch.setattr(exporter, "upsample", lambda m, size: real(m, size) + 1e-3)
    with pytest.raises(ExportError, match="disagrees with the PyTorch model"):
        export_onnx(det, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def fade_detector(fit: bool, **settings) -> Detector:
    torch.manual_seed(0)
    det = Detector("fade", backbone="test-tiny", classification_size=32, segmentation_sizes=(32, 48), **settings)
    return det.fit(REFS[:2] if fit else [])


def test_fade_export_few_and_zero_shot(tmp_path):
    few = fade_detector(True, category="metal plate")
    export_onnx(few, tmp_path / "few.onnx", verify=False)
    exported = load_onnx_detector(tmp_path / "few.onnx")
    assert exported.meta["category"] == "metal plate"
    assert [i["size"] for i in exported.meta["preprocessing"]["inputs"]] == [32, 48]
    _, got = assert_same_results(few, exported)
    assert got[0].descriptions  # top descriptions come through the graph's similarities
    # Zero-shot with a vision scale that does not saturate the map (random tiny CLIP).
    zero = fade_detector(False, as_zero_shot_vision_scale=1.0, temperature=1.0)
    export_onnx(zero, tmp_path / "zero.onnx", verify=False)
    assert_same_results(zero, load_onnx_detector(tmp_path / "zero.onnx"))


def test_winclip_export_few_shot_with_padding(tmp_path):
    torch.manual_seed(0)
    det = Detector("winclip", backbone="test-tiny", image_size=48, resize="pad", temperature=1.0).fit(REFS[:2])
    report = export_onnx(det, tmp_path / "w.onnx")  # with the built-in check this time
    assert report.max_map_difference <= TOL and report.max_score_difference <= TOL
    exported = load_onnx_detector(tmp_path / "w.onnx")
    assert exported.meta["valid_patches"]["grid"] == [6, 6]
    assert_same_results(det, exported)


# ---- refusals ----------------------------------------------------------------------------------


def test_methods_without_an_exporter_are_refused_by_name(tmp_path):
    fake = SimpleNamespace(method_name="filo", method=None)
    with pytest.raises(ExportError, match="method 'filo' cannot be exported"):
        export_onnx(fake, tmp_path / "f.onnx")


def test_settings_the_graph_does_not_compute_are_refused_by_name(tmp_path):
    det = Detector("patchknn", image_size=64, map_image_share=0.5).fit(REFS[:1])
    with pytest.raises(ExportError, match="map_image_share"):
        export_onnx(det, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_output_names_and_existing_files(tmp_path):
    det = Detector("patchknn", image_size=64).fit(REFS[:1])
    with pytest.raises(ExportError, match=r"must end in \.onnx"):
        export_onnx(det, tmp_path / "m.bin")
    with pytest.raises(ExportError, match="bank must be one of"):
        export_onnx(det, tmp_path / "m.onnx", bank="disk")
    (tmp_path / "m.onnx").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(det, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"keep me"


@pytest.fixture(scope="module")
def exported_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    det = Detector("patchknn", image_size=64, fused_recipe="none").fit(REFS[:1])
    export_onnx(det, path, bank="input", verify=False)
    return path


def test_the_exported_model_reads_files_as_the_model_did(tmp_path):
    from anomalens.image_reading import ImageReading

    reading = ImageReading(bit_depth=12, max_pixels=1_000_000)
    det = Detector("patchknn", image_size=64, reading=reading, fused_recipe="none").fit(REFS[:1])
    export_onnx(det, tmp_path / "m.onnx", bank="input", verify=False)
    assert load_onnx_detector(tmp_path / "m.onnx").reading == ImageReading(12, 1_000_000)


def test_corrupt_files_and_files_without_metadata_are_refused(exported_file, tmp_path):
    import onnx

    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(exported_file.read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match=r"cut\.onnx: not a readable ONNX model"):
        load_onnx_detector(truncated)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(OnnxModelError, match="empty"):
        load_onnx_detector(tmp_path / "empty.onnx")
    model = onnx.load(str(exported_file))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(OnnxModelError, match="without anomalens metadata"):
        load_onnx_detector(tmp_path / "plain.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_onnx_detector(tmp_path / "nothing.onnx")


def test_a_missing_memory_bank_file_is_named(exported_file, tmp_path):
    lonely = tmp_path / "m.onnx"
    lonely.write_bytes(exported_file.read_bytes())
    with pytest.raises(OnnxModelError, match=r"m\.bank\.npy is missing"):
        load_onnx_detector(lonely)


def test_an_exported_model_cannot_be_refitted(exported_file):
    det = load_detector(exported_file)
    assert isinstance(det, OnnxDetector)
    with pytest.raises(TypeError, match="cannot be refitted"):
        det.fit(REFS)


# ---- command line ------------------------------------------------------------------------------


def test_cli_export_then_detect_with_the_onnx_model_matches_the_model_directory(tmp_path):
    refs, queries = tmp_path / "refs", tmp_path / "queries"
    refs.mkdir()
    queries.mkdir()
    for i, img in enumerate(REFS):
        Image.fromarray(img.rgb).save(refs / f"r{i}.png")
    for i, img in enumerate(QUERIES):
        Image.fromarray(img.rgb).save(queries / f"q{i}.png")
    (queries / "broken.png").write_bytes(b"not a png")
    run(["fit", "--refs", refs, "--out", tmp_path / "model", "--set", "image_size=64", "--threshold", "auto"])
    res = run(["export", "--model", tmp_path / "model", "--out", tmp_path / "m.onnx"])
    assert "checked against PyTorch" in res.output
    run(["export", "--model", tmp_path / "model", "--out", tmp_path / "m.onnx"], code=2)  # exists
    run(["detect", queries, "--model", tmp_path / "model", "--out", tmp_path / "torch", "--no-report"], code=1)
    run(["detect", queries, "--model", tmp_path / "m.onnx", "--out", tmp_path / "onnx", "--no-report"], code=1)
    a = {Path(r["path"]).name: r for r in read_records(tmp_path / "torch")}
    b = {Path(r["path"]).name: r for r in read_records(tmp_path / "onnx")}
    assert a.keys() == b.keys() and b["broken.png"]["status"] == "error"
    tol = tolerance(load_detector(tmp_path / "model"))
    for name in a:
        assert a[name]["status"] == b[name]["status"] and a[name]["decision"] == b[name]["decision"]
        if a[name]["status"] == "ok":
            assert abs(a[name]["score"] - b[name]["score"]) <= tol
            diff = np.abs(np.load(tmp_path / "torch" / a[name]["map"]) - np.load(tmp_path / "onnx" / b[name]["map"]))
            assert diff.max() <= tol
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    res = run(["detect", queries, "--model", tmp_path / "bad.onnx", "--out", tmp_path / "x"], code=2)
    assert "bad.onnx: not a readable ONNX model" in res.output


@pytest.mark.parametrize(
    "extra",
    [{}, {"resize": "pad", "tile_above_aspect": 1.5}],
)
def test_patchknn_export_with_a_fused_recipe_gives_the_pytorch_results(tmp_path, extra):
    # one backbone pass, both recipes' maps standardised by their levels, the pixelwise maximum on the
    # model inputs (then put back on the image, tiles averaged), the larger score
    det = Detector("patchknn", image_size=64, fused_recipe="textured-surface", **extra).fit(REFS)
    assert det.method.fusion_levels_ is not None
    scores = [r.score for r in det.predict(QUERIES)]
    det.threshold, det.pixel_threshold = Threshold.given((min(scores) + max(scores)) / 2), min(scores)
    export_onnx(det, tmp_path / "m.onnx")  # also verifies the graph against PyTorch itself
    exported = load_onnx_detector(tmp_path / "m.onnx")
    levels = det.method.fusion_levels_
    assert exported.meta["fused_recipe"]["levels"] == [[level.median, level.spread] for level in levels]
    elongated = image(23, 40, 130, defect=True)
    expected, _ = assert_same_results(det, exported, [*QUERIES, elongated])  # tolerance(det): in spreads
    assert {r.decision for r in expected} == {"OK", "NG"}
    unfused = Detector("patchknn", image_size=64, fused_recipe="none", **extra).fit(REFS).predict(QUERIES)
    assert not np.allclose([r.score for r in unfused], scores, atol=1e-3)  # the fusion is exercised
    with pytest.raises(ExportError, match="fused_recipe"):
        export_onnx(det, tmp_path / "never.onnx", bank="input")
