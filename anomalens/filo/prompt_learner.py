"""FiLo's fine-grained descriptions (FG-Des): prompt texts, learnable context, text encoder on embeddings.

Templates (paper, Sec. 3.2), with n learnable context vectors in front of each sentence:

* normal:   ``[V1]...[Vn] [STATE] [CLASS].``
* abnormal: ``[W1]...[Wn] [STATE] [CLASS] with [ANOMALY CLASS] at [POS].``

The normal and abnormal sentences have their own context vectors (V and W). CoCoOp-style, a
small meta-net maps the image embedding to a bias that is added to every context vector, so the
text features are conditioned on the image; ``meta_net=False`` gives plain CoOp context.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..text.prompts import FILO_ABNORMAL_STATES, FILO_NORMAL_STATES, clean_class_name, state_phrase

#: The word whose token embeddings are replaced by the learned context vectors (as CoOp does).
PLACEHOLDER = "X"


@dataclass(frozen=True)
class PromptSet:
    """The sentence parts after the learnable context: normal and abnormal sentences."""

    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    descriptions: tuple[str, ...]  # the defect description of each abnormal sentence (same order)


def build_prompts(
    category: str,
    descriptions: list[str],
    position: str | tuple[str, ...],
    normal_states: tuple[str, ...] = FILO_NORMAL_STATES,
    abnormal_states: tuple[str, ...] = FILO_ABNORMAL_STATES,
) -> PromptSet:
    """FiLo's sentences for one object: every state x every defect description x position(s).

    Several positions (e.g. all nine when no detector locates the defect) give one abnormal
    sentence per position, so the grouped feature Fa averages over them.
    """
    name = clean_class_name(category) or "object"
    positions = (position,) if isinstance(position, str) else tuple(position)
    normal = tuple(f"{state_phrase(s, name)}." for s in normal_states)
    abnormal, described = [], []
    for description in descriptions:
        for s in abnormal_states:
            for where in positions:
                abnormal.append(f"{state_phrase(s, name)} with {description} at {where}.")
                described.append(description)
    return PromptSet(normal, tuple(abnormal), tuple(described))


def encode_text_embeddings(clip_model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower on token *embeddings* (N, L, width) instead of token ids.

    Positional embedding, transformer with the causal mask, ln_final, pooling at the
    end-of-text token (the largest token id, as CLIP pools) and the text projection; gradients
    reach `embeddings`. The sequence is cut after the last end-of-text token: with the causal
    mask no position attends to later ones, so the pooled outputs are exactly those of the full
    77-token pass, at a fraction of the cost.
    """
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    x = embeddings[:, :length] + clip_model.positional_embedding[:length].to(embeddings.dtype)
    mask = clip_model.attn_mask
    x = clip_model.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
    x = clip_model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = clip_model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def group_features(normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """F = [Fn, Fa]: per-prompt features L2-normalised, averaged per group, normalised again.

    normal (..., Nn, D), abnormal (..., Na, D) -> (..., 2, D).
    """
    fn = F.normalize(F.normalize(normal, dim=-1).mean(dim=-2), dim=-1)
    fa = F.normalize(F.normalize(abnormal, dim=-1).mean(dim=-2), dim=-1)
    return torch.stack([fn, fa], dim=-2)


class PromptLearner(nn.Module):
    """Learnable context vectors (V for normal, W for abnormal sentences) and the CoCoOp meta-net.

    Context vectors are initialised N(0, 0.02) as CoOp does. The meta-net is CoCoOp's
    Linear(embed_dim, embed_dim // 16) - ReLU - Linear(-, text width) on the L2-normalised image
    embedding; its output is added to every context vector of both groups.
    """

    def __init__(self, n_ctx: int, text_width: int, embed_dim: int, meta_net: bool = True, cache_size: int = 256):
        super().__init__()
        self.n_ctx = n_ctx
        self.ctx_normal = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        self.ctx_abnormal = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        hidden = max(1, embed_dim // 16)
        self.meta_net = (
            nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text_width))
            if meta_net
            else None
        )
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    def _tokens(self, clip_model: nn.Module, tokenizer, texts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and frozen token embeddings of `n_ctx` placeholders + each text (cached)."""
        key = (id(clip_model), texts)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        prefix = " ".join([PLACEHOLDER] * self.n_ctx)
        # Normal (not inference-mode) tensors, so a cache filled while predicting under
        # torch.inference_mode can still feed a training step later.
        with torch.inference_mode(False), torch.no_grad():
            tokens = tokenizer([f"{prefix} {t}" for t in texts])
            embedded = clip_model.token_embedding(tokens)
        self._cache[key] = (tokens, embedded)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tokens, embedded

    def image_bias(self, image_embedding: torch.Tensor | None) -> torch.Tensor | None:
        """The meta-net's context bias (B, text width), or None for CoOp."""
        if self.meta_net is None or image_embedding is None:
            return None
        return self.meta_net(F.normalize(image_embedding, dim=-1))

    def _encode(self, clip_model, tokenizer, texts, ctx: torch.Tensor) -> torch.Tensor:
        tokens, embedded = self._tokens(clip_model, tokenizer, texts)
        n = len(texts)
        # [SOT] context sentence [EOT]: only the placeholder slots are replaced, so the rest
        # stays CLIP's own (frozen) token embeddings.
        x = torch.cat(
            [embedded[:, :1], ctx.unsqueeze(0).expand(n, -1, -1).to(embedded.dtype), embedded[:, 1 + self.n_ctx :]],
            dim=1,
        )
        return encode_text_embeddings(clip_model, x, tokens)

    def forward(
        self, clip_model: nn.Module, tokenizer, prompts: PromptSet, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features of one prompt set: normal (Nn, D) and abnormal (Na, D), not normalised.

        bias: one image's meta-net output (text width,), or None (CoOp / no image).
        """
        ctx_n, ctx_a = self.ctx_normal, self.ctx_abnormal
        if bias is not None:
            ctx_n, ctx_a = ctx_n + bias, ctx_a + bias
        return (
            self._encode(clip_model, tokenizer, prompts.normal, ctx_n),
            self._encode(clip_model, tokenizer, prompts.abnormal, ctx_a),
        )
