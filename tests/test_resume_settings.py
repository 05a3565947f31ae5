"""Issue 12 item 6: a resumed run must have the same effective settings, compared in full."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from PIL import Image

from anomalens import benchmark as bench
from anomalens.benchmark import BenchmarkSettings, run_benchmark
from anomalens.outputs import read_records
from anomalens.run_identity import differences

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--method", "patchknn", "--image-size", "64", "--jobs", "0", "--no-report"]


def texture(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 160, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    for i in range(3):
        (root / "refs").mkdir(exist_ok=True)
        Image.fromarray(texture(i)).save(root / "refs" / f"g{i}.png")
    for i in range(2):
        (root / "other_refs").mkdir(exist_ok=True)
        Image.fromarray(texture(10 + i)).save(root / "other_refs" / f"h{i}.png")
    for i in range(3):
        (root / "queries").mkdir(exist_ok=True)
        Image.fromarray(texture(20 + i)).save(root / "queries" / f"q{i}.png")
    return root


def test_detect_resume_refuses_other_effective_settings_naming_them(data, tmp_path):
    out = tmp_path / "out"
    base = ["detect", data / "queries", "--out", out, *FAST, "--threshold", "0.5"]
    run([*base, "--refs", data / "refs"])
    first = (out / "results.jsonl").read_bytes()
    # The same command resumes.
    assert "resuming: 3 of 3 images already done" in run([*base, "--refs", data / "refs"]).output
    cases = [
        (["--refs", data / "refs", "--bit-depth", "12"], ['bit_depth: "auto" -> 12']),
        (["--refs", data / "other_refs"], ["model: ", "references: 3 images -> 2 images"]),
        (["--refs", data / "refs", "--set", "few_shot_k=2"], ["settings.few_shot_k: 3 -> 2"]),
        (["--refs", data / "refs", "--pixel-threshold", "0.7"], ["pixel_threshold.value: 0.5 -> 0.7"]),
    ]
    for extra, named in cases:
        res = run([*base, *extra], code=2)
        assert "holds results made with other settings (" in res.output, extra
        for fragment in named:
            assert fragment in res.output, (extra, res.output)
        assert "Write to a new --out, or pass --overwrite" in res.output
        assert (out / "results.jsonl").read_bytes() == first  # nothing added or rewritten
    # The user's ways out: --overwrite, or another --out.
    run([*base, "--refs", data / "refs", "--bit-depth", "12", "--overwrite"])
    assert len(read_records(out)) == 3
    run([*base[:-3], "--out", tmp_path / "out2", *FAST, "--threshold", "0.9", "--refs", data / "refs"])


def test_detect_resume_of_a_folder_written_before_effective_settings(data, tmp_path):
    out = tmp_path / "old"
    base = ["detect", data / "queries", "--refs", data / "refs", "--out", out, *FAST]
    run([*base, "--threshold", "0.5"])
    settings = json.loads((out / "settings.json").read_text())
    del settings["effective"]  # as an older anomalens wrote it
    (out / "settings.json").write_text(json.dumps(settings))
    run([*base, "--threshold", "0.5"])
    res = run([*base, "--threshold", "0.6"], code=2)
    assert "threshold.value: 0.5 -> 0.6" in res.output
    (out / "settings.json").unlink()
    res = run([*base, "--threshold", "0.5"], code=2)
    assert "its settings.json is missing or unreadable" in res.output


def test_differences_names_nested_settings():
    old = {"settings": {"k": 1, "image_size": 64}, "bit_depth": "auto", "references": ["/a", "/b"]}
    new = {"settings": {"k": 1, "image_size": 96}, "bit_depth": 12, "references": ["/a", "/c", "/d"]}
    assert differences(old, new) == [
        'bit_depth: "auto" -> 12',
        "references: 2 images -> 3 images (3 differ)",
        "settings.image_size: 64 -> 96",
    ]


@pytest.fixture
def dataset(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for folder, n in (("train/good", 3), ("test/good", 2), ("test/spot", 2)):
        (root / "tiles" / folder).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(100, 140, (48, 48), dtype=np.uint8)
            if folder == "test/spot":
                img[10:20, 10:20] = 250
            Image.fromarray(img).save(root / "tiles" / folder / f"{i}.png")
    return root


def test_benchmark_reuses_runs_only_of_the_same_settings_and_data(dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    calls = []
    real = bench.evaluate_category
    def counting(det, split, *args, **kwargs):
        calls.append(split.category)
        return real(det, split, *args, **kwargs)

    monkeypatch.setattr(bench, "evaluate_category", counting)
    settings = BenchmarkSettings(data=str(dataset), shots=[0], method_settings={"image_size": 64})
    first = run_benchmark(settings, out, progress=False)
    assert len(calls) == 1
    run_benchmark(settings, out, progress=False)  # same settings, same data: reused
    assert len(calls) == 1
    # Other settings: not the old numbers under the new settings; computed, the old run kept.
    other = BenchmarkSettings(data=str(dataset), shots=[0], method_settings={"image_size": 96})
    result = run_benchmark(other, out, progress=False)
    assert len(calls) == 2 and result["runs"] == 1
    assert "method_settings.image_size: 64 -> 96" in capsys.readouterr().out
    assert result["shots"]["0"]["categories"]["tiles"]["images"] == first["shots"]["0"]["categories"]["tiles"]["images"]
    run_benchmark(BenchmarkSettings(**{**vars(settings), "image_reading": {"bit_depth": 12}}), out, progress=False)
    assert len(calls) == 3
    # Changed data (one more defect image): the category is run again.
    Image.fromarray(np.full((48, 48), 250, np.uint8)).save(dataset / "tiles" / "test" / "spot" / "9.png")
    result = run_benchmark(settings, out, progress=False)
    assert len(calls) == 4 and result["shots"]["0"]["categories"]["tiles"]["images"] == 5
    assert "the files of tiles changed" in capsys.readouterr().out
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 4  # every run kept


def test_fit_saves_the_bit_depth_and_detect_with_the_model_uses_it(data, tmp_path):
    run(["fit", "--refs", data / "refs", "--out", tmp_path / "m", "--image-size", "64", "--bit-depth", "12",
         "--max-pixels", "1000000"])
    saved = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert saved["image_reading"] == {"bit_depth": 12, "max_pixels": 1_000_000}
    out = tmp_path / "out"
    run(["detect", data / "queries", "--model", tmp_path / "m", "--out", out, "--jobs", "0", "--no-report"])
    assert json.loads((out / "settings.json").read_text())["effective"]["bit_depth"] == 12
    res = run(["detect", data / "queries", "--model", tmp_path / "m", "--out", tmp_path / "o2", "--bit-depth", "16",
               "--jobs", "0", "--no-report"])
    assert "note: --bit-depth 16; the model's references were read at 12" in res.output
