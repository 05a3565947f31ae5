"""Vision-guided patch scoring, as FADE defines it: distance to the k-th nearest neighbour.

A patch's anomaly is 0.5 * (1 - cosine similarity) to its k-th most similar patch in a memory
bank (so it lies in [0, 1]). Few-shot: the bank holds the reference images' patches and k = 1.
Zero-shot: the bank is the query image's own patches, which contains the patch itself, so
k = 2 gives its nearest *other* patch (as in the FADE authors' code).

`metric="euclidean"` (patchknn's `magnitudes`, and its length channels against a bank) compares
features that are not unit vectors by their Euclidean distance instead; it is not bounded by 1.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

FEW_SHOT_K = 1
ZERO_SHOT_K = 2
METRICS = ("cosine", "euclidean")


def knn_anomaly(
    query: torch.Tensor, bank: torch.Tensor, k: int = FEW_SHOT_K, chunk: int = 4096, metric: str = "cosine"
) -> torch.Tensor:
    """Anomaly of each query patch: its distance to its k-th nearest bank patch.

    query: (N, C), bank: (M, C). "cosine": both are L2-normalised here, so a matrix product gives
    the cosine similarities, and the anomaly is 0.5 * (1 - cos), in [0, 1]. "euclidean": ||q - b||,
    from the same matrix product as ||q||^2 - 2 (q.b - ||b||^2 / 2), so its cost is the cosine's;
    where that is small against ||q||^2 (float32 cancellation: 1e-3 near 0 for lengths ~2) the
    distance to the neighbour is computed directly.
    Query rows are processed in chunks to bound memory.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if bank.shape[0] < k:
        raise ValueError(f"memory bank has {bank.shape[0]} patches, fewer than k={k}")
    euclidean = metric == "euclidean"
    query, bank = query.float(), bank.float()
    if not euclidean:
        query, bank = F.normalize(query, dim=-1), F.normalize(bank, dim=-1)
    else:
        # q.b - ||b||^2 / 2 ranks bank rows as -||q - b||^2 / 2 does (up to the row constant ||q||^2 / 2);
        # a column of ones on the queries and of -||b||^2 / 2 on the bank make it one matrix product
        # (a separate subtraction pass over the products cost twice the product itself)
        ranking_bank = torch.cat([bank, -0.5 * (bank * bank).sum(-1, keepdim=True)], dim=1)
        ranking_query = torch.cat([query, torch.ones(query.shape[0], 1, device=query.device)], dim=1)
    out = torch.empty(query.shape[0], device=query.device)
    for start in range(0, query.shape[0], chunk):
        rows = query[start : start + chunk]
        if euclidean:
            ranked = ranking_query[start : start + chunk]
            out[start : start + chunk] = _euclidean_kth(rows, ranked, bank, ranking_bank, k)
            continue
        if k == 1:  # few-shot: a row maximum, the same value as topk's, ~30 % less time
            kth = _row_max_similarity(rows, bank)
        else:
            kth = kth_largest_values(rows @ bank.T, k)
        out[start : start + chunk] = (0.5 * (1.0 - kth)).clamp_(0.0, 1.0)
    return out


# Squared distances below this share of ||q||^2 are recomputed directly (float32 keeps ~7 digits
# of ||q||^2 - 2 (q.b - ||b||^2 / 2); above it the product's value is exact to ~1e-5 relative).
CANCELLATION_SHARE = 1e-2


def _euclidean_kth(
    rows: torch.Tensor, ranked: torch.Tensor, bank: torch.Tensor, ranking_bank: torch.Tensor, k: int
) -> torch.Tensor:
    """Distance of each row to its k-th nearest bank row; `ranked` / `ranking_bank` carry the ones and
    -||b||^2 / 2 columns that make q.b - ||b||^2 / 2 one matrix product."""
    if k == 1:  # few-shot: a row maximum, ~30 % less time than topk
        kth = _row_max_similarity(ranked, ranking_bank)
    else:
        kth = kth_largest_values(ranked @ ranking_bank.T, k)
    norms = (rows * rows).sum(-1)
    squared = (norms - 2.0 * kth).clamp_(min=0.0)
    close = (squared < CANCELLATION_SHARE * norms).nonzero()[:, 0]
    if close.numel():  # e.g. a reference scored against its own bank
        if k == 1:
            nearest = _row_argmax_similarity(ranked[close], ranking_bank)
        else:
            nearest = kth_largest(ranked[close] @ ranking_bank.T, k)[1]
        squared[close] = ((rows[close] - bank[nearest]) ** 2).sum(-1)
    return squared.sqrt_()


# Above this k the k-th largest of a row comes from kthvalue (a selection) rather than topk (a partial sort):
# zero-shot at a quantile asks for the ~400th of 1,024 (one thread: 19 against 29 ms per 1,024 x 1,024).
KTHVALUE_ABOVE = 16


