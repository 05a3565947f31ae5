"""FiLo's learnable context (FG-Des) and CLIP's text tower run on token embeddings.

n learnable context vectors go in front of each sentence of `prompts.build_prompts`; the normal
and abnormal sentences have their own vectors (V and W). CoCoOp-style, a small meta-net maps the
image embedding to a bias that is added to every context vector, so the text features are
conditioned on the image; ``meta_net=False`` gives plain CoOp context. The paper has one
meta-net; the released code gives each group its own (``separate_meta_nets=True``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .prompts import PromptSet

#: The word whose token embeddings are replaced by the learned context vectors (as CoOp does).
PLACEHOLDER = "X"


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

    def __init__(
        self,
        n_ctx: int,
        text_width: int,
        embed_dim: int,
        meta_net: bool = True,
        cache_size: int = 256,
        separate_meta_nets: bool = False,
    ):
        super().__init__()
        self.n_ctx = n_ctx
        self.ctx_normal = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        self.ctx_abnormal = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        hidden = max(1, embed_dim // 16)

        def make() -> nn.Module:
            return nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text_width))

        self.separate_meta_nets = bool(meta_net and separate_meta_nets)
        self.meta_net = make() if meta_net and not self.separate_meta_nets else None
        self.meta_net_normal = make() if self.separate_meta_nets else None
        self.meta_net_abnormal = make() if self.separate_meta_nets else None
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
            tokens = tokenizer([f"{prefix} {t}" for t in texts]).to(clip_model.token_embedding.weight.device)
            embedded = clip_model.token_embedding(tokens)
        self._cache[key] = (tokens, embedded)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tokens, embedded

    def image_bias(self, image_embedding: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The meta-net's context biases (normal, abnormal), each (B, text width); None for CoOp."""
        if image_embedding is None:
            return None
        x = F.normalize(image_embedding, dim=-1)
        if self.separate_meta_nets:
            return self.meta_net_normal(x), self.meta_net_abnormal(x)
        if self.meta_net is None:
            return None
        bias = self.meta_net(x)
        return bias, bias

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
        self,
        clip_model: nn.Module,
        tokenizer,
        prompts: PromptSet,
        bias: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features of one prompt set: normal (Nn, D) and abnormal (Na, D), not normalised.

        bias: one image's meta-net outputs (normal, abnormal), each (text width,), or None.
        """
        ctx_n, ctx_a = self.ctx_normal, self.ctx_abnormal
        if bias is not None:
            ctx_n, ctx_a = ctx_n + bias[0], ctx_a + bias[1]
        return (
            self._encode(clip_model, tokenizer, prompts.normal, ctx_n),
            self._encode(clip_model, tokenizer, prompts.abnormal, ctx_a),
        )
