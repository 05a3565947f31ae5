"""The `anomalens` command line: detect, fit, demo, benchmark, data index, train."""

from __future__ import annotations

import dataclasses
import json
import os
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


@app.callback()
def _global_options(
    threads: int = typer.Option(
        0, "--threads", min=0, help="CPU threads for the model (0: torch's default). 1 helps on a busy machine."
    ),
) -> None:
    """Options for every command, given before it: `anomalens --threads 1 detect ...`."""
    if threads:
        import torch

        torch.set_num_threads(threads)
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


_CONFIG_ALIASES = {"set": "set_"}


def _apply_config(ctx: click.Context, config: Path | None) -> tuple[dict[str, Any], set[str]]:
    """Fill options not given on the command line from a YAML file.

    Returns the effective values and the names given explicitly (on the command line or in the
    file). Keys are option names, with "-" or "_" (``pixel-threshold``, ``pixel_threshold``),
    ``images`` for the inputs and ``set`` for --set (a list of "key=value", or a mapping).
    Values are converted and checked as on the command line; the command line wins; relative
    paths are relative to the working directory. A settings.json written by ``detect`` is a
    valid config too (its "options" are used), so ``--config OUT/settings.json`` repeats a run.
    """
    params = dict(ctx.params)
    # By name: typer ships its own copy of click, whose ParameterSource is another enum.
    defaults = ("DEFAULT", "DEFAULT_MAP")
    explicit = {n for n in params if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in defaults}
    if config is None:
        return params, explicit
    import yaml

    try:
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        _fail(f"{config}: cannot read config: {err}")
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        _fail(f"{config}: expected a mapping of option names to values")
    if isinstance(loaded.get("options"), dict) and "command" in loaded:  # a run's settings.json
        if loaded["command"] != ctx.command.name:
            _fail(f"{config}: settings of `anomalens {loaded['command']}`, not of `{ctx.command.name}`")
        loaded = {k: v for k, v in loaded["options"].items() if k != "config"}
    by_name = {prm.name: prm for prm in ctx.command.params}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        name = _CONFIG_ALIASES.get(name, name)
        if name not in params or name == "config":
            known = sorted(n.rstrip("_") for n in params if n != "config")
            _fail(f"{config}: unknown option {key!r}; known: {', '.join(known)}")
        if name in explicit:
            continue  # given on the command line: it overrides the file
        prm = by_name[name]
        if value is None:
            if prm.default is None or prm.multiple or prm.nargs == -1:
                params[name] = None
            continue
        if name == "set_" and isinstance(value, dict):
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        if (prm.multiple or prm.nargs == -1) and not isinstance(value, (list, tuple)):
            value = [value]
        try:
            params[name] = prm.process_value(ctx, value)  # the command line's conversion and checks
        except (typer.BadParameter, click.BadParameter) as err:
            _fail(f"{config}: option {key!r}: {err.message}")
        explicit.add(name)
    return params, explicit


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


