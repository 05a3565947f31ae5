"""`anomalens detect`: score images and write results, overlays, masks, maps and a report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from . import options as o
from .app import app, echo, fail
from .build import build_detector, describe, set_threshold
from .config import apply_config, parse_threshold


def _collect_inputs(inputs: list[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """(image files, missing inputs): directories expanded, duplicates dropped with a note.

    Files inside the output directory are not taken from an expanded input folder, so that
    `detect DIR --out DIR/results` run twice does not score its own overlays and masks.
    """
    from ..images import IMAGE_EXTENSIONS, list_images

    files: list[Path] = []
    missing: list[Path] = []
    seen: dict[str, Path] = {}
    duplicates = 0
    out_prefix = os.path.join(os.path.realpath(out), "")
    for item in inputs:
        if not item.exists():
            if str(item) not in {str(m) for m in missing}:
                missing.append(item)
            continue
        found = list_images([item])
        if item.is_dir():
            found = [f for f in found if not os.path.realpath(f).startswith(out_prefix)]
            if not found:
                echo(f"note: {item}: no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})")
        for f in found:
            key = os.path.realpath(f)
            if key in seen:
                duplicates += 1
                continue
            seen[key] = f
            files.append(f)
    if duplicates:
        echo(f"note: {duplicates} duplicate input(s) (same file given twice) scored once")
    return files, missing


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _read_settings(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_run(a: dict | None, b: dict) -> bool:
    """Do two settings.json describe runs whose results can be mixed (same model and thresholds)?"""
    keys = ("method", "settings", "source", "threshold", "pixel_threshold")
    return a is not None and all(a.get(k) == b.get(k) for k in keys)


@app.command()
def detect(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(None, help="Image files and/or directories (searched recursively)."),
    refs: o.Refs = None,
    method: o.Method = "patchknn",
    out: Path = typer.Option(Path("anomalens_out"), "--out", "-o", help="Output directory."),
    model: Path | None = typer.Option(None, "--model", help="A fitted model directory from `anomalens fit`."),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        help="Image threshold: a number, 'auto' (calibrated on the references, leave-one-out: "
        "quantile + margin * (quantile - median)), or 'none'. Default: the model's, else none.",
    ),
    pixel_threshold: o.PixelThreshold = None,
    quantile: o.Quantile = o.QUANTILE_DEFAULT,
    margin: o.Margin = o.MARGIN_DEFAULT,
    weights: o.Weights = None,
    backbone: o.Backbone = None,
    category: o.Category = None,
    prompts: o.Prompts = None,
    checkpoint: o.Checkpoint = None,
    grounding: o.Grounding = None,
    image_size: o.ImageSize = None,
    resize: o.Resize = None,
    map_format: str = typer.Option("npy", "--map-format", help="Raw map files: npy | tiff (32-bit float)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    jobs: int = typer.Option(
        2, "--jobs", "-j", min=0, help="Threads that read and decode images ahead of the model (0: none)."
    ),
    overwrite: o.Overwrite = False,
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    set_: o.Set = None,
    config: o.Config = None,
) -> None:
    """Score images: results.jsonl/.csv, overlays, masks, raw maps and report.html under --out.

    Re-running the same command resumes: images with results in --out are not done again
    (failed ones are retried); --overwrite starts afresh. Images above 16 megapixels are worked
    on (and their maps, masks and overlays written) at a reduced size; see anomalens.images.

    Exit code 0 when every image was processed, 1 when some failed (listed at the end), 2 for
    usage errors, 130 when interrupted (Ctrl-C; what was written is valid, run again to resume).
    """
    p, explicit = apply_config(ctx, config)
    from datetime import datetime

    import numpy as np
    from tqdm.auto import tqdm

    from .. import __version__
    from ..images import ImageLoadError
    from ..outputs import SETTINGS_JSON, OutputWriter
    from ..report import write_report

    inputs = [Path(i) for i in (p["images"] or [])]
    if not inputs:
        fail("no images given")
    if p["map_format"] not in ("npy", "tiff"):
        fail(f"--map-format must be 'npy' or 'tiff', got {p['map_format']!r}")
    if int(p["jobs"]) < 0 or int(p["batch_size"]) < 1:
        fail("--jobs must be >= 0 and --batch-size >= 1")
    threshold_value = parse_threshold(p["threshold"])
    out = Path(p["out"])
    files, missing = _collect_inputs(inputs, out)
    if not files and not missing:
        fail(f"no image files found in {', '.join(map(str, inputs))}")

    det, source = build_detector(p, explicit)
    set_threshold(det, p, explicit, threshold_value)
    if det.threshold is not None:
        echo(f"threshold: {describe(det.threshold)}")
        echo(f"pixel threshold: {describe(det.pixel_threshold)}")
    elif det.pixel_threshold is not None:
        echo(f"pixel threshold: {describe(det.pixel_threshold)}; no image threshold: no OK/NG decisions")
    else:
        echo("no threshold: scores and maps only (pass --threshold X or --threshold auto for OK/NG and masks)")

    previous = _read_settings(out / SETTINGS_JSON) if not p["overwrite"] else None
    try:
        writer = OutputWriter(out, overwrite=p["overwrite"], map_format=p["map_format"])
    except (FileExistsError, ValueError, OSError) as err:
        fail(f"cannot write to {out}: {err}")
    effective = {
        "command": "detect",
        "anomalens_version": __version__,
        "inputs": [str(i) for i in inputs],
        "method": det.method_name,
        "settings": det.settings,
        "backbone": det.backbone_name,
        "source": source,
        "num_references": len(det.reference_paths),
        "threshold": None if det.threshold is None else det.threshold.to_dict(),
        "pixel_threshold": getattr(det.pixel_threshold, "to_dict", lambda: det.pixel_threshold)(),
        "options": {k: v for k, v in p.items()},
    }
    effective = _jsonable(effective)
    writer.write_settings(effective)

    done = {os.path.abspath(r["path"]) for r in writer.records() if r.get("status") == "ok"}
    todo = [f for f in files if os.path.abspath(f) not in done]
    for m in missing:
        writer.record_failure(m, "file does not exist")
    if len(todo) < len(files):
        echo(f"resuming: {len(files) - len(todo)} of {len(files)} images already done in {out}")
        if previous is not None and not _same_run(previous, effective):
            echo(
                "warning: those results were made with other settings (kept as settings.<n>.json); "
                "pass --overwrite to redo every image with these"
            )

    pixel_only = det.threshold is None and det.pixel_threshold is not None
    start = time.perf_counter()
    scored_now = 0
    bar = tqdm(total=len(todo), unit="img", desc=det.method_name, disable=None, dynamic_ncols=True)
    interrupted = False
    try:
        for item in det.predict_iter(
            todo, batch_size=int(p["batch_size"]), jobs=int(p["jobs"]), with_images=True, skip_errors=True
        ):
            if isinstance(item, ImageLoadError):
                writer.record_failure(item.path, item.reason)
            else:
                result, img = item
                if pixel_only:
                    result.pixel_threshold = float(_threshold_number(det.pixel_threshold))
                    with np.errstate(invalid="ignore"):
                        result.mask = np.asarray(result.anomaly_map) > result.pixel_threshold
                extra = {
                    "time": datetime.now().astimezone().isoformat(timespec="seconds"),
                    "image_size": list(img.original_hw or img.size_hw),
                    "map_size": list(img.size_hw),
                }
                try:
                    writer.write(result, img.rgb, extra=extra)
                    scored_now += 1
                except Exception as err:
                    writer.record_failure(result.path, f"could not write outputs: {type(err).__name__}: {err}")
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        writer.close()
    elapsed = time.perf_counter() - start
    if p["report"]:
        info = {
            "method": det.method_name,
            "backbone": det.backbone_name,
            "total_seconds": elapsed,
            "source": source,
        }
        if det.threshold is not None:
            info["threshold"] = det.threshold.value
            info["threshold_description"] = det.threshold.description()
        if det.pixel_threshold is not None:
            info["pixel_threshold"] = _threshold_number(det.pixel_threshold)
            info["pixel_threshold_description"] = describe(det.pixel_threshold)
        try:
            echo(f"report: {write_report(out, summary_info=info)}")
        except (OSError, ValueError) as err:
            echo(f"warning: could not write {out}/report.html: {err}")
    rate = f", {scored_now / elapsed:.2f} images/s" if scored_now and elapsed > 0 else ""
    echo(f"scored {scored_now} images in {elapsed:.1f} s{rate}")
    failed = _print_summary(writer.records(), [*files, *missing], out)
    if interrupted:
        echo("interrupted: everything written so far is valid; run the same command again to resume")
        raise typer.Exit(130)
    if failed:
        raise typer.Exit(1)


def _threshold_number(value) -> float:
    return float(value.value) if hasattr(value, "value") else float(value)


def _print_summary(records: list[dict], paths: list[Path], out: Path) -> int:
    """Counts over this run's inputs (resumed ones included) and the list of failures."""
    by_path = {os.path.abspath(r["path"]): r for r in records}
    mine = [by_path[a] for a in dict.fromkeys(os.path.abspath(p) for p in paths) if a in by_path]
    failures = [r for r in mine if r.get("status") != "ok"]
    ok = [r for r in mine if r.get("status") == "ok"]
    n_ok = sum(r.get("decision") == "OK" for r in ok)
    n_ng = sum(r.get("decision") == "NG" for r in ok)
    undecided = len(ok) - n_ok - n_ng
    extra = f", no decision {undecided}" if undecided else ""
    total = len(dict.fromkeys(os.path.abspath(p) for p in paths))
    count = f"{len(mine)} images" if len(mine) == total else f"{len(mine)} of {total} images done"
    echo(f"{count}: OK {n_ok}, NG {n_ng}{extra}, failed {len(failures)}; results in {out / 'results.jsonl'}")
    if failures:
        echo(f"failures ({len(failures)}):")
        for r in failures:
            echo(f"  {r['path']}: {r.get('error')}")
    return len(failures)
