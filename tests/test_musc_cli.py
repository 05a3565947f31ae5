"""`musc` through the command line: the run is the batch, resume, references, benchmark, models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from PIL import Image

from anomalens.outputs import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--method", "musc", "--image-size", "64", "--set", "progress=false", "--jobs", "0"]


def texture(seed: int, defect: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:48]
    base = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = np.clip(base[:, :, None] + np.random.default_rng(seed).normal(0, 6, (48, 48, 3)), 0, 255)
    img = img.astype(np.uint8)
    if defect:
        img[16:28, 20:32] = (20, 15, 10)
    return img


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "line"
    root.mkdir()
    for i in range(4):
        Image.fromarray(texture(i)).save(root / f"ok_{i}.png")
    Image.fromarray(texture(50, defect=True)).save(root / "bad_0.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ncut")
    return root


def _scores(out: Path) -> dict[str, float]:
    return {Path(r["path"]).name: r["score"] for r in read_records(out) if r.get("status") == "ok"}


def test_detect_scores_the_run_as_one_batch_and_resumes_identically(folder, tmp_path):
    out = tmp_path / "out"
    result = run(["detect", folder, "--out", out, *FAST], code=1)  # broken.png fails, the rest goes on
    assert "broken.png" in result.output
    scores = _scores(out)
    assert len(scores) == 5 and max(scores, key=scores.get) == "bad_0.png"
    batch = json.loads((out / "batch.json").read_text())
    assert len(batch["images"]) == 6 and batch["references"] == []
    assert "scored jointly" in (out / "report.html").read_text()

    # An interruption after two images were written: keep those lines, run the same command.
    jsonl = out / "results.jsonl"
    lines = jsonl.read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("status") == "ok"][:2]
    jsonl.write_text("\n".join(kept) + "\n")
    run(["detect", folder, "--out", out, *FAST], code=1)
    resumed = _scores(out)
    assert resumed.keys() == scores.keys()
    for name, value in scores.items():
        assert resumed[name] == pytest.approx(value, abs=1e-6)


def test_resume_refuses_a_different_batch(folder, tmp_path):
    out = tmp_path / "out"
    run(["detect", folder, "--out", out, *FAST], code=1)
    Image.fromarray(texture(77)).save(folder / "ok_new.png")
    result = run(["detect", folder, "--out", out, *FAST], code=2)
    assert "different batch" in result.output and "1 input images added" in result.output
    run(["detect", folder, "--out", out, "--overwrite", *FAST], code=1)
    assert len(_scores(out)) == 6


def test_references_join_the_batch_and_a_fitted_model_keeps_them(folder, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        Image.fromarray(texture(100 + i)).save(refs / f"good_{i}.png")
    out = tmp_path / "out"
    run(["detect", folder / "bad_0.png", folder / "ok_0.png", "--refs", refs, "--out", out, *FAST])
    batch = json.loads((out / "batch.json").read_text())
    assert len(batch["references"]) == 3
    with_refs = _scores(out)
    assert with_refs["bad_0.png"] > with_refs["ok_0.png"]

    model = tmp_path / "model"
    run(["fit", "--refs", refs, "--out", model, *[a for a in FAST if a != "--jobs" and a != "0"]])
    out2 = tmp_path / "out2"
    run(["detect", folder / "bad_0.png", folder / "ok_0.png", "--model", model, "--out", out2, "--jobs", "0"])
    from_model = _scores(out2)
    for name, value in with_refs.items():
        assert from_model[name] == pytest.approx(value, abs=1e-6)
    assert all(r["decision"] in ("OK", "NG") for r in read_records(out2) if r["status"] == "ok")


def test_benchmark_zero_shot_uses_the_test_images_as_the_batch(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(6):
        path = root / "tiles" / "test" / "good" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(i)).save(path)
    for i in range(3):
        img = texture(20 + i)
        mask = np.zeros((48, 48), dtype=np.uint8)
        r, c = rng.integers(4, 30, 2)
        mask[r : r + 12, c : c + 12] = 255
        img[mask > 0] = (250, 30, 30)
        for sub, arr, name in (("test/spot", img, f"{i}.png"), ("ground_truth/spot", mask, f"{i}_mask.png")):
            path = root / "tiles" / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    out = tmp_path / "bench"
    result = run(
        ["benchmark", "--data", root, "--method", "musc", "--shots", "0", "--out", out, "--no-progress",
         "--image-size", "64", "--set", "progress=false"]
    )
    assert "tiles" in result.output
    run_record = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert run_record["metrics"]["batch"] == {"images": 9, "references": 0}
    # 48 px images on a 4 x 4 patch grid (64 px input, stride 16): coarse maps, still far above chance.
    assert run_record["metrics"]["image_auroc"] > 0.9 and run_record["metrics"]["pixel_auroc"] > 0.85


def test_zero_shot_pseudo_references_are_listed_in_batch_json_and_resume_identically(tmp_path):
    root = tmp_path / "line"
    root.mkdir()
    for i in range(16):
        Image.fromarray(texture(i)).save(root / f"ok_{i:02d}.png")
    Image.fromarray(texture(50, defect=True)).save(root / "bad_0.png")
    out = tmp_path / "out"
    result = run(["detect", root, "--out", out, *FAST])
    assert "pseudo_reference_share" in result.output and "pseudo-references: the 2 images" in result.output
    chosen = json.loads((out / "batch.json").read_text())["pseudo_references"]
    assert len(chosen) == 2 and all(Path(p).parent == root and Path(p).name.startswith("ok_") for p in chosen)
    scores = _scores(out)
    assert max(scores, key=scores.get) == "bad_0.png"

    jsonl = out / "results.jsonl"
    jsonl.write_text("\n".join(jsonl.read_text().splitlines()[:5]) + "\n")  # interrupted after 5 images
    run(["detect", root, "--out", out, *FAST])
    resumed = _scores(out)
    assert resumed.keys() == scores.keys()
    for name, value in scores.items():
        assert resumed[name] == pytest.approx(value, abs=1e-6)
