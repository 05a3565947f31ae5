"""`anomalens fit`: fit a detector on good images, calibrate its threshold, save it."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .app import app, echo, fail
from .build import build_detector, report_threshold, set_threshold
from .config import given_options, parse_threshold


@app.command()
@o.detector_flags
def fit(
    ctx: typer.Context,
    refs: Path | None = typer.Option(None, "--refs", help="Folder of good reference images (required)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory to write (required)."),
    threshold: str | None = typer.Option(
        "auto", "--threshold", help="A number, 'auto' (leave-one-out over the references), or 'none'."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    progress: o.Progress = True,
) -> None:
    """Fit a detector on good images, calibrate its threshold, and save it (safetensors + JSON).

    Then `anomalens detect --model OUT ...` uses the saved settings, references and threshold.
    """
    p, explicit = given_options(ctx)
    if p["refs"] is None:
        fail("--refs is required: a folder of good reference images")
    if p["out"] is None:
        fail("--out is required: the model directory to write")
    out = Path(p["out"])
    if (out / "detector.json").exists() and not p["overwrite"]:
        fail(f"{out} already holds a model; pass --overwrite to replace it")
    threshold_value = parse_threshold(p["threshold"])
    with FitProgressBar(enabled=p.get("progress", True)) as bar:
        det, source = build_detector({**p, "model": None}, explicit, progress=bar)
        set_threshold(det, {**p, "model": None}, explicit, threshold_value, progress=bar)
    try:
        det.save(out, overwrite=p["overwrite"])
    except (FileExistsError, OSError) as err:
        fail(f"cannot save the model to {out}: {err}")
    echo(f"saved {det.method_name} model fitted on {source} to {out}")
    report_threshold(det.threshold, det.pixel_threshold)


class FitProgressBar:
    """One tqdm bar per phase of `fit` (reading, fitting, calibrating the references), on stderr.

    Hidden when stderr is not a terminal (tqdm's disable=None) or with --no-progress."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.phase = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.phase != self.phase:
            self.close()
            from tqdm.auto import tqdm

            self.phase = event.phase
            self.bar = tqdm(total=event.total, unit="ref", desc=event.phase, disable=None, dynamic_ncols=True)
        self.bar.n = event.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> FitProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
