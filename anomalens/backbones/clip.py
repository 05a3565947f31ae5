"""CLIP backbones on open_clip: weights by tag or local file, any input size, dense features.

`create_clip(arch, pretrained, image_size)` returns a `ClipBackbone`, a frozen wrapper that
runs the vision tower block by block so the methods can read what they need:

* the patch tokens after any block (optionally projected into the joint image-text space),
* a V-V attention path (CLIP Surgery; FiLo) and a GEM self-self attention path (FADE), both
  computed beside the normal path from each block's own weights and accumulated over the
  blocks they cover, without the feed-forward part,
* positional embeddings interpolated (bicubic) to the patch grid of any input size, with the
  class token's embedding kept.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from ..errors import MissingWeightsError
from .attention import (
    gem_attention,
    gem_inverse_temperature,
    merge_heads,
    qk_attention,
    split_qkv,
    vv_attention,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The weights each paper uses, as open_clip pretrained tags.
DEFAULT_TAGS = {
    "ViT-B-16-plus-240": "laion400m_e31",  # FADE and WinCLIP
    "ViT-L-14-336": "openai",  # FiLo
    "ViT-B-16": "laion400m_e32",
}

# Tiny randomly initialised configs so every language method can be tested in seconds.
TINY_CONFIGS = {
    "test-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    },
    # Same depth as ViT-L-14 (24 blocks) so FiLo's layer indices 6/12/18/24 are valid, still tiny.
    "test-tiny-24": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 28, "layers": 24, "width": 32, "patch_size": 7, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}


def register_tiny_configs() -> None:
    """Make the tiny test configs known to open_clip (idempotent)."""
    from open_clip import factory

    for name, cfg in TINY_CONFIGS.items():
        factory._MODEL_CONFIGS.setdefault(name, cfg)


register_tiny_configs()


def _weights_hint(arch: str, tag: str | None) -> str:
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
    return (
        f"{where} then pass the file with --weights PATH (Python: pretrained='PATH'). "
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
            # OpenAI's original release is a TorchScript archive: TorchScript holds tensors and
            # TorchScript code, never arbitrary Python objects, so reading its state dict is safe.
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        detail = str(err).splitlines()[0][:200] if str(err) else ""
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


def _load_clip_model(arch: str, pretrained: str | os.PathLike | None, quick_gelu: bool | None) -> nn.Module:
    if arch not in open_clip.list_models():
        raise ValueError(f"Unknown CLIP architecture {arch!r}. Known: {', '.join(open_clip.list_models())}")
    if pretrained is None:
        # Random weights: for tests and for speed measurements (same FLOPs as trained weights).
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=bool(quick_gelu))
    if _is_local_path(str(pretrained)) or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise MissingWeightsError(f"CLIP weights file {path} does not exist.{_weights_hint(arch, None)}")
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
            f"{tag!r} is neither a file nor a known pretrained tag for {arch}.{_weights_hint(arch, None)}"
        )
    cached = _cached_weights(arch, tag)
    if cached is not None:
        return _load_clip_model(arch, cached, quick_gelu)
    if not _hub_reachable():
        # Fail in a second instead of after a minute of download retries.
        raise MissingWeightsError(
            f"CLIP weights {arch}/{tag} are not on this machine and the download host cannot be reached."
            f"{_weights_hint(arch, tag)}"
        )
    try:
        # open_clip only warns when a tag trained with QuickGELU (OpenAI's) is built with GELU:
        # follow the tag unless the caller decided.
        qg = _tag_uses_quick_gelu(arch, tag) if quick_gelu is None else quick_gelu
        return open_clip.create_model(arch, pretrained=tag, force_quick_gelu=qg)
    except Exception as err:
        raise MissingWeightsError(
            f"Could not load CLIP weights {arch}/{tag}: {type(err).__name__}: {str(err).splitlines()[0][:200]}."
            f"{_weights_hint(arch, tag)}"
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


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample (1 + N, D) positional embeddings to a new patch grid; the class token's is kept.

    Bicubic with antialiasing, as timm and GEM resample; the original grid is returned
    untouched when the size matches, so the native resolution gives CLIP's own output.
    """
    n_old = pos_embed.shape[0] - 1
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise ValueError(f"positional embedding of {n_old} patches is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", antialias=True, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


@dataclass
class ClipFeatures:
    """What one forward pass of the vision tower produced.

    Token tensors are (B, 1 + H*W, width) with the class token first, before ln_post/proj.
    """

    grid: tuple[int, int]
    image_embedding: torch.Tensor  # (B, embed_dim) CLIP's own projected class embedding
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # normal path after block l (1-based)
    vv: dict[int, torch.Tensor] = field(default_factory=dict)  # V-V path after block l
    gem: torch.Tensor | None = None  # GEM path after the last block


class ClipBackbone(nn.Module):
    """A frozen open_clip model with dense, multi-path access to its vision tower."""

    def __init__(self, model: nn.Module, arch: str, pretrained: str | None, image_size: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.arch = arch
        self.pretrained = None if pretrained is None else str(pretrained)
        visual = model.visual
        self.patch_size = visual.conv1.kernel_size[0]
        self.native_size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        self.image_size = image_size or self.native_size
        self.width = visual.conv1.out_channels
        self.num_layers = len(visual.transformer.resblocks)
        self.embed_dim = visual.output_dim
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.mean, self.std = CLIP_MEAN, CLIP_STD

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.pretrained or 'random'}"

    # ---- text ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), embed_dim)."""
        chunks = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size])
            chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(chunks)

    # ---- vision --------------------------------------------------------------------------
    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map vision tokens into the joint image-text space (ln_post then proj)."""
        visual = self.model.visual
        x = visual.ln_post(tokens)
        return x @ visual.proj if visual.proj is not None else x

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patchify, add the class token and (interpolated) positional embeddings, ln_pre."""
        visual = self.model.visual
        x = visual.conv1(images)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_pos_embed(visual.positional_embedding, grid).to(x.dtype)
        return visual.ln_pre(x), grid

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding from the final tokens (class token, ln_post, proj)."""
        return self.project(tokens[:, 0])

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        layers: tuple[int, ...] = (),
        vv_from: int | None = None,
        gem_from: int | None = None,
        gem_iterations: int = 1,
    ) -> ClipFeatures:
        """Run the vision tower once and collect the requested features.

        layers: 1-based block indices whose outputs to keep (normal path; V-V path too when
        vv_from is set and the block is at or after it). vv_from / gem_from: the first block
        (1-based) of the V-V / GEM path. Each extra path starts from the normal path's input
        to that block and adds, block after block, the variant attention computed on the
        normal path's normalised input: the papers' dual path, without feed-forward.
        """
        x, grid = self.embed(images)
        feats = ClipFeatures(grid=grid, image_embedding=torch.empty(0))
        x_vv = x_gem = None
        for index, block in enumerate(self.model.visual.transformer.resblocks, start=1):
            wants_vv = vv_from is not None and index >= vv_from
            wants_gem = gem_from is not None and index >= gem_from
            if not (wants_vv or wants_gem):
                x = block(x)
            else:
                if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
                    raise TypeError(f"{self.arch}: block {index} is not a standard attention block")
                if wants_vv and x_vv is None:
                    x_vv = x
                if wants_gem and x_gem is None:
                    x_gem = x
                h = block.ln_1(x)
                q, k, v = split_qkv(h, block.attn)
                if wants_vv:
                    x_vv = x_vv + block.ls_1(merge_heads(vv_attention(v), block.attn))
                if wants_gem:
                    inv_temp = gem_inverse_temperature(h, q.shape[-1])
                    gem = gem_attention(q, k, v, inv_temp, gem_iterations)
                    x_gem = x_gem + block.ls_1(merge_heads(gem, block.attn))
                x = x + block.ls_1(merge_heads(qk_attention(q, k, v), block.attn))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if index in layers:
                feats.layers[index] = x  # x is rebound each block, never changed in place
                if wants_vv:
                    feats.vv[index] = x_vv
        feats.image_embedding = self.pool(x)
        feats.gem = x_gem
        return feats

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (B, embed_dim)."""
        return F.normalize(self.forward(images).image_embedding, dim=-1)


