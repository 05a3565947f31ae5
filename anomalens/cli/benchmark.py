"""`anomalens benchmark`: per-category image and pixel metrics over shots and seeds."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .app import app, fail
from .build import flag_settings, method_settings
from .config import int_list, parse_sets


@app.command()
def benchmark(
    data: Path = typer.Option(..., "--data", help="Dataset root."),
    dataset: str = typer.Option("auto", "--dataset", help="mvtec | visa | folder | meta | auto"),
    categories: str | None = typer.Option(None, "--categories", help="Comma-separated subset."),
    method: o.Method = "patchknn",
    shots: str = typer.Option("0", "--shots", help="Comma-separated shot counts, e.g. 0,1,2,4."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds for the reference draws."),
    out: Path = typer.Option(Path("benchmark_out"), "--out", "-o"),
    pixel_resolution: int | None = typer.Option(None, "--pixel-resolution", help="Longer side for pixel metrics."),
    weights: o.Weights = None,
    backbone: o.Backbone = None,
    checkpoint: o.Checkpoint = None,
    grounding: o.Grounding = None,
    image_size: o.ImageSize = None,
    resize: o.Resize = None,
    prompts: o.Prompts = None,
    quantize_maps: o.QuantizeMaps = False,
    bit_depth: o.BitDepth = None,
    max_pixels: o.MaxPixels = None,
    region: o.Region = None,
    device: o.Device = "auto",
    progress: o.Progress = True,
    by_defect_type: bool = typer.Option(
        False,
        "--by-defect-type",
        help="Also each defect type's metrics against the good images, and its share of the defect pixels.",
    ),
    set_: o.Set = None,
) -> None:
    """Per-category image and pixel metrics; resumes from what --out already holds.

    Runs are reused only when made with the same settings on the same data; others stay in
    --out/runs.jsonl, unused, and a note names the difference.
    """
    from ..benchmark import BenchmarkSettings, markdown_table, run_benchmark
    from ..defect_type_metrics import defect_type_table
    from .build import image_reading, inspection_region

    reading = image_reading({"bit_depth": bit_depth, "max_pixels": max_pixels})
    inspection_region({"region": region})  # a bad --region fails before any data is read

    settings = BenchmarkSettings(
        data=str(data),
        dataset=dataset,
        method=method,
        categories=[c.strip() for c in categories.split(",")] if categories else None,
        shots=int_list(shots),
        seeds=int_list(seeds),
        pixel_resolution=pixel_resolution,
        method_settings=method_settings(
            method,
            flag_settings(
                {"weights": weights, "backbone": backbone, "image_size": image_size, "resize": resize}
                | {"checkpoint": checkpoint, "grounding": grounding, "prompts": prompts}
            )
            | ({"quantize_maps": True} if quantize_maps else {}),
            parse_sets(set_),
        ),
        device=device,
        image_reading=reading.to_dict(),
        region=None if region is None else str(region),
        by_defect_type=by_defect_type,
    )
    if quantize_maps and not settings.method_settings.get("quantize_maps"):
        fail(f"--quantize-maps: method {method!r} has no quantize_maps setting (fade has)")
    try:
        result = run_benchmark(settings, out, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    typer.echo(f"{method} on {data} ({result['backbone']})")
    typer.echo(markdown_table(result["shots"]))
    if "by_defect_type" in result:
        typer.echo(defect_type_table(result["by_defect_type"]))
    typer.echo(f"results: {out / 'results.json'}, {out / 'results.csv'}")