def _parse_threshold(value: Any) -> str | float | None:
    """None (not given), "auto", "none" (no threshold) or a number."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        return float(text)
    except ValueError:
        _fail(f"--threshold must be a number, 'auto' or 'none', got {value!r}")
    return None


# Errors that are the user's to fix (bad settings, missing weights or files): one clear line,
# exit code 2, no traceback. Matched by name so that no optional backbone module is imported.
_USAGE_ERRORS = ("MissingWeightsError", "MissingBackboneError", "MissingCheckpointError", "MissingGroundingError")
_METHOD_OPTIONS = (
    "weights",
    "backbone",
    "category",
    "prompts",
    "checkpoint",
    "grounding",
    "image_size",
    "resize",
    "set_",
    "describe",
)


def _build_detector(p: dict[str, Any], explicit: set[str]):
    """Load --model, or create the method and fit it on --refs (zero-shot without); + a source line."""
    from .detector import Detector, load_detector
    from .images import ImageLoadError

    try:
        if p.get("model") is not None:
            if p.get("refs") is not None:
                _fail(
                    "--refs cannot be combined with --model: the model already holds its reference "
                    "images; fit a new model (`anomalens fit`) to change them"
                )
            det = load_detector(p["model"])
            ignored = [n.rstrip("_") for n in _METHOD_OPTIONS if n in explicit and p.get(n)]
            if "method" in explicit and p.get("method") != det.method_name:
                ignored.insert(0, "method")
            if ignored:
                _echo(
                    f"note: --model {p['model']} holds a fitted {det.method_name} model; its saved "
                    f"settings are used and {', '.join(ignored)} ignored"
                )
            n = len(det.reference_paths)
            how = f"fitted on {n} reference images" if n else "zero-shot"
            return det, f"model {p['model']} ({det.method_name}, {how})"
        sets = _parse_sets(list(p.get("set_") or []))
        if p.get("describe") and "defects" not in sets:
            defects = _describe_for_run(p, sets)
            if defects:  # recorded as --set so settings.json repeats the run without the model
                p["set_"] = [*(p.get("set_") or []), f"defects={json.dumps(defects)}"]
                sets["defects"] = defects
        settings = _method_settings(
            p["method"],
            {k: p.get(k) for k in ("weights", "backbone", "category", "image_size", "resize")}
            | {
                "prompts": str(p["prompts"]) if p.get("prompts") else None,
                "checkpoint": str(p["checkpoint"]) if p.get("checkpoint") else None,
                "grounding": str(p["grounding"]) if p.get("grounding") else None,
            }
            | sets,
        )
        det = Detector(method=p["method"], **settings)
        if p.get("refs") is None:
            det.fit([])
            return det, "zero-shot (no reference images)"
        refs = Path(p["refs"])
        if not refs.exists():
            _fail(f"{refs}: reference folder does not exist")
        det.fit([refs])
        return det, f"{len(det.reference_paths)} reference images from {refs}"
    except typer.Exit:
        raise
    except ImageLoadError as err:
        _fail(f"cannot use the reference images: {err}")
    except Exception as err:
        if isinstance(err, (ValueError, FileNotFoundError)) or type(err).__name__ in _USAGE_ERRORS:
            _fail(str(err))
        raise
    raise AssertionError("unreachable")


def _describe_for_run(p: dict[str, Any], sets: dict[str, Any]) -> list[str] | None:
    """--describe: defect phrases from a language model when the vocabulary has none for --category."""
    from .describe import DescribeError, make_backend
    from .describe.for_run import defects_for_run

    try:
        return defects_for_run(
            p["method"],
            p.get("category"),
            lambda: make_backend(p.get("llm") or "embedded", p.get("llm_model"), log=_echo),
            vocabulary=sets.get("vocabulary"),
            log=_echo,
        )
    except DescribeError as err:
        _fail(str(err))
    return None


def _set_threshold(det, p: dict[str, Any], explicit: set[str], value: str | float | None) -> None:
    """Apply --threshold / --pixel-threshold (a number, calibration from the references, or none)."""
    from .calibration import Threshold

    from_model = p.get("model") is not None
    if value == "none":
        det.threshold, det.pixel_threshold = None, None
    elif value == "auto" and from_model:
        saved = det.threshold
        if saved is None or saved.method != "auto":
            _fail(f"{p['model']} holds no calibrated threshold; fit it with --threshold auto, or pass --threshold X")
        for name in ("quantile", "margin"):
            if name in explicit and getattr(saved, name) != p[name]:
                _fail(
                    f"{p['model']} was calibrated with {name} {getattr(saved, name)}, not {p[name]}: "
                    "calibration needs the references, so fit the model again to change it"
                )
    elif value == "auto":
        try:
            det.calibrate(quantile=p["quantile"], margin=p["margin"], pixel_threshold=p["pixel_threshold"])
        except ValueError as err:
            _fail(str(err))
    elif value is not None:
        det.threshold = Threshold.given(float(value))
        det.pixel_threshold = float(value)
    if p.get("pixel_threshold") is not None:
        det.pixel_threshold = float(p["pixel_threshold"])


def _describe(threshold) -> str:
    if threshold is None:
        return "none"
    return threshold.description() if hasattr(threshold, "description") else f"given: {threshold:.6g}"


def _collect_inputs(inputs: list[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """(image files, missing inputs): directories expanded, duplicates dropped with a note.

    Files inside the output directory are not taken from an expanded input folder, so that
    `detect DIR --out DIR/results` run twice does not score its own overlays and masks.
    """
    from .images import IMAGE_EXTENSIONS, list_images

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
                _echo(f"note: {item}: no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})")
        for f in found:
            key = os.path.realpath(f)
            if key in seen:
                duplicates += 1
                continue
            seen[key] = f
            files.append(f)
    if duplicates:
        _echo(f"note: {duplicates} duplicate input(s) (same file given twice) scored once")
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
    refs: Path | None = typer.Option(None, "--refs", help="Folder (or file) of good reference images: few-shot."),
    method: str = typer.Option("patchknn", "--method", "-m", help="patchknn | fade | winclip | filo"),
    out: Path = typer.Option(Path("anomalens_out"), "--out", "-o", help="Output directory."),
    model: Path | None = typer.Option(None, "--model", help="A fitted model directory from `anomalens fit`."),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        help="Image threshold: a number, 'auto' (calibrated on the references, leave-one-out: "
        "quantile + margin * (quantile - median)), or 'none'. Default: the model's, else none.",
    ),
    pixel_threshold: float | None = typer.Option(
        None, "--pixel-threshold", help="Threshold of the mask (default: calibrated, or the image threshold)."
    ),
    quantile: float = typer.Option(0.99, "--quantile", help="Quantile of good scores for --threshold auto."),
    margin: float = typer.Option(0.1, "--margin", help="Margin for --threshold auto (see README)."),
    weights: str | None = typer.Option(None, "--weights", help="CLIP weights: a local file or an open_clip tag."),
    backbone: str | None = typer.Option(None, "--backbone", help="Backbone name (e.g. ViT-B-16-plus-240, test-tiny)."),
    category: str | None = typer.Option(None, "--category", help="Object name used in the prompts."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Your prompt ensemble JSON (fade)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Trained FiLo checkpoint directory."),
    grounding: Path | None = typer.Option(None, "--grounding", help="Grounding DINO weight folder (filo)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Model input side in pixels."),
    resize: str | None = typer.Option(None, "--resize", help="squash | pad (keep aspect ratio)."),
    map_format: str = typer.Option("npy", "--map-format", help="Raw map files: npy | tiff (32-bit float)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    jobs: int = typer.Option(
        2, "--jobs", "-j", min=0, help="Threads that read and decode images ahead of the model (0: none)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    set_: list[str] = typer.Option(None, "--set", help="Any method setting: --set key=value (repeatable)."),
    describe: bool = typer.Option(
        False,
        "--describe",
        help="fade/winclip/filo: if the vocabulary has no defects for --category, ask a language model "
        "(see `anomalens describe`); the list is recorded in settings.json.",
    ),
    llm: str = typer.Option("embedded", "--llm", help="Language model for --describe: embedded or an endpoint URL."),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Endpoint model name for --describe."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="YAML file with any of these options (command-line options override it); a run's settings.json works too.",
    ),
) -> None:
    """Score images: results.jsonl/.csv, overlays, masks, raw maps and report.html under --out.

    Re-running the same command resumes: images with results in --out are not done again
    (failed ones are retried); --overwrite starts afresh. Images above 16 megapixels are worked
    on (and their maps, masks and overlays written) at a reduced size; see anomalens.images.

    Exit code 0 when every image was processed, 1 when some failed (listed at the end), 2 for
    usage errors, 130 when interrupted (Ctrl-C; what was written is valid, run again to resume).
    """
    p, explicit = _apply_config(ctx, config)
    from datetime import datetime

    import numpy as np
    from tqdm.auto import tqdm

    from . import __version__
    from .images import ImageLoadError
    from .outputs import SETTINGS_JSON, OutputWriter
    from .report import write_report

    inputs = [Path(i) for i in (p["images"] or [])]
    if not inputs:
        _fail("no images given")
    if p["map_format"] not in ("npy", "tiff"):
        _fail(f"--map-format must be 'npy' or 'tiff', got {p['map_format']!r}")
    if int(p["jobs"]) < 0 or int(p["batch_size"]) < 1:
        _fail("--jobs must be >= 0 and --batch-size >= 1")
    threshold_value = _parse_threshold(p["threshold"])
    out = Path(p["out"])
    files, missing = _collect_inputs(inputs, out)
    if not files and not missing:
        _fail(f"no image files found in {', '.join(map(str, inputs))}")

    det, source = _build_detector(p, explicit)
    _set_threshold(det, p, explicit, threshold_value)
    if det.threshold is not None:
        _echo(f"threshold: {_describe(det.threshold)}")
        _echo(f"pixel threshold: {_describe(det.pixel_threshold)}")
    elif det.pixel_threshold is not None:
        _echo(f"pixel threshold: {_describe(det.pixel_threshold)}; no image threshold: no OK/NG decisions")
    else:
        _echo("no threshold: scores and maps only (pass --threshold X or --threshold auto for OK/NG and masks)")

    previous = _read_settings(out / SETTINGS_JSON) if not p["overwrite"] else None
    try:
        writer = OutputWriter(out, overwrite=p["overwrite"], map_format=p["map_format"])
    except (FileExistsError, ValueError, OSError) as err:
        _fail(f"cannot write to {out}: {err}")
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
        _echo(f"resuming: {len(files) - len(todo)} of {len(files)} images already done in {out}")
        if previous is not None and not _same_run(previous, effective):
            _echo(
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
            info["pixel_threshold_description"] = _describe(det.pixel_threshold)
        try:
            _echo(f"report: {write_report(out, summary_info=info)}")
        except (OSError, ValueError) as err:
            _echo(f"warning: could not write {out}/report.html: {err}")
    rate = f", {scored_now / elapsed:.2f} images/s" if scored_now and elapsed > 0 else ""
    _echo(f"scored {scored_now} images in {elapsed:.1f} s{rate}")
    failed = _print_summary(writer.records(), [*files, *missing], out)
    if interrupted:
        _echo("interrupted: everything written so far is valid; run the same command again to resume")
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
    _echo(f"{count}: OK {n_ok}, NG {n_ng}{extra}, failed {len(failures)}; results in {out / 'results.jsonl'}")
    if failures:
        _echo(f"failures ({len(failures)}):")
        for r in failures:
            _echo(f"  {r['path']}: {r.get('error')}")
    return len(failures)


@app.command()
def fit(
    ctx: typer.Context,
    refs: Path | None = typer.Option(None, "--refs", help="Folder of good reference images (required)."),
    method: str = typer.Option("patchknn", "--method", "-m"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory to write (required)."),
    threshold: str | None = typer.Option(
        "auto", "--threshold", help="A number, 'auto' (leave-one-out over the references), or 'none'."
    ),
    pixel_threshold: float | None = typer.Option(None, "--pixel-threshold"),
    quantile: float = typer.Option(0.99, "--quantile"),
    margin: float = typer.Option(0.1, "--margin"),
    weights: str | None = typer.Option(None, "--weights"),
    backbone: str | None = typer.Option(None, "--backbone"),
    category: str | None = typer.Option(None, "--category"),
    prompts: Path | None = typer.Option(None, "--prompts"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    grounding: Path | None = typer.Option(None, "--grounding", help="Grounding DINO weight folder (filo)."),
    image_size: int | None = typer.Option(None, "--image-size"),
    resize: str | None = typer.Option(None, "--resize"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    set_: list[str] = typer.Option(None, "--set", help="Any method setting: --set key=value (repeatable)."),
    describe: bool = typer.Option(False, "--describe", help="As in detect: describe a category the vocabulary lacks."),
    llm: str = typer.Option("embedded", "--llm", help="Language model for --describe: embedded or an endpoint URL."),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Endpoint model name for --describe."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Fit a detector on good images, calibrate its threshold, and save it (safetensors + JSON).

    Then `anomalens detect --model OUT ...` uses the saved settings, references and threshold.
    """
    p, explicit = _apply_config(ctx, config)
    if p["refs"] is None:
        _fail("--refs is required: a folder of good reference images")
    if p["out"] is None:
        _fail("--out is required: the model directory to write")
    out = Path(p["out"])
    if (out / "detector.json").exists() and not p["overwrite"]:
        _fail(f"{out} already holds a model; pass --overwrite to replace it")
    threshold_value = _parse_threshold(p["threshold"])
    det, source = _build_detector({**p, "model": None}, explicit)
    _set_threshold(det, {**p, "model": None}, explicit, threshold_value)
    try:
        det.save(out, overwrite=p["overwrite"])
    except (FileExistsError, OSError) as err:
        _fail(f"cannot save the model to {out}: {err}")
    _echo(f"saved {det.method_name} model fitted on {source} to {out}")
    _echo(f"threshold: {_describe(det.threshold)}")
    if det.threshold is not None:
        _echo(f"pixel threshold: {_describe(det.pixel_threshold)}")


