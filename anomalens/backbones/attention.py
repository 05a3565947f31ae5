"""The attention variants the papers compute beside CLIP's own, from each block's own weights.

* V-V attention (CLIP Surgery, used by FiLo): softmax(v v^T * scale) v. Tokens attend to tokens
  with similar values, which keeps local semantics that q-k attention washes out.
* GEM self-self attention (Bousselham et al., used by FADE): q-q, k-k and v-v attention on
  L2-normalised projections with an adaptive temperature, averaged.

All functions take per-head tensors shaped (batch, heads, tokens, head_dim); they are pure
tensor code (no module state), so they can be checked on small hand-made tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_qkv(x: torch.Tensor, attn: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project (B, N, D) tokens with a MultiheadAttention's packed weights into per-head q, k, v."""
    b, n, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d), then the block's output projection."""
    b, h, n, d = x.shape
    return attn.out_proj(x.transpose(1, 2).reshape(b, n, h * d))


def qk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """CLIP's own scaled dot-product attention."""
    return F.scaled_dot_product_attention(q, k, v)


def vv_attention(v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """V-V attention: softmax(v v^T * scale) v, with scale = head_dim ** -0.5 by default.

    Computed by PyTorch's fused attention kernel, which never holds the full N x N matrix.
    """
    return F.scaled_dot_product_attention(v, v, v, scale=scale)


def gem_inverse_temperature(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """GEM's adaptive inverse temperature: mean token norm of the block input times head_dim^-0.5.

    `x` is the block's normalised input (B, N, D); returns (B, 1, 1, 1).
    """
    return x.norm(dim=-1).mean(dim=-1).view(-1, 1, 1, 1) * head_dim**-0.5


def gem_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inverse_temperature: torch.Tensor | float,
    iterations: int = 1,
) -> torch.Tensor:
    """GEM self-self attention averaged over the q-q, k-k and v-v paths.

    Each projection is L2-normalised and refined `iterations` times by attending to itself
    (clustering similar tokens); the refined projection then builds an attention map that is
    applied to the values v. The three results are averaged.
    """
    # softmax((f * t) f^T) y is fused attention with query f * t, key f, value y and scale 1; the
    # temperature goes into the query because it differs per image. The fused kernel never
    # materialises the N x N matrices (2.5 GB per block at 896 px), which makes GEM several
    # times faster on a CPU than the explicit product.
    t = inverse_temperature if torch.is_tensor(inverse_temperature) else torch.tensor(inverse_temperature)
    t = t.to(v.dtype)
    outputs = []
    for feats in (v, k, q):
        for _ in range(iterations):
            feats = F.normalize(feats, dim=-1)
            feats = F.scaled_dot_product_attention(feats * t, feats, feats, scale=1.0)
        feats = F.normalize(feats, dim=-1)
        outputs.append(F.scaled_dot_product_attention(feats * t, feats, v, scale=1.0))
    return (outputs[0] + outputs[1] + outputs[2]) / 3
