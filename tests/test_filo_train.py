"""FiLo training on a tiny synthetic MVTec-layout dataset: loss, checkpoints, resume, loading, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anomalens.methods.filo.checkpoint import FILO_CONFIG, FILO_WEIGHTS, MissingCheckpointError, read_trained
from anomalens.methods.filo.model import FiloConfig
from anomalens.methods.filo.train import (
    TrainConfig,
    Trainer,
    optimizer_from_flat,
    optimizer_to_flat,
    train_filo,
)
from anomalens.methods.filo.train_data import mask_position

SIZE = 28


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _write_category(root: Path, name: str, rng: np.random.Generator) -> None:
    """2 good and 2 anomalous test images (bright square on a noisy grey object) with masks."""
    cat = root / name
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cat / sub).mkdir(parents=True)
    for i in range(2):
        base = (110 + rng.integers(0, 20, (SIZE, SIZE, 3))).astype(np.uint8)
        Image.fromarray(base).save(cat / "train/good" / f"{i:03d}.png")
        Image.fromarray(base).save(cat / "test/good" / f"{i:03d}.png")
        bad = base.copy()
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        y, x = (2, 2) if i == 0 else (16, 18)
        bad[y : y + 8, x : x + 8] = 250
        mask[y : y + 8, x : x + 8] = 255
        Image.fromarray(bad).save(cat / "test/spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth/spot" / f"{i:03d}_mask.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mvtec")
    rng = np.random.default_rng(0)
    _write_category(root, "bottle", rng)
    vocabulary = root.parent / "vocab.json"
    vocabulary.write_text(json.dumps({"version": 1, "categories": {"bottle": ["bright spot", "crack"]},
                                      "generic": ["defect"]}))
    return root, vocabulary


def _config(dataset, out: Path, **overrides) -> TrainConfig:
    root, vocabulary = dataset
    small = FiloConfig(n_ctx=4, normal_states=("flawless", "good"), abnormal_states=("damaged",))
    base = TrainConfig(data=str(root), out=str(out), dataset="mvtec", backbone="test-tiny-24", weights=None,
                       image_size=SIZE, epochs=2, adapter_epochs=1, vocabulary=str(vocabulary),
                       checkpoint_every=3, model=small)
    return replace(base, **overrides)


def test_mask_position():
    mask = np.zeros((30, 30), dtype=bool)
    assert mask_position(mask) == "center"
    mask[0:5, 25:30] = True
    assert mask_position(mask) == "top right"


def test_optimizer_state_round_trip_without_pickle():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    meta = json.loads(json.dumps(meta))  # must survive JSON
    fresh = torch.optim.AdamW([p], lr=0.1)
    fresh.load_state_dict(optimizer_from_flat(tensors, meta))
    a, b = opt.state_dict(), fresh.state_dict()
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(a["state"][0][key], b["state"][0][key])


def test_training_lowers_the_local_loss(dataset, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_config(dataset, tmp_path, epochs=3, adapter_epochs=0, dense_lr=1e-3), log=lambda m: None)

    def mean_loss() -> float:
        with torch.no_grad():
            losses = [trainer.loss(0, *trainer.batch([i])).item() for i in range(len(trainer.samples))]
        return float(np.mean(losses))

    before = mean_loss()
    trainer.run(progress_bar=False)
    after = mean_loss()
    assert after < before - 0.01, (before, after)
    assert [e["stage"] for e in trainer.losses] == [0, 0, 0]


def test_checkpoint_files_and_detector_loading(dataset, tmp_path):
    from anomalens.detector import Detector, load_detector
    from anomalens.images import LoadedImage

    out = train_filo(_config(dataset, tmp_path / "run"), progress_bar=False, log=lambda m: None)
    info = json.loads((out / FILO_CONFIG).read_text())
    assert info["backbone"] == "test-tiny-24" and info["weights"] is None and info["image_size"] == SIZE
    assert info["model"]["layers"] == [6, 12, 18, 24] and info["model"]["n_ctx"] == 4
    assert info["vocabulary"]["categories"] == {"bottle": ["bright spot", "crack"]}
    assert info["training"]["complete"] and info["training"]["progress"]["global_step"] == 12
    saved = load_file(str(out / FILO_WEIGHTS))
    assert "prompt_learner.ctx_normal" in saved and not any(k.startswith("backbone.") for k in saved)

    img = LoadedImage("q", np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    det = Detector(method="filo", checkpoint=str(out), category="bottle")
    assert det.method.image_size == SIZE
    for key, value in det.method.model.trainable_state_dict().items():
        assert torch.equal(value, saved[key])
    first = det.predict([img])[0]
    again = Detector(method="filo", checkpoint=str(out), category="bottle").predict([img])[0]
    assert first.anomaly_map.shape == (30, 40)
    assert np.array_equal(first.anomaly_map, again.anomaly_map) and first.score == again.score
    assert first.descriptions[0][0].endswith("at center.")
    untrained = Detector(method="filo", backbone="test-tiny-24", image_size=SIZE, category="bottle")
    assert not np.allclose(untrained.predict([img])[0].anomaly_map, first.anomaly_map)
    with pytest.raises(ValueError, match="trained on backbone"):
        Detector(method="filo", checkpoint=str(out), backbone="test-tiny")
    det.save(tmp_path / "saved")
    reloaded = load_detector(tmp_path / "saved").predict([img])[0]
    assert np.array_equal(reloaded.anomaly_map, first.anomaly_map)


def test_resume_gives_identical_weights(dataset, tmp_path):
    straight = train_filo(_config(dataset, tmp_path / "a"), progress_bar=False, log=lambda m: None)
    interrupted = _config(dataset, tmp_path / "b", max_steps=5)  # mid-epoch, mid-stage 1
    train_filo(interrupted, progress_bar=False, log=lambda m: None)
    partial = json.loads((tmp_path / "b" / FILO_CONFIG).read_text())["training"]
    assert not partial["complete"] and partial["progress"]["global_step"] == 5
    assert (tmp_path / "b" / "resume" / "state.safetensors").is_file()
    messages: list[str] = []
    train_filo(replace(interrupted, max_steps=9), progress_bar=False, log=messages.append)  # into stage 2
    resumed = train_filo(replace(interrupted, max_steps=None), progress_bar=False, log=messages.append)
    assert any("resuming" in m and "step 9" in m for m in messages)
    a, b = load_file(str(straight / FILO_WEIGHTS)), load_file(str(resumed / FILO_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / FILO_CONFIG).read_text())["training"]["complete"]


def test_resume_refuses_other_settings(dataset, tmp_path):
    train_filo(_config(dataset, tmp_path, max_steps=1), progress_bar=False, log=lambda m: None)
    with pytest.raises(ValueError, match="image_size"):
        train_filo(_config(dataset, tmp_path, image_size=56, max_steps=2), progress_bar=False, log=lambda m: None)
    # --no-resume starts over
    train_filo(_config(dataset, tmp_path, image_size=56, max_steps=1, resume=False), progress_bar=False,
               log=lambda m: None)


def test_read_trained_missing_is_a_clear_error(tmp_path):
    with pytest.raises(MissingCheckpointError, match="anomalens train filo"):
        read_trained(tmp_path)


def test_cli_train_then_benchmark_zero_shot(dataset, tmp_path):
    from typer.testing import CliRunner

    from anomalens.benchmark import BenchmarkSettings, run_benchmark
    from anomalens.cli import app

    root, vocabulary = dataset
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "train", "filo", "--data", str(root), "--dataset", "mvtec", "--out", str(out), "--backbone", "test-tiny-24",
        "--image-size", str(SIZE), "--epochs", "1", "--adapter-epochs", "1", "--max-steps", "2",
        "--categories", "bottle", "--vocabulary", str(vocabulary), "--n-ctx", "2", "--no-progress",
        "--dice-unit", "row",
    ])
    assert result.exit_code == 0, result.output
    info = json.loads((out / FILO_CONFIG).read_text())
    assert info["training"]["progress"]["global_step"] == 2 and info["model"]["meta_net"] is True
    assert info["training"]["dice_unit"] == "row"
    summary = run_benchmark(
        BenchmarkSettings(data=str(root), method="filo", method_settings={"checkpoint": str(out)}),
        tmp_path / "bench", progress=False,
    )
    bottle = summary["shots"]["0"]["categories"]["bottle"]
    assert bottle["images"] == 4 and bottle["failed"] == 0 and bottle["image_auroc"] is not None
    assert summary["backbone"].startswith("test-tiny-24")
