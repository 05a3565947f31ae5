"""`anomalens detect` and `anomalens fit` end to end, in-process through typer's CliRunner.

Small 64 x 64 images and the embedded EfficientNet backbone at a 128 px input keep each run
well under a second; one test uses FADE with the random `test-tiny` CLIP for descriptions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import run
from PIL import Image

from anomalens.calibration import calibrate_threshold
from anomalens.colour_scale import ColourScale, colour_bar
from anomalens.methods.patchknn import PatchKnn
from anomalens.outputs import output_name, read_records

FAST = ["--method", "patchknn", "--image-size", "128"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texture(seed: int, h: int = 64, w: int = 64, defect: bool = False) -> np.ndarray:
    """The same striped texture with per-image noise; `defect` paints a dark square."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    noise = np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    img = np.clip(base[:, :, None] + noise, 0, 255).astype(np.uint8)
    if defect:
        img[h // 3 : h // 3 + h // 5, w // 2 : w // 2 + w // 5] = (20, 15, 10)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """refs/ (4 good), queries/ (3 good, 2 defective)."""
    root = tmp_path_factory.mktemp("data")
    (root / "refs").mkdir()
    (root / "queries").mkdir()
    for i in range(4):
        Image.fromarray(texture(i)).save(root / "refs" / f"good_{i}.png")
    for i in range(3):
        Image.fromarray(texture(100 + i)).save(root / "queries" / f"ok_{i}.png")
    for i in range(2):
        Image.fromarray(texture(200 + i, defect=True)).save(root / "queries" / f"scratch_{i}.png")
    return root


def records_by_name(out: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_records(out)}


def test_detect_writes_every_output_with_a_given_threshold(data, tmp_path):
    out = tmp_path / "out"
    # thresholds in the recipe's own distance units (a fused recipe's are in units of its normal spread)
    res = run(["detect", data / "queries", "--refs", data / "refs", "--out", out, *FAST,
               "--threshold", "0.6", "--pixel-threshold", "0.25", "--set", "fused_recipe=none"])
    assert "threshold: given: 0.6" in res.output and "pixel threshold: given: 0.25" in res.output
    assert "images/s" in res.output
    recs = records_by_name(out)
    assert sorted(recs) == ["ok_0.png", "ok_1.png", "ok_2.png", "scratch_0.png", "scratch_1.png"]
    for name, rec in recs.items():
        assert rec["status"] == "ok" and rec["error"] is None
        assert rec["decision"] == ("NG" if name.startswith("scratch") else "OK"), (name, rec["score"])
        assert rec["threshold"] == 0.6 and rec["pixel_threshold"] == 0.25
        assert rec["descriptions"] == [] and rec["seconds"] >= 0 and rec["time"]
        assert rec["image_size"] == [64, 64] == rec["map_size"]
        stem = output_name(rec["path"])
        assert rec["map"] == f"maps/{stem}.npy" and rec["overlay"] == f"overlays/{stem}.png"
        amap = np.load(out / rec["map"])
        assert amap.dtype == np.float32 and amap.shape == (64, 64)
        # patchknn: score = max of the map weighted by edge shares in [4/9, 1] (corner .. interior)
        assert 4 / 9 * 0.95 * float(amap.max()) <= rec["score"] <= 1.05 * float(amap.max())
        mask = np.asarray(Image.open(out / rec["mask"]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        if rec["decision"] == "NG":
            np.testing.assert_array_equal(mask == 255, amap > 0.25)
            assert (mask == 255)[21:34, 32:45].mean() > 0.5  # the painted square is masked
        else:
            assert not mask.any()
        overlay = Image.open(out / rec["overlay"])
        # The run's colour bar (anchored to the pixel threshold) is appended under the image.
        bar = colour_bar(64, ColourScale.around(0.25, "")).shape[0]
        assert overlay.size == (64, 64 + bar) and overlay.mode == "RGB"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [r["path"] for r in read_records(out)]
    assert {r["decision"] for r in rows} == {"OK", "NG"}
    html = (out / "report.html").read_text()
    for name in recs:
        assert name in html
    settings = json.loads((out / "settings.json").read_text())
    assert settings["threshold"]["method"] == "given" and settings["options"]["threshold"] == "0.6"


def test_threshold_auto_is_leave_one_out_and_says_how(data, tmp_path):
    out = tmp_path / "out"
    # the whole bank (no coreset) and the recipe alone (a fused recipe's levels come from all references), so
    # that leaving a reference's patches out equals refitting without it
    res = run(["detect", data / "queries", "--refs", data / "refs", "--out", out, *FAST, "--threshold", "auto",
               "--quantile", "0.9", "--margin", "0.5", "--set", "coreset_ratio=1.0", "--set", "fused_recipe=none"])
    # The rule, recomputed by hand: score each reference against the other three.
    from anomalens.detector import Detector
    from anomalens.images import list_images

    refs = list_images([data / "refs"])
    loo = []
    for i in range(len(refs)):
        det = Detector("patchknn", image_size=128, coreset_ratio=1.0, fused_recipe="none").fit(refs[:i] + refs[i + 1 :])
        loo.append(det.predict([refs[i]])[0].score)
    q = np.quantile(loo, 0.9)
    expected = q + 0.5 * (q - np.median(loo))
    assert calibrate_threshold(loo, 0.9, 0.5).value == pytest.approx(expected)
    settings = json.loads((out / "settings.json").read_text())
    t = settings["threshold"]
    assert t["method"] == "auto" and t["n_images"] == 4 and t["quantile"] == 0.9 and t["margin"] == 0.5
    assert t["value"] == pytest.approx(expected, rel=1e-5)
    assert "threshold: auto: 90th percentile of 4 leave-one-out reference scores + 50% of (p90 - median)" in (
        res.output
    )
    assert settings["pixel_threshold"]["method"] == "auto"
    recs = records_by_name(out)
    assert {n for n, r in recs.items() if r["decision"] == "NG"} == {"scratch_0.png", "scratch_1.png"}
    assert "90th percentile of 4" in (out / "report.html").read_text()


def test_threshold_auto_needs_references(data, tmp_path):
    res = run(["detect", data / "queries", "--out", tmp_path / "o", *FAST, "--threshold", "auto"], code=2)
    assert "needs good reference images" in res.output
    res = run(["detect", data / "queries", "--out", tmp_path / "o", *FAST, "--threshold", "high"], code=2)
    assert "--threshold must be a number" in res.output


def test_zero_shot_patchknn_on_a_folder_points_to_the_batch_method(data, tmp_path):
    res = run(["detect", data / "queries", "--out", tmp_path / "zero", *FAST])
    assert "--method musc scores each of these 5 images against the others" in res.output
    with_refs = run(["detect", data / "queries", "--refs", data / "refs", "--out", tmp_path / "few", *FAST])
    one_image = run(["detect", data / "queries" / "ok_0.png", "--out", tmp_path / "one", *FAST])
    assert "--method musc" not in with_refs.output + one_image.output


def test_fit_then_detect_with_model_gives_identical_results(data, tmp_path):
    model = tmp_path / "model"
    res = run(["fit", "--refs", data / "refs", "--out", model, *FAST])
    assert "fitted on 4 reference images" in res.output and "auto: 99th percentile of 4" in res.output
    assert "model input: 128 px\n" in res.output  # 64 px references: the requested side
    config = json.loads((model / "detector.json").read_text())
    assert config["method"] == "patchknn" and config["settings"]["image_size"] == 128
    assert config["threshold"]["method"] == "auto" and config["num_references"] == 4
    from safetensors.torch import load_file

    bank = load_file(str(model / "detector.safetensors"))
    # the default fuses the texture recipe: both banks and the two levels (median, spread each)
    assert {"bank.patches", "partner.bank.patches"} <= set(bank) and bank["fusion.levels"].shape == (4,)
    # and the few-shot rank each was fitted with (4 references: the 3rd nearest; `few_shot_k` in the settings too)
    assert int(bank["few_shot_k"]) == int(bank["partner.few_shot_k"]) == config["settings"]["few_shot_k"] == 3
    not_banks = {"few_shot_k", "partner.few_shot_k", "fusion.levels"}
    assert all(t.ndim == 2 and t.shape[0] > 0 for k, t in bank.items() if k not in not_banks)
    run(["fit", "--refs", data / "refs", "--out", model, *FAST], code=2)  # never overwritten silently

    run(["detect", data / "queries", "--model", model, "--out", tmp_path / "a"])
    run(["detect", data / "queries", "--refs", data / "refs", *FAST, "--threshold", "auto", "--out", tmp_path / "b"])
    a, b = read_records(tmp_path / "a"), read_records(tmp_path / "b")
    assert [r["score"] for r in a] == [r["score"] for r in b]
    assert [(r["decision"], r["threshold"], r["pixel_threshold"]) for r in a] == [
        (r["decision"], r["threshold"], r["pixel_threshold"]) for r in b
    ]
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / ra["map"]), np.load(tmp_path / "b" / rb["map"]))
    # --threshold auto with a model uses its saved calibration; a given number overrides it.
    run(["detect", data / "queries", "--model", model, "--out", tmp_path / "c", "--threshold", "auto"])
    assert [r["threshold"] for r in read_records(tmp_path / "c")] == [r["threshold"] for r in a]
    # above every score (the default's are in units of its normal spread: a defect reaches tens)
    run(["detect", data / "queries", "--model", model, "--out", tmp_path / "d", "--threshold", "1000"])
    assert {r["decision"] for r in read_records(tmp_path / "d")} == {"OK"}
    res = run(["detect", data / "queries", "--model", model, "--refs", data / "refs", "--out", tmp_path / "e"], code=2)
    assert "--refs cannot be combined with --model" in res.output


def test_rerun_resumes_and_never_overwrites_without_flag(data, tmp_path):
    out = tmp_path / "out"
    args = ["detect", data / "queries", "--refs", data / "refs", "--out", out, *FAST, "--threshold", "0.3"]
    run(args)
    first = (out / "results.jsonl").read_text()
    maps = sorted((out / "maps").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in maps]
    res = run(args)
    assert "resuming: 5 of 5 images already done" in res.output and "scored 0 images" in res.output
    assert (out / "results.jsonl").read_text() == first
    assert [p.stat().st_mtime_ns for p in maps] == mtimes
    # Other settings into the same folder: refused (exit 2) with the difference named, nothing written.
    settings_before = (out / "settings.json").read_text()
    res = run([*args[:-1], "0.9"], code=2)
    named = "(pixel_threshold.value: 0.3 -> 0.9; threshold.value: 0.3 -> 0.9)"
    assert f"holds results made with other settings {named}" in res.output
    assert "new --out, or pass --overwrite" in res.output
    assert (out / "results.jsonl").read_text() == first and (out / "settings.json").read_text() == settings_before
    assert not (out / "settings.1.json").exists()
    res = run([*args[:-1], "0.9", "--overwrite"])
    assert "scored 5 images" in res.output
    assert {r["threshold"] for r in read_records(out)} == {0.9}
    assert not (out / "settings.1.json").exists()


class CountingPredict:
    """Replaces PatchKnn.predict: counts the images scored; raises Ctrl-C once `stop_after` are done."""

    def __init__(self, monkeypatch, stop_after: int | None = None):
        original = PatchKnn.predict
        self.seen: list[str] = []

        def predict(method, images):
            if stop_after is not None and len(self.seen) >= stop_after:
                raise KeyboardInterrupt
            self.seen.extend(Path(i.path).name for i in images)
            return original(method, images)

        monkeypatch.setattr(PatchKnn, "predict", predict)


def test_interrupt_leaves_valid_results_and_rerun_does_only_the_rest(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["detect", data / "queries", "--refs", data / "refs", "--out", out, *FAST,
            "--threshold", "0.3", "--batch-size", "1", "--jobs", "2"]
    interrupt = CountingPredict(monkeypatch, stop_after=2)
    res = run(args, code=130)
    assert "interrupted" in res.output and "run the same command again to resume" in res.output
    # Everything on disk is complete and consistent.
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)
    for rec in read_records(out):
        for key in ("map", "mask", "overlay"):
            assert (out / rec[key]).is_file()
        np.load(out / rec["map"])
    assert len(list((out / "maps").iterdir())) == 2
    assert not list(out.rglob(".*tmp*"))
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "ok_0.png" in (out / "report.html").read_text()

    monkeypatch.undo()
    again = CountingPredict(monkeypatch)
    res = run(args)
    assert "resuming: 2 of 5 images already done" in res.output
    assert sorted(again.seen) == sorted({"ok_0.png", "ok_1.png", "ok_2.png", "scratch_0.png", "scratch_1.png"}
                                        - set(interrupt.seen))
    assert len(again.seen) == 3
    monkeypatch.undo()
    # The resumed run's results equal those of one uninterrupted run.
    full = tmp_path / "full"
    run([*args[:5], full, *args[6:]])
    resumed = {r["path"]: r["score"] for r in read_records(out)}
    assert resumed == {r["path"]: r["score"] for r in read_records(full)}


def test_jobs_0_and_3_give_identical_results(data, tmp_path):
    base = ["detect", data / "queries", data / "refs", "--refs", data / "refs", *FAST, "--threshold", "0.3",
            "--batch-size", "2"]
    run([*base, "--jobs", "0", "--out", tmp_path / "j0"])
    run([*base, "--jobs", "3", "--out", tmp_path / "j3"])
    a, b = read_records(tmp_path / "j0"), read_records(tmp_path / "j3")
    assert len(a) == 9
    keys = ("path", "score", "decision", "threshold", "map", "mask", "overlay")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    for ra in a:
        np.testing.assert_array_equal(np.load(tmp_path / "j0" / ra["map"]), np.load(tmp_path / "j3" / ra["map"]))


def test_tiff_maps_hold_the_same_float32_values(data, tmp_path):
    common = ["detect", data / "queries" / "scratch_0.png", "--refs", data / "refs", *FAST, "--threshold", "none"]
    run([*common, "--out", tmp_path / "npy"])
    run([*common, "--out", tmp_path / "tiff", "--map-format", "tiff"])
    (rn,), (rt,) = read_records(tmp_path / "npy"), read_records(tmp_path / "tiff")
    assert rt["map"].endswith(".tiff") and rn["decision"] is None and rn["mask"] is None  # no threshold
    tiff = np.asarray(Image.open(tmp_path / "tiff" / rt["map"]))
    assert tiff.dtype == np.float32
    np.testing.assert_array_equal(tiff, np.load(tmp_path / "npy" / rn["map"]))
    run([*common, "--out", tmp_path / "x", "--map-format", "png"], code=2)
    # A pixel threshold alone: masks, but no OK/NG decision.
    run([*common, "--out", tmp_path / "pix", "--pixel-threshold", "0.2"])
    (rp,) = read_records(tmp_path / "pix")
    assert rp["decision"] is None and rp["pixel_threshold"] == 0.2
    mask = np.asarray(Image.open(tmp_path / "pix" / rp["mask"])) == 255
    np.testing.assert_array_equal(mask, np.load(tmp_path / "pix" / rp["map"]) > 0.2)
    assert mask.any()


def test_config_file_command_line_overrides_and_settings_json_repeats_the_run(data, tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "images": [str(data / "queries")],
                "refs": str(data / "refs"),
                "out": str(out),
                "method": "patchknn",
                "threshold": 0.05,
                "pixel-threshold": 0.2,
                "jobs": 0,
                "map_format": "tiff",
                "set": {"image_size": 128, "neighbourhood": 3},
            }
        )
    )
    run(["detect", "--config", cfg, "--threshold", "0.3"])
    settings = json.loads((out / "settings.json").read_text())
    opts = settings["options"]
    assert opts["threshold"] == "0.3" and opts["pixel_threshold"] == 0.2 and opts["jobs"] == 0
    assert opts["map_format"] == "tiff" and opts["images"] == [str(data / "queries")]
    assert settings["settings"]["image_size"] == 128 and settings["threshold"]["value"] == 0.3
    recs = read_records(out)
    assert len(recs) == 5 and {r["threshold"] for r in recs} == {0.3} and {r["pixel_threshold"] for r in recs} == {0.2}
    assert all(r["map"].endswith(".tiff") for r in recs)
    # settings.json is itself a config: the same run again, elsewhere, gives the same results.
    run(["detect", "--config", out / "settings.json", "--out", tmp_path / "again"])
    again = json.loads((tmp_path / "again" / "settings.json").read_text())
    assert again["options"] == {**opts, "out": str(tmp_path / "again"), "config": str(out / "settings.json")}
    assert [(r["path"], r["score"], r["decision"]) for r in read_records(tmp_path / "again")] == [
        (r["path"], r["score"], r["decision"]) for r in recs
    ]


