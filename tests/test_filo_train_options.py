"""FiLo training options: released AdamW betas, 2x2 mosaic, all nine positions, Dice per row, device, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_filo_train import SIZE, _config, dataset  # noqa: F401  (fixture)

from anomalens.device import resolve_device
from anomalens.methods.filo.losses import local_loss
from anomalens.methods.filo.train import Trainer, train_filo
from anomalens.methods.filo.train_data import EpochBatches, mosaic_item
from anomalens.text.prompts import POSITIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_bad_options_fail_with_one_line(dataset, tmp_path):  # noqa: F811
    for overrides, message in [
        ({"train_positions": "some"}, "train_positions"),
        ({"mosaic_probability": 1.5}, "mosaic_probability"),
        ({"workers": -1}, "workers"),
        ({"betas": (0.5, 1.0)}, "betas"),
        ({"dice_unit": "pixel"}, "dice_unit"),
        ({"device": "gpu"}, "unknown device"),
    ]:
        with pytest.raises(ValueError, match=message):
            Trainer(_config(dataset, tmp_path, **overrides), log=lambda m: None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="mixed precision needs a CUDA"):
            Trainer(_config(dataset, tmp_path, mixed_precision=True), log=lambda m: None)


def test_released_betas_reach_the_optimizer(dataset, tmp_path):  # noqa: F811
    trainer = Trainer(_config(dataset, tmp_path, betas=(0.5, 0.999), max_steps=1), log=lambda m: None)
    trainer.run(progress_bar=False)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def test_dice_per_row_reaches_the_loss(dataset, tmp_path):  # noqa: F811
    per_image = Trainer(_config(dataset, tmp_path / "a"), log=lambda m: None)
    per_row = Trainer(_config(dataset, tmp_path / "b", dice_unit="row"), log=lambda m: None)
    anomalous = next(i for i, s in enumerate(per_image.samples) if s.label == 1)
    images, masks, labels, prompts = per_image.batch([anomalous])
    with torch.no_grad():  # the same seed: the same weights in both trainers
        maps = per_image.model(images, prompts).supervised_maps()
        expected = sum(local_loss(m, masks, dice_unit="row") for m in maps)
        got = per_row.loss(0, images, masks, labels, prompts)
        assert float(got) == pytest.approx(float(expected), rel=1e-5)
        assert float(per_image.loss(0, images, masks, labels, prompts)) != pytest.approx(float(got), rel=1e-3)


def test_all_positions_average_nine_sentences_per_description(dataset, tmp_path):  # noqa: F811
    mask_pos = Trainer(_config(dataset, tmp_path / "a"), log=lambda m: None)
    all_pos = Trainer(_config(dataset, tmp_path / "b", train_positions="all"), log=lambda m: None)
    one = mask_pos.batch([0])[3][0]
    nine = all_pos.batch([0])[3][0]
    assert len(nine.abnormal) == 9 * len(one.abnormal)
    assert {s.rsplit(" at ", 1)[1].rstrip(".") for s in nine.abnormal} == set(POSITIONS)


def test_mosaic_tiles_four_images_and_their_masks(dataset, tmp_path):  # noqa: F811
    trainer = Trainer(_config(dataset, tmp_path), log=lambda m: None)
    bad = [s for s in trainer.samples if s.label == 1]
    good = [s for s in trainer.samples if s.label == 0]
    item = mosaic_item([good[0], bad[0], good[1], good[0]], trainer.recipe)
    # The anomalous tile is the top right one: the mask is there only, the label is 1.
    m = item.mask.numpy()
    half = SIZE // 2
    assert item.label == 1
    assert m[:half, half:].sum() > 0 and m[half:, :].sum() == 0 and m[:half, :half].sum() == 0
    assert item.position in ("top right", "top")
    only_good = mosaic_item([good[0], good[1], good[0], good[1]], trainer.recipe)
    assert only_good.label == 0 and only_good.mask.sum() == 0


def test_mosaic_choice_is_a_function_of_the_step(dataset, tmp_path):  # noqa: F811
    trainer = Trainer(_config(dataset, tmp_path), log=lambda m: None)
    order = list(range(len(trainer.samples)))
    always = EpochBatches(trainer.samples, order, 1, trainer.recipe, 1.0, (0, 0, 0))
    never = EpochBatches(trainer.samples, order, 1, trainer.recipe, 0.0, (0, 0, 0))
    a, b = always[2], always[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], never[2][0])


def test_worker_processes_give_the_same_training(dataset, tmp_path):  # noqa: F811
    kwargs = {"epochs": 1, "adapter_epochs": 1, "mosaic_probability": 0.5}
    one = train_filo(_config(dataset, tmp_path / "w0", **kwargs), progress_bar=False, log=lambda m: None)
    two = train_filo(_config(dataset, tmp_path / "w2", workers=2, **kwargs), progress_bar=False, log=lambda m: None)
    a, b = load_file(str(one / "filo.safetensors")), load_file(str(two / "filo.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_puts_everything_there(dataset, tmp_path):  # noqa: F811
    trainer = Trainer(_config(dataset, tmp_path, device="cuda", mixed_precision=True, max_steps=2), log=lambda m: None)
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    assert all(b.device.type == "cuda" for b in trainer.model.buffers())
    images, masks, labels, prompts = trainer.batch([0])
    assert images.device.type == masks.device.type == labels.device.type == "cuda"
    loss = trainer.loss(0, images, masks, labels, prompts)
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    trainer.run(progress_bar=False)
    assert trainer.progress.global_step == 2
    assert np.isfinite(trainer.last_loss)
