"""Open-vocabulary defect boxes from Grounding DINO (FiLo's HQ-Loc), and what FiLo makes of them.

`GroundingDetector` loads a Grounding DINO model and processor with `transformers` from a local
folder (no download). `ground(...)` turns its raw output into:

* the kept boxes: score > 0.25 and area < 0.7 of the image, or else the single best box,
* a weight map: 1 inside any kept box, lambda = 0.7 outside (FiLo multiplies its anomaly map
  by it, so responses away from the detected defects are damped),
* the position word of the best box's centre on a 3x3 grid (for the abnormal prompts).

Released mode (`released_grounding_prompt`, `phrase_filter`): the caption is the released
words "anomaly . damage . broken . defect . contamination" followed by the category's
descriptions, and a box counts (for the weights and the position) only when its phrase (the
caption tokens scoring above the box threshold, decoded) contains one of those words or
descriptions. Boxes from the authors' fine-tuned checkpoint need it in the `transformers`
layout: see the FiLo note (docs) for why no converter ships here.

Post-processing is done here from `logits` / `pred_boxes` (sigmoid, maximum over the prompt's
tokens, boxes as normalised centre-size) rather than with the processor's helper, whose
signature differs between `transformers` releases.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import MissingGroundingError
from ...text.prompts import POSITIONS, position_word

log = logging.getLogger(__name__)

BOX_THRESHOLD = 0.25
MAX_BOX_AREA = 0.7
OUTSIDE_WEIGHT = 0.7  # lambda

#: Generic defect words put in front of a category's own descriptions in the detector prompt.
GENERIC_DEFECT_WORDS: tuple[str, ...] = ("defect", "damage", "crack", "scratch", "hole", "stain", "contamination")

#: The released code's generic caption words, before the category's descriptions.
RELEASED_CAPTION_WORDS: tuple[str, ...] = ("anomaly", "damage", "broken", "defect", "contamination")

GROUNDING_HINT = (
    "Fetch the Hugging Face repo IDEA-Research/grounding-dino-base (or IDEA-Research/grounding-dino-tiny) "
    "on a machine with network access (e.g. `huggingface-cli download IDEA-Research/grounding-dino-base "
    "--local-dir grounding-dino-base`) and pass the folder with --grounding PATH (Python: grounding='PATH')."
)


#: What to do with a checkpoint in the original IDEA-Research layout (e.g. FiLo's fine-tuned
#: grounding_train_on_*.pth), which `transformers` cannot load as it is.
ORIGINAL_LAYOUT_HINT = (
    "Grounding DINO is loaded with `transformers` from a folder (config.json, weights, tokenizer and "
    "processor files). A checkpoint in the original GroundingDINO layout (such as FiLo's fine-tuned "
    "grounding_train_on_*.pth, Swin-T OGC) must first be converted with transformers' "
    "convert_grounding_dino_to_hf.py (transformers source tree, models/grounding_dino) for "
    "grounding-dino-tiny, loading the local file instead of the download, and saved with "
    "save_pretrained next to the grounding-dino-tiny processor files; pass that folder with --grounding."
)


@dataclass
class Grounding:
    """Boxes (x0, y0, x1, y1) in image pixels, their scores, the best one and its position word."""

    boxes: np.ndarray  # (K, 4) kept boxes
    scores: np.ndarray  # (K,)
    best: np.ndarray | None  # (4,) highest-scoring box of all
    position: str
    image_hw: tuple[int, int]

    def weight_map(self, weight_outside: float = OUTSIDE_WEIGHT) -> np.ndarray:
        return box_weight_map(self.boxes, self.image_hw, weight_outside)


def grounding_prompt(descriptions: list[str], generic: tuple[str, ...] = GENERIC_DEFECT_WORDS) -> str:
    """Grounding DINO's text: lower-case phrases separated by ' . ' and ending with '.'."""
    seen: list[str] = []
    for phrase in (*generic, *descriptions):
        p = " ".join(phrase.lower().replace(".", " ").split())
        if p and p not in seen:
            seen.append(p)
    return " . ".join(seen) + " ."


