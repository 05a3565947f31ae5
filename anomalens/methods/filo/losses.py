"""FiLo's training losses.

Local:  L_local = Focal_gamma(M_a, G) + Dice(M_a, G) + Dice(M_n, 1 - G)   (gamma = 2)
Global: L_global = cross-entropy of the two-class image logits against the image label.

As the released code (CASIA-IVA-Lab/FiLo `utils/loss.py`, checked by `benchmarks/filo_parity.py`):
the focal loss smooths its targets (one-hot clamped to [1e-5, 1 - 1e-5], then 1e-5 added to p_t;
the paper states no smoothing), and its training loop, at its batch size of 1, hands the Dice
loss a squeezed (H, W) mask, so Dice is computed per row of the mask and averaged over rows
(`dice_unit="row"`; the paper's per-image Dice is the default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6
FOCAL_SMOOTH = 1e-5  # the released FocalLoss's `smooth`
DICE_UNITS = ("image", "row")  # image: the paper; row: the released loop at batch size 1


def focal_loss(
    prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = FOCAL_SMOOTH
) -> torch.Tensor:
    """Binary focal loss, mean over pixels: -(1 - p)^gamma log p with p = (1 - 2s) p_t + 2s.

    prob: anomaly probability M_a (any shape), target: G of the same shape (0/1);
    p_t = M_a where G = 1 and 1 - M_a where G = 0. On a two-class softmax map this equals the
    released two-class focal loss without class weights: its targets clamped to [s, 1 - s] give
    (1 - s) p_t + s (1 - p_t), and it adds s. smooth=0: the plain focal loss.
    """
    p_t = torch.where(target > 0.5, prob, 1.0 - prob)
    p_t = ((1.0 - 2.0 * smooth) * p_t + 2.0 * smooth).clamp(EPS, 1.0)
    return (-((1.0 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, unit: str = "image") -> torch.Tensor:
    """Soft Dice loss per unit, averaged: 1 - (2 sum pg + s) / (sum p + sum g + s).

    pred, target: (B, ..., W). unit "image": one Dice per sample (the paper); "row": one per row
    of the last axis, over every image's rows (the released loop at its batch size of 1: its
    squeezed (H, W) mask makes `BinaryDiceLoss` take the H rows as its batch). The smoothing term
    s = 1 keeps the loss defined for empty masks (and, per row, weighs the defect-free rows).
    """
    if unit not in DICE_UNITS:
        raise ValueError(f"unknown Dice unit {unit!r}; use one of {', '.join(DICE_UNITS)}")
    p = pred.flatten(1) if unit == "image" else pred.reshape(-1, pred.shape[-1])
    g = target.reshape(p.shape).to(p.dtype)
    dice = (2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1.0 - dice).mean()


def local_loss(
    two_class: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, dice_unit: str = "image"
) -> torch.Tensor:
    """Focal(M_a, G) + Dice(M_a, G) + Dice(M_n, 1 - G) for a (B, 2, H, W) map and (B, H, W) mask."""
    m_n, m_a = two_class[:, 0], two_class[:, 1]
    g = mask.to(m_a.dtype)
    return focal_loss(m_a, g, gamma) + dice_loss(m_a, g, unit=dice_unit) + dice_loss(m_n, 1.0 - g, unit=dice_unit)


def global_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, 2) image logits against (B,) labels (0 normal, 1 anomalous)."""
    return F.cross_entropy(logits, labels.long())
