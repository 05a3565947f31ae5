"""Training FiLo on an auxiliary dataset, with checkpoints that resume, and reading the result.

Protocol (zero-shot, as the paper): train on the labelled test images (with masks) of dataset A,
evaluate on dataset B. Two stages, batch 1, AdamW:

1. prompt context vectors (lr 1e-3) and the dense heads, MMCI + linear (lr 1e-4), 15 epochs,
   local loss (focal + dice, `losses.py`) on the maps;
2. the adapter (lr 1e-5), 5 epochs, global loss (cross-entropy on the image label), the rest frozen.

The paper states L = L_local + L_global; here stage 1 uses the local loss only by default
(`stage1_global_loss=True` adds the global loss through the still-untrained adapter), because the
global loss only trains the adapter in the paper's stage split.

Files (no pickle anywhere): `OUT/filo.safetensors` (trainable tensors) and `OUT/filo.json` (every
setting, the vocabulary used, training progress); `OUT/resume/state.safetensors` (model, optimizer
tensors, torch RNG) and `OUT/resume/state.json` (counters, optimizer scalars, Python and NumPy RNG)
written every `checkpoint_every` steps and at each epoch end.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ...device import resolve_device
from ...text.prompts import POSITIONS, load_defect_vocabulary
from .checkpoint import (  # the optimizer's flat form is the resume state's; its names stay importable here
    FILO_CONFIG,
    FILO_WEIGHTS,
    FORMAT,
    atomic_save,
    build_backbone,
    build_model,
    optimizer_from_flat,
    optimizer_to_flat,
    resolve_weights,
)
from .losses import DICE_UNITS, global_loss, local_loss
from .model import FiloConfig, FiloModel
from .prompts import build_prompts
from .train_data import EpochBatches, ItemRecipe, collect_samples, epoch_order

__all__ = ["FILO_CONFIG", "FILO_WEIGHTS", "TrainConfig", "Trainer", "train_filo"]

RESUME_DIR = "resume"


@dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the paper's."""

    data: str
    out: str
    dataset: str = "mvtec"
    categories: tuple[str, ...] | None = None
    backbone: str = "ViT-L-14-336"
    weights: str | None = "default"  # open_clip tag or file; None: random (tiny test backbones)
    image_size: int = 518
    resize: str = "squash"
    epochs: int = 15
    adapter_epochs: int = 5
    prompt_lr: float = 1e-3
    dense_lr: float = 1e-4
    adapter_lr: float = 1e-5
    weight_decay: float = 0.01  # AdamW's default; the paper does not state one
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's default; the released code uses (0.5, 0.999)
    mosaic_probability: float = 0.0  # 2x2 mosaic of one category's images; released: 0.2
    train_positions: str = "mask"  # "mask": the mask's position word; "all": the nine averaged (released)
    dice_unit: str = "image"  # Dice per image (paper) or per mask row ("row": the released loop at batch 1)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    mixed_precision: bool = False  # float16 autocast + gradient scaling (CUDA only)
    workers: int = 0  # DataLoader worker processes loading images (0: in the training process)
    batch_size: int = 1
    stage1_global_loss: bool = False
    loss_on: str = "layers"  # "layers": every per-layer map (both heads); "final": the Eq. 3 map
    vocabulary: str | None = None  # defect vocabulary JSON; None: the packaged one
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps in total (a later run resumes)
    checkpoint_every: int = 200
    resume: bool = True
    model: FiloConfig = field(default_factory=FiloConfig)


@dataclass
class TrainProgress:
    stage: int = 0  # 0: prompts + dense heads, 1: adapter
    epoch: int = 0  # within the stage
    step: int = 0  # within the epoch
    global_step: int = 0


# ---- the loop -----------------------------------------------------------------------------


def _compatibility(config: TrainConfig) -> dict[str, Any]:
    """Settings a resumed run must share with the run that wrote the checkpoint."""
    return {
        "backbone": config.backbone,
        "weights": resolve_weights(config.backbone, config.weights),
        "image_size": config.image_size,
        "resize": config.resize,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "betas": list(config.betas),
        "mosaic_probability": config.mosaic_probability,
        "train_positions": config.train_positions,
        "dice_unit": config.dice_unit,
        "model": json.loads(json.dumps(config.model.to_dict())),
    }


def _make_optimizer(model: FiloModel, config: TrainConfig, stage: int) -> torch.optim.AdamW:
    groups = model.parameter_groups()
    trainable = {"prompts", "dense"} if stage == 0 else {"adapter"}
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in trainable)
    if stage == 0:
        param_groups = [
            {"params": groups["prompts"], "lr": config.prompt_lr},
            {"params": groups["dense"], "lr": config.dense_lr},
        ]
    else:
        param_groups = [{"params": groups["adapter"], "lr": config.adapter_lr}]
    return torch.optim.AdamW(param_groups, weight_decay=config.weight_decay, betas=tuple(config.betas))