def released_grounding_prompt(descriptions: list[str]) -> str:
    """The released caption: generic words then descriptions, ' . '-joined, lower case, ending '.'."""
    caption = " . ".join([*RELEASED_CAPTION_WORDS, *descriptions]).lower().strip()
    return caption if caption.endswith(".") else caption + "."


def phrase_matches(phrase: str, words: list[str] | tuple[str, ...]) -> bool:
    """The released phrase filter: does any caption word or description occur in the phrase?"""
    return any(w in phrase for w in words)


def select_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    image_hw: tuple[int, int],
    threshold: float = BOX_THRESHOLD,
    max_area: float = MAX_BOX_AREA,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes with score > threshold and area < max_area of the image; else the single best box.

    boxes (N, 4) as (x0, y0, x1, y1) pixels. With no boxes at all, returns empty arrays.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return boxes, scores
    h, w = image_hw
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = (scores > threshold) & (area < max_area * h * w)
    if not keep.any():
        best = int(np.argmax(scores))
        return boxes[best : best + 1], scores[best : best + 1]
    return boxes[keep], scores[keep]


def box_weight_map(boxes: np.ndarray, image_hw: tuple[int, int], weight_outside: float = OUTSIDE_WEIGHT) -> np.ndarray:
    """(H, W) float32 map: 1 on pixels inside any box, `weight_outside` elsewhere (all 1 without boxes).

    A pixel (row r, column c) covers [c, c+1) x [r, r+1); it is inside a box when its centre is.
    """
    h, w = image_hw
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.ones((h, w), dtype=np.float32)
    inside = np.zeros((h, w), dtype=bool)
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    for x0, y0, x1, y1 in boxes:
        cols = (cx >= x0) & (cx <= x1)
        rows = (cy >= y0) & (cy <= y1)
        inside |= rows[:, None] & cols[None, :]
    return np.where(inside, 1.0, weight_outside).astype(np.float32)


def box_position(box: np.ndarray | None, image_hw: tuple[int, int], default: str = "center") -> str:
    """The 3x3 grid position word of a box's centre (`default` without a box)."""
    if box is None:
        return default
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box)
    return position_word((x0 + x1) / 2, (y0 + y1) / 2, w, h)


#: The released position cells in 518-px model coordinates: inclusive integer ranges per column/row.
RELEASED_CELLS: tuple[tuple[int, int], ...] = ((0, 172), (173, 344), (345, 517))
RELEASED_SIDE = 518


def released_box_position(box: np.ndarray | None, image_hw: tuple[int, int]) -> str | tuple[str, ...]:
    """The released code's position for the best box: its centre scaled to 518 px, looked up in
    inclusive integer cells; a centre in a gap between cells (e.g. x = 172.5) has no cell there,
    so every position is used (all nine averaged); no box gives "center"."""
    if box is None:
        return "center"
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box)
    cx = (x0 + x1) / 2 / w * RELEASED_SIDE
    cy = (y0 + y1) / 2 / h * RELEASED_SIDE

    def cell(c: float) -> int | None:
        return next((i for i, (lo, hi) in enumerate(RELEASED_CELLS) if lo <= c <= hi), None)

    col, row = cell(cx), cell(cy)
    if col is None or row is None:
        return POSITIONS
    return POSITIONS[3 * row + col]


