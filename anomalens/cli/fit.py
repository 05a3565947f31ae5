"""`anomalens fit`: fit a detector on good images, calibrate its threshold, save it."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .app import app, echo, fail
from .build import build_detector, report_threshold, set_threshold
from .config import apply_config, parse_threshold


@app.command()
def fit(
    ctx: typer.Context,
    refs: Path | None = typer.Option(None, "--refs", help="Folder of good reference images (required)."),
    method: o.Method = "patchknn",
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory to write (required)."),
    threshold: str | None = typer.Option(
        "auto", "--threshold", help="A number, 'auto' (leave-one-out over the references), or 'none'."
    ),
    pixel_threshold: o.PixelThreshold = None,
    quantile: o.Quantile = o.QUANTILE_DEFAULT,
    margin: o.Margin = o.MARGIN_DEFAULT,
    max_false_reject: o.MaxFalseReject = None,
    defects: o.Defects = None,
    weights: o.Weights = None,
    backbone: o.Backbone = None,
    category: o.Category = None,
    prompts: o.Prompts = None,
    checkpoint: o.Checkpoint = None,
    grounding: o.Grounding = None,
    image_size: o.ImageSize = None,
    resize: o.Resize = None,
    device: o.Device = "auto",
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    set_: o.Set = None,
    describe_: o.Describe = False,
    llm: o.Llm = "embedded",
    llm_model: o.LlmModel = None,
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Fit a detector on good images, calibrate its threshold, and save it (safetensors + JSON).

    Then `anomalens detect --model OUT ...` uses the saved settings, references and threshold.
    """
    p, explicit = apply_config(ctx, config)
    if p["refs"] is None:
        fail("--refs is required: a folder of good reference images")
    if p["out"] is None:
        fail("--out is required: the model directory to write")
    out = Path(p["out"])
    if (out / "detector.json").exists() and not p["overwrite"]:
        fail(f"{out} already holds a model; pass --overwrite to replace it")
    threshold_value = parse_threshold(p["threshold"])
    det, source = build_detector({**p, "model": None}, explicit)
    set_threshold(det, {**p, "model": None}, explicit, threshold_value)
    try:
        det.save(out, overwrite=p["overwrite"])
    except (FileExistsError, OSError) as err:
        fail(f"cannot save the model to {out}: {err}")
    echo(f"saved {det.method_name} model fitted on {source} to {out}")
    report_threshold(det.threshold, det.pixel_threshold)
