"""MSM, the Mutual Scoring Mechanism: every image of a batch scores every other one.

For one (layer, degree) the features of image i are Z_i (P patches x C, unit norm). Image j
gives patch m of image i the score a_m(j) = min_n ||z_{i,m} - z_{j,n}||_2, the distance to the
nearest patch of j. Normal patches find close patches in most other images; a defect patch finds
them in few. Over the partners j the scores of one patch are combined by the *interval
average*: the mean of the sorted scores between the `low` and `high` fractions (the paper and
the official code: the smallest 30 %, `(0.0, 0.3)`), which ignores partners that happen to show
the same defect.

With `patch_norm="none"` (lnamd.py) the features keep their layer-normalised lengths and the
distance is the plain Euclidean one, from ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b (clamped at 0).
`score_scale="median"` divides each (layer, degree)'s scores by their median over the batch
before MSM's average: Euclidean distances shrink with the aggregation degree (an r x r mean is
shorter than one patch) and differ between layers, so without it the finest degree would
dominate the average. (Unit features have distances on one scale already; the paper has none.)

Memory: the similarities of one query image against a chunk of partner images are one matrix
product of at most `chunk_elements` float32 numbers; features may be stored as float16 and are
converted per chunk, so a batch of 1,000 images never holds an N x N patch matrix.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_INTERVAL = (0.0, 0.3)  # official code: topmin_min=0, topmin_max=0.3
DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 similarities per matrix product
SCORE_SCALES = ("none", "median")  # none: paper; median: see above


def interval_bounds(num_partners: int, interval: tuple[float, float] = DEFAULT_INTERVAL) -> tuple[int, int]:
    """(first, last) ranks, 0-based and last exclusive, of the sorted partner scores to average.

    As in the official code, a fraction f becomes int(f * num_partners) ranks. When that leaves
    nothing (fewer than 4 partners at 30 %), the single smallest score past `first` is used.
    """
    low, high = sorted(interval)
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"interval must satisfy 0 <= low < high <= 1, got {interval}")
    if num_partners < 1:
        raise ValueError("mutual scoring needs at least one partner image")
    first = min(int(low * num_partners), num_partners - 1)
    last = max(int(high * num_partners), first + 1)
    return first, last


def interval_average(scores: torch.Tensor, interval: tuple[float, float] = DEFAULT_INTERVAL) -> torch.Tensor:
    """(P, J) scores of P patches against J partners -> (P,) mean of the chosen ranks per patch."""
    first, last = interval_bounds(scores.shape[1], interval)
    smallest = torch.topk(scores.float(), last, dim=1, largest=False, sorted=True).values
    return smallest[:, first:last].mean(dim=1)


def nearest_patch_distances(
    query: torch.Tensor,
    partners: torch.Tensor,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    patch_norm: str = "l2",
) -> torch.Tensor:
    """(P, C) query patches, (J, Q, C) partner images -> (P, J) distance to each partner's nearest patch.

    "l2": features are unit vectors, so ||a - b|| = sqrt(2 - 2 a.b) and the nearest patch is the
    most similar one. "none": ||a - b||^2 = |a|^2 - max_b (2 a.b - |b|^2), one matrix product
    with the partners' squared lengths as its bias. Partners are taken in chunks so one product
    holds <= chunk_elements numbers.
    """
    # Re-normalised in float32: a float16-rounded unit vector is off by ~1e-3 in length, which
    # sqrt(2 - 2 a.b) would turn into a distance of ~0.01 between identical patches.
    unit = patch_norm == "l2"
    q = F.normalize(query.float(), dim=-1) if unit else query.float()
    num_partners, per_partner, _ = partners.shape
    step = max(1, chunk_elements // max(1, q.shape[0] * per_partner))
    best = torch.empty(q.shape[0], num_partners)
    for start in range(0, num_partners, step):
        block = partners[start : start + step].float().reshape(-1, partners.shape[-1])
        if unit:
            sim = q @ F.normalize(block, dim=-1).T  # (P, j * Q)
        else:
            sim = torch.addmm(-(block * block).sum(dim=1)[None], q, block.T, alpha=2.0)
        count = sim.shape[1] // per_partner
        best[:, start : start + count] = sim.view(q.shape[0], count, per_partner).amax(dim=2)
    if unit:
        return (2.0 - 2.0 * best).clamp_(min=0.0).sqrt_()
    return ((q * q).sum(dim=1, keepdim=True) - best).clamp_(min=0.0).sqrt_()


def self_distances(
    z: torch.Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, patch_norm: str = "l2"
) -> torch.Tensor:
    """(P, C) patches of one image -> (P,) distance of each to its nearest *other* patch."""
    unit = patch_norm == "l2"
    zf = F.normalize(z.float(), dim=-1) if unit else z.float()
    sq = (zf * zf).sum(dim=1)
    out = torch.empty(zf.shape[0])
    step = max(1, chunk_elements // max(1, zf.shape[0]))
    for start in range(0, zf.shape[0], step):
        rows = zf[start : start + step]
        sim = rows @ zf.T if unit else torch.addmm(-sq[None], rows, zf.T, alpha=2.0)
        index = torch.arange(sim.shape[0])
        sim[index, index + start] = -1.0 if unit else -float("inf")  # not itself (l2: as far as can be)
        nearest = sim.amax(dim=1)
        sq_dist = 2.0 - 2.0 * nearest if unit else sq[start : start + step] - nearest
        out[start : start + step] = sq_dist.clamp_(min=0.0).sqrt_()
    return out.nan_to_num_(posinf=0.0)  # "none", a one-patch map: no other patch, no distance


def scale_scores(scores: torch.Tensor, mode: str = "none", eps: float = 1e-12) -> torch.Tensor:
    """(N, P) patch scores of one (layer, degree) -> divided by their median over the batch ("median")."""
    if mode == "none":
        return scores
    if mode not in SCORE_SCALES:
        raise ValueError(f"unknown score_scale {mode!r}; use one of {', '.join(SCORE_SCALES)}")
    return scores / scores.median().clamp(min=eps)


def stable_key_hash(key: str) -> int:
    """A process-independent integer for a key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def choose_partners(keys: Sequence[str], max_partners: int, seed: int = 0) -> list[list[int]]:
    """For each image, the indices of the batch images it is scored against (never itself).

    max_partners <= 0 or >= N - 1: all others (the paper). Otherwise a seeded random sample of
    max_partners others, drawn from the images sorted by key with a generator seeded by the
    image's own key: an image gets the same partners whatever the order of the batch.
    """
    n = len(keys)
    if max_partners <= 0 or max_partners >= n - 1:
        return [[j for j in range(n) if j != i] for i in range(n)]
    by_key = sorted(range(n), key=lambda j: keys[j])
    chosen = []
    for i in range(n):
        others = [j for j in by_key if j != i]
        rng = random.Random(stable_key_hash(f"{seed}:{keys[i]}"))
        chosen.append(sorted(rng.sample(others, max_partners)))
    return chosen


