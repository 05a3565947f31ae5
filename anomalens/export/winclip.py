"""`winclip` as one graph: normalised image -> CLIP on the whole image and on every window of
patches (each window encoded on its own) -> language maps against the saved category's text
prototypes (constants), and few-shot the window/patch memory banks (constants) -> map, image
score, and the image's similarity to every anomalous prompt.

Window gathering uses the method's own window indices; the aggregation its own
`harmonic_aggregation` and `anomaly_probability`, batched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.winclip import WinClipFeatures, harmonic_aggregation
from .graph import (
    GraphSpec,
    bank_distance,
    clip_method_spec,
    masked_max,
    memory_banks,
    register_exporter,
    require,
    upsample,
)


class WinClipGraph(nn.Module):
    def __init__(self, method, with_valid: bool):
        super().__init__()
        self.method = method
        self.backbone = method.backbone
        self.few_shot = method.few_shot
        self.with_valid = with_valid
        self.register_buffer("prototypes", method.prototypes.float().clone())
        self.register_buffer("anomalous_text", method.anomalous_text.float().clone())
        for j, (windows, cover) in enumerate(zip(method.windows, method.covers)):
            # Window sequences: the class token (index 0) and the window's patches (shifted by 1).
            index = torch.cat([torch.zeros(windows.shape[0], 1, dtype=torch.long), windows + 1], dim=1)
            self.register_buffer(f"window_index_{j}", index)
            self.register_buffer(f"cover_{j}", cover.clone())
        if self.few_shot:
            banks = memory_banks(method)
            self.register_buffer("bank_patches", banks["patches"].float().clone())
            for scale in method.settings.window_scales:
                self.register_buffer(f"bank_window{scale}", banks[f"window{scale}"].float().clone())

    def _windows(self, tokens: torch.Tensor, j: int) -> torch.Tensor:
        index = getattr(self, f"window_index_{j}")
        sequences = tokens[:, index]  # (B, n, 1 + s*s, width)
        b, n = sequences.shape[0], index.shape[0]
        transformer = self.backbone.model.visual.transformer
        pooled = self.backbone.pool(transformer(sequences.flatten(0, 1)))
        return pooled.reshape(b, n, -1)

    def forward(self, images: torch.Tensor, *extra: torch.Tensor):
        s = self.method.settings
        grid = self.method.grid
        tokens, _ = self.backbone.embed(images)
        final = self.backbone.model.visual.transformer(tokens)
        patches = final[:, 1:]
        patches = self.backbone.project(patches) if s.project_patches else self.backbone.model.visual.ln_post(patches)
        windows = [self._windows(tokens, j) for j in range(len(self.method.windows))]
        feats = WinClipFeatures(grid, self.backbone.pool(final), windows, patches)
        scores, maps = self._zero_shot(feats)
        maps = maps.reshape(-1, *grid)
        if self.few_shot:
            vision = self._few_shot(feats).reshape(-1, *grid)
            maps = (maps + vision) / 2
            scores = (scores + masked_max(vision, extra[0] if self.with_valid else None)) / 2
        similarity = F.normalize(feats.image.float(), dim=-1) @ self.anomalous_text.T
        return upsample(maps, s.image_size), scores, similarity

    def _zero_shot(self, feats: WinClipFeatures):
        """`WinClip.zero_shot_maps` with the constants of this graph."""
        from ..methods.winclip import anomaly_probability

        t = self.method.settings.temperature
        image = anomaly_probability(feats.image, self.prototypes, t)
        num_patches = self.method.grid[0] * self.method.grid[1]
        scales = [image[:, None].expand(-1, num_patches)]
        for j, emb in enumerate(feats.windows):
            scales.append(
                harmonic_aggregation(anomaly_probability(emb, self.prototypes, t), getattr(self, f"cover_{j}"))
            )
        return image, len(scales) / torch.stack(scales).reciprocal().sum(0)

    def _few_shot(self, feats: WinClipFeatures) -> torch.Tensor:
        """`WinClip.few_shot_maps` with the banks as constants."""
        k = self.method.settings.few_shot_k
        maps = [bank_distance(feats.patches, self.bank_patches, k)]
        for j, (scale, emb) in enumerate(zip(self.method.settings.window_scales, feats.windows)):
            scores = bank_distance(emb, getattr(self, f"bank_window{scale}"), k)
            maps.append(harmonic_aggregation(scores, getattr(self, f"cover_{j}")))
        return torch.stack(maps).mean(0)


@register_exporter("winclip")
def build(method, bank: str = "auto") -> GraphSpec:
    s = method.settings
    require(bank in ("auto", "constant"), "winclip keeps its memory banks inside the graph (bank='constant')")
    require(s.resize in ("squash", "pad"), f"winclip resize policy {s.resize!r} cannot be exported")
    require(
        not memory_banks(method) or method.few_shot,
        "winclip memory bank is incomplete (patches and every window scale are needed)",
    )
    with_valid = method.few_shot and s.resize == "pad"
    size = s.image_size
    inputs = {"images": torch.zeros(2, 3, size, size)}
    valid = None
    if with_valid:
        inputs["valid_patches"] = torch.ones(2, *method.grid)
        valid = {"name": "valid_patches", "grid": list(method.grid), "size": size}
    return clip_method_spec(
        method,
        WinClipGraph(method, with_valid),
        inputs,
        method.anomalous_prompts,
        banks=method.few_shot,
        image_inputs=[{"name": "images", "size": size}],
        map_size=size,
        valid_patches=valid,
    )
