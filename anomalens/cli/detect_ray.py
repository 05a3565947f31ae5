"""`anomalens detect ... --engine ray`: the CLI side of the Ray engine (thin; see anomalens.engines.ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import UsageError
from .app import echo, fail


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(f.name for f in a.iterdir())
    return names == sorted(f.name for f in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def _save_fitted(det, target: Path, overwrite: bool) -> Path:
    """Save the detector fitted for this job to <out>/model, never replacing another one silently."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fresh = det.save(Path(tmp) / "model")
        if target.exists() and not overwrite:
            if not _same_files(fresh, target):
                fail(
                    f"{target} holds another model (earlier results were made with it); pass --overwrite or "
                    "another --out"
                )
            return target
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fresh, target)
    return target


def detect_with_ray(det, p: dict[str, Any], explicit: set[str], inputs: list[str]) -> None:
    """Score `inputs` with the fitted/loaded detector on Ray; exit 1 if any image failed.

    A detector fitted here (from --refs, or zero-shot) is saved to <out>/model first: that saved
    model is what the actors load (and it lets the job be repeated with --model).
    """
    try:
        from ..engines.ray import score_with_ray
    except ImportError as err:
        fail(
            f"--engine ray needs the optional packages ray[data] and pyarrow ({err.name} is missing): "
            'pip install "anomalens[ray]"'
        )
    out = Path(p["out"])
    threshold: Any = "keep"
    if p.get("model") is not None:
        model = Path(p["model"])
        if {"bit_depth", "max_pixels"} & explicit and model.suffix.lower() != ".onnx":
            from ..image_reading import ImageReading
            from ..model_files import MODEL_CONFIG, read_model_config

            saved = ImageReading.from_dict(read_model_config(model / MODEL_CONFIG).get("image_reading"))
            if saved != det.reading:  # the actors load the saved model, with its reading
                fail(f"--bit-depth/--max-pixels with --engine ray --model: the actors read files as {model} "
                     "says; fit the model with these options (or run without --engine ray)")
        if {"threshold", "pixel_threshold"} & explicit:
            threshold = det.threshold
    else:
        model = _save_fitted(det, out / "model", bool(p["overwrite"]))
    pixel = det.pixel_threshold if threshold != "keep" else None
    echo(f"ray: {len(inputs)} input(s), model {model}, results as shards under {out / 'shards'}")

    def progress(done: int, total: int) -> None:
        echo(f"  {done}/{total} images")

    try:
        summary = score_with_ray(
            inputs,
            out,
            model,
            threshold=threshold,
            pixel_threshold=pixel,
            address=p.get("ray_address"),
            actors=int(p["ray_actors"]),
            cpus_per_actor=float(p["ray_cpus_per_actor"]),
            gpus_per_actor=float(p["ray_gpus_per_actor"]),
            shard_size=int(p["shard_size"]),
            batch_size=int(p["batch_size"]),
            jobs=int(p["jobs"]),
            write_maps=bool(p["ray_maps"]),
            write_overlays=bool(p["ray_overlays"]),
            map_format=p["map_format"],
            overwrite=bool(p["overwrite"]),
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    if summary.shards_skipped:
        echo(f"resumed: {summary.shards_skipped} shard(s) already written were kept")
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions.items()))
    echo(
        f"{summary.ok + summary.failed} of {summary.total} images: {decisions or 'none scored'}, "
        f"failed {summary.failed}; {summary.images_per_second:.2f} images/s; results in {out / 'shards'}"
    )
    if summary.failed:
        echo(f"failures ({summary.failed}{', first 100' if summary.failed > 100 else ''}):")
        for path, error in summary.failures:
            echo(f"  {path}: {error}")
        raise typer.Exit(1)
