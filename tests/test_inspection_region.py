"""The inspection region (`anomalens.inspection_region`, `--region`): only its pixels count."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cli_helpers import run
from PIL import Image

from anomalens import Detector
from anomalens.calibration import pixel_threshold_from_maps
from anomalens.detector import load_detector
from anomalens.errors import ImageLoadError, ModelFileError
from anomalens.images import LoadedImage
from anomalens.inspection_region import REGION_FILE, InspectionRegion, as_region, input_margin, on_input
from anomalens.methods.recipe_fusion import output_scale
from anomalens.overlay import IGNORED_DIMMING, heatmap_overlay
from anomalens.run_identity import effective_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 128
FAST = {"image_size": SIDE, "image_size_up_to": 0}


def texture(seed: int, square: tuple[int, int] | None = None, mark: bool = False) -> np.ndarray:
    """A striped grey texture with per-image noise; `square` paints a bright defect at (row, col);
    `mark` a dark disk at the same place of every image (a part's own normal mark)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    base = 128 + 40 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = base[:, :, None] + np.random.default_rng(seed).normal(0, 5, (SIDE, SIDE, 3))
    if mark:
        img[(yy - 24) ** 2 + (xx - 24) ** 2 < 100] = 20
    if square is not None:
        r, c = square
        img[r : r + 12, c : c + 12] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def right_half() -> np.ndarray:
    region = np.zeros((SIDE, SIDE), bool)
    region[:, SIDE // 2 :] = True
    return region


@pytest.fixture(scope="module")
def references() -> list[np.ndarray]:
    return [texture(i) for i in range(3)]


# ---- the region itself --------------------------------------------------------------------------


def test_a_mask_file_is_read_at_grey_128_and_transparency_is_ignored(tmp_path):
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert InspectionRegion.from_file(tmp_path / "grey.png").mask.tolist() == [[False, False], [True, True]]
    rgba = np.full((2, 2, 4), 255, np.uint8)
    rgba[0, 0, 3] = 0  # a transparent white pixel is not inspected
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert InspectionRegion.from_file(tmp_path / "rgba.png").mask.tolist() == [[False, True], [True, True]]
    sixteen = np.array([[0, 65535]], np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    assert InspectionRegion.from_file(tmp_path / "sixteen.png").mask.tolist() == [[False, True]]
    assert as_region(np.array([[0, 1]])).mask.tolist() == [[False, True]]  # 0/1 arrays too
    assert as_region(np.array([[0, 255]], np.uint8)).mask.tolist() == [[False, True]]


def test_bad_region_files_are_clear_errors_naming_them(tmp_path):
    with pytest.raises(ImageLoadError, match=re.escape("nowhere.png: inspection region: file does not exist")):
        InspectionRegion.from_file(tmp_path / "nowhere.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match=re.escape("notes.png: inspection region: not a readable image")):
        InspectionRegion.from_file(tmp_path / "notes.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match=re.escape("black.png: the region inspects nothing")):
        InspectionRegion.from_file(tmp_path / "black.png")


def test_the_region_is_stretched_to_the_image_and_shrunk_by_the_margin_beside_ignored_areas():
    mask = np.ones((4, 8), bool)
    mask[:, :2] = False  # the left quarter is ignored
    region = InspectionRegion(mask)
    stretched = region.on_image((8, 16))
    assert stretched.shape == (8, 16) and not stretched[:, :4].any() and stretched[:, 4:].all()
    shrunk = region.on_image((8, 16), margin_hw=(1, 3))
    assert not shrunk[:, :7].any() and shrunk[:, 7:].all()  # 3 more columns; the image's edges are not margins
    assert region.on_image((8, 16), margin_hw=(0, 0)).sum() == 8 * 12


def test_the_region_lands_on_the_model_input_where_the_image_does():
    inspected = np.zeros((10, 20), bool)
    inspected[:, 10:] = True
    squashed = on_input(inspected, (0, 0, 10, 20), 8, (0, 0, 8, 8))
    assert squashed[:, :4].sum() == 0 and squashed[:, 4:].all()
    padded = on_input(inspected, (0, 0, 10, 20), 8, (2, 0, 4, 8))  # "pad": the image on rows 2-5
    assert not padded[:2].any() and not padded[6:].any() and padded[2:6, 4:].all()
    tile = on_input(inspected, (0, 10, 10, 10), 8, (0, 0, 8, 8))  # the right tile is all inspected
    assert tile.all()
    assert input_margin(16, (0, 0, 100, 300), (0, 0, 256, 256)) == (7, 19)  # ceil(16 * 100 / 256), ceil(16 * 300 / 256)


# ---- patchknn with a region ---------------------------------------------------------------------


def test_a_region_over_the_whole_image_changes_nothing(references):
    queries = [texture(10, square=(20, 20)), texture(11)]
    plain = Detector("patchknn", **FAST).fit(references).predict(queries)
    whole = Detector("patchknn", region=np.ones((5, 5), bool), **FAST).fit(references).predict(queries)
    for a, b in zip(plain, whole):
        assert a.score == b.score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        assert b.inspected.all()


def test_a_defect_outside_the_region_does_not_count_and_one_inside_does(references):
    plain = Detector("patchknn", **FAST).fit(references)
    half = Detector("patchknn", region=right_half(), **FAST).fit(references)
    clean, left, right = texture(20), texture(20, square=(58, 4)), texture(20, square=(58, 100))
    s = {name: [r.score for r in det.predict([clean, left, right])] for name, det in (("plain", plain), ("half", half))}
    jump = s["plain"][1] - s["plain"][0]
    assert jump > 0.3  # the left defect is plain to see without a region
    assert abs(s["half"][1] - s["half"][0]) < 0.1 * jump  # ... and does not count with the right half inspected
    assert s["half"][2] - s["half"][0] > 0.3  # a defect inside the region does


def test_only_the_references_patches_that_count_enter_the_bank(references):
    det = Detector("patchknn", region=right_half(), **FAST)
    ref = LoadedImage("ref.png", references[0])
    # 128 px at 128: a 16 x 16 grid of 8 px cells; the right half less the 8 px margin is columns 9-15
    assert det.method.reference_patches(ref, "none").shape[0] == 16 * 7
    assert det.method.reference_patches(ref, "flips").shape[0] == 4 * 16 * 7  # the mask turns with each copy
    plain = Detector("patchknn", **FAST).method.reference_patches(ref, "none")
    np.testing.assert_array_equal(
        det.method.reference_patches(ref, "none").numpy(),
        plain.reshape(16, 16, -1)[:, 9:].reshape(-1, plain.shape[-1]).numpy(),
    )


def test_the_map_is_at_its_floor_where_nothing_counts_and_no_mask_pixel_lies_there(references):
    det = Detector("patchknn", region=right_half(), **FAST).fit(references)
    det.threshold, det.pixel_threshold = 0.0, 0.0  # a pixel threshold at or below every map value
    result = det.predict([texture(21, square=(58, 4))])[0]
    counted = result.inspected
    assert not counted[:, : SIDE // 2 + 8].any() and counted[:, SIDE // 2 + 8 :].all()  # the 8 px margin
    outside = result.anomaly_map[~counted]
    assert np.all(outside == result.anomaly_map.min())
    assert result.mask[counted].any() and not result.mask[~counted].any()


def test_a_parts_own_mark_stops_counting_once_the_region_leaves_it_out():
    # zero-shot: each image against its own patches, where a mark that occurs once looks like a defect
    region = np.ones((SIDE, SIDE), bool)
    region[:46, :46] = False  # the mark (a disk of radius 10 at 24, 24) with a margin, as a user draws it
    plain, masked = Detector("patchknn", **FAST).fit([]), Detector("patchknn", region=region, **FAST).fit([])
    marked, unmarked = texture(30, mark=True), texture(30)
    m_plain, u_plain = (r.score for r in plain.predict([marked, unmarked]))
    m_masked, u_masked = (r.score for r in masked.predict([marked, unmarked]))
    assert m_plain > 3 * u_plain  # the mark is the image's most anomalous place
    assert abs(m_masked - u_masked) < 0.2 * (m_plain - u_plain)


def test_calibration_reads_only_the_pixels_that_count(references):
    det = Detector("patchknn", region=right_half(), **FAST).fit(references + [texture(3)])
    det.calibrate()
    outputs = det.method.leave_one_out(det._references, list(range(4)))
    expected = pixel_threshold_from_maps([o.anomaly_map[o.inspected] for o in outputs], det.threshold)
    assert det.pixel_threshold.value == pytest.approx(expected.value)
    everything = pixel_threshold_from_maps([o.anomaly_map for o in outputs], det.threshold)
    assert everything.value != pytest.approx(expected.value)


def test_a_saved_model_keeps_its_region_and_refuses_a_changed_file(references, tmp_path):
    det = Detector("patchknn", region=right_half(), **FAST).fit(references)
    det.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "detector.json").read_text())
    assert config["inspection_region"]["file"] == REGION_FILE
    loaded = load_detector(tmp_path / "model")
    assert loaded.region.digest == det.region.digest
    query = texture(40, square=(58, 4))
    assert loaded.predict([query])[0].score == det.predict([query])[0].score
    assert effective_settings(loaded)["inspection_region"]["digest"] == det.region.digest
    Image.fromarray(np.full((SIDE, SIDE), 255, np.uint8)).save(tmp_path / "model" / REGION_FILE)
    with pytest.raises(ModelFileError, match=re.escape("region.png is not the region the model was saved with")):
        load_detector(tmp_path / "model")
    (tmp_path / "model" / REGION_FILE).unlink()
    with pytest.raises(ModelFileError, match=re.escape("region.png is missing")):
        load_detector(tmp_path / "model")


def test_methods_that_score_beyond_their_map_refuse_a_region(references):
    with pytest.raises(ValueError, match=re.escape("winclip cannot restrict its score to an inspection region")):
        Detector("winclip", backbone="test-tiny", image_size=48, region=right_half())


def test_musc_reads_the_counted_cells_and_its_patchknn_parts_get_the_region():
    # a batch where every other part carries a mark in the corner: with the corner left out, the marked
    # parts score (nearly) as the others; a region over the whole image changes nothing
    region = np.ones((SIDE, SIDE), bool)
    region[:46, :46] = False
    batch = [texture(100 + i, mark=i % 2 == 0) for i in range(20)]
    plain = [r.score for r in Detector("musc", image_size=SIDE, progress=False).predict(batch)]
    det = Detector("musc", region=region, image_size=SIDE, progress=False)
    results = det.predict(batch)
    masked = [r.score for r in results]
    gap = np.mean(plain[0::2]) - np.mean(plain[1::2])
    assert gap > 0.3
    assert np.mean(masked[0::2]) - np.mean(masked[1::2]) < 0.3 * gap
    for r in results:
        assert not r.inspected[:46, :46].any()
        assert np.all(r.anomaly_map[~r.inspected] == r.anomaly_map.min())
    whole = Detector("musc", region=np.ones((4, 4), bool), image_size=SIDE, progress=False).predict(batch)
    assert [r.score for r in whole] == pytest.approx(plain, abs=1e-6)


@pytest.mark.parametrize("shots", [0, 3])
def test_the_onnx_export_carries_the_region_and_scores_as_pytorch(references, tmp_path, shots):
    pytest.importorskip("onnxruntime")
    det = Detector("patchknn", region=right_half(), **FAST).fit(references[:shots])
    det.threshold, det.pixel_threshold = 0.0, 0.0
    det.export(tmp_path / "model.onnx")  # the export itself checks maps and scores against PyTorch
    exported = load_detector(tmp_path / "model.onnx")
    assert exported.region.digest == det.region.digest
    wide = texture(60, square=(10, 4))
    wide = np.concatenate([wide, texture(61, square=(58, 100))[:, :172]], axis=1)  # 128 x 300: tiled
    queries = [texture(62, square=(58, 4)), texture(63, square=(58, 100)), wide]
    tol = 1e-4 * output_scale(det.method)  # a fused recipe's outputs are in units of its spreads
    for a, b in zip(det.predict(queries), exported.predict(queries)):
        assert b.score == pytest.approx(a.score, abs=tol)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, atol=tol)
        np.testing.assert_array_equal(b.inspected, a.inspected)
        np.testing.assert_array_equal(b.mask, a.mask & a.inspected)


def test_the_overlay_shows_ignored_pixels_dimmed_without_heat_colours():
    image = np.full((4, 4, 3), 200, np.uint8)
    ignored = np.zeros((4, 4), bool)
    ignored[:, :2] = True
    over = heatmap_overlay(image, np.random.default_rng(0).random((4, 4)), ignored=ignored)
    assert (over[:, :2] == round(IGNORED_DIMMING * 200)).all()
    assert not (over[:, 2:] == round(IGNORED_DIMMING * 200)).all()


# ---- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory, references):
    root = tmp_path_factory.mktemp("region")
    (root / "good").mkdir()
    (root / "parts").mkdir()
    for i, ref in enumerate(references):
        Image.fromarray(ref).save(root / "good" / f"good_{i}.png")
    Image.fromarray(texture(50, square=(58, 4))).save(root / "parts" / "left_defect.png")
    Image.fromarray(texture(51, square=(58, 100))).save(root / "parts" / "right_defect.png")
    Image.fromarray(right_half().astype(np.uint8) * 255).save(root / "region.png")
    Image.fromarray(np.ones((SIDE, SIDE), np.uint8) * 255).save(root / "everything.png")
    return root


def test_detect_and_fit_take_a_region_and_a_resume_or_model_with_another_is_refused(folders, tmp_path):
    size = ["--image-size", SIDE, "--set", "image_size_up_to=0"]
    common = ["--refs", folders / "good", "--threshold", "0.5", "--no-report", *size]
    out = tmp_path / "out"
    result = run(["detect", folders / "parts", *common, "--region", folders / "region.png", "--out", out])
    assert "inspection region: " in result.output and "50% of each image" in result.output
    records = {json.loads(line)["path"].split("/")[-1]: json.loads(line) for line in (out / "results.jsonl").open()}
    assert records["left_defect.png"]["score"] < records["right_defect.png"]["score"]
    overlay = np.asarray(Image.open(out / records["left_defect.png"]["overlay"]))
    image = np.asarray(Image.open(folders / "parts" / "left_defect.png"))
    np.testing.assert_allclose(overlay[:SIDE, :10], IGNORED_DIMMING * image[:, :10], atol=0.51)
    refused = run(["detect", folders / "parts", *common, "--region", folders / "everything.png", "--out", out], code=2)
    assert "inspection_region" in refused.output
    missing = run(
        ["detect", folders / "parts", *common, "--region", folders / "none.png", "--out", tmp_path / "o2"], code=2
    )
    assert "none.png: inspection region: file does not exist" in missing.output
    model = tmp_path / "model"
    run(["fit", "--refs", folders / "good", *size, "--region", folders / "region.png", "--out", model])
    assert (model / REGION_FILE).exists()
    again = run(["detect", folders / "parts", "--model", model, "--no-report", "--out", tmp_path / "o3"])
    assert "inspection region: saved with the model" in again.output
    other = run(
        [
            "detect",
            folders / "parts",
            "--model",
            model,
            "--region",
            folders / "everything.png",
            "--out",
            tmp_path / "o4",
        ],
        code=2,
    )
    assert "--region" in other.output and "saved:" in other.output


def test_a_benchmark_with_a_region_is_another_configuration(folders):
    from anomalens.benchmark import BenchmarkSettings, config_key, run_config

    plain = BenchmarkSettings(data=str(folders))
    half = BenchmarkSettings(data=str(folders), region=str(folders / "region.png"))
    whole = BenchmarkSettings(data=str(folders), region=str(folders / "everything.png"))
    assert "inspection_region" not in run_config(plain)  # runs recorded before regions existed still resume
    keys = {config_key(run_config(s)) for s in (plain, half, whole)}
    assert len(keys) == 3


def test_a_region_that_leaves_nothing_to_count_is_a_clear_error(references):
    speck = np.zeros((SIDE, SIDE), bool)
    speck[60:62, 60:62] = True  # 2 x 2 pixels: the 8 px margin around the ignored rest takes them
    det = Detector("patchknn", region=speck, **FAST).fit([])
    with pytest.raises(ValueError, match="covers no pixel of this image"):
        det.predict([texture(70)])
    (failed,) = det.predict_iter([texture(70)], skip_errors=True)
    assert isinstance(failed, ImageLoadError) and "covers no pixel" in str(failed)


def test_a_served_model_says_what_it_inspects(references):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from anomalens.serve import ModelRegistry, ServeSettings, create_app

    registry = ModelRegistry()
    det = Detector("patchknn", region=right_half(), **FAST).fit(references)
    registry.add("half", det, None)
    registry.add("whole", Detector("patchknn", **FAST).fit(references), None)
    with TestClient(create_app(registry, ServeSettings())) as client:
        half, whole = (client.get(f"/v1/models/{name}").json() for name in ("half", "whole"))
    assert half["inspection_region"] == {"share": 0.5, "digest": det.region.digest}
    assert whole["inspection_region"] is None


def test_fit_unlabeled_ranks_and_fits_with_the_region(folders, tmp_path):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i in range(6):
        Image.fromarray(texture(80 + i, mark=i % 2 == 0)).save(unlabeled / f"part_{i}.png")
    model = tmp_path / "model"
    size = ["--image-size", SIDE, "--set", "image_size_up_to=0"]
    args = ["fit", "--unlabeled", unlabeled, "--typical-share", "0.4", "--region", folders / "region.png"]
    run([*args, *size, "--out", model])
    assert (model / REGION_FILE).exists() and (model / "typical_images.json").exists()
    assert load_detector(model).region.digest == InspectionRegion.from_file(folders / "region.png").digest


def test_regions_from_boxes_by_hand():
    from anomalens.inspection_region import region_from_boxes

    by_share = region_from_boxes((4, 8), ignore=[(0, 0, 0.25, 0.5)])  # 2 columns x 2 rows of 8 x 4
    expected = np.ones((4, 8), bool)
    expected[:2, :2] = False
    np.testing.assert_array_equal(by_share.mask, expected)
    by_pixel = region_from_boxes((4, 8), inspect=[(2, 1, 6, 4)], ignore=[(3, 2, 4, 3)])
    expected = np.zeros((4, 8), bool)
    expected[1:4, 2:6] = True
    expected[2, 3] = False
    np.testing.assert_array_equal(by_pixel.mask, expected)
    with pytest.raises(ValueError, match="outside the 8 x 4 image"):
        region_from_boxes((4, 8), ignore=[(0, 0, 9, 2)])
    with pytest.raises(ValueError, match="got 3 numbers"):
        region_from_boxes((4, 8), ignore=[(0, 0, 1)])


def test_the_region_command_draws_a_mask_and_a_preview(folders, tmp_path):
    like = folders / "parts" / "left_defect.png"
    out, shown = tmp_path / "drawn" / "region.png", tmp_path / "preview.png"
    result = run(["region", "--like", like, "--ignore", "0,0,0.5,1", "--out", out, "--preview", shown])
    assert "50% of each image inspected" in result.output
    assert InspectionRegion.from_file(out).digest == InspectionRegion.from_file(folders / "region.png").digest
    image, picture = np.asarray(Image.open(like)), np.asarray(Image.open(shown))
    np.testing.assert_allclose(picture[:, :64], IGNORED_DIMMING * image[:, :64], atol=0.51)
    np.testing.assert_array_equal(picture[:, 64:], image[:, 64:])
    again = run(["region", "--like", like, "--ignore", "0,0,0.5,1", "--out", out], code=2)
    assert "exists; pass --overwrite" in again.output
    assert "give at least one" in run(["region", "--like", like, "--out", tmp_path / "x.png"], code=2).output
    bad = run(["region", "--like", like, "--ignore", "a,b,c,d", "--out", tmp_path / "y.png"], code=2)
    assert "a box is four numbers" in bad.output
