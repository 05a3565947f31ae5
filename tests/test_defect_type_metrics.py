"""Each defect type's metrics on its own (`anomalens benchmark --by-defect-type`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from anomalens import benchmark as bench
from anomalens.benchmark import METRICS, BenchmarkSettings, run_benchmark
from anomalens.cli import app
from anomalens.data.base import Sample
from anomalens.defect_type_metrics import DefectTypeMetrics, defect_type_table, summarise_defect_types


def _mask(path: Path, cells: list[tuple[int, int]]) -> Path:
    arr = np.zeros((4, 4), np.uint8)
    for r, c in cells:
        arr[r, c] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _case(tmp_path):
    """Two good images, two of type a (2 defect pixels each), one of b (4), one of c without a mask."""
    rng = np.random.default_rng(0)
    rows = [
        ("good", 0.1, None),
        ("good", 0.5, None),
        ("a", 0.4, [(0, 0), (0, 1)]),
        ("a", 0.9, [(3, 3), (2, 3)]),
        ("b", 0.3, [(1, 1), (1, 2), (2, 1), (2, 2)]),
        ("c", 0.8, "no mask"),
    ]
    samples, results = [], []
    for i, (kind, score, cells) in enumerate(rows):
        mask = _mask(tmp_path / f"m{i}.png", cells) if isinstance(cells, list) else None
        samples.append(Sample(tmp_path / f"{i}.png", int(kind != "good"), mask, "cat", kind))
        results.append(SimpleNamespace(score=score, anomaly_map=rng.random((4, 4)).astype(np.float32)))
    return samples, results


def test_each_type_against_the_good_images_by_hand(tmp_path):
    samples, results = _case(tmp_path)
    types = DefectTypeMetrics(samples)
    for s, r in zip(samples, results):
        types.add(s, r)
    out = types.compute()
    assert sorted(out) == ["a", "b", "c"]
    # a (0.4, 0.9) over good (0.1, 0.5): 3 of 4 pairs ranked right; b (0.3): 1 of 2; c (0.8): both
    assert out["a"]["image_auroc"] == pytest.approx(0.75)
    assert out["b"]["image_auroc"] == pytest.approx(0.5)
    assert out["c"]["image_auroc"] == pytest.approx(1.0)
    assert out["a"]["images"] == 2 and out["a"]["image_share"] == pytest.approx(2 / 4)
    # 4 of the 8 masked defect pixels are a's, 4 are b's; c has no mask: no pixel metrics, no share
    assert out["a"]["defect_pixel_share"] == pytest.approx(0.5)
    assert out["b"]["defect_pixel_share"] == pytest.approx(0.5)
    assert out["c"]["defect_pixel_share"] == 0.0 and "pixel_auroc" not in out["c"]
    # pixel AUROC over the good images' pixels and the type's, by sklearn
    for name, picks in (("a", [0, 1, 2, 3]), ("b", [0, 1, 4])):
        maps = np.concatenate([results[i].anomaly_map.ravel() for i in picks])
        truth = np.concatenate(
            [
                np.zeros(16, bool)
                if samples[i].mask_path is None
                else np.array(Image.open(samples[i].mask_path)).ravel() > 0
                for i in picks
            ]
        )
        assert out[name]["pixel_auroc"] == pytest.approx(roc_auc_score(truth, maps))


def test_without_pixels_only_image_metrics(tmp_path):
    samples, results = _case(tmp_path)
    types = DefectTypeMetrics(samples, pixels=False)
    for s, r in zip(samples, results):
        types.add(s, r)
    out = types.compute()
    assert out["a"]["image_auroc"] == pytest.approx(0.75)
    assert "pixel_auroc" not in out["a"] and out["a"]["defect_pixel_share"] is None


def test_seeds_are_averaged_and_tabled():
    def run(seed, auroc):
        table = {"x": {"images": 3, "image_share": 1.0, "defect_pixel_share": 1.0, "image_auroc": auroc}}
        return {"category": "cat", "shots": 1, "seed": seed, "metrics": {"by_defect_type": table}}

    summary = summarise_defect_types(
        [run(0, 0.6), run(1, 0.8), {"category": "cat", "shots": 1, "seed": 2, "metrics": {}}], ["cat"], [1]
    )
    entry = summary["1"]["cat"]["x"]
    assert entry["image_auroc"] == pytest.approx(0.7) and entry["image_auroc_std"] == pytest.approx(0.1)
    assert entry["seeds"] == 2 and entry["pixel_auroc"] is None
    assert "| cat | x | 3 | 100.0 | 70.0 ± 10.0 | N/A | N/A |" in defect_type_table(summary)


@pytest.fixture
def two_types(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "data" / "tiles"
    for split, n in (("train", 2), ("test", 3)):
        for i in range(n):
            (root / split / "good").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(100, 140, (48, 48), dtype=np.uint8)).save(root / split / "good" / f"{i}.png")
    for kind, box in (("spot", (slice(10, 16), slice(10, 16))), ("band", (slice(30, 40), slice(0, 48)))):
        for i in range(2):
            img = rng.integers(100, 140, (48, 48), dtype=np.uint8)
            mask = np.zeros((48, 48), np.uint8)
            mask[box] = 255
            img[mask > 0] = 240
            (root / "test" / kind).mkdir(parents=True, exist_ok=True)
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "test" / kind / f"{i}.png")
            Image.fromarray(mask).save(root / "ground_truth" / kind / f"{i}_mask.png")
    return tmp_path / "data"


def test_benchmark_by_defect_type_resumes_and_leaves_the_category_metrics(two_types, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    calls = []
    real = bench.evaluate_category
    monkeypatch.setattr(bench, "evaluate_category", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(by_type):
        settings = BenchmarkSettings(
            data=str(two_types), shots=[1], method_settings={"image_size": 64}, by_defect_type=by_type
        )
        calls.clear()
        return run_benchmark(settings, out, progress=False)

    def category(result):
        return {m: result["shots"]["1"]["categories"]["tiles"][m] for m in METRICS}

    plain = run(False)
    assert len(calls) == 1 and "by_defect_type" not in plain
    typed = run(True)  # the plain run lacks the types' metrics: redone
    assert len(calls) == 1
    assert category(typed) == pytest.approx(category(plain))
    per_type = typed["by_defect_type"]["1"]["tiles"]
    assert sorted(per_type) == ["band", "spot"]
    # the band holds 480 of 480 + 36 defect pixels per image pair
    assert per_type["band"]["defect_pixel_share"] == pytest.approx(480 / 516)
    assert "each defect type against the good images" in (out / "results.md").read_text()
    with open(out / "results_by_defect_type.csv", newline="") as fh:
        rows = {r["defect_type"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["band", "spot"] and rows["spot"]["shots"] == "1" and rows["spot"]["images"] == "2"
    assert float(rows["band"]["defect_pixel_share"]) == pytest.approx(480 / 516)
    assert float(rows["spot"]["image_auroc"]) == pytest.approx(per_type["spot"]["image_auroc"])
    assert json.loads((out / "results.json").read_text())["by_defect_type"] == typed["by_defect_type"]
    again = run(False)  # the typed run serves a plain benchmark: nothing redone
    assert not calls and category(again) == pytest.approx(category(plain))
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2


def test_cli_flag_prints_the_table(two_types, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--data",
            str(two_types),
            "--shots",
            "1",
            "--image-size",
            "64",
            "--out",
            str(tmp_path / "b"),
            "--by-defect-type",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| tiles | band | 2 |" in res.output and "| tiles | spot | 2 |" in res.output
