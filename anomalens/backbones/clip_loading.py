"""Loading CLIP weights for open_clip: by tag, from the Hugging Face cache, or a local file.

Local files: `.safetensors`, or `.pt`/`.bin` read with `weights_only=True` (open_clip or OpenAI
layout; OpenAI's TorchScript release is read as TorchScript, never unpickled); shapes are
checked against the architecture so a wrong file is a one-line `MissingWeightsError` that says
which file to fetch and which flag to pass. Tags are open_clip's own download. The tiny random
test architectures are JSON configs registered with open_clip's public `add_model_config`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import open_clip
import torch
from torch import nn

from ..errors import MissingWeightsError
from .torchscript_reader import UnsafeArchiveError, read_torchscript_state_dict

# The weights each paper uses, as open_clip pretrained tags.
DEFAULT_TAGS = {
    "ViT-B-16-plus-240": "laion400m_e31",  # FADE and WinCLIP
    "ViT-L-14-336": "openai",  # FiLo
    "ViT-B-16": "laion400m_e32",
}

# Tiny randomly initialised architectures (configs/*.json) so every language method can be
# tested in seconds; test-tiny-24 has ViT-L-14's depth (24 blocks) for FiLo's layer indices.
TINY_CONFIG_DIR = Path(__file__).with_name("configs")
TINY_ARCHS = tuple(sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json")))
open_clip.add_model_config(TINY_CONFIG_DIR)


def is_tiny(arch: str) -> bool:
    return arch in TINY_ARCHS


def weights_hint(arch: str, tag: str | None) -> str:
    """Where to get the weights for (arch, tag) and how to pass them."""
    tag = tag or DEFAULT_TAGS.get(arch)
    where = ""
    if tag:
        try:
            cfg = open_clip.get_pretrained_cfg(arch, tag)
        except Exception:
            cfg = {}
        sources = []
        if cfg.get("hf_hub"):
            sources.append(f"the Hugging Face repo {cfg['hf_hub'].rstrip('/')} (open_clip_model.safetensors)")
        if cfg.get("url"):
            sources.append(cfg["url"])
        if sources:
            where = " Fetch " + " or ".join(sources) + " on a machine with network access,"
    then = f"{where} then pass" if where else " Pass"  # a full sentence either way
    return (
        f"{then} the file with --weights PATH (Python: pretrained='PATH'). "
        f"Known tags for {arch}: {', '.join(t for a, t in open_clip.list_pretrained() if a == arch) or 'none'}."
    )


def _is_local_path(pretrained: str) -> bool:
    p = str(pretrained)
    return os.sep in p or p.startswith(".") or Path(p).suffix.lower() in (".pt", ".pth", ".bin", ".safetensors")


def _find_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth"):
            found = sorted(path.glob(pattern))
            if found:
                return found[0]
        raise MissingWeightsError(f"No CLIP checkpoint (.safetensors/.bin/.pt/.pth) in directory {path}.")
    return path


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") for n in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling code: safetensors, weights-only torch, or TorchScript."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            # OpenAI's original release is a TorchScript archive. torch.jit.load would compile and
            # run the archive's code, so only its tensors are read (see torchscript_reader).
            state = read_torchscript_state_dict(path)
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except UnsafeArchiveError:
        raise
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise MissingWeightsError(
            f"{path} is not a readable CLIP checkpoint ({type(err).__name__}: {detail}). Pass a "
            ".safetensors, .pt/.pth/.bin state dict or OpenAI TorchScript file with --weights PATH."
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise MissingWeightsError(f"{path} does not hold a CLIP state dict.")
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _tag_uses_quick_gelu(arch: str, tag: str | None) -> bool:
    if tag is None:
        return False
    try:
        return bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    except Exception:
        return False


def _uses_quick_gelu(path: Path, arch: str) -> bool:
    # OpenAI checkpoints were trained with QuickGELU and their original release is TorchScript;
    # a plain state dict does not say which activation it was trained with, so decide by the
    # architecture's default tag.
    if _is_torchscript(path):
        return True
    return _tag_uses_quick_gelu(arch, DEFAULT_TAGS.get(arch))


def load_clip_model(arch: str, pretrained: str | os.PathLike | None, quick_gelu: bool | None) -> nn.Module:
    if arch not in open_clip.list_models():
        raise ValueError(f"Unknown CLIP architecture {arch!r}. Known: {', '.join(open_clip.list_models())}")
    if pretrained is None:
        # Random weights: for tests and for speed measurements (same FLOPs as trained weights).
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=bool(quick_gelu))
    if _is_local_path(str(pretrained)) or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise MissingWeightsError(f"CLIP weights file {path} does not exist.{weights_hint(arch, None)}")
        path = _find_checkpoint(path)
        state = _read_state_dict(path)
        qg = _uses_quick_gelu(path, arch) if quick_gelu is None else quick_gelu
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=qg)
        from open_clip.factory import resize_pos_embed

        if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
            state["logit_bias"] = torch.zeros_like(model.logit_bias)
        expected = model.state_dict()
        mismatched = [
            k
            for k, v in state.items()
            if k in expected and k != "visual.positional_embedding" and v.shape != expected[k].shape
        ]
        if mismatched:
            key = mismatched[0]
            raise MissingWeightsError(
                f"{path} does not match the {arch} architecture: {len(mismatched)} weights have other "
                f"shapes (e.g. {key}: {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} "
                f"in {arch}). Pass the matching --backbone."
            )
        try:
            resize_pos_embed(state, model)
            missing, unexpected = model.load_state_dict(state, strict=False)
        except (RuntimeError, ValueError) as err:
            raise MissingWeightsError(
                f"{path} does not match the {arch} architecture: {str(err).splitlines()[0][:200]}. "
                "Pass the matching --backbone."
            ) from None
        missing = [k for k in missing if not k.endswith("attn_mask")]
        if missing:
            raise MissingWeightsError(
                f"{path} does not match the {arch} architecture: {len(missing)} weights missing "
                f"(e.g. {missing[:3]}); unexpected: {unexpected[:3]}. Pass the matching --backbone."
            )
        return model
    tag = str(pretrained)
    known = [t for a, t in open_clip.list_pretrained() if a == arch]
    if tag not in known:
        raise MissingWeightsError(
            f"{tag!r} is neither a file nor a known pretrained tag for {arch}.{weights_hint(arch, None)}"
        )
    cached = _cached_weights(arch, tag)
    if cached is not None:
        return load_clip_model(arch, cached, quick_gelu)
    if not _hub_reachable():
        # Fail in a second instead of after a minute of download retries.
        raise MissingWeightsError(
            f"CLIP weights {arch}/{tag} are not on this machine and the download host cannot be reached."
            f"{weights_hint(arch, tag)}"
        )
    try:
        # open_clip only warns when a tag trained with QuickGELU (OpenAI's) is built with GELU:
        # follow the tag unless the caller decided.
        qg = _tag_uses_quick_gelu(arch, tag) if quick_gelu is None else quick_gelu
        return open_clip.create_model(arch, pretrained=tag, force_quick_gelu=qg)
    except Exception as err:
        raise MissingWeightsError(
            f"Could not load CLIP weights {arch}/{tag}: {type(err).__name__}: {str(err).splitlines()[0][:200]}."
            f"{weights_hint(arch, tag)}"
        ) from None


def _cached_weights(arch: str, tag: str) -> str | None:
    """A checkpoint for (arch, tag) already in the Hugging Face cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        repo = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "").rstrip("/")
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            path = try_to_load_from_cache(repo, filename) if repo else None
            if isinstance(path, str) and os.path.exists(path):
                return path
    except Exception:  # no hub library or an odd cache: just try the download
        return None
    return None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the weight host accepts a connection (HF_HUB_OFFLINE=1 means no)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
