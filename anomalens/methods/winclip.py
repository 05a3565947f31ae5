"""`winclip`: WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023).

Zero-shot (WinCLIP): CLIP embeddings of the whole image and of sliding windows of patches are
compared with two text prototypes, the means of the compositional prompt ensemble's normal and
anomalous sentences; a window's anomaly is softmax(cos / temperature)[anomalous]. Window scores
become patch scores by the harmonic mean over the windows covering a patch, and the scales
(small and mid windows, the whole image) are combined by a harmonic mean too.

A window embedding comes from running the image encoder on the class token and the window's
patch tokens only (each with its positional embedding), so the window sees nothing else.

Few-shot (WinCLIP+): the reference images' window embeddings (per scale) and final-layer patch
tokens form memory banks; each query window/patch scores 0.5 * (1 - cos) to its nearest bank
entry, windows are aggregated to patches as above, and the patch, small and mid maps are
averaged. The map is the mean of the language and vision maps, the image score the mean of the
zero-shot image score and the vision map's maximum.

The combinations follow the paper and anomalib's `WinClipModel`; `benchmarks/winclip_parity.py`
checks them. Deliberate differences from anomalib: the paper's 22 templates (anomalib lists 21,
one twice); prototypes average unit text embeddings (anomalib averages raw ones); temperature
0.01, CLIP's logit scale (anomalib 0.07); each window is encoded on its own (anomalib 2.7 with
open_clip 3.3 passes window sequences transposed to a batch-first transformer, so windows
attend to one another).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones.clip import ClipBackbone, create_method_clip
from ..geometry import RESIZE_POLICIES, map_to_image, to_model_input, valid_grid_region
from ..images import LoadedImage
from ..scoring import FEW_SHOT_K, MemoryBank, knn_anomaly
from ..settings import MethodSettings, setting
from ..text.features import DEFAULT_CACHE, TextFeatureCache
from ..text.prompts import clean_class_name, defect_prompts, winclip_prompts
from .base import Method, MethodOutput, register_method

NORMAL, ANOMALOUS = 0, 1  # rows of the text prototypes


@dataclass
class WinClipSettings(MethodSettings):
    backbone: str = setting("ViT-B-16-plus-240", "open_clip architecture (test-tiny: a random tiny model)")
    weights: str | None = setting("default", "open_clip tag or file; random (or a tiny config) = untrained")
    category: str = setting("object", 'object name in the prompts, cleaned ("metal_nut" -> "metal nut")')
    image_size: int = setting(240, "model input side in pixels: 15 x 15 patches of 16 px", minimum=16)
    window_scales: tuple[int, ...] = setting(
        (2, 3), "small / mid window sides in patches; the whole image is the largest", minimum=1
    )
    window_stride: int = setting(1, "window stride in patches", minimum=1)
    temperature: float = setting(0.01, "softmax temperature on cosine similarities (logits x 100)", minimum=1e-6)
    project_patches: bool = setting(False, "patch memory in the joint space (true) or at ln_post width (anomalib)")
    few_shot_k: int = setting(FEW_SHOT_K, "nearest reference patch used by the vision association", minimum=1)
    resize: str = setting("squash", "squash (paper) or pad (keep the aspect ratio)", choices=RESIZE_POLICIES)
    batch_size: int = setting(8, "images per forward pass", minimum=1)
    window_batch: int = setting(1024, "window sequences per transformer call", minimum=1)
    top_descriptions: int = setting(5, "anomalous prompts most similar to the image, returned per image", minimum=0)
    defects: tuple[str, ...] | None = setting(
        None,
        "defect phrases for `category` (anomalens describe / --describe), added to the anomalous prompts "
        "as <template> <category> with <defect>; not in the paper",
    )

    renamed: ClassVar[dict[str, str]] = {"num_descriptions": "top_descriptions"}  # in older saved models


# ---- windows -----------------------------------------------------------------------------------


def window_indices(grid: tuple[int, int], scale: int, stride: int = 1) -> torch.Tensor:
    """Flat patch indices of every scale x scale window: (n_windows, scale * scale).

    Windows are listed row by row of their top-left corner, patches row-major inside a window.
    """
    gh, gw = grid
    if not 1 <= scale <= min(gh, gw):
        raise ValueError(f"window of {scale} patches does not fit the {gh}x{gw} grid")
    index = torch.arange(gh * gw).view(1, 1, gh, gw).float()
    return F.unfold(index, kernel_size=scale, stride=stride)[0].T.long()


def coverage(windows: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(n_windows, num_patches) 0/1 matrix: which patches each window covers."""
    cover = torch.zeros(windows.shape[0], num_patches)
    cover.scatter_(1, windows, 1.0)
    return cover