@app.command()
def demo(
    out: Path = typer.Option(Path("anomalens_demo"), "--out", "-o", help="Where to write the demo set and results."),
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
    pixel_resolution: int | None = typer.Option(None, "--pixel-resolution", help="Longer side for pixel metrics."),
    weights: str | None = typer.Option(None, "--weights"),
    backbone: str | None = typer.Option(None, "--backbone"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    grounding: Path | None = typer.Option(None, "--grounding", help="Grounding DINO weight folder (filo)."),
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
                "grounding": str(grounding) if grounding else None,
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
    except FileExistsError as err:
        _fail(f"{err}; pass --overwrite to replace it")
    except (ValueError, FileNotFoundError) as err:
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


# ---- describe (issue 14): defect vocabularies and sentence ensembles from a language model ----
# Self-contained so it can move to anomalens/cli/describe.py; the work is in anomalens.describe.


@app.command()
def describe(
    categories: list[str] = typer.Argument(None, help="Product names, e.g. screw 'ball screw drive'."),
    n: int | None = typer.Option(None, "--n", min=1, help="Phrases per category (default 8) or sentences (400)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Vocabulary JSON (default vocabulary.json) or, with --ensemble, ensemble.json."
    ),
    llm: str = typer.Option(
        "embedded",
        "--llm",
        help="'embedded' (offline Gemma 3 270M, the 'llm' extra of anomalens; de-quantised "
        "weights cached in "
        "$ANOMALENS_LLM_CACHE, default ~/.cache/anomalens/llm) or an OpenAI-compatible URL such as "
        "http://localhost:8080/v1 (key, if needed, in $ANOMALENS_LLM_API_KEY).",
    ),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Model name sent to the endpoint."),
    context: str | None = typer.Option(
        None, "--context", help="What the product is, e.g. 'steel part of a linear axis'."
    ),
    ensemble: str | None = typer.Option(
        None, "--ensemble", help="normal | abnormal: write FADE-style object-agnostic sentences (endpoint only)."
    ),
    merge: bool = typer.Option(False, "--merge", help="Add to an existing --out file, keeping all its entries."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (the embedded model is deterministic per seed)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per endpoint request."),
) -> None:
    """Write defect phrases per category (the vocabulary filo reads) or a sentence ensemble (--prompts).

    Every answer goes through a cleaning filter (lowercase; numbering, punctuation, the category
    name alone, duplicates, near-duplicates, long or non-defect items dropped); what was dropped
    is printed with the reason. An existing --out is never replaced without --overwrite.
    """
    from . import describe as d

    if merge and overwrite:
        _fail("--merge and --overwrite exclude each other")
    if ensemble is not None and ensemble not in ("normal", "abnormal"):
        _fail(f"--ensemble must be 'normal' or 'abnormal', got {ensemble!r}")
    if ensemble and categories:
        _fail("--ensemble writes object-agnostic sentences: give no categories")
    if not ensemble and not categories:
        _fail("give one or more categories (or --ensemble normal|abnormal)")
    if ensemble and llm == "embedded":
        _fail(
            "the embedded Gemma 3 270M is too small to write hundreds of varied sentences (it repeats a few "
            "phrasings); use an endpoint: --llm http://host:port/v1"
        )
    target = Path(out or ("ensemble.json" if ensemble else "vocabulary.json"))
    if target.exists() and not (merge or overwrite):
        _fail(f"{target} already exists: pass --merge to add to it or --overwrite to replace it")
    try:
        backend = d.make_backend(llm, llm_model, seed=seed, timeout=timeout, log=_echo)
        if ensemble:
            from .text.prompts import MVTEC_CATEGORIES, VISA_CATEGORIES, clean_class_name

            names = {clean_class_name(c) for c in (*MVTEC_CATEGORIES, *VISA_CATEGORIES)}
            sentences, dropped = d.generate_sentences(backend, ensemble, n or 400, forbidden_words=names, log=_echo)
            for item, why in dropped:
                _echo(f"  dropped {item!r} ({why})")
            d.write_ensemble(target, ensemble, sentences, merge, overwrite, source=f"anomalens describe --llm {llm}")
            typer.echo(f"wrote {len(sentences)} {ensemble} sentences to {target}")
            return
        existing = d.vocabulary_entries(target) if merge else {}
        generated: dict[str, list[str]] = {}
        failed = []
        for category in categories:
            try:
                result = d.describe_category(backend, category, n or 8, context, existing=existing.get(category, ()))
            except d.DescribeError as err:
                _echo(f"error: {category}: {err}")
                failed.append(category)
                continue
            typer.echo(f"{category}: {'; '.join(result.kept) or '(nothing usable)'}")
            for item, why in result.dropped:
                _echo(f"  dropped {item!r} ({why})")
            _echo(f"  {result.seconds:.1f} s, {result.attempts} request(s)")
            if result.kept:
                generated[category] = result.kept
        if generated:
            source = f"anomalens describe --llm {llm} ({backend.model_name}), seed {seed}"
            d.write_vocabulary(target, generated, merge, overwrite, source=source)
            typer.echo(f"wrote {len(generated)} categories to {target}")
        if failed or len(generated) < len(categories):
            raise typer.Exit(1)
    except d.DescribeError as err:
        _fail(str(err))


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
