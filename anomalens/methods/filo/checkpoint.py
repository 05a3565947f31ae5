"""FiLo checkpoints: our directory format, the authors' released `.pth`, the weight rule, and the
optimizer state of a resume in tensors and JSON (no pickle).

Ours (no pickle): `DIR/filo.safetensors` (trainable tensors) + `DIR/filo.json` (every setting,
the vocabulary, training progress), written by `anomalens train filo`.

Released: `filo_train_on_mvtec.pth` / `filo_train_on_visa.pth`, a dict whose "filo" entry is the
whole model's state dict (frozen CLIP copies included). It is read with
`torch.load(weights_only=True)` (tensors only, never code), its trainable tensors are renamed
onto `FiloModel(FiloConfig.released())`, and anything missing or unexpected is an error that
lists the names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ...backbones.clip import DEFAULT_TAGS, ClipBackbone, create_clip, is_tiny
from ...errors import MissingCheckpointError
from .mmci import MMCI_KERNELS
from .model import FiloConfig, FiloModel
from .released import RELEASED_LINEAR_LAYERS, RELEASED_MMCI_LAYERS

FILO_WEIGHTS = "filo.safetensors"
FILO_CONFIG = "filo.json"
FORMAT = "anomalens-filo"
RELEASED_FORMAT = "filo-released"

TRAIN_HINT = (
    "Train one with `anomalens train filo --data ROOT --dataset mvtec --out DIR` and pass "
    "--checkpoint DIR (Python: checkpoint='DIR'), or pass the authors' filo_train_on_*.pth file."
)

#: Prefixes of the released state dict that are frozen CLIP copies, not FiLo's trained parts.
RELEASED_FROZEN_PREFIXES = ("clip_model.", "text_encoder.")

#: Released conv attribute -> kernel (height, width) of our MMCI.
_RELEASED_CONVS = {"fc_11": (1, 1), "fc_33": (3, 3), "fc_55": (5, 5), "fc_77": (7, 7), "fc_15": (1, 5), "fc_51": (5, 1)}


# ---- the weights rule -------------------------------------------------------------------------


def default_weights(arch: str, explicit: str | None = None, recorded: str | None = None) -> str | None:
    """The CLIP weights FiLo uses: the caller's, else the checkpoint's, else random for the tiny
    test configs and the paper's tag ("default") for real architectures."""
    if explicit is not None:
        return explicit
    if recorded is not None:
        return recorded
    return None if is_tiny(arch) else "default"


def resolve_weights(arch: str, weights: str | None) -> str | None:
    """ "default" -> the paper's open_clip tag for `arch`; anything else unchanged."""
    if weights == "default":
        return DEFAULT_TAGS.get(arch, weights)
    return weights


def build_backbone(
    arch: str, weights: str | None, image_size: int, seed: int = 0, variant: str = "paper"
) -> ClipBackbone:
    """CLIP for FiLo; random weights are drawn from `seed`, so a checkpoint on them reloads exactly.

    The released variant builds CLIP as the released code does: nn.GELU, and positional
    embeddings resampled by plain bicubic (no antialiasing)."""
    released = variant == "released"
    quick_gelu = False if released else None
    weights = resolve_weights(arch, weights)
    if weights is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = create_clip(arch, pretrained=None, image_size=image_size, quick_gelu=quick_gelu)
    else:
        backbone = create_clip(arch, pretrained=weights, image_size=image_size, quick_gelu=quick_gelu)
    backbone.pos_embed_antialias = not released
    return backbone


def build_model(backbone: ClipBackbone, config: FiloConfig, seed: int = 0) -> FiloModel:
    """FiLo's trainable parts initialised from `seed` (independent of the global RNG)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        return FiloModel(backbone, config)


# ---- our format ---------------------------------------------------------------------------------


def atomic_save(tensors: dict[str, torch.Tensor], meta: dict[str, Any], stem: Path) -> None:
    """Write stem.safetensors and stem.json so that a crash never leaves a half-written pair."""
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp_w = stem.with_suffix(".safetensors.tmp")
    tmp_j = stem.with_suffix(".json.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp_w))
    tmp_j.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_w, stem.with_suffix(".safetensors"))
    os.replace(tmp_j, stem.with_suffix(".json"))


def read_trained(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON description and the tensors of a trained FiLo directory."""
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    config_path, weights_path = directory / FILO_CONFIG, directory / FILO_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise MissingCheckpointError(
            f"{directory} is not a FiLo checkpoint (needs {FILO_CONFIG} and {FILO_WEIGHTS}). {TRAIN_HINT}"
        )
    info = json.loads(config_path.read_text())
    if info.get("format") != FORMAT:
        raise MissingCheckpointError(f"{config_path} is not a FiLo checkpoint (format {info.get('format')!r}).")
    return info, load_file(str(weights_path))