def kth_largest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (N, M) `values`, the k-th largest and its column (among equal values any of them)."""
    if k <= KTHVALUE_ABOVE:
        top = values.topk(k, dim=1)
        return top.values[:, k - 1], top.indices[:, k - 1]
    kth = values.kthvalue(values.shape[1] - k + 1, dim=1)
    return kth.values, kth.indices


# numpy's selection runs on one thread; torch's kthvalue splits the rows over its threads, so above
# this many threads torch is expected to be the faster (measured up to 2, this machine's cores).
NUMPY_SELECTION_MAX_THREADS = 2


def kth_largest_values(values: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of (N, M) `values`, the k-th largest value (the same number as `kth_largest`'s).

    On the CPU, above `KTHVALUE_ABOVE`, with at most `NUMPY_SELECTION_MAX_THREADS` torch threads, numpy's
    introselect: zero-shot at a quantile (the ~400th of 1,024 per row) takes 5.4 ms per 1,024 x 1,024
    against kthvalue's 14.8 on one thread and 7.8 on two.
    """
    numpy_ready = values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64)
    few_threads = torch.get_num_threads() <= NUMPY_SELECTION_MAX_THREADS
    if k <= KTHVALUE_ABOVE or not (numpy_ready and few_threads) or values.requires_grad:
        return kth_largest(values, k)[0]
    column = values.shape[1] - k
    # the column copied out, so the partitioned (N, M) array is not kept alive by a view
    return torch.from_numpy(np.partition(values.numpy(), column, axis=1)[:, column].copy())


# Bank patches per block of the row maximum: a (1024 x BANK_BLOCK) block of similarities stays in
# cache where the whole (1024 x M) matrix does not. 1,024 queries, one thread: bank 16,384
# 92 -> 55 ms, bank 4,096 16 -> 14 ms; the values are the same (a maximum of the same products).
BANK_BLOCK = 1024


def _row_max_similarity(rows: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per row, max over bank rows j of rows @ bank[j]."""
    best = None
    for j in range(0, bank.shape[0], BANK_BLOCK):
        block = (rows @ bank[j : j + BANK_BLOCK].T).amax(dim=1)
        best = block if best is None else torch.maximum(best, block)
    return best


def _row_argmax_similarity(rows: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per row, the bank row j with the largest rows @ bank[j] (blocks as `_row_max_similarity`)."""
    best, best_index = None, None
    for j in range(0, bank.shape[0], BANK_BLOCK):
        value, index = (rows @ bank[j : j + BANK_BLOCK].T).max(dim=1)
        if best is None:
            best, best_index = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + j, best_index)
    return best_index


class MemoryBank:
    """Reference patches as one (M, C) matrix per feature scale."""

    movable_state = True  # anomalens.device.move_to moves it with its method

    def __init__(self) -> None:
        self.banks: dict[str, torch.Tensor] = {}

    def to(self, device: torch.device) -> MemoryBank:
        self.banks = {k: v.to(device) for k, v in self.banks.items()}
        return self

    def add(self, key: str, patches: torch.Tensor) -> None:
        patches = F.normalize(patches.reshape(-1, patches.shape[-1]).float(), dim=-1)
        self.banks[key] = torch.cat([self.banks[key], patches]) if key in self.banks else patches

    def __contains__(self, key: str) -> bool:
        return key in self.banks

    def __len__(self) -> int:
        return len(self.banks)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"bank.{k}": v.contiguous() for k, v in self.banks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.banks = {k[len("bank.") :]: v for k, v in state.items() if k.startswith("bank.")}


