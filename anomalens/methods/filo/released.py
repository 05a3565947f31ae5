"""FiLo's released inference (CASIA-IVA-Lab/FiLo @36ff29c), reproduced on purpose, quirks included.

The authors' checkpoints were trained on exactly these features and formulas, so
`FiloConfig.released()` runs this path to give their maps (`benchmarks/filo_parity.py` runs the
authors' own `FiLo.forward` beside it on identical random weights: equal to ~4e-6, ViT-L-14-336 at
518 px included). Where it departs from the paper:

* V-V path from block 7 (the last 18 of 24 blocks), its attention computed on the normal path's
  normalised input, accumulated without feed-forward.
* In-place aliasing: the tensor stored for layer 6 *is* the V-V path's running sum, so it ends
  as the final V-V tokens; each stored normal-path tensor of layers 12 and 18 also receives the
  next block's attention residual in place. Hence the four linear heads see [final V-V, block
  13 after attention, block 19 after attention, block 24] and the three MMCI sets (layers 12,
  18, 24) all see the final V-V tokens.
* Heads read the raw tokens (no ln_post); MMCI sums its six convolutions before one softmax.
* Patch-text logits: 100 * cos(token, F) with F = [Fn; Fa] divided by its Frobenius norm
  (sqrt 2), bilinear upsampling (align_corners=True) of the logits, then the softmax.
* Each of the 7 maps becomes (M_a - M_n + 1) / 2, is blurred by a 3x3 Gaussian with sigma 4
  (torch 'reflect' border) and the 7 are averaged.
* Image score (cos(A, Fa) / sqrt 2 + max M) / 2, with A the residual adapter's output and max M
  taken before any box suppression. The meta-nets see the normalised *adapted* embedding.
* CLIP runs with nn.GELU (the released code builds ViT-L-14-336 at 518 px from a config without
  QuickGELU), so `build_backbone` passes quick_gelu=False for this variant; its positional
  embeddings are resampled to the 37x37 grid by plain bicubic (its copy of open_clip drops the
  antialias flag), which `build_backbone` also sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...backbones.attention import merge_heads, qk_attention, split_qkv, vv_attention
from ...backbones.clip import ClipBackbone

RELEASED_VV_FROM = 7
RELEASED_LINEAR_LAYERS: tuple[int, ...] = (6, 12, 18, 24)
RELEASED_MMCI_LAYERS: tuple[int, ...] = (12, 18, 24)
RELEASED_LOGIT_SCALE = 100.0
RELEASED_BLUR_KERNEL = 3
RELEASED_SIGMA = 4.0
#: The released adapter training divides cos(A, [Fn; Fa]) / sqrt 2 by 0.07 before the cross-entropy.
RELEASED_ADAPTER_TEMPERATURE = 0.07


@dataclass
class ReleasedFeatures:
    """What the released vision tower hands its heads; token tensors (B, 1 + h*w, width)."""

    grid: tuple[int, int]
    image_embedding: torch.Tensor  # (B, embed_dim), CLIP's own (normal path, ln_post, proj)
    linear_inputs: list[torch.Tensor]  # one per linear head, in RELEASED_LINEAR_LAYERS order
    mmci_inputs: list[torch.Tensor]  # one per MMCI set, in RELEASED_MMCI_LAYERS order


@torch.no_grad()
def released_features(backbone: ClipBackbone, images: torch.Tensor) -> ReleasedFeatures:
    """Run the vision tower and return the tensors the released heads read (see module docstring)."""
    vv_from, linear_layers = RELEASED_VV_FROM, RELEASED_LINEAR_LAYERS
    x, grid = backbone.embed(images)
    vv: torch.Tensor | None = None
    stored: dict[int, torch.Tensor] = {}
    pending: int | None = None  # stored layer whose tensor the next attention residual lands on
    for index, block in enumerate(backbone.model.visual.transformer.resblocks, start=1):
        if index < vv_from:
            x = block(x)
        else:
            h = block.ln_1(x)
            q, k, v = split_qkv(h, block.attn)
            vv = (x if vv is None else vv) + block.ls_1(merge_heads(vv_attention(v), block.attn))
            x = x + block.ls_1(merge_heads(qk_attention(q, k, v), block.attn))
            if pending is not None:
                stored[pending] = x  # the released `x_ori += attention` wrote into the stored tensor
                pending = None
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if index in linear_layers:
            stored[index] = x
            if index >= vv_from:
                pending = index
    if vv is None:
        raise ValueError(f"{backbone.arch} has fewer than {vv_from} blocks")
    linear_inputs = [vv if layer == vv_from - 1 else stored[layer] for layer in linear_layers]
    return ReleasedFeatures(grid, backbone.pool(x), linear_inputs, [vv] * len(RELEASED_MMCI_LAYERS))


def released_text(text: torch.Tensor) -> torch.Tensor:
    """[Fn; Fa] (B, 2, D) divided by its Frobenius norm per image (sqrt 2 for unit rows)."""
    return text / text.flatten(1).norm(dim=1).view(-1, 1, 1)


def released_class_map(tokens: torch.Tensor, text: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]):
    """softmax(Up(100 * cos(token, F / ||F||))) for (B, h*w, D) head outputs -> (B, 2, H, W)."""
    b = tokens.shape[0]
    logits = RELEASED_LOGIT_SCALE * torch.einsum("bnd,bcd->bcn", F.normalize(tokens, dim=-1), released_text(text))
    logits = F.interpolate(logits.reshape(b, 2, *grid), size=size, mode="bilinear", align_corners=True)
    return logits.softmax(dim=1)


def released_blur(x: torch.Tensor, sigma: float = RELEASED_SIGMA, kernel: int = RELEASED_BLUR_KERNEL) -> torch.Tensor:
    """A kernel x kernel Gaussian blur of (B, H, W) maps, torch 'reflect' border (d c b | a b c d)."""
    half = (kernel - 1) / 2
    t = torch.linspace(-half, half, kernel, dtype=x.dtype, device=x.device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    pad = kernel // 2
    y = F.pad(x.unsqueeze(1), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, w.view(1, 1, 1, -1))
    y = F.conv2d(y, w.view(1, 1, -1, 1))
    return y.squeeze(1)


def released_anomaly_map(two_class_maps: list[torch.Tensor], sigma: float = RELEASED_SIGMA) -> torch.Tensor:
    """Mean over the maps of blur((M_a - M_n + 1) / 2): list of (B, 2, H, W) -> (B, H, W)."""
    blurred = [released_blur((m[:, 1] - m[:, 0] + 1.0) / 2.0, sigma) for m in two_class_maps]
    return torch.stack(blurred).mean(dim=0)


def released_abnormal_similarity(adapted: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """cos(A, Fa) / sqrt 2 as the released `text_probs[..., 1]`: (B, D), (B, 2, D) -> (B,)."""
    return torch.einsum("bd,bd->b", F.normalize(adapted, dim=-1), released_text(text)[:, 1])


def released_logits(adapted: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The released adapter-training logits cos(A, [Fn; Fa]) / sqrt 2 / 0.07: (B, 2)."""
    sims = torch.einsum("bd,bcd->bc", F.normalize(adapted, dim=-1), released_text(text))
    return sims / RELEASED_ADAPTER_TEMPERATURE


def released_score(adapted: torch.Tensor, text: torch.Tensor, anomaly_map: torch.Tensor) -> torch.Tensor:
    """(cos(A, Fa) / sqrt 2 + max M) / 2 per image, max M before any box suppression."""
    return (released_abnormal_similarity(adapted, text) + anomaly_map.flatten(1).amax(dim=1)) / 2.0