# ---- the released format ------------------------------------------------------------------------


def released_key(key: str) -> str | None:
    """Our parameter name for one released trainable key, or None when it has no counterpart."""
    m = re.fullmatch(r"(normal|abnormal)_prompt_learner\.ctx", key)
    if m:
        return f"prompt_learner.ctx_{m.group(1)}"
    m = re.fullmatch(r"(normal|abnormal)_prompt_learner\.meta_net\.linear([12])\.(weight|bias)", key)
    if m:
        index = 0 if m.group(2) == "1" else 2
        return f"prompt_learner.meta_net_{m.group(1)}.{index}.{m.group(3)}"
    m = re.fullmatch(r"decoder_linear\.fc\.(\d+)\.(weight|bias)", key)
    if m and int(m.group(1)) < len(RELEASED_LINEAR_LAYERS):
        return f"linear.{RELEASED_LINEAR_LAYERS[int(m.group(1))]}.{m.group(2)}"
    m = re.fullmatch(r"decoder_cov\.(fc_\d\d)\.(\d+)\.(weight|bias)", key)
    if m and m.group(1) in _RELEASED_CONVS and int(m.group(2)) < len(RELEASED_MMCI_LAYERS):
        kernel = MMCI_KERNELS.index(_RELEASED_CONVS[m.group(1)])
        return f"mmci.{RELEASED_MMCI_LAYERS[int(m.group(2))]}.convs.{kernel}.{m.group(3)}"
    m = re.fullmatch(r"adapter\.fc\.([02])\.weight", key)
    if m:
        return f"adapter.fc{1 if m.group(1) == '0' else 2}.weight"
    return None


def convert_released_state(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The released model state dict -> our trainable names; frozen CLIP copies are dropped.

    Raises MissingCheckpointError naming every key it cannot place."""
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if key.startswith(RELEASED_FROZEN_PREFIXES):
            continue
        ours = released_key(key)
        if ours is None or not torch.is_tensor(value):
            unexpected.append(key)
        else:
            converted[ours] = value
    if unexpected:
        raise MissingCheckpointError(
            f"{source}: {len(unexpected)} keys are not FiLo's released layout: {', '.join(sorted(unexpected))}"
        )
    return converted


def read_released(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trainable tensors of an authors' checkpoint ({"filo": state_dict}), in our names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingCheckpointError(f"{path} does not exist. {TRAIN_HINT}")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code, a truncated or foreign file
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise MissingCheckpointError(
            f"{path}: not a weights-only FiLo checkpoint ({type(err).__name__}: {detail})"
        ) from None
    state = data.get("filo") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise MissingCheckpointError(f"{path}: expected a dict with a 'filo' state dict (the released format)")
    return convert_released_state(state, str(path))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(info, trainable tensors) of our directory or of a released `.pth` file.

    A released file's info says variant "released" with ViT-L-14-336 at 518 px, as trained."""
    p = Path(path).expanduser()
    if p.is_dir():
        return read_trained(p)
    if p.is_file():
        state = read_released(p)
        ctx = state.get("prompt_learner.ctx_normal")
        n_ctx = int(ctx.shape[0]) if ctx is not None else 12  # the released default
        info = {
            "format": RELEASED_FORMAT,
            "backbone": "ViT-L-14-336",
            "image_size": 518,
            "model": FiloConfig.released(n_ctx).to_dict(),
        }
        return info, state
    raise MissingCheckpointError(f"{p} does not exist. {TRAIN_HINT}")


def load_into(model: FiloModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load trainable tensors; MissingCheckpointError naming the source and every bad key."""
    try:
        model.load_trainable_state_dict(state)
    except ValueError as err:
        raise MissingCheckpointError(f"{source}: {err}") from None


# ---- optimizer state without pickle ------------------------------------------------------


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of the optimizer state (for safetensors) and everything else (for JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer state dict from `optimizer_to_flat`'s two halves."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}
