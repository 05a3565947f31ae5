"""The `anomalens` command line: detect, fit, demo, benchmark, data index, train."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Zero- and few-shot industrial visual anomaly detection (FADE, FiLo, WinCLIP, patch kNN).",
)
data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")
app.add_typer(data_app, name="data")


def _mount_train() -> None:
    """`anomalens train filo ...` lives with the FiLo code."""
    try:
        from .filo.cli import train_app
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("anomalens"):
            return
        raise
    app.add_typer(train_app, name="train")


_mount_train()


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", err=True, fg="red")
    raise typer.Exit(code)


def _apply_config(ctx: click.Context, config: Path | None) -> dict[str, Any]:
    """Fill options not given on the command line from a YAML file; return the effective values."""
    params = dict(ctx.params)
    if config is None:
        return params
    import yaml

    try:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        _fail(f"{config}: cannot read config: {err}")
    if not isinstance(loaded, dict):
        _fail(f"{config}: expected a mapping of option names to values")
    for key, value in loaded.items():
        name = key.replace("-", "_")
        if name not in params:
            _fail(f"{config}: unknown option {key!r}; known: {', '.join(sorted(params))}")
        if ctx.get_parameter_source(name) in (click.core.ParameterSource.DEFAULT, None):
            params[name] = value
    return params


def _method_settings(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Keep the options the chosen method has; say which given ones it ignores."""
    from .methods import METHODS, available_methods

    available_methods()
    if method not in METHODS:
        _fail(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    known = {f.name for f in dataclasses.fields(METHODS[method].Settings)}
    settings = {k: v for k, v in given.items() if v is not None and k in known}
    ignored = sorted(k for k, v in given.items() if v is not None and k not in known)
    if ignored:
        _echo(f"note: method {method!r} has no setting(s) {', '.join(ignored)}; ignored")
    return settings


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """--set key=value pairs; values are YAML ("3.5", "[240, 448]", "true"); "a,b" becomes a list."""
    import yaml

    settings: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects key=value, got {item!r}")
        text = value.strip()
        if "," in text and not text.startswith(("[", "{", "'", '"')):
            text = f"[{text}]"
        try:
            settings[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            _fail(f"--set {item!r}: cannot parse value: {err}")
    return settings


def _parse_threshold(value: str | None) -> str | float | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        _fail(f"--threshold must be a number or 'auto', got {value!r}")
    return None


@app.command()
def detect(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(None, help="Image files and/or directories (searched recursively)."),
    refs: Path | None = typer.Option(
        None, "--refs", help="Folder (or file) of good reference images: few-shot."
    ),
    method: str = typer.Option("patchknn", "--method", "-m", help="patchknn | fade | winclip | filo"),
    out: Path = typer.Option(Path("anomalens_out"), "--out", "-o", help="Output directory."),
    model: Path | None = typer.Option(None, "--model", help="A fitted model directory from `anomalens fit`."),
    threshold: str | None = typer.Option(None, "--threshold", help="Image threshold: a number, or 'auto'."),
    pixel_threshold: float | None = typer.Option(None, "--pixel-threshold", help="Threshold for the mask."),
    quantile: float = typer.Option(0.99, "--quantile", help="Quantile of good scores for --threshold auto."),
    margin: float = typer.Option(0.1, "--margin", help="Margin for --threshold auto (see README)."),
    weights: str | None = typer.Option(
        None, "--weights", help="CLIP weights: a local file or an open_clip tag."
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="Backbone name (e.g. ViT-B-16-plus-240, test-tiny)."
    ),
    category: str | None = typer.Option(None, "--category", help="Object name used in the prompts."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Your prompt ensemble JSON (fade)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Trained FiLo checkpoint directory."),
    image_size: int | None = typer.Option(None, "--image-size", help="Model input side in pixels."),
    resize: str | None = typer.Option(None, "--resize", help="squash | pad (keep aspect ratio)."),
    map_format: str = typer.Option("npy", "--map-format", help="Raw map files: npy | tiff (32-bit float)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    jobs: int = typer.Option(
        2, "--jobs", "-j", help="Threads that read and decode images ahead of the model."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    set_: list[str] = typer.Option(None, "--set", help="Any method setting: --set key=value (repeatable)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Score images: results.jsonl/.csv, overlays, masks, raw maps and report.html under --out.

    Exit code 0 when every image was processed, 1 when some failed (listed at the end), 2 for
    usage errors.
    """
    p = _apply_config(ctx, config)
    from .detector import Detector, load_detector
    from .images import ImageLoadError, list_images
    from .outputs import OutputWriter
    from .report import write_report

    inputs = [Path(i) for i in (p["images"] or [])]
    if not inputs:
        _fail("no images given")
    missing = [str(i) for i in inputs if not i.exists()]
    threshold_value = _parse_threshold(p["threshold"])
    try:
        if p["model"] is not None:
            det = load_detector(p["model"])
            source = f"model {p['model']}"
        else:
            settings = _method_settings(
                p["method"],
                {k: p[k] for k in ("weights", "backbone", "category", "image_size", "resize")}
                | {
                    "prompts": str(p["prompts"]) if p["prompts"] else None,
                    "checkpoint": str(p["checkpoint"]) if p["checkpoint"] else None,
                }
                | _parse_sets(p["set_"]),
            )
            det = Detector(method=p["method"], **settings)
            source = "zero-shot"
            if p["refs"] is not None:
                if not Path(p["refs"]).exists():
                    _fail(f"{p['refs']}: reference folder does not exist")
                det.fit([p["refs"]])
                source = f"{len(det.reference_paths)} reference images from {p['refs']}"
            else:
                det.fit([])
    except ImageLoadError as err:
        _fail(str(err))
    except Exception as err:  # missing weights, bad settings: one clear line, no traceback
        if type(err).__name__ in (
            "MissingWeightsError",
            "MissingBackboneError",
            "ValueError",
            "FileNotFoundError",
        ):
            _fail(str(err))
        raise
    if threshold_value == "auto":
        try:
            det.calibrate(quantile=p["quantile"], margin=p["margin"], pixel_threshold=p["pixel_threshold"])
        except ValueError as err:
            _fail(str(err))
    elif threshold_value is not None:
        from .calibration import Threshold

        det.threshold = Threshold.given(threshold_value)
        det.pixel_threshold = p["pixel_threshold"] if p["pixel_threshold"] is not None else threshold_value
    elif p["pixel_threshold"] is not None:
        det.pixel_threshold = p["pixel_threshold"]

    files = list_images([i for i in inputs if i.exists()])
    try:
        writer = OutputWriter(p["out"], overwrite=p["overwrite"], map_format=p["map_format"])
    except (FileExistsError, ValueError) as err:
        _fail(str(err))
    effective = {
        "command": "detect",
        "inputs": [str(i) for i in inputs],
        "method": det.method_name,
        "settings": det.settings,
        "backbone": det.backbone_name,
        "source": source,
        "threshold": None if det.threshold is None else det.threshold.to_dict(),
        "pixel_threshold": getattr(det.pixel_threshold, "to_dict", lambda: det.pixel_threshold)(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items() if k != "images"},
    }
    effective["options"]["images"] = [str(i) for i in inputs]
    writer.write_settings(json.loads(json.dumps(effective, default=str)))
    done = writer.done_paths()
    todo = [f for f in files if str(f) not in done]
    for m in missing:
        if m not in done:
            writer.record_failure(m, "file does not exist")
    if len(todo) < len(files):
        _echo(f"resuming: {len(files) - len(todo)} of {len(files)} images already in {p['out']}")
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc=det.method_name, disable=None)
    interrupted = False
    try:
        for item in det.predict_iter(todo, batch_size=p["batch_size"], jobs=p["jobs"], with_images=True):
            if isinstance(item, ImageLoadError):
                writer.record_failure(item.path, item.reason)
            else:
                result, img = item
                try:
                    writer.write(result, img.rgb)
                except OSError as err:
                    writer.record_failure(result.path, f"could not write outputs: {err}")
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        summary = writer.summary()
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
        path = write_report(p["out"], summary_info=info)
        _echo(f"report: {path}")
    _print_summary(writer, summary, p["out"])
    if interrupted:
        _echo("interrupted: everything written so far is valid; run the same command again to resume")
        raise typer.Exit(130)
    if summary.get("failed", 0):
        raise typer.Exit(1)


def _print_summary(writer, summary: dict, out: Path) -> None:
    _echo(
        f"{summary.get('ok', 0) + summary.get('ng', 0) + summary.get('undecided', 0)} scored "
        f"(OK {summary.get('ok', 0)}, NG {summary.get('ng', 0)}), failed {summary.get('failed', 0)}; "
        f"results in {out}/results.jsonl"
    )
    failures = [r for r in writer.records() if r.get("status") == "error"]
    if failures:
        _echo("failures:")
        for r in failures:
            _echo(f"  {r['path']}: {r.get('error')}")


@app.command()
def fit(
    refs: Path = typer.Option(..., "--refs", help="Folder of good reference images."),
    method: str = typer.Option("patchknn", "--method", "-m"),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    threshold: str | None = typer.Option("auto", "--threshold", help="A number, 'auto', or 'none'."),
    pixel_threshold: float | None = typer.Option(None, "--pixel-threshold"),
    quantile: float = typer.Option(0.99, "--quantile"),
    margin: float = typer.Option(0.1, "--margin"),
    weights: str | None = typer.Option(None, "--weights"),
    backbone: str | None = typer.Option(None, "--backbone"),
    category: str | None = typer.Option(None, "--category"),
    prompts: Path | None = typer.Option(None, "--prompts"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    image_size: int | None = typer.Option(None, "--image-size"),
    resize: str | None = typer.Option(None, "--resize"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    set_: list[str] = typer.Option(None, "--set", help="Any method setting: --set key=value (repeatable)."),
) -> None:
    """Fit a detector on good images, calibrate its threshold, and save it (safetensors + JSON)."""
    from .calibration import Threshold
    from .detector import Detector
    from .images import ImageLoadError

    settings = _method_settings(
        method,
        {
            "weights": weights,
            "backbone": backbone,
            "category": category,
            "image_size": image_size,
            "resize": resize,
            "prompts": str(prompts) if prompts else None,
            "checkpoint": str(checkpoint) if checkpoint else None,
        }
        | _parse_sets(set_),
    )
    if (out / "detector.json").exists() and not overwrite:
        _fail(f"{out} already holds a model; pass --overwrite to replace it")
    try:
        det = Detector(method=method, **settings).fit([refs])
        if threshold == "auto":
            det.calibrate(quantile=quantile, margin=margin, pixel_threshold=pixel_threshold)
        elif threshold not in (None, "none"):
            det.threshold = Threshold.given(float(threshold))
            det.pixel_threshold = pixel_threshold if pixel_threshold is not None else float(threshold)
    except (ImageLoadError, ValueError) as err:
        _fail(str(err))
    det.save(out, overwrite=overwrite)
    how = det.threshold.description() if det.threshold is not None else "no threshold"
    _echo(f"saved {method} model fitted on {len(det.reference_paths)} images to {out} ({how})")


@app.command()
def demo(
    out: Path = typer.Option(
        Path("anomalens_demo"), "--out", "-o", help="Where to write the demo set and results."
    ),
    method: str = typer.Option("patchknn", "--method", "-m"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the main job offline: synthetic defects on real textures, few-shot detection, AUROC."""
    from .benchmark import evaluate_category
    from .data import load_dataset, sample_references
    from .demo import DemoSettings, build_demo_dataset
    from .detector import Detector
    from .outputs import OutputWriter
    from .report import write_report

    out = _fresh_dir(out)
    settings = DemoSettings(seed=seed)
    _echo(
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
    typer.echo(
        f"\n{method} ({det.backbone_name}), {settings.references}-shot, synthetic defects on real textures:"
    )
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


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"expected comma-separated integers, got {text!r}")
    return []


@app.command()
def benchmark(
    data: Path = typer.Option(..., "--data", help="Dataset root."),
    dataset: str = typer.Option("auto", "--dataset", help="mvtec | visa | folder | meta | auto"),
    categories: str | None = typer.Option(None, "--categories", help="Comma-separated subset."),
    method: str = typer.Option("patchknn", "--method", "-m"),
    shots: str = typer.Option("0", "--shots", help="Comma-separated shot counts, e.g. 0,1,2,4."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds for the reference draws."),
    out: Path = typer.Option(Path("benchmark_out"), "--out", "-o"),
    pixel_resolution: int | None = typer.Option(
        None, "--pixel-resolution", help="Longer side for pixel metrics."
    ),
    weights: str | None = typer.Option(None, "--weights"),
    backbone: str | None = typer.Option(None, "--backbone"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    image_size: int | None = typer.Option(None, "--image-size"),
    resize: str | None = typer.Option(None, "--resize"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    set_: list[str] = typer.Option(None, "--set", help="Any method setting: --set key=value (repeatable)."),
) -> None:
    """Per-category image and pixel metrics; resumes from what --out already holds."""
    from .benchmark import BenchmarkSettings, markdown_table, run_benchmark

    settings = BenchmarkSettings(
        data=str(data),
        dataset=dataset,
        method=method,
        categories=[c.strip() for c in categories.split(",")] if categories else None,
        shots=_int_list(shots),
        seeds=_int_list(seeds),
        pixel_resolution=pixel_resolution,
        method_settings=_method_settings(
            method,
            {
                "weights": weights,
                "backbone": backbone,
                "image_size": image_size,
                "resize": resize,
                "checkpoint": str(checkpoint) if checkpoint else None,
            }
            | _parse_sets(set_),
        ),
    )
    try:
        result = run_benchmark(settings, out, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    typer.echo(f"{method} on {data} ({result['backbone']})")
    typer.echo(markdown_table(result["shots"]))
    typer.echo(f"results: {out / 'results.json'}, {out / 'results.csv'}")


@data_app.command("index")
def data_index(
    root: Path = typer.Argument(..., help="Dataset root."),
    dataset: str = typer.Option("auto", "--dataset"),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default ROOT/meta.json)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Write the meta.json index used by FiLo, AnomalyCLIP and APRIL-GAN for any dataset."""
    from .data import load_dataset, write_meta

    try:
        splits = load_dataset(root, kind=dataset)
        path = write_meta(root, splits, path=out, overwrite=overwrite)
    except (FileExistsError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    n = sum(len(s.test) + len(s.train_good) for s in splits.values())
    typer.echo(f"wrote {path}: {len(splits)} categories, {n} images")


@app.command("methods")
def list_methods() -> None:
    """List the registered methods and their settings with defaults."""
    from .methods import METHODS, available_methods

    for name in available_methods():
        typer.echo(name)
        for f in dataclasses.fields(METHODS[name].Settings):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            typer.echo(f"    {f.name} = {default!r}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
