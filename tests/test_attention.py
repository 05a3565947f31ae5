"""The attention variants on tiny hand-made tensors, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anomalens.backbones.attention import (
    gem_attention,
    gem_inverse_temperature,
    merge_heads,
    qk_attention,
    split_qkv,
    vv_attention,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def heads(rows: list[list[float]]) -> torch.Tensor:
    """(tokens, d) rows -> (batch=1, heads=1, tokens, d)."""
    return torch.tensor(rows, dtype=torch.float64)[None, None]


def test_vv_attention_two_orthogonal_tokens_default_scale():
    # v v^T = I, logits = I / sqrt(2); row 0 softmax = [p, 1 - p] with p = sigmoid(1/sqrt(2)).
    out = vv_attention(heads([[1.0, 0.0], [0.0, 1.0]]))
    p = sigmoid(1 / math.sqrt(2))
    expected = torch.tensor([[p, 1 - p], [1 - p, p]], dtype=torch.float64)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], expected)


def test_vv_attention_three_tokens_explicit_scale():
    # logits = v v^T = [[1,0,1],[0,1,1],[1,1,2]]; row 2 softmax = [1, 1, e] / (2 + e).
    v = heads([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = vv_attention(v, scale=1.0)[0, 0]
    e = math.e
    row0 = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)  # softmax([1, 0, 1])
    expected0 = row0 @ v[0, 0]
    expected2 = torch.tensor([(1 + e) / (2 + e), (1 + e) / (2 + e)], dtype=torch.float64)
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[2], expected2)
    # Tokens 0 and 1 are mirror images of each other, so are their outputs.
    torch.testing.assert_close(out[1], out[0].flip(0))


def test_vv_attention_is_per_head():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 5, 4)
    out = vv_attention(v)
    for h in range(3):
        torch.testing.assert_close(out[:, h : h + 1], vv_attention(v[:, h : h + 1]))


def test_gem_inverse_temperature_by_hand():
    # Token norms 5 and 1 -> mean 3; head_dim 4 -> 3 * 4 ** -0.5 = 1.5. Second image: norms 2, 2 -> 1.
    x = torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]])
    t = gem_inverse_temperature(x, head_dim=4)
    assert t.shape == (2, 1, 1, 1)
    torch.testing.assert_close(t.flatten(), torch.tensor([1.5, 1.0]))


def test_gem_attention_without_refinement_by_hand():
    # iterations=0: each of q, k, v is normalised and builds softmax(t * f f^T), applied to v.
    # q's two tokens are identical -> uniform attention -> both rows are the mean of v.
    # k and v (after normalising) are orthogonal -> diag weight p = sigmoid(t).
    t = 2.0
    q = heads([[1.0, 0.0], [1.0, 0.0]])
    k = heads([[1.0, 0.0], [0.0, 1.0]])
    v = heads([[2.0, 0.0], [0.0, 4.0]])
    p = sigmoid(t)
    out_q = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    out_kv = torch.tensor([[2 * p, 4 * (1 - p)], [2 * (1 - p), 4 * p]], dtype=torch.float64)
    expected = (out_q + 2 * out_kv) / 3
    torch.testing.assert_close(gem_attention(q, k, v, t, iterations=0)[0, 0], expected)


def test_gem_attention_one_refinement_by_hand():
    # q = k = v = two orthogonal unit tokens. Refinement: A = softmax(t I) -> f = [[p, 1-p], [1-p, p]],
    # p = sigmoid(t). After normalising, the rows' cosine is c = 2p(1-p) / (p^2 + (1-p)^2), so the
    # final attention is [[r, 1-r], [1-r, r]] with r = sigmoid(t (1 - c)); applied to v = I.
    t = 2.0
    f = heads([[1.0, 0.0], [0.0, 1.0]])
    p = sigmoid(t)
    c = 2 * p * (1 - p) / (p**2 + (1 - p) ** 2)
    r = sigmoid(t * (1 - c))
    expected = torch.tensor([[r, 1 - r], [1 - r, r]], dtype=torch.float64)
    torch.testing.assert_close(gem_attention(f, f, f, t, iterations=1)[0, 0], expected)
    # Each refinement makes the tokens more alike, so the attention gets flatter.
    two = gem_attention(f, f, f, t, iterations=2)[0, 0]
    assert 0.5 < two[0, 0].item() < r


def test_gem_attention_accepts_tensor_temperature_per_image():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 6, 4).unbind(0)
    temps = torch.tensor([0.5, 3.0]).view(2, 1, 1, 1)
    out = gem_attention(q, k, v, temps)
    for b in range(2):
        one = slice(b, b + 1)
        torch.testing.assert_close(out[one], gem_attention(q[one], k[one], v[one], float(temps[b])))


@pytest.mark.parametrize("tokens", [1, 7])
def test_split_merge_match_multihead_attention(tokens):
    # split_qkv + qk_attention + merge_heads reproduce nn.MultiheadAttention (batch first).
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    nn.init.normal_(attn.in_proj_bias)
    x = torch.randn(2, tokens, 16)
    q, k, v = split_qkv(x, attn)
    assert q.shape == k.shape == v.shape == (2, 4, tokens, 4)
    ours = merge_heads(qk_attention(q, k, v), attn)
    with torch.no_grad():
        ref = attn(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # Head h of v is columns [2D + 4h, 2D + 4h + 4) of the packed projection.
    packed = x @ attn.in_proj_weight.T + attn.in_proj_bias
    torch.testing.assert_close(v[:, 1], packed[..., 32 + 4 : 32 + 8])