def create_clip(
    arch: str = "ViT-B-16-plus-240",
    pretrained: str | os.PathLike | None = "default",
    image_size: int | None = None,
    quick_gelu: bool | None = None,
) -> ClipBackbone:
    """Build a frozen CLIP backbone.

    pretrained: an open_clip tag (downloads where a network exists), a local checkpoint file
    or folder (.safetensors, or .pt/.bin read with weights_only=True; open_clip or OpenAI
    layout), "default" for the tag the papers use, or None for random weights.
    Raises MissingWeightsError with what to fetch and which flag to pass.
    """
    if pretrained == "default":
        if arch not in DEFAULT_TAGS:
            raise MissingWeightsError(f"No default weights for {arch}.{_weights_hint(arch, None)}")
        pretrained = DEFAULT_TAGS[arch]
    # open_clip logs "No pretrained weights loaded" at WARNING for random init: expected here.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = _load_clip_model(arch, pretrained, quick_gelu)
    finally:
        root_logger.setLevel(level)
    return ClipBackbone(model, arch, None if pretrained is None else str(pretrained), image_size)


def is_tiny(arch: str) -> bool:
    return arch in TINY_CONFIGS


def create_method_clip(arch: str, weights: str | None = "default", image_size: int | None = None) -> ClipBackbone:
    """The weight rule the CLIP methods share: "random" (speed measurements) and the tiny test
    configs without explicit weights get random weights; otherwise a tag, a file, or "default"."""
    if weights == "random" or (is_tiny(arch) and weights in (None, "default")):
        return create_clip(arch, pretrained=None, image_size=image_size)
    return create_clip(arch, pretrained=weights or "default", image_size=image_size)
