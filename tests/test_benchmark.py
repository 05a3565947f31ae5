"""`anomalens benchmark`: runs, resume, N/A handling, the files it writes; `anomalens data index`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anomalens import benchmark as bench
from anomalens.benchmark import BenchmarkSettings, markdown_table, run_benchmark
from anomalens.cli import app


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def dataset(tmp_path):
    """Two MVTec-layout categories: 'tiles' (normals, defects with masks) and 'strip' (defects only)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(4):
        _write(root / "tiles" / "train" / "good" / f"{i}.png", rng.integers(100, 140, (48, 48), dtype=np.uint8))
    for i in range(3):
        _write(root / "tiles" / "test" / "good" / f"{i}.png", rng.integers(100, 140, (48, 48), dtype=np.uint8))
    for i in range(3):
        img = rng.integers(100, 140, (48, 48), dtype=np.uint8)
        mask = np.zeros((48, 48), dtype=np.uint8)
        mask[10:22, 20:30] = 255
        img[mask > 0] = 250
        _write(root / "tiles" / "test" / "spot" / f"{i}.png", img)
        _write(root / "tiles" / "ground_truth" / "spot" / f"{i}_mask.png", mask)
        _write(root / "strip" / "test" / "spot" / f"{i}.png", img)
        _write(root / "strip" / "ground_truth" / "spot" / f"{i}_mask.png", mask)
    return root


def test_benchmark_tables_na_and_resume(dataset, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    settings = BenchmarkSettings(
        data=str(dataset), method="patchknn", shots=[0, 2], seeds=[0, 1], method_settings={"image_size": 64}
    )
    calls = []
    real = bench.evaluate_category
    monkeypatch.setattr(
        bench,
        "evaluate_category",
        lambda det, split, refs, *a, **k: calls.append((split.category, len(refs))) or real(det, split, refs, *a, **k),
    )
    result = run_benchmark(settings, out, progress=False)
    # tiles: zero-shot once + 2-shot for 2 seeds; strip: zero-shot only (no train/good)
    assert sorted(calls) == sorted([("tiles", 0), ("tiles", 2), ("tiles", 2), ("strip", 0)])
    zero = result["shots"]["0"]
    assert zero["categories"]["strip"]["image_auroc"] is None  # no normals: N/A, not 0 or NaN
    assert zero["categories"]["strip"]["pixel_auroc"] is not None
    # the planted bright spots are easy: both image and pixel AUROC well above chance
    assert result["shots"]["2"]["categories"]["tiles"]["image_auroc"] > 0.9
    assert result["shots"]["2"]["categories"]["tiles"]["pixel_auroc"] > 0.9
    assert result["shots"]["2"]["categories"]["tiles"]["seeds"] == [0, 1]
    assert zero["mean"]["image_auroc_categories"] == 1  # the mean skips the N/A category
    assert result["skipped_for_lack_of_references"] == {"strip": [2]}
    saved = json.loads((out / "results.json").read_text())
    for key in ("anomalens_version", "settings", "backbone", "shots", "peak_rss_mb"):
        assert key in saved
    entry = saved["shots"]["0"]["categories"]["tiles"]
    for key in (
        "image_auroc",
        "image_ap",
        "image_f1max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1max",
        "pixel_aupro",
        "images",
        "seconds",
        "images_per_second",
        "peak_rss_mb",
    ):
        assert key in entry
    assert "N/A" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().startswith("shots,category,image_auroc")

    # Interrupted run: drop the last finished run (and cut a line in half); only it is redone.
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    calls.clear()
    again = run_benchmark(settings, out, progress=False)
    assert len(calls) == 1
    assert again["shots"]["0"]["mean"] == pytest.approx(result["shots"]["0"]["mean"])


def test_markdown_table_shows_std_and_na():
    summary = {"1": {"categories": {"a": {"image_auroc": 0.9, "image_auroc_std": 0.05}}, "mean": {"image_auroc": None}}}
    table = markdown_table(summary, metrics=("image_auroc",))
    assert "| a | 90.0 ± 5.0 |" in table and "| **mean** | N/A |" in table


def test_benchmark_cli_and_data_index(dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "benchmark",
            "--data",
            str(dataset),
            "--method",
            "patchknn",
            "--shots",
            "0",
            "--categories",
            "tiles",
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
            "--set",
            "image_size=64",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| tiles |" in res.output
    res = runner.invoke(app, ["data", "index", str(dataset)])
    assert res.exit_code == 0, res.output
    meta = json.loads((dataset / "meta.json").read_text())
    assert set(meta["test"]) == {"tiles", "strip"}
    res = runner.invoke(app, ["data", "index", str(dataset)])
    assert res.exit_code == 2 and "--overwrite" in res.output  # never overwritten silently


def test_fade_cli_with_a_weights_file(tmp_path):
    """`detect --method fade --weights FILE` on a tiny model whose weights the test writes."""
    import torch
    from safetensors.torch import save_file

    from anomalens.backbones.clip import create_clip

    torch.manual_seed(0)
    tiny = create_clip("test-tiny", pretrained=None)
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    rng = np.random.default_rng(1)
    for i in range(2):
        _write(tmp_path / "refs" / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        _write(tmp_path / "q" / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    args = [
        "detect",
        str(tmp_path / "q"),
        "--method",
        "fade",
        "--refs",
        str(tmp_path / "refs"),
        "--category",
        "bottle",
        "--backbone",
        "test-tiny",
        "--weights",
        str(weights),
        "--set",
        "classification_size=32",
        "--set",
        "segmentation_sizes=32,64",
        "--no-report",
    ]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o1")])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (tmp_path / "o1" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(len(r["descriptions"]) == 5 for r in records)
    settings = json.loads((tmp_path / "o1" / "settings.json").read_text())
    assert str(weights) in json.dumps(settings)
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "q"), "--method", "fade", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--weights" in res.output


def test_global_threads_option():
    import torch

    before = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["--threads", "1", "methods"])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1
        assert "patchknn" in res.output and "fade" in res.output
    finally:
        torch.set_num_threads(before)


def test_defects_without_mask_are_left_out_of_pixel_metrics(dataset, tmp_path):
    from anomalens import Detector
    from anomalens.benchmark import evaluate_category
    from anomalens.data import load_dataset

    def pixel_auroc(root):
        split = load_dataset(root)["tiles"]
        det = Detector(method="patchknn", image_size=64)
        return split, evaluate_category(det, split, [])

    _, whole = pixel_auroc(dataset)
    assert whole["defects_without_mask"] == 0
    # Drop one defect's mask, and make that defect's image defect-free in its unmasked part:
    # counting it as all-normal would bias the pixel metrics; it must be left out and counted.
    (dataset / "tiles" / "ground_truth" / "spot" / "0_mask.png").unlink()
    _, partial = pixel_auroc(dataset)
    assert partial["defects_without_mask"] == 1
    assert partial["image_auroc"] == whole["image_auroc"]  # image metrics still use every image
    # Equal to the metrics computed without that image at all:
    (dataset / "tiles" / "test" / "spot" / "0.png").unlink()
    _, without = pixel_auroc(dataset)
    assert partial["pixel_auroc"] == pytest.approx(without["pixel_auroc"], abs=1e-12)