def decode_detections(
    logits: torch.Tensor, pred_boxes: torch.Tensor, text_mask: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw detector output -> (N, 4) pixel boxes (x0, y0, x1, y1) and (N,) scores.

    logits (Q, T) over text tokens, pred_boxes (Q, 4) normalised (cx, cy, w, h), text_mask (T',)
    marking the prompt's real tokens (T' <= T). A query's score is its best token's sigmoid.
    """
    n = min(int(text_mask.shape[-1]), logits.shape[-1])
    valid = text_mask[:n].bool()
    probs = logits[:, :n].float().sigmoid().masked_fill(~valid, 0.0)
    scores = probs.max(dim=-1).values
    cx, cy, bw, bh = pred_boxes.float().unbind(-1)
    h, w = image_hw
    xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], dim=-1)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    return xyxy.numpy().astype(np.float64), scores.numpy().astype(np.float64)


def ground_from_detections(boxes: np.ndarray, scores: np.ndarray, image_hw: tuple[int, int], **limits) -> Grounding:
    """Filter decoded detections (`select_boxes`, whose `threshold` and `max_area` pass through)
    and locate the best box."""
    kept, kept_scores = select_boxes(boxes, scores, image_hw, **limits)
    return grounding_of(kept, kept_scores, image_hw)


def grounding_of(kept: np.ndarray, kept_scores: np.ndarray, image_hw: tuple[int, int]) -> Grounding:
    """The kept boxes with the best-scoring one located on the 3x3 grid (none without boxes)."""
    best = kept[int(np.argmax(kept_scores))] if len(kept) else None
    return Grounding(kept, kept_scores, best, box_position(best, image_hw), image_hw)


class GroundingDetector:
    """Grounding DINO from a local folder (`config.json`, weights, tokenizer and processor files)."""

    def __init__(self, path: str | os.PathLike, threshold: float = BOX_THRESHOLD, max_area: float = MAX_BOX_AREA):
        path = Path(path).expanduser()
        if path.is_file():
            raise MissingGroundingError(f"{path} is a single weights file. {ORIGINAL_LAYOUT_HINT}")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise MissingGroundingError(f"No Grounding DINO model in {path} (no config.json). {GROUNDING_HINT}")
        try:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        except ImportError as err:
            raise ImportError(
                "Grounding needs the `transformers` package: pip install 'anomalens[grounding]'"
            ) from err
        self.path = path
        self.threshold = threshold
        self.max_area = max_area
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(str(path), local_files_only=True).eval()

    def fit_prompt(self, prompt: str) -> str:
        """Drop whole trailing phrases until the prompt fits the model's text length."""
        limit = int(getattr(self.model.config, "max_text_len", 256))
        phrases = [p.strip() for p in prompt.split(" . ") if p.strip(" .")]
        while len(phrases) > 1:
            text = " . ".join(p.rstrip(" .") for p in phrases) + " ."
            if len(self.processor.tokenizer(text)["input_ids"]) <= limit:
                return text
            phrases.pop()
        return (phrases[0].rstrip(" .") + " .") if phrases else prompt

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray, prompt: str, phrase_filter: list[str] | None = None) -> Grounding:
        """Boxes for one RGB uint8 image (H, W, 3) and one detector prompt.

        phrase_filter: keep only boxes whose phrase contains one of these descriptions or the
        released caption words (the released code's filter); None keeps every box.
        """
        limit = int(getattr(self.model.config, "max_text_len", 256))
        inputs = self.processor(
            images=rgb, text=self.fit_prompt(prompt), return_tensors="pt", truncation=True, max_length=limit
        )
        outputs = self.model(**inputs)
        image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        boxes, scores = decode_detections(
            outputs.logits[0], outputs.pred_boxes[0], inputs["attention_mask"][0], image_hw
        )
        if phrase_filter is not None:
            kept, kept_scores = select_boxes(boxes, scores, image_hw, self.threshold, self.max_area)
            phrases = self.phrases(outputs.logits[0], inputs["input_ids"][0], boxes, kept)
            words = [*RELEASED_CAPTION_WORDS, *phrase_filter]
            good = np.array([phrase_matches(p, words) for p in phrases], dtype=bool)
            return grounding_of(kept[good], kept_scores[good], image_hw)
        return ground_from_detections(boxes, scores, image_hw, threshold=self.threshold, max_area=self.max_area)

    def phrases(self, logits: torch.Tensor, input_ids: torch.Tensor, boxes: np.ndarray, kept: np.ndarray) -> list[str]:
        """Each kept box's phrase: its query's caption tokens scoring above the threshold, decoded."""
        out = []
        n = min(int(input_ids.shape[-1]), logits.shape[-1])
        for box in kept:
            query = int(np.argmin(np.abs(boxes - box).sum(axis=1)))
            hot = logits[query, :n].float().sigmoid() > self.threshold
            out.append(self.processor.tokenizer.decode(input_ids[:n][hot].tolist()))
        return out
