"""The saved-model folder: `detector.json` (settings, thresholds, references and a manifest of
the tensors) beside `detector.safetensors` (and `region.png` with an inspection region): writing it
(`write_model`), loading it (`load_detector`) and the checks that make it load whole or not at all.

Nothing here unpickles: JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError
from .inspection_region import REGION_FILE, InspectionRegion

MODEL_CONFIG = "detector.json"
MODEL_WEIGHTS = "detector.safetensors"


def tensor_manifest(state: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Name -> shape and dtype of every saved tensor, recorded in detector.json."""
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in sorted(state.items())}


def set_default_mode(path: Path) -> None:
    """Both model files get the mode a plain open() would give (the temporary file was 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def read_model_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    for key, kind in (("method", str), ("settings", dict)):
        if not isinstance(config.get(key), kind):
            raise ModelFileError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    manifest = config.get("tensors")
    if manifest is not None and not (
        isinstance(manifest, dict)
        and all(isinstance(v, dict) and isinstance(v.get("shape"), list) for v in manifest.values())
    ):
        raise ModelFileError(f"{path}: 'tensors' is not a mapping of name -> shape and dtype")
    return config


def read_model_tensors(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The saved tensors, checked against the manifest in detector.json (name, shape, dtype).

    Files written before the manifest existed are accepted when their tensors are present; a model
    fitted on references must have its tensors file either way.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = config.get("tensors")
    if not path.exists():
        if manifest or (manifest is None and int(config.get("num_references") or 0) > 0):
            raise ModelFileError(
                f"{path} is missing: the model's learned tensors ({len(manifest or {}) or 'its memory bank'}) "
                "are needed; copy the whole model folder"
            )
        return None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: not a readable safetensors file ({err})") from None
    if manifest is None:
        return state
    found = tensor_manifest(state)
    missing = sorted(set(manifest) - set(found))
    unexpected = sorted(set(found) - set(manifest))
    changed = sorted(k for k in set(manifest) & set(found) if manifest[k] != found[k])
    if missing or unexpected or changed:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        for k in changed:
            want, got = manifest[k], found[k]
            parts.append(f"{k}: expected {want['dtype']}{want['shape']}, found {got['dtype']}{got['shape']}")
        raise ModelFileError(f"{path} does not match {MODEL_CONFIG}: " + "; ".join(parts))
    return state


def write_model(detector, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a detector's settings, threshold, learned tensors and inspection region (`Detector.save`).

    Each file is written atomically (temporary file, then rename), the tensors first: an
    interrupted save leaves the previous model whole, or no detector.json at all.
    """
    from safetensors.torch import save

    from . import __version__
    from .outputs import atomic_write

    directory = Path(directory)
    config_path = directory / MODEL_CONFIG
    if config_path.exists() and not overwrite:
        raise FileExistsError(f"{config_path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in detector.method.state_dict().items()}
    weights = save(state)
    atomic_write(directory / MODEL_WEIGHTS, lambda f: f.write(weights))
    region = detector.region
    if region is not None:
        png = region.png_bytes()
        atomic_write(directory / REGION_FILE, lambda f: f.write(png))
    config = {
        "anomalens_version": __version__,
        "method": detector.method_name,
        "settings": detector.settings,
        "threshold": None if detector.threshold is None else detector.threshold.to_dict(),
        "pixel_threshold": None if detector.pixel_threshold is None else detector.pixel_threshold.to_dict(),
        "references": detector.reference_paths,
        "num_references": len(detector.reference_paths),
        "image_reading": detector.reading.to_dict(),
        "inspection_region": None if region is None else _region_entry(region),
    }
    # What load_detector checks the tensors against: a model folder missing its tensors must
    # not load as a zero-shot model with a few-shot threshold.
    config["tensors"] = tensor_manifest(state)
    text = json.dumps(config, indent=2).encode("utf-8")
    atomic_write(config_path, lambda f: f.write(text))
    for path in (directory / MODEL_WEIGHTS, config_path, *([directory / REGION_FILE] if region else [])):
        set_default_mode(path)
    return directory


def load_detector(directory: str | os.PathLike, device: str | torch.device | None = "auto", **overrides: Any):
    """Load a detector written by `Detector.save` (no unpickling: JSON + safetensors) onto `device`.

    A `.onnx` file written by `Detector.export` gives an `anomalens.export.OnnxDetector`.
    """
    directory = Path(directory)
    if directory.suffix.lower() == ".onnx":
        if overrides:
            raise ValueError(f"{directory} is an exported model: its settings cannot be changed ({sorted(overrides)})")
        from .export import load_onnx_detector

        return load_onnx_detector(directory)
    config_path = directory / MODEL_CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not a saved anomalens model (no {MODEL_CONFIG})")
    config = read_model_config(config_path)
    from .detector import Detector
    from .device import resolve_device
    from .image_reading import ImageReading
    from .methods.base import saved_settings

    device = resolve_device(device)  # a bad --device is the user's error, not the file's
    try:  # every value read from detector.json: a tampered one is a one-line error naming the file
        reading = ImageReading.from_dict(config.get("image_reading"))
        settings = {**saved_settings(config["method"], config["settings"]), **overrides}
        det = Detector(method=config["method"], device=device, reading=reading, **settings)
        references = config.get("references", [])
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise ValueError("'references' is not a list of paths")
        det.reference_paths = references
        det.method.num_references = int(config.get("num_references", len(references)))
        det.threshold = config.get("threshold")  # a saved dict (or a number, in older files)
        det.pixel_threshold = config.get("pixel_threshold")
        det.region = _saved_region(directory, config.get("inspection_region"))
    except (ValueError, TypeError, AttributeError, OSError) as err:
        raise ModelFileError(f"{config_path}: {err}") from None
    state = read_model_tensors(directory / MODEL_WEIGHTS, config)
    if state is not None:
        det.method.load_state_dict(state)
        det.method.to(det.device)  # the loaded tensors are on the CPU
    return det


def _region_entry(region: InspectionRegion) -> dict[str, Any]:
    """How detector.json names a model's inspection region (its pixels are in REGION_FILE)."""
    return {"file": REGION_FILE, "digest": region.digest, "source": region.source, "share": region.share}


def _saved_region(directory: Path, entry: Any) -> InspectionRegion | None:
    """The inspection region a saved model names (None when it has none); checked against its digest."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("file") != REGION_FILE:
        raise ValueError("'inspection_region' is not a region entry")
    path = directory / REGION_FILE
    if not path.is_file():
        raise ValueError(f"the model has an inspection region but {REGION_FILE} is missing")
    region = InspectionRegion.from_png_bytes(path.read_bytes(), source=str(entry.get("source", "")))
    if region.digest != entry.get("digest"):
        raise ValueError(f"{REGION_FILE} is not the region the model was saved with (its digest differs)")
    return region
