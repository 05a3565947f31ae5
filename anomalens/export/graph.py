"""What every exportable method gives the ONNX writer, and the traceable pieces they share.

A method's exporter builds a `GraphSpec`: a torch module whose forward maps named inputs
(normalised image tensors, optionally a patch-validity mask or a memory bank) to named outputs
(`anomaly_map` on the square model input, `score`, optionally `description_similarity`), plus
example inputs to trace it with and the method-specific metadata. Everything a method learned
(memory banks, text features for the saved category) becomes a constant of that module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExportError


@dataclass
class GraphSpec:
    module: nn.Module
    example_inputs: dict[str, torch.Tensor]  # in forward's positional order
    output_names: list[str]
    image_inputs: list[dict[str, Any]]  # [{"name", "size"}] in the order of example_inputs
    map_size: int
    dynamic_batch: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    valid_patches: dict[str, Any] | None = None  # {"name", "grid", "size"} for resize="pad"
    memory_bank: dict[str, Any] | None = None  # metadata; "input" mode adds "array" (written beside)
    clip: Any = None  # the ClipBackbone inside `module`, if any (see tracing_context)
    # how much larger than the raw distances' the outputs' units are (patchknn's fused_recipe divides by
    # its levels' spreads): the export's check allows its tolerance times this
    output_scale: float = 1.0


SpecBuilder = Callable[..., GraphSpec]
EXPORTERS: dict[str, SpecBuilder] = {}


def register_exporter(method_name: str):
    def wrap(builder: SpecBuilder) -> SpecBuilder:
        EXPORTERS[method_name] = builder
        return builder

    return wrap


def build_spec(detector, **options: Any) -> GraphSpec:
    """The export graph of a fitted detector; ExportError for methods that cannot be exported."""
    from . import fade, patchknn, winclip  # noqa: F401  (registers the exporters)

    name = detector.method_name
    if name not in EXPORTERS:
        raise ExportError(f"method {name!r} cannot be exported to ONNX (exportable: {', '.join(sorted(EXPORTERS))})")
    return EXPORTERS[name](detector.method, **options)


def clip_method_spec(
    method, module: nn.Module, inputs: dict[str, torch.Tensor], descriptions, *, banks: bool, **spec: Any
) -> GraphSpec:
    """The GraphSpec of a CLIP method (fade, winclip): anomaly map, score and the similarity to each
    description of the saved category (named in the metadata), memory banks inside the graph."""
    return GraphSpec(
        module=module.eval(),
        example_inputs=inputs,
        output_names=["anomaly_map", "score", "description_similarity"],
        dynamic_batch=True,
        metadata={
            "category": method.settings.category,
            "descriptions": list(descriptions),
            "top_descriptions": method.settings.top_descriptions,
        },
        memory_bank={"mode": "constant"} if banks else None,
        clip=method.backbone,
        **spec,
    )


def memory_banks(method) -> dict[str, torch.Tensor]:
    """The method's memory banks by name ("patches", "240", "window2", ...), from its state_dict:
    the saved form, so the export sees exactly what a saved model holds."""
    return {k[len("bank.") :]: v for k, v in method.state_dict().items() if k.startswith("bank.")}


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ExportError(message)


# ---- traceable pieces --------------------------------------------------------------------------


def kth_nearest_distance(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """0.5 * (1 - cos) to the k-th most similar entry along the last axis, clipped to [0, 1]."""
    kth = similarity.amax(-1) if k == 1 else similarity.topk(k, dim=-1).values[..., k - 1]
    return (0.5 * (1.0 - kth)).clamp(0.0, 1.0)


def bank_distance(query: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "cosine") -> torch.Tensor:
    """(B, N, C) queries against an (M, C) bank -> (B, N), as `scoring.knn_anomaly`."""
    if metric == "euclidean":
        bank_t = bank.transpose(0, 1)
        return euclidean_bank_distance(query, bank_t, (bank_t * bank_t).sum(0), k)
    return kth_nearest_distance(F.normalize(query, dim=-1) @ F.normalize(bank, dim=-1).T, k)


def euclidean_bank_distance(query: torch.Tensor, bank_t: torch.Tensor, squared_norms: torch.Tensor, k: int):
    """(B, N, C) queries, the (C, M) transposed bank and its (M,) squared row norms -> (B, N).

    A graph with a constant bank passes both as buffers: every step reads them as they are, so the
    exported model holds the bank once (derived copies would each become a constant).
    """
    ranking = squared_norms - 2 * query @ bank_t
    nearest = bank_t[:, _kth_smallest_index(ranking, k)].permute(1, 2, 0)
    return (query - nearest).norm(dim=-1)


def self_distance(query: torch.Tensor, k: int, metric: str = "cosine", quantile: float = 0.0) -> torch.Tensor:
    """(B, N, C) queries against their own image's patches -> (B, N) (zero-shot): the k-th nearest (the patch
    itself first), or with `quantile` q > 0 the other patch at that share of the others
    (`patch_distances.zero_shot_rank`), its rank read from N at run time (tiles pooled: N varies)."""
    if quantile > 0:
        return _quantile_self_distance(query, metric, quantile)
    if metric == "euclidean":
        return _distance_to(query, _kth_smallest_index(_self_ranking(query), k))
    q = F.normalize(query, dim=-1)
    return kth_nearest_distance(q @ q.transpose(1, 2), k)


def _quantile_self_distance(query: torch.Tensor, metric: str, quantile: float) -> torch.Tensor:
    """`self_distance` at a quantile: the entry at rank round(q x (N - 1)) among the others, at least 1 and at
    most N - 1 (in float64 and rounding half to even, as Python's `round` in `zero_shot_rank`), the patch itself
    being rank 0. A TopK whose k is computed at run time (rank + 1; the graph's TopK takes k as an input), not a
    sort of whole rows: with 3,072 patches it is 3.5 times faster in ONNX Runtime (README "Exporting")."""
    others = torch._shape_as_tensor(query)[1].reshape(1).to(torch.float64) - 1.0
    rank = torch.minimum(torch.round(others * quantile).clamp_min(1.0), others.clamp_min(1.0)).to(torch.long)
    k = (rank + 1)[0]
    if metric == "euclidean":
        return _distance_to(query, _self_ranking(query).topk(k, dim=-1, largest=False).indices[..., -1])
    q = F.normalize(query, dim=-1)
    similar = (q @ q.transpose(1, 2)).topk(k, dim=-1).values[..., -1]
    return (0.5 * (1.0 - similar)).clamp(0.0, 1.0)


def _self_ranking(query: torch.Tensor) -> torch.Tensor:
    """(B, N, N) ||x_j||^2 - 2 x_i.x_j: ranks each row's patches j as ||x_i - x_j||^2 does."""
    return (query * query).sum(-1).unsqueeze(1) - 2 * query @ query.transpose(1, 2)


def _distance_to(query: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N) Euclidean distance of each query patch to its image's patch `index` (computed directly)."""
    nearest = torch.gather(query, 1, index.unsqueeze(-1).expand(-1, -1, query.shape[-1]))
    return (query - nearest).norm(dim=-1)


def _kth_smallest_index(ranking: torch.Tensor, k: int) -> torch.Tensor:
    """Index of the k-th smallest entry along the last axis.

    Euclidean distances, as `scoring.knn_anomaly`: the key is found by matrix products
    (||b||^2 - 2 q.b, which every ONNX runtime has), the distance to it is then computed directly
    (no float32 cancellation near 0).
    """
    return ranking.argmin(-1) if k == 1 else ranking.topk(k, dim=-1, largest=False).indices[..., k - 1]


def upsample(patch_maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) -> (B, size, size), bilinear as `images.map_to_image`'s first step."""
    return F.interpolate(patch_maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def masked_max(patch_maps: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Per image, the maximum over the patches marked valid (all when `valid` is None)."""
    if valid is not None:
        patch_maps = torch.where(valid > 0.5, patch_maps, torch.full_like(patch_maps, -float("inf")))
    return patch_maps.flatten(1).amax(1)


def synthetic_image(height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    """A deterministic textured RGB image (for tracing and for the post-export check)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 127 + 60 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
    noise = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def valid_mask(box: tuple[int, int, int, int], size: int, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) 0/1 mask of the patches whose centres lie on the image, as the methods' scores use."""
    from ..geometry import valid_grid_region

    rows, cols = valid_grid_region(box, size, grid)
    mask = np.zeros(grid, dtype=np.float32)
    mask[rows, cols] = 1.0
    return mask


@contextlib.contextmanager
def tracing_context(clip=None) -> Iterator[None]:
    """What the TorchScript exporter needs around a CLIP model.

    * nn.MultiheadAttention's fused inference fast path has no ONNX translation: use the
      composite path (same arithmetic).
    * The positional embeddings are resampled with antialiased bicubic interpolation, which has
      no ONNX translation either; the input sizes are fixed per graph, so the resampled
      embeddings are computed here once and enter the graph as constants.
    """
    from ..backbones import clip as clip_module

    fastpath = torch.backends.mha.get_fastpath_enabled()
    original = clip_module.interpolate_pos_embed
    cache: dict[tuple[int, int], torch.Tensor] = {}
    own = None if clip is None else clip.model.visual.positional_embedding

    def resampled(pos_embed: torch.Tensor, grid, *args, **kwargs) -> torch.Tensor:
        if pos_embed is not own:
            return original(pos_embed, grid, *args, **kwargs)
        key = (tuple(int(v) for v in grid), args, tuple(sorted(kwargs.items())))  # traced shapes are tensors
        if key not in cache:
            cache[key] = original(pos_embed, key[0], *args, **kwargs).detach().clone()
        return cache[key]

    torch.backends.mha.set_fastpath_enabled(False)
    clip_module.interpolate_pos_embed = resampled
    try:
        yield
    finally:
        clip_module.interpolate_pos_embed = original
        torch.backends.mha.set_fastpath_enabled(fastpath)
