"""`anomalens train filo`: train FiLo's prompts, MMCI, linear heads and adapter on a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail

train_app = typer.Typer(no_args_is_help=True, help="Train the methods that learn (FiLo).")


@train_app.callback()
def _train_group() -> None:
    """Train the methods that learn (FiLo)."""
    # A callback keeps `train` a command group, so the single command is `train filo`, not `train`.


@train_app.command("filo")
def filo(
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
    vocabulary: Path | None = typer.Option(None, "--vocabulary", help="Defect vocabulary JSON."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train FiLo on dataset A; then `anomalens benchmark --data B --method filo --checkpoint OUT`."""
    from ..backbones.clip import is_tiny
    from ..filo.model import FiloConfig
    from ..filo.train import TrainConfig, train_filo

    if prompt_learner not in ("cocoop", "coop"):
        fail(f"--prompt-learner must be cocoop or coop, got {prompt_learner!r}")
    config = TrainConfig(
        data=str(data),
        out=str(out),
        dataset=dataset,
        categories=tuple(c.strip() for c in categories.split(",") if c.strip()) if categories else None,
        backbone=backbone,
        weights=weights if weights is not None else (None if is_tiny(backbone) else "default"),
        image_size=image_size,
        epochs=epochs,
        adapter_epochs=adapter_epochs,
        vocabulary=str(vocabulary) if vocabulary else None,
        seed=seed,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        resume=resume,
        model=FiloConfig(n_ctx=n_ctx, meta_net=prompt_learner == "cocoop", adapter=adapter),
    )
    try:
        result = train_filo(config, progress_bar=progress, log=lambda m: typer.echo(m, err=True))
    except (ValueError, FileNotFoundError) as err:  # bad data or options (AnomalensErrors pass through)
        fail(str(err))
    typer.echo(f"FiLo written to {result} (filo.safetensors, filo.json)", err=True)


app.add_typer(train_app, name="train")