def harmonic_aggregation(window_scores: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it.

    window_scores: (B, n_windows); cover: (n_windows, P). A zero score makes the mean zero;
    a patch no window covers gets zero.
    """
    counts = cover.sum(0)
    # Sum 1/score over covering windows with a mask, not a matrix product: inf * 0 would be NaN.
    inverse = torch.where(cover.bool(), window_scores.reciprocal()[..., None], 0.0).sum(-2)
    return (counts / inverse).nan_to_num(nan=0.0)


# ---- scores ------------------------------------------------------------------------------------


def anomaly_probability(embeddings: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos(embedding, [normal, anomalous]) / temperature)[anomalous] for (..., D) inputs."""
    cos = F.normalize(embeddings.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T
    return (cos / temperature).softmax(dim=-1)[..., ANOMALOUS]


def text_prototypes(normal: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """(2, D) unit prototypes: the mean of each ensemble's unit embeddings, renormalised."""
    return F.normalize(torch.stack([normal.mean(0), anomalous.mean(0)]), dim=-1)


@dataclass
class WinClipFeatures:
    """What the image encoder gives for a batch; embeddings are not normalised."""

    grid: tuple[int, int]
    image: torch.Tensor  # (B, D) class embedding of the whole image
    windows: list[torch.Tensor]  # per scale (B, n_windows, D)
    patches: torch.Tensor  # (B, P, C) final-layer patch tokens after ln_post (and proj)


@register_method
class WinClip(Method):
    name = "winclip"
    uses_text = True
    Settings = WinClipSettings

    def __init__(
        self,
        settings: WinClipSettings,
        backbone: ClipBackbone | None = None,
        text_cache: TextFeatureCache | None = None,
    ):
        super().__init__(settings)
        self.defects_category = settings.category  # the `defects` setting describes this category only
        s = settings
        if backbone is None:
            backbone = create_method_clip(s.backbone, s.weights, image_size=s.image_size)
        self.backbone: ClipBackbone = backbone
        if s.image_size % self.backbone.patch_size:
            raise ValueError(
                f"image_size {s.image_size} is not a multiple of the patch size {self.backbone.patch_size}"
            )
        side = s.image_size // self.backbone.patch_size
        self.grid = (side, side)
        self.windows = [window_indices(self.grid, scale, s.window_stride) for scale in s.window_scales]
        self.covers = [coverage(w, side * side) for w in self.windows]
        self.text_cache = text_cache or DEFAULT_CACHE
        self.bank_ = MemoryBank()
        self.set_category(s.category)

    # ---- text --------------------------------------------------------------------------------
    def set_category(self, name: str) -> None:
        """Use the compositional ensemble for this object (dataset folder names are cleaned)."""
        obj = clean_class_name(name) or name
        normal, anomalous = winclip_prompts(obj)
        if self.settings.defects and name == self.defects_category:  # the phrases describe that category only
            anomalous = [*anomalous, *defect_prompts(obj, self.settings.defects)]
        self.set_prompts(normal, anomalous)
        self.settings.category = name

    def set_prompts(self, normal: list[str], anomalous: list[str]) -> None:
        """Use these sentences instead of the ensemble (e.g. another implementation's list)."""
        self.normal_prompts, self.anomalous_prompts = list(normal), list(anomalous)
        feats = self.text_cache.encode(self.backbone, [*self.normal_prompts, *self.anomalous_prompts])
        self.normal_text = feats[: len(self.normal_prompts)]
        self.anomalous_text = feats[len(self.normal_prompts) :]
        self.prototypes = text_prototypes(self.normal_text, self.anomalous_text)

    # ---- vision ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_windows(self, tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Embed each window on its own: (B, n_windows, D).

        tokens: (B, 1 + P, width) from `embed` (positional embeddings added, ln_pre applied,
        both per token, so gathering afterwards is the same as gathering before). Every
        window's sequence is the class token and its patches, run through all blocks.
        """
        b, n = tokens.shape[0], windows.shape[0]
        index = torch.cat([torch.zeros(n, 1, dtype=torch.long), windows + 1], dim=1)
        sequences = tokens[:, index].flatten(0, 1)  # (B * n, 1 + s*s, width)
        transformer = self.backbone.model.visual.transformer
        step = self.settings.window_batch
        pooled = [self.backbone.pool(transformer(sequences[i : i + step])) for i in range(0, len(sequences), step)]
        return torch.cat(pooled).view(b, n, -1)

    @torch.no_grad()
    def encode(self, inputs: torch.Tensor) -> WinClipFeatures:
        """Image, window and patch embeddings of normalised model inputs (B, 3, S, S)."""
        tokens, grid = self.backbone.embed(inputs)
        final = self.backbone.model.visual.transformer(tokens)
        patches = final[:, 1:]
        patches = (
            self.backbone.project(patches)
            if self.settings.project_patches
            else self.backbone.model.visual.ln_post(patches)
        )
        windows = [self.encode_windows(tokens, w) for w in self.windows]
        return WinClipFeatures(grid, self.backbone.pool(final), windows, patches)

    def _inputs(self, images: list[LoadedImage]) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
        s = self.settings
        pairs = [
            to_model_input(img.rgb, s.image_size, self.backbone.mean, self.backbone.std, s.resize) for img in images
        ]
        return torch.stack([x for x, _ in pairs]).to(self.device), [box for _, box in pairs]

    def _encode_batches(self, inputs: torch.Tensor) -> WinClipFeatures:
        step = self.settings.batch_size
        parts = [self.encode(inputs[i : i + step]) for i in range(0, len(inputs), step)]
        return WinClipFeatures(
            grid=parts[0].grid,
            image=torch.cat([p.image for p in parts]),
            windows=[torch.cat([p.windows[j] for p in parts]) for j in range(len(self.windows))],
            patches=torch.cat([p.patches for p in parts]),
        )

    # ---- fit / score -------------------------------------------------------------------------
    def _fit(self, references: list[LoadedImage]) -> None:
        self.fit_inputs(self._inputs(references)[0] if references else None)

    def fit_inputs(self, inputs: torch.Tensor | None) -> None:
        """Fill the few-shot memory from normalised reference inputs (None: zero-shot)."""
        self.bank_ = MemoryBank()
        self.fitted_ = True
        self.num_references = 0 if inputs is None else len(inputs)
        if inputs is None or not len(inputs):
            return
        feats = self._encode_batches(inputs)
        self.bank_.add("patches", feats.patches)
        for scale, emb in zip(self.settings.window_scales, feats.windows):
            self.bank_.add(f"window{scale}", emb)

    @property
    def few_shot(self) -> bool:
        keys = ["patches", *(f"window{scale}" for scale in self.settings.window_scales)]
        return all(key in self.bank_ for key in keys)

    def zero_shot_maps(self, feats: WinClipFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Language-guided image scores (B,) and patch maps (B, P)."""
        t = self.settings.temperature
        image = anomaly_probability(feats.image, self.prototypes, t)
        scales = [image[:, None].expand(-1, self.grid[0] * self.grid[1])]
        for emb, cover in zip(feats.windows, self.covers):
            scales.append(harmonic_aggregation(anomaly_probability(emb, self.prototypes, t), cover))
        # Harmonic mean across scales too: a patch is anomalous only if every scale agrees.
        return image, len(scales) / torch.stack(scales).reciprocal().sum(0)

    def few_shot_maps(self, feats: WinClipFeatures) -> torch.Tensor:
        """Vision-guided patch maps (B, P): mean of the patch, small and mid window maps."""
        k = self.settings.few_shot_k
        b = feats.patches.shape[0]
        maps = [knn_anomaly(feats.patches.flatten(0, 1), self.bank_.banks["patches"], k=k).view(b, -1)]
        for scale, emb, cover in zip(self.settings.window_scales, feats.windows, self.covers):
            scores = knn_anomaly(emb.flatten(0, 1), self.bank_.banks[f"window{scale}"], k=k).view(b, -1)
            maps.append(harmonic_aggregation(scores, cover))
        return torch.stack(maps).mean(0)

    @torch.no_grad()
    def score_inputs(
        self, inputs: torch.Tensor, boxes: list[tuple[int, int, int, int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, WinClipFeatures]:
        """Image scores (B,), patch maps (B, gh, gw) and the features of normalised inputs."""
        feats = self._encode_batches(inputs)
        scores, maps = self.zero_shot_maps(feats)
        maps = maps.view(-1, *self.grid)
        if self.few_shot:
            vision = self.few_shot_maps(feats).view(-1, *self.grid)
            maps = (maps + vision) / 2
            boxes = boxes or [(0, 0, self.settings.image_size, self.settings.image_size)] * len(inputs)
            peaks = []
            for v, box in zip(vision, boxes):
                rows, cols = valid_grid_region(box, self.settings.image_size, self.grid)
                peaks.append(v[rows, cols].max())
            scores = (scores + torch.stack(peaks)) / 2
        return scores, maps, feats

    def describe(self, image_embedding: torch.Tensor) -> list[tuple[str, float]]:
        """The anomalous prompts closest to an image embedding, with their cosine similarity."""
        cos = self.anomalous_text @ F.normalize(image_embedding.float(), dim=-1)
        top = cos.topk(min(self.settings.top_descriptions, len(cos)))
        return [(self.anomalous_prompts[i], float(v)) for v, i in zip(top.values, top.indices)]

    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        if not images:
            return []
        inputs, boxes = self._inputs(images)
        scores, maps, feats = self.score_inputs(inputs, boxes)
        size = self.settings.image_size
        return [
            MethodOutput(float(score), map_to_image(m, box, size, img.size_hw), self.describe(emb))
            for img, score, m, box, emb in zip(images, scores, maps, boxes, feats.image)
        ]

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.bank_.state_dict()

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.bank_.load_state_dict(state)
        self.num_references = max(self.num_references, 1) if self.few_shot else 0