def mutual_scores(
    features: torch.Tensor,
    partners: Sequence[Sequence[int]],
    known_normal: torch.Tensor | None = None,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    on_image: Callable[[], None] | None = None,
    patch_norm: str = "l2",
    groups: Sequence[Sequence[int]] | None = None,
    known_groups: Sequence[int] | None = None,
) -> torch.Tensor:
    """(N, P, C) batch features -> (N, P) patch scores, each image against its partners.

    known_normal (R, P, C): reference images that join every image's partners (never scored).
    With tiles, a row is one tile and a partner image is several rows: `groups[i]` gives each of
    `partners[i]` its partner image (0, 1, ...) and `known_groups` each row of known_normal its
    reference image; a patch's distance to a partner image is then its nearest patch in any of
    that image's tiles, and the interval average runs over partner images, not tiles.
    """
    n = features.shape[0]
    out = torch.empty(n, features.shape[1])
    for i in range(n):
        idx = torch.as_tensor(list(partners[i]), dtype=torch.long)
        pool = features.index_select(0, idx) if len(idx) else features[:0]
        if known_normal is not None and known_normal.shape[0]:
            pool = torch.cat([pool, known_normal.to(pool.dtype)])
        if pool.shape[0] == 0:
            raise ValueError("mutual scoring needs at least two images (or reference images)")
        distances = nearest_patch_distances(features[i], pool, chunk_elements, patch_norm)
        if groups is not None:
            distances = nearest_per_group(distances, pooled_groups(groups[i], known_groups, pool.shape[0]))
        out[i] = interval_average(distances, interval)
        if on_image is not None:
            on_image()
    return out


def pooled_groups(partner_groups: Sequence[int], known_groups: Sequence[int] | None, rows: int) -> torch.Tensor:
    """The partner image of each pool row: the partners' groups, then the references' after them."""
    first = (max(partner_groups) + 1) if len(partner_groups) else 0
    known = [] if known_groups is None else [first + g for g in known_groups]
    ids = torch.as_tensor([*partner_groups, *known], dtype=torch.long)
    if ids.shape[0] != rows:
        raise ValueError(f"{rows} partner rows but {ids.shape[0]} group labels")
    return ids


def nearest_per_group(distances: torch.Tensor, group_of_row: torch.Tensor) -> torch.Tensor:
    """(P, J) distances to J pool rows and each row's group -> (P, G) the smallest per group."""
    count = int(group_of_row.max()) + 1 if group_of_row.numel() else 0
    out = torch.full((distances.shape[0], count), float("inf"))
    index = group_of_row[None].expand(distances.shape[0], -1)
    return out.scatter_reduce_(1, index, distances.float(), reduce="amin", include_self=True)
