"""The saved-model folder: `detector.json` (settings, thresholds, references and a manifest of
the tensors) beside `detector.safetensors`, and the checks that make it load whole or not at all.

Nothing here unpickles: JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError

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
