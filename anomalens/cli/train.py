"""`anomalens train filo`: parse the options, call `anomalens.methods.filo.train.train_filo`."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail
from .config import options_into

train_app = typer.Typer(no_args_is_help=True, help="Train the methods that learn (FiLo).")


@train_app.callback()
def _train_group() -> None:
    """Train the methods that learn (FiLo)."""
    # A callback keeps `train` a command group, so the single command is `train filo`, not `train`.


@train_app.command("filo")
def filo(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset root to train on (labelled test images with masks)."),
    dataset: str = typer.Option("mvtec", "--dataset", help="mvtec | visa | folder | meta | auto"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (filo.safetensors, filo.json, resume/)."),
    backbone: str = typer.Option("ViT-L-14-336", "--backbone", help="open_clip architecture, e.g. test-tiny-24."),
    weights: str | None = typer.Option(
        None, "--weights", help="CLIP weights file or tag; default: OpenAI's (random for tiny backbones)."
    ),
    epochs: int = typer.Option(15, "--epochs", help="Stage 1 epochs (prompts, MMCI, linear heads)."),
    adapter_epochs: int = typer.Option(5, "--adapter-epochs", help="Stage 2 epochs (adapter)."),
    image_size: int = typer.Option(518, "--image-size", help="Model input side in pixels."),
    categories: str | None = typer.Option(None, "--categories", help="Comma-separated categories (default all)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many steps in total."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/resume if present."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between resume checkpoints."),
    prompt_learner: str = typer.Option("cocoop", "--prompt-learner", help="cocoop (meta-net) | coop"),
    adapter: str = typer.Option("paper", "--adapter", help="paper (biases) | released (residual, no biases)"),
    n_ctx: int = typer.Option(12, "--n-ctx", help="Learnable context vectors per prompt."),
    betas: str = typer.Option("0.9,0.999", "--betas", help="AdamW betas (released code: 0.5,0.999)."),
    mosaic: float = typer.Option(0.0, "--mosaic", help="Probability of a 2x2 mosaic item (released: 0.2)."),
    positions: str = typer.Option("mask", "--positions", help="mask (the mask's position word) | all (released)"),
    dice_unit: str = typer.Option(
        "image", "--dice-unit", help="Dice loss per image (paper) | row (per mask row: the released loop at batch 1)"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto (a GPU when torch sees one)"),
    mixed_precision: bool = typer.Option(
        False, "--mixed-precision/--full-precision", help="float16 autocast with gradient scaling (CUDA only)."
    ),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes loading images."),
    vocabulary: Path | None = typer.Option(None, "--vocabulary", help="Defect vocabulary JSON."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train FiLo on dataset A; then `anomalens benchmark --data B --method filo --checkpoint OUT`."""
    from ..methods.filo.checkpoint import default_weights
    from ..methods.filo.model import FiloConfig
    from ..methods.filo.train import TrainConfig, train_filo

    if prompt_learner not in ("cocoop", "coop"):
        fail(f"--prompt-learner must be cocoop or coop, got {prompt_learner!r}")
    try:
        beta_values = tuple(float(b) for b in betas.split(","))
    except ValueError:
        beta_values = ()
    if len(beta_values) != 2:
        fail(f"--betas must be two numbers like 0.5,0.999, got {betas!r}")
    config = options_into(
        TrainConfig,
        ctx.params,
        data=str(data),
        out=str(out),
        categories=tuple(c.strip() for c in categories.split(",") if c.strip()) if categories else None,
        weights=default_weights(backbone, weights),
        vocabulary=str(vocabulary) if vocabulary else None,
        betas=beta_values,
        mosaic_probability=mosaic,
        train_positions=positions,
        model=FiloConfig(n_ctx=n_ctx, meta_net=prompt_learner == "cocoop", adapter=adapter),
    )
    try:
        result = train_filo(config, progress_bar=progress, log=lambda m: typer.echo(m, err=True))
    except (ValueError, FileNotFoundError) as err:  # bad data or options (AnomalensErrors pass through)
        fail(str(err))
    typer.echo(f"FiLo written to {result} (filo.safetensors, filo.json)", err=True)


app.add_typer(train_app, name="train")
