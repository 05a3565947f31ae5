"""`fade`: FADE (Li, Ivanova, Bruveris, BMVC 2024), training-free zero-/few-shot detection.

Pieces, each a named setting with the authors' value:

* Language-guided classification (AC): CLIP's image embedding against the mean text embeddings
  of WinCLIP's compositional ensemble for the object name; softmax of cosine similarities over
  temperature 0.01 gives the anomaly probability.
* Language-guided segmentation (AS): GEM patch embeddings (projected to the joint space) at
  240, 448 and 896 px, each patch scored like the image against the segmentation ensemble
  (WinCLIP's ensemble for "object" plus an LLM-style sentence ensemble); maps averaged.
* Vision guidance: zero-shot, each GEM patch against the query's own patches (second nearest
  neighbour, the first being itself); few-shot, each CLIP patch token against a memory bank of
  the reference images' tokens at the same scale (nearest neighbour). Distances are
  0.5 * (1 - cos). Few-shot AC uses the maximum of the vision map.
* Combination (defaults from the authors' released configuration):
  AC zero-shot = language; AC few-shot = (language + max(3.5 * vision)) / 2;
  AS zero-shot = 0.5 * language + 0.5 * (80 * vision);
  AS few-shot = 0.15 * language + 0.85 * (3.5 * vision); everything clipped to [0, 1].
  The paper presents the combination as a weighted sum of language and vision maps without
  fixing these numbers in the text; the scale factors (80, 3.5) bring the small kNN
  distances to the range of the language probabilities. We use the released values.

Text as the released code forms it (the defaults; the published numbers come from it), each
a setting so the earlier anomalens behaviour stays reachable:

* ``prompt_template="a photo of a {}."``: the released text wrapper puts every prompt into
  this sentence before encoding; the WinCLIP prompts are then built without their final
  period, as the released prompt file holds them. ``"none"`` (or ``"{}"``) encodes the prompts
  as they are.
* ``renormalize_class_embedding=False``: a class embedding is the mean of its prompts' unit
  embeddings, not re-normalised, so the effective temperature is 0.01 / ||mean||.
* ``class_name="released"``: underscores become spaces, nothing else ("pcb1" stays "pcb1");
  ``"clean"`` also drops variant digits and splits run-together words.
* ``keep_duplicate_prompts=True``: prompt lists are concatenated as they are.
* ``quantize_maps=False``: the released post-processing stores maps as uint8 before its
  metrics; ``True`` (``anomalens benchmark --quantize-maps``) does the same for comparison
  with the paper: the combined patch-grid map floored to k/255, and the map at image size
  rounded to k/255 (as an 8-bit resize rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.clip import ClipBackbone, create_method_clip
from ..geometry import RESIZE_POLICIES, input_box, map_to_image, to_model_input
from ..images import LoadedImage
from ..scoring import FEW_SHOT_K, ZERO_SHOT_K, MemoryBank, knn_anomaly
from ..settings import MethodSettings, setting
from ..text.features import DEFAULT_CACHE, TextFeatureCache
from ..text.prompts import (
    clean_class_name,
    dedupe,
    defect_prompts,
    fade_segmentation_prompts,
    load_ensemble,
    released_class_name,
    winclip_prompts,
    wrap_prompts,
)
from .base import Method, MethodOutput, register_method

MODES = ("language", "vision", "both")
CLASS_NAME_STYLES = ("released", "clean")
RELEASED_PROMPT_TEMPLATE = "a photo of a {}."


@dataclass
class FadeSettings(MethodSettings):
    backbone: str = setting("ViT-B-16-plus-240", "open_clip architecture (test-tiny: a random tiny model)")
    weights: str | None = setting(
        "default", "open_clip tag or local file; default = laion400m_e31; random = untrained"
    )
    category: str = setting("object", "object name in the classification prompts")
    prompts: str | tuple[str, ...] | None = setting(
        None, "sentence-ensemble JSON file(s) replacing the packaged one: ours or FADE's released format"
    )
    prompt_template: str = setting(
        RELEASED_PROMPT_TEMPLATE, "text wrapper around every prompt (released code); none = prompts as they are"
    )
    renormalize_class_embedding: bool = setting(
        False, "re-normalise the mean of a class's unit prompt embeddings (released: no)"
    )
    class_name: str = setting(
        "released", "released: underscores to spaces only; clean: also drop variant digits", choices=CLASS_NAME_STYLES
    )
    keep_duplicate_prompts: bool = setting(True, "keep repeated prompts (released: lists concatenated as they are)")
    quantize_maps: bool = setting(
        False, "maps in 1/255 steps as the released uint8 post-processing (benchmark --quantize-maps)"
    )
    classification_size: int = setting(240, "input side for the image embedding (AC), px", minimum=16)
    segmentation_sizes: tuple[int, ...] = setting(
        (240, 448, 896), "input sides for the patch maps (AS), px; the maps are averaged", minimum=16
    )
    temperature: float = setting(0.01, "softmax temperature on cosine similarities (logits x 100)", minimum=1e-6)
    gem_blocks: int = setting(6, "GEM self-self attention over the last N blocks (gem-torch depth=7)", minimum=1)
    gem_iterations: int = setting(1, "self-self refinement iterations", minimum=1)
    classification_mode: str = setting(
        "both", "language | vision | both (zero-shot AC is language-only)", choices=MODES
    )
    segmentation_mode: str = setting("both", "language | vision | both", choices=MODES)
    zero_shot_k: int = setting(
        ZERO_SHOT_K, "query's own patches: k-th nearest (the 1st is the patch itself)", minimum=2
    )
    few_shot_k: int = setting(FEW_SHOT_K, "nearest reference patch used (few-shot)", minimum=1)
    ac_few_shot_language_weight: float = setting(
        0.5, "AC few-shot = w * language + (1 - w) * max(scale * vision)", minimum=0.0, maximum=1.0
    )
    ac_few_shot_vision_scale: float = setting(3.5, "vision scale of AC few-shot", minimum=0.0)
    as_zero_shot_language_weight: float = setting(
        0.5, "AS zero-shot = w * language + (1 - w) * (scale * vision)", minimum=0.0, maximum=1.0
    )
    as_zero_shot_vision_scale: float = setting(80.0, "vision scale of AS zero-shot", minimum=0.0)
    as_few_shot_language_weight: float = setting(
        0.15, "AS few-shot = w * language + (1 - w) * (scale * vision)", minimum=0.0, maximum=1.0
    )
    as_few_shot_vision_scale: float = setting(3.5, "vision scale of AS few-shot", minimum=0.0)
    top_descriptions: int = setting(5, "anomalous prompts most similar to the image, returned per image", minimum=0)
    defects: tuple[str, ...] | None = setting(
        None,
        "defect phrases for `category` (anomalens describe / --describe), added to the classification's "
        "anomalous prompts as <template> <category> with <defect>; not in the paper",
    )
    resize: str = setting("squash", "squash (paper) or pad (keep the aspect ratio)", choices=RESIZE_POLICIES)
    batch_size: int = setting(4, "images per forward pass at the smallest scale", minimum=1)


def two_class_probability(features: torch.Tensor, normal: torch.Tensor, anomalous: torch.Tensor, temperature: float):
    """Anomaly probability: softmax over (cos to normal, cos to anomalous) / temperature, second entry."""
    features = F.normalize(features, dim=-1)
    logits = torch.stack([features @ normal, features @ anomalous], dim=-1) / temperature
    return logits.softmax(dim=-1)[..., 1]


def class_embedding(text_features: torch.Tensor, renormalize: bool = False) -> torch.Tensor:
    """A class's text embedding: mean of its prompts' unit embeddings (re-normalised if asked).

    Without re-normalisation (the released code) the mean is shorter than 1, which softens the
    softmax: the effective temperature is temperature / ||mean||.
    """
    mean = text_features.mean(dim=0)
    return F.normalize(mean, dim=-1) if renormalize else mean


def class_words(category: str, style: str) -> str:
    """The object name written into the classification prompts ("object" if empty)."""
    if style not in CLASS_NAME_STYLES:
        raise ValueError(f"class_name must be one of {CLASS_NAME_STYLES}, got {style!r}")
    name = released_class_name(category) if style == "released" else clean_class_name(category)
    return name.strip() or "object"


def quantize_unit(values, floor: bool):
    """Values in [0, 1] to multiples of 1/255: floor (a uint8 cast) or round (an 8-bit resize)."""
    if isinstance(values, torch.Tensor):
        scaled = values * 255.0
        return (scaled.floor() if floor else scaled.round()) / 255.0
    scaled = np.asarray(values, dtype=np.float32) * 255.0
    return ((np.floor(scaled) if floor else np.round(scaled)) / 255.0).astype(np.float32)


@dataclass
class _TextFeatures:
    class_normal: torch.Tensor
    class_anomalous: torch.Tensor
    seg_normal: torch.Tensor
    seg_anomalous: torch.Tensor
    descriptions: list[str]
    description_features: torch.Tensor


@register_method
class Fade(Method):
    name = "fade"
    uses_text = True
    Settings = FadeSettings

    def __init__(
        self, settings: FadeSettings, backbone: ClipBackbone | None = None, text_cache: TextFeatureCache = DEFAULT_CACHE
    ):
        super().__init__(settings)
        self.defects_category = settings.category  # the `defects` setting describes this category only
        self.backbone = backbone if backbone is not None else create_method_clip(settings.backbone, settings.weights)
        for size in (settings.classification_size, *settings.segmentation_sizes):
            if size % self.backbone.patch_size:
                raise ValueError(f"input size {size} is not a multiple of the patch size {self.backbone.patch_size}")
        self._template = "{}" if settings.prompt_template.strip().lower() == "none" else settings.prompt_template
        wrap_prompts([], self._template)  # checks the template once, here
        self.ensemble = load_ensemble(settings.prompts)
        self.text_cache = text_cache
        self.bank_ = MemoryBank()
        self._text: _TextFeatures | None = None
        self._gem_from = max(1, self.backbone.num_layers - settings.gem_blocks + 1)

    def set_category(self, name: str) -> None:
        if name != self.settings.category:
            self.settings.category = name
            self._text = None

    # ---- text ----------------------------------------------------------------------------
    def text_features(self) -> _TextFeatures:
        if self._text is None:
            s = self.settings
            obj = class_words(s.category, s.class_name)
            wrapped = self._template != "{}"  # the wrapper adds the period the templates then lack
            cls_normal, cls_anomalous = winclip_prompts(obj, period=not wrapped)
            if s.defects and s.category == self.defects_category:  # our extension (--describe)
                cls_anomalous = [*cls_anomalous, *defect_prompts(obj, s.defects, period=not wrapped)]
            if not s.keep_duplicate_prompts:
                cls_normal, cls_anomalous = dedupe(cls_normal), dedupe(cls_anomalous)
            seg_normal, seg_anomalous = fade_segmentation_prompts(
                self.ensemble, period=not wrapped, keep_duplicates=s.keep_duplicate_prompts
            )
            # Descriptions are for people: readable, unwrapped, once each.
            descriptions = dedupe([*cls_anomalous, *self.ensemble.for_class(obj).anomalous])
            enc = lambda texts: self.text_cache.encode(self.backbone, wrap_prompts(texts, self._template))  # noqa: E731
            mean = lambda texts: class_embedding(enc(texts), s.renormalize_class_embedding)  # noqa: E731
            self._text = _TextFeatures(
                class_normal=mean(cls_normal),
                class_anomalous=mean(cls_anomalous),
                seg_normal=mean(seg_normal),
                seg_anomalous=mean(seg_anomalous),
                descriptions=descriptions,
                description_features=enc(descriptions),
            )
        return self._text

    # ---- vision --------------------------------------------------------------------------
    def _inputs(self, images: list[LoadedImage], size: int) -> torch.Tensor:
        bb, resize = self.backbone, self.settings.resize
        inputs = [to_model_input(img.rgb, size, bb.mean, bb.std, resize)[0] for img in images]
        return torch.stack(inputs).to(self.device)

    def encode(self, images: list[LoadedImage]) -> dict:
        """Per scale: GEM and CLIP patch embeddings (projected, unit norm); plus the image embedding."""
        s = self.settings
        out: dict = {"scales": {}}
        sizes = list(dict.fromkeys(s.segmentation_sizes))
        for size in sizes:
            # Fewer images per pass at larger scales: attention memory grows with tokens squared.
            chunk = max(1, int(s.batch_size * (min(sizes) / size) ** 2))
            gem, clip_tokens, cls = [], [], []
            for i in range(0, len(images), chunk):
                x = self._inputs(images[i : i + chunk], size)
                feats = self.backbone(
                    x, layers=(self.backbone.num_layers,), gem_from=self._gem_from, gem_iterations=s.gem_iterations
                )
                gem.append(F.normalize(self.backbone.project(feats.gem[:, 1:]), dim=-1))
                last = feats.layers[self.backbone.num_layers][:, 1:]
                clip_tokens.append(F.normalize(self.backbone.project(last), dim=-1))
                cls.append(feats.image_embedding)
            out["scales"][size] = {
                "gem": torch.cat(gem),
                "clip": torch.cat(clip_tokens),
                "grid": (size // self.backbone.patch_size,) * 2,
            }
            if size == s.classification_size:
                out["image_embedding"] = torch.cat(cls)
        if "image_embedding" not in out:
            embeds = [
                self.backbone.encode_image(self._inputs(images[i : i + s.batch_size], s.classification_size))
                for i in range(0, len(images), s.batch_size)
            ]
            out["image_embedding"] = torch.cat(embeds)
        return out

    def _fit(self, references: list[LoadedImage]) -> None:
        self.bank_ = MemoryBank()
        self.num_references = len(references)
        if references:
            encoded = self.encode(references)
            for size, scale in encoded["scales"].items():
                self.bank_.add(str(size), scale["clip"])

    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        encoded = self.encode(images)
        banks = {size: self.bank_.banks[str(size)] for size in encoded["scales"]} if len(self.bank_) else None
        return [self._score(img, encoded, b, banks) for b, img in enumerate(images)]

    def _score(self, img: LoadedImage, encoded: dict, b: int, banks: dict | None) -> MethodOutput:
        """Image b of an encoded batch against the memory banks (None: zero-shot)."""
        s = self.settings
        text = self.text_features()
        few_shot = banks is not None
        finest = max(encoded["scales"], key=lambda k: encoded["scales"][k]["grid"][0])
        out_grid = encoded["scales"][finest]["grid"]
        language_maps, vision_maps = [], []
        for size, scale in encoded["scales"].items():
            gh, gw = scale["grid"]
            language = two_class_probability(scale["gem"][b], text.seg_normal, text.seg_anomalous, s.temperature)
            if few_shot:
                vision = knn_anomaly(scale["clip"][b], banks[size], k=s.few_shot_k)
            else:
                vision = knn_anomaly(scale["gem"][b], scale["gem"][b], k=s.zero_shot_k)
            language_maps.append(_resize_grid(language.view(gh, gw), out_grid))
            vision_maps.append(_resize_grid(vision.view(gh, gw), out_grid))
        language_map = torch.stack(language_maps).mean(0)
        vision_map = torch.stack(vision_maps).mean(0)
        anomaly_map = self.combine_maps(language_map, vision_map, few_shot)
        if s.quantize_maps:
            anomaly_map = quantize_unit(anomaly_map, floor=True)
        image_embedding = encoded["image_embedding"][b]
        ac_language = two_class_probability(image_embedding, text.class_normal, text.class_anomalous, s.temperature)
        score = self.combine_scores(float(ac_language), vision_map, few_shot)
        sims = F.normalize(image_embedding, dim=-1) @ text.description_features.T
        top = sims.topk(min(s.top_descriptions, len(text.descriptions)))
        descriptions = [(text.descriptions[i], float(v)) for v, i in zip(top.values, top.indices)]
        box = input_box(*img.size_hw, finest, s.resize)
        image_map = map_to_image(anomaly_map, box, finest, img.size_hw)
        if s.quantize_maps:
            image_map = quantize_unit(image_map, floor=False)
        return MethodOutput(score, image_map, descriptions)

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Encode once; each held-out reference against the other references' patch tokens."""
        encoded = self.encode(references)
        self.bank_ = MemoryBank()
        self.num_references = len(references)
        for size, scale in encoded["scales"].items():
            self.bank_.add(str(size), scale["clip"])
        outputs = []
        for i in held_out:
            banks = {}
            for size, scale in encoded["scales"].items():
                tokens = scale["clip"]
                banks[size] = torch.cat([tokens[:i], tokens[i + 1 :]]).reshape(-1, tokens.shape[-1])
            outputs.append(self._score(references[i], encoded, i, banks))
        return outputs

    # ---- combination (the released configuration's weights) -------------------------------
    def combine_maps(self, language: torch.Tensor, vision: torch.Tensor, few_shot: bool) -> torch.Tensor:
        s = self.settings
        if few_shot:
            w, scale = s.as_few_shot_language_weight, s.as_few_shot_vision_scale
        else:
            w, scale = s.as_zero_shot_language_weight, s.as_zero_shot_vision_scale
        if s.segmentation_mode == "language":
            combined = language
        elif s.segmentation_mode == "vision":
            combined = scale * vision
        else:
            combined = w * language + (1.0 - w) * scale * vision
        return combined.clamp(0.0, 1.0)

    def combine_scores(self, language: float, vision_map: torch.Tensor, few_shot: bool) -> float:
        language_ = torch.tensor([float(language)], dtype=torch.float64)  # as Python floats were
        score = combine_classification(self.settings, language_, vision_map[None], few_shot)
        return float(score[0])

    # ---- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        text = self.text_features()
        return {
            **self.bank_.state_dict(),
            "text.class_normal": text.class_normal,
            "text.class_anomalous": text.class_anomalous,
            "text.seg_normal": text.seg_normal,
            "text.seg_anomalous": text.seg_anomalous,
        }

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.bank_.load_state_dict(state)
        if "text.class_normal" in state:
            text = self.text_features()  # descriptions are recomputed; the class embeddings come from the file
            text.class_normal = state["text.class_normal"]
            text.class_anomalous = state["text.class_anomalous"]
            text.seg_normal = state["text.seg_normal"]
            text.seg_anomalous = state["text.seg_anomalous"]


def _resize_grid(patch_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an (h, w) patch map to the finest scale's grid, for averaging scales."""
    if tuple(patch_map.shape) == tuple(grid):
        return patch_map
    return F.interpolate(patch_map[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]


def combine_classification(
    s: FadeSettings, language: torch.Tensor, vision_maps: torch.Tensor, few_shot: bool
) -> torch.Tensor:
    """Image scores (B,) from language probabilities (B,) and vision maps (B, ...), clipped to
    [0, 1]: zero-shot AC is language only; few-shot mixes in the scaled vision maximum. Shared by
    the method and its ONNX graph (anomalens.export.fade), so both combine alike."""
    if not few_shot:
        return language.clamp(0.0, 1.0)
    vision = (s.ac_few_shot_vision_scale * vision_maps).flatten(1).amax(1).to(language.dtype)
    if s.classification_mode == "language":
        score = language
    elif s.classification_mode == "vision":
        score = vision
    else:
        w = s.ac_few_shot_language_weight
        score = w * language + (1.0 - w) * vision
    return score.clamp(0.0, 1.0)
