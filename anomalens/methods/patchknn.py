"""`patchknn`: FADE's vision guidance alone, on any backbone with patch features.

Few-shot: patches of the k reference images form the memory bank, each query patch scores its
distance to the nearest one, the image score is the map's maximum. Zero-shot: each query patch
against the query's own patches, second nearest neighbour (the first is itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbones import create_patch_backbone
from ..geometry import RESIZE_POLICIES, map_to_image, to_model_input
from ..images import LoadedImage
from ..scoring import FEW_SHOT_K, ZERO_SHOT_K, MemoryBank, knn_anomaly
from ..settings import MethodSettings, setting
from .base import Method, MethodOutput, register_method


@dataclass
class PatchKnnSettings(MethodSettings):
    backbone: str = setting(
        "efficientnet-lite0", "efficientnet-lite0 (embedded) or an open_clip architecture (then pass weights)"
    )
    weights: str | None = setting(None, "CLIP weights (tag or file) when backbone is a CLIP architecture")
    image_size: int = setting(256, "model input side in pixels (256 beat 320 on magnetic_tile: see README)", minimum=32)
    resize: str = setting("squash", "squash (papers) or pad (keep the aspect ratio)", choices=RESIZE_POLICIES)
    blocks: tuple[int, ...] = setting(
        (4, 10), "EfficientNet-Lite0 blocks read (0-15): 4 ends stride 8, 10 stride 16", minimum=0, maximum=15
    )
    neighbourhood: int = setting(3, "local aggregation window, in patches", minimum=1)
    clip_layers: tuple[int, ...] = setting((6, 9), "CLIP blocks whose tokens are used (1-based)", minimum=1)
    few_shot_k: int = setting(FEW_SHOT_K, "nearest reference patch used (few-shot)", minimum=1)
    zero_shot_k: int = setting(
        ZERO_SHOT_K, "k-th nearest patch of the image itself (zero-shot; the 1st is the patch)", minimum=2
    )
    batch_size: int = setting(8, "images per forward pass", minimum=1)


def valid_grid_region(
    box: tuple[int, int, int, int], size: int, grid: tuple[int, int]
) -> tuple[slice, slice]:
    """Grid cells whose centres lie inside the image's box on the model input (for "pad")."""
    top, left, bh, bw = box
    gh, gw = grid
    ch, cw = size / gh, size / gw
    rows = [i for i in range(gh) if top <= (i + 0.5) * ch < top + bh] or [
        min(gh - 1, int((top + bh / 2) / ch))
    ]
    cols = [j for j in range(gw) if left <= (j + 0.5) * cw < left + bw] or [
        min(gw - 1, int((left + bw / 2) / cw))
    ]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


@register_method
class PatchKnn(Method):
    name = "patchknn"
    Settings = PatchKnnSettings

    def __init__(self, settings: PatchKnnSettings, backbone: torch.nn.Module | None = None):
        super().__init__(settings)
        self.backbone = backbone if backbone is not None else create_patch_backbone(
            settings.backbone,
            image_size=settings.image_size,
            weights=settings.weights,
            blocks=settings.blocks,
            neighbourhood=settings.neighbourhood,
            clip_layers=settings.clip_layers,
        )
        self.bank_ = MemoryBank()

    def _features(self, images: list[LoadedImage]) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
        s = self.settings
        inputs, boxes = [], []
        for img in images:
            x, box = to_model_input(img.rgb, s.image_size, self.backbone.mean, self.backbone.std, s.resize)
            inputs.append(x)
            boxes.append(box)
        feats = [
            self.backbone(torch.stack(inputs[i : i + s.batch_size]).to(self.device))
            for i in range(0, len(inputs), s.batch_size)
        ]
        return torch.cat(feats), boxes

    def _fit(self, references: list[LoadedImage]) -> None:
        self.bank_ = MemoryBank()
        self.num_references = len(references)
        if references:
            self.fit_features(self._features(references)[0])

    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        feats, boxes = self._features(images)
        bank = self.bank_.banks.get("patches")
        return [self._score(img, f, box, bank) for img, f, box in zip(images, feats, boxes)]

    def _score(self, img: LoadedImage, feats: torch.Tensor, box, bank: torch.Tensor | None) -> MethodOutput:
        s = self.settings
        h, w, c = feats.shape
        flat = feats.reshape(-1, c)
        if bank is not None:
            patch_map = knn_anomaly(flat, bank, k=s.few_shot_k)
        else:
            patch_map = knn_anomaly(flat, flat, k=s.zero_shot_k)
        patch_map = patch_map.view(h, w)
        rows, cols = valid_grid_region(box, s.image_size, (h, w))
        score = float(patch_map[rows, cols].max())
        return MethodOutput(score, map_to_image(patch_map, box, s.image_size, img.size_hw))

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Features once; each held-out reference against the bank of all the other references."""
        feats, boxes = self._features(references)
        self.fit_features(feats)
        per_image = feats.shape[1] * feats.shape[2]
        flat = self.bank_.banks["patches"]
        outputs = []
        for i in held_out:
            others = torch.cat([flat[: i * per_image], flat[(i + 1) * per_image :]])
            outputs.append(self._score(references[i], feats[i], boxes[i], others))
        return outputs

    def fit_features(self, feats: torch.Tensor) -> None:
        self.bank_ = MemoryBank()
        self.num_references = feats.shape[0]
        self.bank_.add("patches", feats)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.bank_.state_dict()

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.bank_.load_state_dict(state)
        if "patches" in self.bank_:
            self.num_references = max(self.num_references, 1)
