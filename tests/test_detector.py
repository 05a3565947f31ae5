"""`Detector`: fit, calibrate (leave-one-out), predict_iter, save and load_detector."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.calibration import Threshold, calibrate_threshold
from anomalens.detector import Detector, load_detector
from anomalens.images import ImageLoadError, LoadedImage
from anomalens.methods.patchknn import PatchKnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# the whole bank (no coreset: 4 references x 256 patches x 4 flips are above the floor) and the recipe
# alone (a fused recipe's levels come from all references), so that leaving a reference's patches out
# equals refitting without it
WHOLE_BANK = {"coreset_ratio": 1.0, "fused_recipe": "none"}


def texture(seed: int, h: int = 64, w: int = 64, defect: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    noise = np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    img = np.clip(base[:, :, None] + noise, 0, 255).astype(np.uint8)
    if defect:
        img[20:32, 30:42] = 15
    return img


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("det")
    refs, queries = [], []
    for i in range(4):
        refs.append(root / f"ref{i}.png")
        Image.fromarray(texture(i)).save(refs[-1])
    for i in range(4):
        queries.append(root / f"q{i}.png")
        Image.fromarray(texture(50 + i, defect=i % 2 == 1)).save(queries[-1])
    return {"refs": refs, "queries": queries}


@pytest.fixture(scope="module")
def fitted(files) -> Detector:
    return Detector("patchknn", image_size=128, **WHOLE_BANK).fit(files["refs"]).calibrate()


def test_calibrate_is_leave_one_out_and_restores_the_full_memory_bank(files, fitted):
    loo = []
    for i, held_out in enumerate(files["refs"]):
        others = files["refs"][:i] + files["refs"][i + 1 :]
        loo.append(Detector("patchknn", image_size=128, **WHOLE_BANK).fit(others).predict([held_out])[0].score)
    assert fitted.threshold == calibrate_threshold(loo, 0.99, 0.1)
    assert fitted.threshold.n_images == 4 and "leave-one-out" in fitted.threshold.description()
    assert isinstance(fitted.pixel_threshold, Threshold)
    fresh = Detector("patchknn", image_size=128, **WHOLE_BANK).fit(files["refs"])
    assert [r.score for r in fitted.predict(files["queries"])] == [r.score for r in fresh.predict(files["queries"])]
    decisions = [r.decision for r in fitted.predict(files["queries"])]
    assert decisions == ["OK", "NG", "OK", "NG"]


def test_calibration_needs_two_references(files):
    with pytest.raises(ValueError, match="at least 2 reference images"):
        Detector("patchknn", image_size=128).fit(files["refs"][:1]).calibrate()
    with pytest.raises(ValueError, match="needs good reference images"):
        Detector("patchknn", image_size=128).fit([]).calibrate()


def test_save_and_load_give_identical_scores_maps_and_thresholds(files, fitted, tmp_path):
    fitted.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"detector.json", "detector.safetensors"}
    with pytest.raises(FileExistsError):
        fitted.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    assert loaded.method_name == "patchknn" and loaded.settings == fitted.settings
    assert loaded.threshold == fitted.threshold and loaded.pixel_threshold == fitted.pixel_threshold
    assert loaded.reference_paths == [str(p) for p in files["refs"]]
    a, b = fitted.predict(files["queries"]), loaded.predict(files["queries"])
    for ra, rb in zip(a, b):
        assert ra.score == rb.score and ra.decision == rb.decision
        np.testing.assert_array_equal(ra.anomaly_map, rb.anomaly_map)
        np.testing.assert_array_equal(ra.mask, rb.mask)
    with pytest.raises(FileNotFoundError, match="not a saved anomalens model"):
        load_detector(tmp_path)


def test_a_model_saved_before_the_smoothed_edge_weighted_score_keeps_its_raw_max_score(files, fitted, tmp_path):
    import json

    fitted.save(tmp_path / "old")
    config_path = tmp_path / "old" / "detector.json"
    config = json.loads(config_path.read_text())
    for name in ("smoothing_sigma", "edge_weighting"):  # settings that did not exist when it was saved
        del config["settings"][name]
    config_path.write_text(json.dumps(config))
    old = load_detector(tmp_path / "old")
    assert old.settings["smoothing_sigma"] == 0.0 and old.settings["edge_weighting"] is False
    raw = Detector("patchknn", image_size=128, smoothing_sigma=0.0, edge_weighting=False, **WHOLE_BANK).fit(files["refs"])
    assert [r.score for r in old.predict(files["queries"])] == [r.score for r in raw.predict(files["queries"])]
    assert load_detector(tmp_path / "old", smoothing_sigma=4.0).settings["smoothing_sigma"] == 4.0  # overrides win


def test_predict_iter_keeps_order_with_errors_and_any_number_of_jobs(files, fitted, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    inputs = [files["queries"][0], bad, files["queries"][1], tmp_path / "missing.png", *files["queries"][2:]]
    runs = []
    for jobs in (0, 3):
        out = list(fitted.predict_iter(inputs, batch_size=2, jobs=jobs))
        assert [type(o).__name__ for o in out] == ["AnomalyResult", "ImageLoadError", "AnomalyResult",
                                                   "ImageLoadError", "AnomalyResult", "AnomalyResult"]
        assert [Path(o.path).name for o in out] == ["q0.png", "bad.png", "q1.png", "missing.png", "q2.png", "q3.png"]
        runs.append([o.score for o in out if not isinstance(o, ImageLoadError)])
    assert runs[0] == runs[1]
    with pytest.raises(ImageLoadError, match=r"bad\.png"):
        fitted.predict(inputs)


def test_skip_errors_turns_a_scoring_failure_into_a_per_image_error(files, fitted, monkeypatch):
    original = PatchKnn.predict
    calls = []

    def flaky(method, images):
        calls.append(len(images))
        if any(i.path.endswith("q1.png") for i in images):
            raise RuntimeError("boom")
        return original(method, images)

    monkeypatch.setattr(PatchKnn, "predict", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        list(fitted.predict_iter(files["queries"], batch_size=4))
    calls.clear()
    out = list(fitted.predict_iter(files["queries"], batch_size=4, skip_errors=True))
    assert calls == [4, 1, 1, 1, 1]  # the batch, then one by one
    assert [isinstance(o, ImageLoadError) for o in out] == [False, True, False, False]
    assert out[1].path.endswith("q1.png") and out[1].reason == "could not be scored: RuntimeError: boom"


def test_with_images_yields_the_loaded_image(files, fitted):
    (result, img), = fitted.predict_iter(files["queries"][:1], with_images=True)
    assert isinstance(img, LoadedImage) and img.rgb.shape == (64, 64, 3) and img.original_hw is None
    assert result.anomaly_map.shape == img.size_hw and result.anomaly_map.dtype == np.float32


def test_save_interrupted_while_writing_leaves_the_previous_model_readable(fitted, tmp_path, monkeypatch):
    fitted.save(tmp_path / "m")
    before = (tmp_path / "m" / "detector.json").read_bytes()
    real_replace = os.replace

    def killed(src, dst):
        if str(dst).endswith("detector.json"):
            raise KeyboardInterrupt  # a kill between writing the temporary file and renaming it
        real_replace(src, dst)

    monkeypatch.setattr("anomalens.outputs.os.replace", killed)
    monkeypatch.setattr(fitted, "threshold", 123.0)  # a change the interrupted save does not get to write
    with pytest.raises(KeyboardInterrupt):
        fitted.save(tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "detector.json").read_bytes() == before  # old, whole
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"detector.json", "detector.safetensors"}
    assert load_detector(tmp_path / "m").threshold.value != 123.0
