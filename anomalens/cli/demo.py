"""`anomalens demo`: the main job offline on real textures with synthetic defects."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .app import app, echo


@app.command()
def demo(
    out: Path = typer.Option(Path("anomalens_demo"), "--out", "-o", help="Where to write the demo set and results."),
    method: str = typer.Option("patchknn", "--method", "-m"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the main job offline: synthetic defects on real textures, few-shot detection, AUROC."""
    from ..benchmark import evaluate_category
    from ..data import load_dataset, sample_references
    from ..demo import DemoSettings, build_demo_dataset
    from ..detector import Detector
    from ..outputs import OutputWriter
    from ..report import write_report

    out = _fresh_dir(out)
    settings = DemoSettings(seed=seed)
    echo(
        "Demo set: tiles of real texture photographs shipped with scikit-image (brick, grass, gravel),\n"
        "with SYNTHETIC defects (scratch, stain, hole, crack) painted on some tiles; masks known by construction."
    )
    start = time.perf_counter()
    data_root = build_demo_dataset(out / "data", settings)
    splits = load_dataset(data_root, kind="mvtec")
    det = Detector(method=method)
    rows = []
    for name, split in splits.items():
        refs = sample_references(split, settings.references, seed)
        metrics = evaluate_category(det, split, refs)
        rows.append((name, metrics))
        # The per-image outputs for a person to look at: overlays, masks, report.
        det.calibrate()
        with OutputWriter(out / "results" / name) as writer:
            for result, img in det.predict_iter([s.path for s in split.test], with_images=True):
                writer.write(result, img.rgb)
        write_report(
            out / "results" / name,
            title=f"anomalens demo: {name} (synthetic defects on a real texture)",
            summary_info={
                "method": method,
                "backbone": det.backbone_name,
                "threshold": det.threshold.value,
                "threshold_description": det.threshold.description(),
            },
        )
    elapsed = time.perf_counter() - start
    typer.echo(f"\n{method} ({det.backbone_name}), {settings.references}-shot, synthetic defects on real textures:")
    typer.echo("| texture | test images | image AUROC | pixel AUROC | pixel AUPRO |")
    typer.echo("|---|---|---|---|---|")
    for name, m in rows:
        typer.echo(
            f"| {name} | {m['images']} | {_pct(m['image_auroc'])} | "
            f"{_pct(m['pixel_auroc'])} | {_pct(m['pixel_aupro'])} |"
        )
    typer.echo(f"\nDone in {elapsed:.1f} s. Overlays and report.html per texture under {out / 'results'}")


def _pct(v: float | None) -> str:
    return "N/A" if v is None else f"{100 * v:.1f}"


def _fresh_dir(path: Path) -> Path:
    """path if it is absent or empty, else path_1, path_2, ...: never write over earlier output."""
    candidate, n = path, 0
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}_{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate
