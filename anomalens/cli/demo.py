"""`anomalens demo`: the main job offline on real textures with synthetic defects."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .app import app, echo


@app.command()
def demo(
    out: Path = typer.Option(Path("anomalens_demo"), "--out", "-o", help="Where to write the demo set and results."),
    method: o.Method = "patchknn",
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the main job offline: synthetic defects on real textures, few-shot detection, AUROC."""
    from ..demo import run_demo

    echo(
        "Demo set: tiles of real texture photographs shipped with scikit-image (brick, grass, gravel),\n"
        "with SYNTHETIC defects (scratch, stain, hole, crack) painted on some tiles; masks known by construction."
    )
    result = run_demo(out, method=method, seed=seed)
    typer.echo(f"\n{method} ({result.backbone}), {result.references}-shot, synthetic defects on real textures:")
    typer.echo("| texture | test images | image AUROC | pixel AUROC | pixel AUPRO |")
    typer.echo("|---|---|---|---|---|")
    for name, m in result.rows:
        typer.echo(
            f"| {name} | {m['images']} | {_pct(m['image_auroc'])} | "
            f"{_pct(m['pixel_auroc'])} | {_pct(m['pixel_aupro'])} |"
        )
    typer.echo(f"\nDone in {result.seconds:.1f} s. Overlays and report.html per texture under {result.out / 'results'}")


def _pct(v: float | None) -> str:
    return "N/A" if v is None else f"{100 * v:.1f}"