def test_command_line_beats_config_even_at_the_default_value(data, tmp_path):
    """--config values are defaults (click's default_map): any flag given on the command line wins,
    also one given with the value that is its own default (--jobs 2); the file wins over defaults."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"jobs": 0, "map-format": "tiff", "image-size": 96, "threshold": 0.05}))
    out = tmp_path / "out"
    run(["detect", data / "queries", "--config", cfg, "--jobs", "2", "--image-size", "128", "--method", "patchknn",
         "--out", out])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["options"]["jobs"] == 2 and settings["options"]["image_size"] == 128
    assert settings["options"]["map_format"] == "tiff" and settings["settings"]["image_size"] == 128
    assert {r["threshold"] for r in read_records(out)} == {0.05}


def test_config_errors_are_clear(data, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("images: [x]\nthreshhold: 0.3\n")
    res = run(["detect", "--config", cfg], code=2)
    assert "unknown option 'threshhold'" in res.output
    cfg.write_text("jobs: many\n")
    res = run(["detect", data / "queries", "--config", cfg], code=2)
    assert "'jobs'" in res.output
    cfg.write_text("- just\n- a list\n")
    assert "expected a mapping" in run(["detect", data / "queries", "--config", cfg], code=2).output
    cfg.write_text(f"refs: {data / 'refs'}\nimage-size: 128\nthreshold: none\n")
    model = tmp_path / "m"
    run(["fit", "--config", cfg, "--out", model])
    assert json.loads((model / "detector.json").read_text())["threshold"] is None


def test_fade_descriptions_reach_results(data, tmp_path):
    out = tmp_path / "out"
    run(["detect", data / "queries" / "scratch_0.png", "--method", "fade", "--backbone", "test-tiny",
         "--set", "classification_size=32", "--set", "segmentation_sizes=32,64", "--threshold", "0.5",
         "--out", out])
    (rec,) = read_records(out)
    assert rec["status"] == "ok" and len(rec["descriptions"]) >= 1
    assert all(isinstance(d["text"], str) and d["text"] and isinstance(d["similarity"], float)
               for d in rec["descriptions"])
    with open(out / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["top_description"] == rec["descriptions"][0]["text"]
    assert json.loads((out / "settings.json").read_text())["settings"]["segmentation_sizes"] == [32, 64]


def test_output_folder_inside_the_input_folder_is_not_scored(data, tmp_path):
    import shutil

    q = tmp_path / "q"
    shutil.copytree(data / "queries", q)
    args = ["detect", q, "--refs", data / "refs", "--out", q / "results", *FAST, "--threshold", "0.3"]
    run(args)
    res = run(args)
    assert "resuming: 5 of 5 images already done" in res.output and "scored 0 images" in res.output
    assert len(read_records(q / "results")) == 5
    res = run(["detect", tmp_path / "q", "--model", tmp_path / "no_model", "--out", tmp_path / "o"], code=2)
    assert "not a saved anomalens model" in res.output


def test_presets_are_configs_every_method_setting_of_which_exists(data, tmp_path):
    from anomalens import Detector
    from anomalens.cli.config import PRESETS, preset_names

    assert preset_names() == ["any-surface", "large-defects", "musc-textured", "textured-surface"]
    for name in preset_names():
        preset = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
        det = Detector(preset["method"], **preset["set"])  # an unknown setting would raise
        assert all(getattr(det.method.settings, k) == (tuple(v) if isinstance(v, list) else v)
                   for k, v in preset["set"].items())
        assert name in run(["detect", "--help"]).output.replace("\n", " ").replace("│", " ")
    model = tmp_path / "m"
    run(["fit", "--config", "textured-surface", "--refs", data / "refs", "--image-size", "128", "--out", model])
    settings = json.loads((model / "detector.json").read_text())["settings"]
    assert settings["magnitudes"] is True and settings["blocks"] == [4, 10, 14] and settings["image_size"] == 128


def test_set_on_the_command_line_adds_to_a_config_and_the_run_repeats(data, tmp_path):
    out = tmp_path / "out"
    run(["detect", data / "queries", "--refs", data / "refs", "--config", "large-defects", "--set", "image_size=128",
         "--set", "coarse_weight=1.5", "--out", out])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["coarse_weight"] == 1.5 and settings["settings"]["image_size"] == 128
    assert settings["options"]["set_"] == [
        "coarse_weight=2.0", 'fused_recipe="none"', "image_size=128", "coarse_weight=1.5"
    ]
    run(["detect", "--config", out / "settings.json", "--out", tmp_path / "again"])
    again = json.loads((tmp_path / "again" / "settings.json").read_text())
    assert again["settings"] == settings["settings"]


def test_an_unknown_config_name_lists_the_presets(data):
    res = run(["detect", data / "queries", "--config", "texture"], code=2)
    presets = "any-surface, large-defects, musc-textured, textured-surface"
    assert f"texture: no such config file, and not a preset (presets: {presets})" in res.output
