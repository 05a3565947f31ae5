"""`filo`: FiLo (Gu et al., ACM MM 2024), zero-shot detection with trained prompts, MMCI and adapter.

Per image: Grounding DINO boxes (if `grounding` is given) set the position word of the abnormal
prompts and damp the map outside the boxes; FiLo's network gives the anomaly map (Eqs. 2-4) and
the global score S = softmax(A . F^T)_a + max(M) (Eq. 1), with max(M) taken on the box-weighted
map at the image's size; the five defect descriptions closest to the image are reported.

FiLo is zero-shot: `fit(references)` ignores reference images (there is no few-shot variant in
the paper); what it learned comes from `anomalens train filo` on another dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..backbones.clip import is_tiny
from ..filo.model import FiloConfig, top_descriptions
from ..filo.prompt_learner import PromptSet, build_prompts
from ..filo.train import TRAIN_HINT, MissingCheckpointError, build_backbone, build_model, read_trained
from ..grounding import MAX_BOX_AREA, OUTSIDE_WEIGHT, GroundingDetector, grounding_prompt
from ..images import LoadedImage, map_to_image, to_model_input
from ..text.prompts import POSITIONS, load_defect_vocabulary
from .base import Method, MethodOutput, register_method

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "ViT-L-14-336"
DEFAULT_IMAGE_SIZE = 518
_warned_no_grounding = False


@dataclass
class FiloSettings:
    checkpoint: str | None = None  # directory from `anomalens train filo`
    backbone: str | None = None  # None: the checkpoint's, else ViT-L-14-336
    weights: str | None = None  # CLIP tag or file; None: the checkpoint's, else OpenAI's ("default")
    category: str | None = None  # object name for the prompts; None: "object" + generic defects
    image_size: int | None = None  # None: the checkpoint's, else 518
    resize: str = "squash"  # "squash" (paper) or "pad"
    grounding: str | None = None  # local Grounding DINO folder; None: no boxes
    vocabulary: str | None = None  # defect vocabulary JSON; None: the packaged one
    defects: tuple[str, ...] | None = None  # defect phrases for `category` (`--describe`); replace the vocabulary's
    box_threshold: float = 0.25
    max_box_area: float = MAX_BOX_AREA
    outside_box_weight: float = OUTSIDE_WEIGHT  # lambda
    position_without_grounding: str = "center"  # "center" or "average" (all nine positions)
    top_k_descriptions: int = 5
    seed: int = 0  # random init of tiny backbones / untrained heads (tests)
    batch_size: int = 8


@register_method
class Filo(Method):
    name = "filo"
    Settings = FiloSettings

    def __init__(self, settings: FiloSettings):
        super().__init__(settings)
        if settings.position_without_grounding not in ("center", "average"):
            raise ValueError("position_without_grounding must be 'center' or 'average'")
        info, state = ({}, None)
        if settings.checkpoint is not None:
            info, state = read_trained(settings.checkpoint)
        arch = settings.backbone or info.get("backbone", DEFAULT_BACKBONE)
        if state is not None and arch != info.get("backbone"):
            raise ValueError(
                f"{settings.checkpoint} was trained on backbone {info.get('backbone')!r}, not {arch!r}; "
                "leave --backbone unset to use the checkpoint's."
            )
        if state is None and not is_tiny(arch):
            raise MissingCheckpointError(
                f"FiLo with {arch} needs trained prompt vectors, MMCI and adapter. {TRAIN_HINT} "
                "Only the tiny test backbones run untrained."
            )
        if settings.weights is not None:
            weights = settings.weights
        elif "weights" in info:
            weights = info["weights"]
        else:
            weights = None if is_tiny(arch) else "default"
        seed = int(info.get("seed", settings.seed))
        self.image_size = int(settings.image_size or info.get("image_size", DEFAULT_IMAGE_SIZE))
        config = FiloConfig.from_dict(info.get("model", {}))
        self.backbone = build_backbone(arch, weights, self.image_size, seed)
        self.model = build_model(self.backbone, config, seed).eval()
        if state is not None:
            self.model.load_trainable_state_dict(state)
        self.vocabulary = load_defect_vocabulary(settings.vocabulary)
        self.category = settings.category
        self.detector = GroundingDetector(settings.grounding, settings.box_threshold, settings.max_box_area) if (
            settings.grounding
        ) else None

    @property
    def uses_text(self) -> bool:
        return True

    def describe_backbone(self) -> str:
        return f"{self.backbone.name}@{self.image_size}"

    def set_category(self, name: str) -> None:
        """The object being inspected (the benchmark calls this per category)."""
        self.category = name

    def fit(self, references: list[LoadedImage]) -> None:
        """Zero-shot method: reference images are ignored (FiLo learns on another dataset)."""
        self.num_references = 0

    # ---- prompts and positions -----------------------------------------------------------
    def _descriptions(self) -> list[str]:
        if self.settings.defects and self.category == self.settings.category:
            return list(self.settings.defects)
        return self.vocabulary.for_category(self.category or "object")

    def _prompts(self, position: str | tuple[str, ...]) -> PromptSet:
        cfg = self.model.config
        return build_prompts(
            self.category or "object", self._descriptions(), position, cfg.normal_states, cfg.abnormal_states
        )

    def _locate(self, img: LoadedImage) -> tuple[str | tuple[str, ...], np.ndarray | None]:
        """Position word(s) for the prompts and the box weight map (None without grounding)."""
        global _warned_no_grounding
        if self.detector is None:
            if not _warned_no_grounding:
                log.warning(
                    "filo: no Grounding DINO weights (grounding=None): no boxes, abnormal prompts at "
                    "position %r", self.settings.position_without_grounding,
                )
                _warned_no_grounding = True
            if self.settings.position_without_grounding == "average":
                return POSITIONS, None
            return "center", None
        found = self.detector(img.rgb, grounding_prompt(self._descriptions()))
        return found.position, found.weight_map(self.settings.outside_box_weight)

    # ---- prediction ----------------------------------------------------------------------
    def predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        s = self.settings
        outputs: list[MethodOutput] = []
        for start in range(0, len(images), s.batch_size):
            outputs.extend(self._predict_batch(images[start : start + s.batch_size]))
        return outputs

    def _predict_batch(self, images: list[LoadedImage]) -> list[MethodOutput]:
        s = self.settings
        located = [self._locate(img) for img in images]
        prompt_sets = [self._prompts(position) for position, _ in located]
        inputs, boxes = [], []
        for img in images:
            x, box = to_model_input(img.rgb, self.image_size, self.backbone.mean, self.backbone.std, s.resize)
            inputs.append(x)
            boxes.append(box)
        with torch.no_grad():
            out = self.model(torch.stack(inputs), prompt_sets)
        results = []
        for i, (img, (_, weight), box) in enumerate(zip(images, located, boxes)):
            amap = map_to_image(out.anomaly_map[i], box, self.image_size, img.size_hw)
            if weight is not None:
                amap = amap * weight
            score = float(out.logits[i].softmax(-1)[1]) + float(amap.max())
            descriptions = top_descriptions(
                out.adapted[i], out.abnormal_features[i], prompt_sets[i], s.top_k_descriptions
            )
            results.append(MethodOutput(score, amap.astype(np.float32), descriptions))
        return results
