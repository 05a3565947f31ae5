"""FiLo's training losses.

Local:  L_local = Focal_gamma(M_a, G) + Dice(M_a, G) + Dice(M_n, 1 - G)   (gamma = 2)
Global: L_global = cross-entropy of the two-class image logits against the image label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss, mean over pixels: -(1 - p_t)^gamma log p_t.

    prob: anomaly probability M_a (any shape), target: G of the same shape (0/1);
    p_t = M_a where G = 1 and 1 - M_a where G = 0. On a two-class softmax map this equals the
    two-class focal loss without class weights.
    """
    p_t = torch.where(target > 0.5, prob, 1.0 - prob).clamp(EPS, 1.0)
    return (-((1.0 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, averaged over the batch: 1 - (2 sum pg + s) / (sum p + sum g + s).

    pred, target: (B, ...). The smoothing term s = 1 keeps the loss defined for empty masks.
    """
    p = pred.flatten(1)
    g = target.flatten(1).to(p.dtype)
    dice = (2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1.0 - dice).mean()


def local_loss(two_class: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal(M_a, G) + Dice(M_a, G) + Dice(M_n, 1 - G) for a (B, 2, H, W) map and (B, H, W) mask."""
    m_n, m_a = two_class[:, 0], two_class[:, 1]
    g = mask.to(m_a.dtype)
    return focal_loss(m_a, g, gamma) + dice_loss(m_a, g) + dice_loss(m_n, 1.0 - g)


def global_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, 2) image logits against (B,) labels (0 normal, 1 anomalous)."""
    return F.cross_entropy(logits, labels.long())