# ----------------------------------------------------------------------------- map -> image score
# PatchCore smooths the upsampled patch map with a Gaussian (sigma 4 input pixels) before it is
# shown; patchknn also takes its image score from the smoothed map, so that one noisy patch
# does not decide an image. The functions below are plain torch (ONNX-exportable).


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius round(4 sigma) (PatchCore's kernel size 2*int(4*sigma+0.5)+1)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(T, H, W) maps blurred by a separable Gaussian of `sigma` pixels (reflect padding); sigma 0 = as is."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    x = maps.float().unsqueeze(1)
    pad_h, pad_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    # Reflect padding needs the pad to be smaller than the side: a tiny map gets a truncated,
    # renormalised kernel.
    kh, kw = kernel[radius - pad_h : radius + pad_h + 1], kernel[radius - pad_w : radius + pad_w + 1]
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else x
    x = F.conv2d(x, (kh / kh.sum()).view(1, 1, -1, 1))
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    x = F.conv2d(x, (kw / kw.sum()).view(1, 1, 1, -1))
    return x.squeeze(1)


@functools.lru_cache(maxsize=64)
def _axis_operator(cells: int, size: int, sigma: float) -> torch.Tensor:
    """(size, cells): bilinear upsampling of `cells` values to `size` pixels, then `gaussian_smooth`
    along that axis, as one matrix: column i is the response to a unit impulse in cell i (built by
    running the two operations themselves, so it is their operator by construction)."""
    impulses = torch.eye(cells).reshape(cells, 1, cells, 1)
    upsampled = F.interpolate(impulses, size=(size, 1), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_smooth(upsampled, sigma)[:, :, 0].T.contiguous()


def upsample_and_smooth(patch_maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(T, h, w) patch maps -> (T, size, size): bilinear upsampling (align_corners=False) followed
    by `gaussian_smooth`, both separable and linear, so one matrix per axis: A_h @ map @ A_w^T.

    The same values as the two operations in sequence (to float rounding, ~1e-7 relative) for
    ~1/20 of the time at 32 x 32 -> 256 x 256 (two small matrix products instead of a 33-tap
    convolution over the 256 x 256 map, one thread: 5.5 -> 0.25 ms per map).
    """
    rows = _axis_operator(patch_maps.shape[-2], size, float(sigma))
    cols = _axis_operator(patch_maps.shape[-1], size, float(sigma))
    return rows @ patch_maps.float() @ cols.T


def edge_weights(grid_hw: tuple[int, int], neighbourhood: int, size: int) -> torch.Tensor:
    """(size, size) weights for the image score: the share of each patch's neighbourhood on the grid.

    A patch on the grid's edge averages a window that sticks out of the image (with n = 3: 6 of
    9 cells on an edge, 4 at a corner). PatchCore's zero-padded average pooling shrinks such
    patches' features by that share, and with Euclidean distances their anomaly with it; with
    cosine distances (here) the scale cancels, so the score weighs them explicitly. Interior
    cells weigh 1; the cell weights are upsampled bilinearly to the map like the patch scores.
    """
    cells = torch.ones(1, 1, *grid_hw)
    if neighbourhood > 1:
        cells = F.avg_pool2d(cells, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=True)
    return F.interpolate(cells, size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def image_score(values: torch.Tensor, top_fraction: float = 0.0) -> torch.Tensor:
    """The image score of a map's values: their maximum, or the mean of the top `top_fraction` of them."""
    flat = values.reshape(-1)
    if top_fraction <= 0:
        return flat.max()
    count = max(1, math.ceil(top_fraction * flat.numel()))
    return flat.topk(min(count, flat.numel())).values.mean()


MAP_IMAGE_MODES = ("add", "multiply")


def image_score_in_map(maps, score, share: float, mode: str = "add"):
    """A map (tensor or array) with its image's score joined to every pixel: (1 - share) x map + share x
    score ("add") or map x score^share ("multiply"); share 0 returns `maps` itself. Monotone within the
    image, so only the order of pixels across images changes (pooled pixel metrics)."""
    if share <= 0:
        return maps
    if mode == "add":
        return (1 - share) * maps + share * float(score)
    if mode == "multiply":
        return maps * max(float(score), 0.0) ** share
    raise ValueError(f"unknown map_image_mode {mode!r}; use one of {', '.join(MAP_IMAGE_MODES)}")


def reweighting_factor(
    query: torch.Tensor, bank: torch.Tensor, patch_scores: torch.Tensor, neighbours: int, metric: str = "cosine"
) -> torch.Tensor:
    """PatchCore's neighbourhood-density reweighting of the image score (Roth et al., CVPR 2022, eq. 7).

    For the query's most anomalous patch q and its nearest bank patch m*, with N the `neighbours`
    nearest bank patches of m* (m* included): factor = 1 - softmax_N(||q - m||)[m*]. A query
    patch whose nearest normal patch sits in a sparse region of the bank (a rare normal
    appearance) weighs more; one in a dense region weighs less. Euclidean distances between
    unit vectors for "cosine" (bank and features L2-normalised), of the raw features for "euclidean".
    """
    q = query[int(patch_scores.reshape(-1).argmax())].float()
    bank = bank.float()
    if metric == "cosine":
        q, bank = F.normalize(q, dim=-1), F.normalize(bank, dim=-1)
        nearest = int((bank @ q).argmax())
        support = (bank @ bank[nearest]).topk(min(neighbours, bank.shape[0])).indices  # m* first
    else:
        nearest = int((bank - q).norm(dim=-1).argmin())
        support = (bank - bank[nearest]).norm(dim=-1).topk(min(neighbours, bank.shape[0]), largest=False).indices
    support = torch.cat([torch.tensor([nearest]), support[support != nearest]])[: support.numel()]
    distances = (bank[support] - q).norm(dim=-1)
    return 1.0 - torch.softmax(distances, dim=0)[0]
