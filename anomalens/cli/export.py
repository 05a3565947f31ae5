"""`anomalens export`: a saved model directory -> one .onnx file (thin: the work is in anomalens.export)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, echo, fail


@app.command("export")
def export_command(
    model: Path = typer.Option(..., "--model", help="A fitted model directory from `anomalens fit`."),
    format: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    bank: str = typer.Option(
        "auto", "--bank", help="patchknn memory bank: constant (in the graph), input (a .bank.npy beside it), auto."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check the exported model against PyTorch (max |difference| <= 1e-4)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Export a fitted model to ONNX: graph, memory bank, text features, threshold and settings in one file.

    `anomalens detect --model OUT.onnx IMAGES` then runs it with onnxruntime (extra `onnx`).
    """
    if format != "onnx":
        fail(f"--format must be 'onnx', got {format!r}")
    if model.suffix.lower() == ".onnx":
        fail(f"{model} is already an exported model; pass the model directory written by `anomalens fit`")
    from ..detector import load_detector
    from ..errors import UsageError
    from ..export import export_onnx

    try:
        det = load_detector(model)
        report = export_onnx(det, out, bank=bank, overwrite=overwrite, verify=verify)
    except (FileNotFoundError, FileExistsError) as err:
        raise UsageError(str(err)) from err
    size_mb = report.path.stat().st_size / 1e6
    echo(f"wrote {report.path} ({size_mb:.1f} MB) in {report.seconds:.1f} s")
    if report.bank_file is not None:
        echo(f"memory bank: {report.bank_file} (keep it beside the model)")
    if report.max_map_difference is not None:
        echo(
            f"checked against PyTorch: max |difference| {report.max_map_difference:.2g} on maps, "
            f"{report.max_score_difference:.2g} on scores"
        )
