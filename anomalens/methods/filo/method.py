"""`filo`: FiLo (Gu et al., ACM MM 2024), zero-shot detection with trained prompts, MMCI and adapter.

Per image: Grounding DINO boxes (if `grounding` is given) set the position word of the abnormal
prompts and damp the map outside the boxes; FiLo's network gives the anomaly map (Eqs. 2-4) and
the global score S = softmax(A . F^T)_a + max(M) (Eq. 1), with max(M) taken on the box-weighted
map at the image's size; the five defect descriptions closest to the image are reported.

FiLo is zero-shot: `fit(references)` ignores reference images (there is no few-shot variant in
the paper); what it learned comes from `anomalens train filo` on another dataset, or from the
authors' released checkpoint (`checkpoint="filo_train_on_visa.pth"`), which runs the released
variant (`released.py`): their templates, maps and score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ...backbones.clip import is_tiny
from ...geometry import RESIZE_POLICIES, map_to_image, to_model_input
from ...images import LoadedImage
from ...settings import MethodSettings, setting
from ...text.prompts import POSITIONS, load_defect_vocabulary
from ..base import Method, MethodOutput, register_method
from .checkpoint import (
    RELEASED_FORMAT,
    TRAIN_HINT,
    MissingCheckpointError,
    build_backbone,
    build_model,
    default_weights,
    load_checkpoint,
    load_into,
)
from .grounding import (
    MAX_BOX_AREA,
    OUTSIDE_WEIGHT,
    GroundingDetector,
    grounding_prompt,
    released_box_position,
    released_grounding_prompt,
)
from .model import FiloConfig, top_descriptions
from .prompts import PromptSet, build_prompts

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "ViT-L-14-336"
DEFAULT_IMAGE_SIZE = 518
_warned_no_grounding = False


@dataclass
class FiloSettings(MethodSettings):
    checkpoint: str | None = setting(None, "`anomalens train filo` directory, or the authors' filo_train_on_*.pth")
    backbone: str | None = setting(None, "open_clip architecture; default: the checkpoint's, else ViT-L-14-336")
    weights: str | None = setting(None, "CLIP tag or file; default: the checkpoint's, else OpenAI's")
    category: str | None = setting(None, 'object name for the prompts; default: "object" + generic defects')
    image_size: int | None = setting(None, "input side in pixels; default: the checkpoint's, else 518", minimum=14)
    resize: str = setting("squash", "squash (paper) or pad (keep the aspect ratio)", choices=RESIZE_POLICIES)
    grounding: str | None = setting(None, "local Grounding DINO folder; default: no boxes")
    vocabulary: str | None = setting(None, "defect vocabulary JSON; default: the packaged one")
    box_threshold: float = setting(0.25, "Grounding DINO box score threshold", minimum=0.0, maximum=1.0)
    max_box_area: float = setting(MAX_BOX_AREA, "boxes above this fraction of the image are dropped", minimum=0.0)
    outside_box_weight: float = setting(OUTSIDE_WEIGHT, "lambda: map weight outside the boxes", minimum=0.0)
    position_without_grounding: str = setting(
        "center", "position without boxes: center (as released) or average (all nine)", choices=("center", "average")
    )
    defects: tuple[str, ...] | None = setting(
        None, "defect phrases for `category` (anomalens describe / --describe); used instead of the vocabulary's"
    )
    top_descriptions: int = setting(5, "defect descriptions most similar to the image, returned per image", minimum=0)
    seed: int = setting(0, "random init of tiny backbones / untrained heads (tests)")
    batch_size: int = setting(8, "images per forward pass", minimum=1)

    renamed: ClassVar[dict[str, str]] = {"top_k_descriptions": "top_descriptions"}  # in older saved models


@register_method
class Filo(Method):
    name = "filo"
    uses_text = True
    Settings = FiloSettings

    def __init__(self, settings: FiloSettings):
        super().__init__(settings)
        self.defects_category = settings.category  # the `defects` setting describes this category only
        info, state = ({}, None)
        if settings.checkpoint is not None:
            info, state = load_checkpoint(settings.checkpoint)
        arch = settings.backbone or info.get("backbone", DEFAULT_BACKBONE)
        # Our checkpoints record their backbone; the released file does not (ViT-L-14-336 assumed).
        if state is not None and info.get("format") != RELEASED_FORMAT and arch != info.get("backbone"):
            raise ValueError(
                f"{settings.checkpoint} was trained on backbone {info.get('backbone')!r}, not {arch!r}; "
                "leave --backbone unset to use the checkpoint's."
            )
        if state is None and not is_tiny(arch):
            raise MissingCheckpointError(
                f"FiLo with {arch} needs trained prompt vectors, MMCI and adapter. {TRAIN_HINT} "
                "Only the tiny test backbones run untrained."
            )
        weights = default_weights(arch, settings.weights, info.get("weights"))
        seed = int(info.get("seed", settings.seed))
        self.image_size = int(settings.image_size or info.get("image_size", DEFAULT_IMAGE_SIZE))
        config = FiloConfig.from_dict(info.get("model", {}))
        self.released = config.variant == "released"
        self.backbone = build_backbone(arch, weights, self.image_size, seed, config.variant)
        self.model = build_model(self.backbone, config, seed).eval()
        if state is not None:
            load_into(self.model, state, str(settings.checkpoint))
        self.vocabulary = load_defect_vocabulary(settings.vocabulary)
        self.grounding_dino = (
            GroundingDetector(settings.grounding, settings.box_threshold, settings.max_box_area)
            if settings.grounding
            else None
        )

    def describe_backbone(self) -> str:
        return f"{self.backbone.name}@{self.image_size}"

    def set_category(self, name: str) -> None:
        """The object being inspected (the benchmark calls this per category)."""
        self.settings.category = name

    def _fit(self, references: list[LoadedImage]) -> None:
        """Zero-shot method: reference images are ignored (FiLo learns on another dataset)."""
        self.num_references = 0

    # ---- prompts and positions -----------------------------------------------------------
    def _descriptions(self) -> list[str]:
        if self.settings.defects and self.settings.category == self.defects_category:
            return list(self.settings.defects)
        return self.vocabulary.for_category(self.settings.category or "object")

    def _prompts(self, position: str | tuple[str, ...]) -> PromptSet:
        cfg = self.model.config
        return build_prompts(
            self.settings.category or "object",
            self._descriptions(),
            position,
            cfg.normal_states,
            cfg.abnormal_states,
            cfg.prompt_style,
        )

    @property
    def grounding_status(self) -> str:
        """"on" with Grounding DINO boxes, else "off" (recorded in every result)."""
        return "off" if self.grounding_dino is None else "on"

    def _locate(self, img: LoadedImage) -> tuple[str | tuple[str, ...], np.ndarray | None]:
        """Position word(s) for the prompts and the box weight map (None without grounding)."""
        global _warned_no_grounding
        if self.grounding_dino is None:
            if not _warned_no_grounding:
                log.warning(
                    "filo: no Grounding DINO weights (grounding=None): no boxes, abnormal prompts at "
                    "position %r", self.settings.position_without_grounding,
                )
                _warned_no_grounding = True
            if self.settings.position_without_grounding == "average":
                return POSITIONS, None
            return "center", None
        descriptions = self._descriptions()
        if self.released:
            found = self.grounding_dino(img.rgb, released_grounding_prompt(descriptions), phrase_filter=descriptions)
            position = released_box_position(found.best, found.image_hw)
        else:
            found = self.grounding_dino(img.rgb, grounding_prompt(descriptions))
            position = found.position
        return position, found.weight_map(self.settings.outside_box_weight)

    # ---- prediction ----------------------------------------------------------------------
    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
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
            out = self.model(torch.stack(inputs).to(self.device), prompt_sets)
        results = []
        for i, (img, (_, weight), box) in enumerate(zip(images, located, boxes)):
            amap = map_to_image(out.anomaly_map[i], box, self.image_size, img.size_hw)
            if weight is not None:
                amap = amap * weight
            if self.released:  # the released score is taken before the box suppression
                score = float(out.score[i])
            else:
                score = float(out.logits[i].softmax(-1)[1]) + float(amap.max())
            descriptions = top_descriptions(
                out.adapted[i], out.abnormal_features[i], prompt_sets[i], s.top_descriptions
            )
            extra = {"grounding": self.grounding_status}
            results.append(MethodOutput(score, amap.astype(np.float32), descriptions, extra))
        return results
