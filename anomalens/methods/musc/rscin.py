"""RsCIN, Re-scoring with Constrained Image-level Neighbourhood.

A normal image whose patch scores are raised by noise (dust, lighting) gets a high image score
on its own; its most similar images in the batch are mostly normal. RsCIN replaces each
image's score by the similarity-weighted mean of the scores of its k most similar images
(itself included, the "constrained neighbourhood"), averaged over several k:

    s' = 1/|K| * sum_k D_k^-1 (W * M_k) s

W is the cosine similarity of the images' global features, M_k keeps each row's k largest
entries, D_k is the row sum of W * M_k. k = 1 keeps the image's own score (its own similarity is
the largest), so K = (1, 2, 3) (the official code's value for MVTec AD) mixes the original
score with those of its one and two nearest images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_NEIGHBOURS = (1, 2, 3)  # official code, MVTec AD and BTAD; (1, 8, 9) for VisA


def rescore(
    scores: torch.Tensor, image_features: torch.Tensor, neighbours: Sequence[int] = DEFAULT_NEIGHBOURS
) -> torch.Tensor:
    """(N,) scores, (N, D) image features -> (N,) re-scored scores (same units as the input).

    Negative similarities are clipped to 0 so a row's weights stay a convex combination; k is
    capped at N. The official code min-max normalises the scores first: every row of
    D^-1 (W * M) sums to 1, so that changes only the scale, and we keep the input's units so a
    threshold means the same in every batch.
    """
    n = scores.shape[0]
    if n == 0 or not neighbours:
        return scores.clone()
    feats = F.normalize(image_features.double(), dim=-1)
    sim = (feats @ feats.T).clamp_(min=0.0)
    sim.fill_diagonal_(1.0)  # an image is its own nearest neighbour, also for duplicate features
    s = scores.double()
    out = torch.zeros(n, dtype=torch.float64)
    for k in neighbours:
        k = max(1, min(int(k), n))
        values, index = torch.topk(sim, k, dim=1)
        weights = values / values.sum(dim=1, keepdim=True)
        out += (weights * s[index]).sum(dim=1)
    return (out / len(neighbours)).to(scores.dtype)
