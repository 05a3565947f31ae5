"""Writing a fitted detector as one self-describing .onnx file (and checking it runs the same)."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..tiling import TILE_OVERLAP
from .errors import ExportError, missing_extra
from .graph import build_spec, synthetic_image, tracing_context
from .metadata import METADATA_KEY, encode

OPSET = 17
# The parity bar: maps and scores of the exported model within this of PyTorch's.
TOLERANCE = 1e-4


@dataclass
class ExportReport:
    path: Path
    bank_file: Path | None
    seconds: float
    max_map_difference: float | None  # on synthetic check images; None when not verified
    max_score_difference: float | None


def _threshold_json(value) -> Any:
    return None if value is None else value.to_dict()  # Detector thresholds are Threshold or None


def bank_file_for(path: Path) -> Path:
    return path.with_name(path.stem + ".bank.npy")


def export_onnx(
    detector,
    out: str | os.PathLike,
    bank: str = "auto",
    overwrite: bool = False,
    verify: bool = True,
    opset: int = OPSET,
) -> ExportReport:
    """Export a fitted `Detector` to `out` (.onnx): graph, constants, threshold and metadata.

    bank: "constant" (memory bank inside the graph), "input" (a second input, read from
    `<stem>.bank.npy` beside the model) or "auto" (input above 1 GB; patchknn only).
    verify: run the exported model and the PyTorch detector on two synthetic images and refuse
    (ExportError, files removed) if maps or scores differ by more than 1e-4.
    """
    try:
        import onnx
    except ImportError as err:
        raise missing_extra(err) from None
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: the output file must end in .onnx")
    bank_path = bank_file_for(out)
    for target in (out, bank_path):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    start = time.perf_counter()
    spec = build_spec(detector, bank=bank)
    names = list(spec.example_inputs)
    batched = [n for n in names if n != "memory_bank"] + spec.output_names
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings(), torch.no_grad(), tracing_context(spec.clip):
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter: seconds instead of the dynamo exporter's minutes on
            # these graphs, and every op they use has an opset-17 translation.
            if spec.clip is not None:
                spec.module(*spec.example_inputs.values())  # fills tracing_context's constants
            torch.onnx.export(
                spec.module,
                tuple(spec.example_inputs.values()),
                str(tmp),
                input_names=names,
                output_names=spec.output_names,
                dynamic_axes={n: {0: "batch"} for n in batched} if spec.dynamic_batch else None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        meta = _metadata(detector, spec, bank_path)
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, encode(meta)
        model.doc_string = f"anomalens {detector.method_name} detector (see metadata key {METADATA_KEY!r})"
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    written_bank = None
    if spec.memory_bank is not None and spec.memory_bank.get("mode") == "input":
        np.save(bank_path, spec.memory_bank["array"], allow_pickle=False)
        written_bank = bank_path
    report = ExportReport(out, written_bank, time.perf_counter() - start, None, None)
    if verify:
        try:
            report.max_map_difference, report.max_score_difference = compare(detector, out)
        except Exception:
            _remove(out, written_bank)
            raise
        worst = max(report.max_map_difference, report.max_score_difference)
        tolerance = TOLERANCE * spec.output_scale
        if not worst <= tolerance:
            _remove(out, written_bank)
            raise ExportError(
                f"the exported {detector.method_name} graph disagrees with the PyTorch model (max difference "
                f"{worst:.3g} > {tolerance:g}); its settings {detector.settings} are not all supported by the export"
            )
        report.seconds = time.perf_counter() - start
    return report


def _remove(*paths: Path | None) -> None:
    for p in paths:
        if p is not None:
            p.unlink(missing_ok=True)


def _metadata(detector, spec, bank_path: Path) -> dict[str, Any]:
    backbone = detector.method.backbone
    bank = None
    if spec.memory_bank is not None:
        bank = {k: v for k, v in spec.memory_bank.items() if k != "array"}
        if bank["mode"] == "input":
            bank["file"] = bank_path.name
    return {
        "anomalens_version": __version__,
        "method": detector.method_name,
        "settings": detector.settings,
        "backbone": detector.backbone_name,
        "num_references": len(detector.reference_paths) or int(getattr(detector.method, "num_references", 0)),
        "references": list(detector.reference_paths),
        "image_reading": detector.reading.to_dict(),  # how files are read (bit depth, pixel limit)
        "preprocessing": {
            "inputs": spec.image_inputs,
            "resize": detector.settings.get("resize", "squash"),
            # patchknn: images longer than this ratio are scored as square tiles (anomalens.tiling)
            "tile_above_aspect": detector.settings.get("tile_above_aspect", 0.0),
            "tile_overlap": TILE_OVERLAP,
            "tile_blend": detector.settings.get("tile_blend", "mean"),
            # zero-shot with tiles: one image's tiles are one batch, compared with each other
            "tiles_scored_together": bool(getattr(spec.module, "pool_batch", False)),
            "interpolation": "bicubic, antialiased (torch.nn.functional.interpolate), clipped to [0, 1]",
            "value_range": [0.0, 1.0],
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "layout": "NCHW RGB float32",
        },
        "valid_patches": spec.valid_patches,
        "outputs": spec.output_names,
        "map_size": spec.map_size,
        "batch": "dynamic" if spec.dynamic_batch else 1,
        "memory_bank": bank,
        "threshold": _threshold_json(detector.threshold),
        "pixel_threshold": _threshold_json(detector.pixel_threshold),
        **spec.metadata,
    }


def compare(detector, path: Path) -> tuple[float, float]:
    """Max |difference| of maps and of scores, PyTorch vs the exported model, on synthetic images."""
    from ..images import LoadedImage
    from .runner import load_onnx_detector

    images = [
        LoadedImage("synthetic-0.png", synthetic_image(96, 80, seed=0)),
        LoadedImage("synthetic-1.png", synthetic_image(60, 100, seed=1)),
    ]
    exported = load_onnx_detector(path)
    torch_results = detector.predict(images)
    onnx_results = exported.predict(images)
    map_diff = max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(torch_results, onnx_results))
    score_diff = max(abs(a.score - b.score) for a, b in zip(torch_results, onnx_results))
    return map_diff, score_diff