def _check(config: TrainConfig) -> None:
    """Reject impossible settings with one line each, before any data or weights are read."""
    if config.train_positions not in ("mask", "all"):
        raise ValueError(f"train_positions must be 'mask' or 'all', got {config.train_positions!r}")
    if config.dice_unit not in DICE_UNITS:
        raise ValueError(f"dice_unit must be one of {', '.join(DICE_UNITS)}, got {config.dice_unit!r}")
    if not 0.0 <= config.mosaic_probability <= 1.0:
        raise ValueError(f"mosaic_probability must lie in [0, 1], got {config.mosaic_probability}")
    if config.workers < 0:
        raise ValueError(f"workers must be >= 0, got {config.workers}")
    if len(config.betas) != 2 or not all(0.0 <= b < 1.0 for b in config.betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {config.betas}")


class Trainer:
    """One training run: builds everything, runs (or resumes) the two stages, writes the files."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print):
        self.config = config
        self.log = log
        self.out = Path(config.out)
        _check(config)
        self.device = resolve_device(config.device)
        if config.mixed_precision and self.device.type != "cuda":
            raise ValueError("mixed precision needs a CUDA device (--device cuda or auto on a GPU machine)")
        self.samples = collect_samples(config.data, config.dataset, config.categories)
        self.vocabulary = load_defect_vocabulary(config.vocabulary)
        self.categories = sorted({s.category for s in self.samples})
        self.descriptions = {c: self.vocabulary.for_category(c) for c in self.categories}
        weights = resolve_weights(config.backbone, config.weights)
        self.backbone = build_backbone(config.backbone, weights, config.image_size, config.seed, config.model.variant)
        self.model = build_model(self.backbone, config.model, config.seed).to(self.device)
        self.recipe = ItemRecipe(config.image_size, config.resize, self.backbone.mean, self.backbone.std)
        self.scaler = torch.amp.GradScaler("cuda") if config.mixed_precision else None
        self.progress = TrainProgress()
        self.losses: list[dict[str, float]] = []  # mean loss of each finished epoch
        self._epoch_loss = 0.0
        self.optimizer: torch.optim.AdamW | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.samples) / self.config.batch_size)

    @property
    def stage_epochs(self) -> tuple[int, int]:
        return self.config.epochs, self.config.adapter_epochs

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * sum(self.stage_epochs)

    # ---- checkpoints ----------------------------------------------------------------------
    def save_resume(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.trainable_state_dict().items()}
        opt_meta = None
        if self.optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
            tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        np_state = np.random.get_state()
        meta = {
            "compatibility": _compatibility(self.config),
            "progress": asdict(self.progress),
            "epoch_loss": self._epoch_loss,
            "losses": self.losses,
            "optimizer": opt_meta,
            "rng": {
                "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
                "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            },
        }
        atomic_save(tensors, meta, self.out / RESUME_DIR / "state")

    def load_resume(self) -> bool:
        from safetensors.torch import load_file

        stem = self.out / RESUME_DIR / "state"
        if not stem.with_suffix(".json").is_file() or not stem.with_suffix(".safetensors").is_file():
            return False
        meta = json.loads(stem.with_suffix(".json").read_text())
        expected = json.loads(json.dumps(_compatibility(self.config)))
        if meta["compatibility"] != expected:
            diff = sorted(k for k in expected if meta["compatibility"].get(k) != expected[k])
            raise ValueError(
                f"{stem}.json was written with other settings ({', '.join(diff)}); pass the same "
                "settings, --no-resume to start over, or another --out."
            )
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        self.model.load_trainable_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        self.progress = TrainProgress(**meta["progress"])
        self.losses = list(meta["losses"])
        self._epoch_loss = float(meta["epoch_loss"])
        self.optimizer = _make_optimizer(self.model, self.config, min(self.progress.stage, 1))
        if meta["optimizer"] is not None:
            opt = {k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")}
            self.optimizer.load_state_dict(optimizer_from_flat(opt, meta["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
        py = meta["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npy = meta["rng"]["numpy"]
        np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
        return True

    def save_trained(self, complete: bool) -> Path:
        c = self.config
        info = {
            "format": FORMAT,
            "version": 1,
            "anomalens_version": __version__,
            "backbone": c.backbone,
            "weights": resolve_weights(c.backbone, c.weights),
            "seed": c.seed,
            "image_size": c.image_size,
            "resize": c.resize,
            "model": c.model.to_dict(),
            "vocabulary": {"source": self.vocabulary.source, "categories": self.descriptions},
            "training": {
                **{k: v for k, v in asdict(c).items() if k != "model"},
                "complete": complete,
                "progress": asdict(self.progress),
                "total_steps": self.total_steps,
                "train_images": len(self.samples),
                "epoch_losses": self.losses,
            },
        }
        atomic_save(self.model.trainable_state_dict(), json.loads(json.dumps(info, default=str)), self.out / "filo")
        return self.out

    # ---- steps ----------------------------------------------------------------------------
    def _prompts(self, categories: list[str], positions: list[str]) -> list:
        cfg = self.model.config
        where = [POSITIONS if self.config.train_positions == "all" else p for p in positions]
        return [
            build_prompts(c, self.descriptions[c], w, cfg.normal_states, cfg.abnormal_states, cfg.prompt_style)
            for c, w in zip(categories, where)
        ]

    def batch(self, indices: list[int]):
        """One batch of the given samples (never a mosaic) on the training device, with prompts."""
        data = EpochBatches(self.samples, list(indices), len(indices), self.recipe)
        images, masks, labels, categories, positions = data[0]
        prompts = self._prompts(categories, positions)
        return images.to(self.device), masks.to(self.device), labels.to(self.device), prompts

    def _batches(self, stage: int, epoch: int, start: int):
        """The epoch's batches from step `start` on, loaded by `workers` processes if asked."""
        c = self.config
        order = epoch_order(len(self.samples), c.seed, stage, epoch)
        mosaic = c.mosaic_probability if stage == 0 else 0.0
        data = EpochBatches(self.samples, order, c.batch_size, self.recipe, mosaic, (c.seed, stage, epoch))
        steps = list(range(start, len(data)))
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            sampler=steps,
            num_workers=c.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, masks, labels, categories, positions in loader:
            yield (
                images.to(self.device, non_blocking=True),
                masks.to(self.device, non_blocking=True),
                labels.to(self.device),
                self._prompts(categories, positions),
            )

    def loss(self, stage: int, images, masks, labels, prompts) -> torch.Tensor:
        """Stage 0: local loss (+ global if configured); stage 1: global loss."""
        c = self.config
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.scaler is not None else nullcontext()
        with autocast:
            out = self.model(images, prompts, with_maps=stage == 0)
        if stage == 1:
            return global_loss(out.logits, labels)
        maps = out.supervised_maps() if c.loss_on == "layers" else [out.two_class]
        total = sum(local_loss(m, masks, dice_unit=c.dice_unit) for m in maps)
        if c.stage1_global_loss:
            total = total + global_loss(out.logits, labels)
        return total

    def run(self, progress_bar: bool = True) -> Path:
        from tqdm.auto import tqdm

        c = self.config
        if c.resume and self.load_resume():
            self.log(f"resuming {self.out} at step {self.progress.global_step} of {self.total_steps}")
        self.model.train()
        self.backbone.eval()
        bar = tqdm(total=self.total_steps, initial=self.progress.global_step, unit="step", disable=not progress_bar)
        try:
            while self.progress.stage < 2:
                if self._run_stage(bar) is False:
                    self.save_resume()
                    return self.save_trained(complete=False)
        finally:
            bar.close()
        return self.save_trained(complete=True)

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step (through the gradient scaler under mixed precision)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.last_loss = float(loss.detach())

    def _run_stage(self, bar) -> bool:
        """Run the current stage from the saved position; False when max_steps stopped it."""
        c, p = self.config, self.progress
        if self.optimizer is None:
            self.optimizer = _make_optimizer(self.model, c, p.stage)
        names = ("prompts+MMCI", "adapter")
        while p.epoch < self.stage_epochs[p.stage]:
            bar.set_description(f"filo {names[p.stage]} epoch {p.epoch + 1}/{self.stage_epochs[p.stage]}")
            for batch in self._batches(p.stage, p.epoch, p.step):
                if c.max_steps is not None and p.global_step >= c.max_steps:
                    return False
                self.step(self.loss(p.stage, *batch))
                value = float(self.last_loss)
                self._epoch_loss += value
                p.step += 1
                p.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                if c.checkpoint_every > 0 and p.global_step % c.checkpoint_every == 0:
                    self.save_resume()
            self.losses.append({"stage": p.stage, "epoch": p.epoch, "loss": self._epoch_loss / self.steps_per_epoch})
            self._epoch_loss = 0.0
            p.epoch += 1
            p.step = 0
            self.save_resume()
        p.stage += 1
        p.epoch = 0
        self.optimizer = None
        return True


def train_filo(config: TrainConfig, progress_bar: bool = True, log: Callable[[str], None] = print) -> Path:
    """Train (or resume training) FiLo; returns the output directory holding filo.safetensors/json."""
    return Trainer(config, log).run(progress_bar)
