"""Greedy k-centre coreset of a memory bank (PatchCore, Roth et al., CVPR 2022, algorithm 1).

Starting from one point, repeatedly add the point farthest from everything chosen so far. The
chosen set covers the bank with a radius (the largest distance of any point to its nearest
chosen one) that can only shrink as points are added, so a small coreset keeps the bank's rare
patches that a random subsample would drop. Distances are computed on a random projection to
`projection_dim` dimensions (Johnson-Lindenstrauss, as PatchCore does) to make selection cheap.
"""

from __future__ import annotations

import torch

PROJECTION_DIM = 128


def greedy_coreset(
    points: torch.Tensor, size: int, projection_dim: int = PROJECTION_DIM, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of `size` points chosen by greedy k-centre, and the covering radius after each pick.

    points: (N, C). Returns (indices (size,), radii (size,)): radii[i] is the largest distance of
    any point to its nearest chosen point once i + 1 points are chosen (non-increasing).
    """
    n = points.shape[0]
    size = min(size, n)
    generator = torch.Generator().manual_seed(seed)
    x = points.float()
    if projection_dim and projection_dim < x.shape[1]:
        projection = torch.randn(x.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        x = x @ projection
    first = int(torch.randint(n, (1,), generator=generator))
    indices = torch.empty(size, dtype=torch.long)
    radii = torch.empty(size)
    nearest = torch.full((n,), float("inf"))
    chosen = first
    for i in range(size):
        indices[i] = chosen
        nearest = torch.minimum(nearest, (x - x[chosen]).norm(dim=1))
        far = int(nearest.argmax())
        radii[i] = nearest[far]
        chosen = far
    return indices, radii
