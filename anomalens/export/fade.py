"""`fade` as one graph: the image at each segmentation size -> CLIP with the GEM path -> language
maps (against the saved category's text features, constants), vision maps (memory banks,
constants; or the image's own GEM patches zero-shot) -> combined map and image score, and the
image's similarity to every defect description.

The scoring calls the method's own `combine_maps` and the same formulas as `Fade._score`,
batched; `export_onnx` checks the result against the PyTorch method before keeping the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.fade import combine_classification, two_class_probability
from .graph import (
    GraphSpec,
    bank_distance,
    clip_method_spec,
    memory_banks,
    register_exporter,
    require,
    self_distance,
    upsample,
)


class FadeGraph(nn.Module):
    def __init__(self, method, sizes: list[int], finest: int):
        super().__init__()
        s = method.settings
        self.method = method
        self.clip = method.backbone
        self.sizes = sizes
        self.segmentation_sizes = list(dict.fromkeys(s.segmentation_sizes))
        self.classification_size = s.classification_size
        self.finest = finest
        banks = memory_banks(method)
        self.few_shot = len(banks) > 0
        text = method.text_features()
        for name in ("class_normal", "class_anomalous", "seg_normal", "seg_anomalous", "description_features"):
            self.register_buffer(name, getattr(text, name).float().clone())
        for size in self.segmentation_sizes:
            if self.few_shot:
                self.register_buffer(f"bank_{size}", banks[str(size)].float().clone())

    def forward(self, *images: torch.Tensor):
        s = self.method.settings
        by_size = dict(zip(self.sizes, images))
        last = self.clip.num_layers
        gem_from = self.method._gem_from
        out_grid = (self.finest // self.clip.patch_size,) * 2
        language_maps, vision_maps, image_embedding = [], [], None
        for size in self.segmentation_sizes:
            feats = self.clip(by_size[size], layers=(last,), gem_from=gem_from, gem_iterations=s.gem_iterations)
            gem = F.normalize(self.clip.project(feats.gem[:, 1:]), dim=-1)
            tokens = F.normalize(self.clip.project(feats.layers[last][:, 1:]), dim=-1)
            if size == self.classification_size:
                image_embedding = feats.image_embedding
            gh = gw = size // self.clip.patch_size
            language = two_class_probability(gem, self.seg_normal, self.seg_anomalous, s.temperature)
            if self.few_shot:
                vision = bank_distance(tokens, getattr(self, f"bank_{size}"), s.few_shot_k)
            else:
                vision = self_distance(gem, s.zero_shot_k)
            language_maps.append(_resize(language.reshape(-1, gh, gw), out_grid))
            vision_maps.append(_resize(vision.reshape(-1, gh, gw), out_grid))
        if image_embedding is None:
            image_embedding = self.clip(by_size[self.classification_size]).image_embedding
        language_map = torch.stack(language_maps).mean(0)
        vision_map = torch.stack(vision_maps).mean(0)
        anomaly_map = self.method.combine_maps(language_map, vision_map, self.few_shot)
        ac_language = two_class_probability(image_embedding, self.class_normal, self.class_anomalous, s.temperature)
        score = self._combine_scores(ac_language, vision_map)
        similarity = F.normalize(image_embedding, dim=-1) @ self.description_features.T
        return upsample(anomaly_map, self.finest), score, similarity

    def _combine_scores(self, language: torch.Tensor, vision_map: torch.Tensor) -> torch.Tensor:
        """`Fade.combine_scores` on a batch."""
        return combine_classification(self.method.settings, language, vision_map, self.few_shot)


def _resize(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    return F.interpolate(maps[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]


@register_exporter("fade")
def build(method, bank: str = "auto") -> GraphSpec:
    s = method.settings
    require(bank in ("auto", "constant"), "fade keeps its memory banks inside the graph (bank='constant')")
    require(s.resize in ("squash", "pad"), f"fade resize policy {s.resize!r} cannot be exported")
    seg = list(dict.fromkeys(s.segmentation_sizes))
    require(len(seg) > 0, "fade needs at least one segmentation size to export")
    sizes = seg + ([s.classification_size] if s.classification_size not in seg else [])
    finest = max(seg)
    text = method.text_features()
    inputs = {f"images_{size}": torch.zeros(2, 3, size, size) for size in sizes}
    return clip_method_spec(
        method,
        FadeGraph(method, sizes, finest),
        inputs,
        text.descriptions,
        banks=bool(memory_banks(method)),
        image_inputs=[{"name": f"images_{size}", "size": size} for size in sizes],
        map_size=finest,
    )
