"""FiLo's global branch: the image adapter and the anomaly score of Eq. 1.

Paper (Algorithm 1): A = SiLU(W2 ReLU(W1 c + b1) + b2) on the class embedding c, with
W1: D -> D/2 and W2: D/2 -> D (768 -> 384 -> 768 for ViT-L-14-336).
Released code: the same two layers without biases, added to the input as a residual,
A = c + SiLU(W2 ReLU(W1 c)). Both are available (`style="paper" | "released"`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AdapterStyle = Literal["paper", "released"]


class Adapter(nn.Module):
    """Two linear layers D -> D/2 -> D with ReLU then SiLU; optional residual (released code)."""

    def __init__(self, dim: int, style: AdapterStyle = "paper"):
        super().__init__()
        if style not in ("paper", "released"):
            raise ValueError(f"unknown adapter style {style!r}; use 'paper' or 'released'")
        bias = style == "paper"
        self.style = style
        self.fc1 = nn.Linear(dim, dim // 2, bias=bias)
        self.fc2 = nn.Linear(dim // 2, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.fc2(F.relu(self.fc1(x))))
        return x + y if self.style == "released" else y


def global_logits(adapted: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(A, [Fn, Fa]) / T: adapted (B, D), text (B, 2, D) -> (B, 2) logits (normal, abnormal)."""
    a = F.normalize(adapted, dim=-1)
    return torch.einsum("bd,bcd->bc", a, F.normalize(text, dim=-1)) / temperature


def global_score(logits: torch.Tensor, anomaly_map: torch.Tensor) -> torch.Tensor:
    """Eq. 1: S = softmax(A . F^T)_a + max(M).

    The softmax is taken over the two classes (normal, abnormal) of each image, i.e. over
    [cos(A, Fn), cos(A, Fa)] / T, and its abnormal entry is kept; max(M) is the maximum of the
    image's final anomaly map. logits (B, 2), anomaly_map (B, H, W) -> (B,). S lies in [0, 2].
    """
    return logits.softmax(dim=-1)[:, 1] + anomaly_map.flatten(1).amax(dim=1)
