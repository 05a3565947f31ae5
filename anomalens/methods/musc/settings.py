"""`musc` settings: every constant of the paper (or of the official code) with its value."""

from __future__ import annotations

from dataclasses import dataclass

from .lnamd import DEFAULT_DEGREES
from .msm import DEFAULT_CHUNK_ELEMENTS, DEFAULT_INTERVAL
from .rscin import DEFAULT_NEIGHBOURS


@dataclass
class MuScSettings:
    backbone: str = "efficientnet-lite0"  # or an open_clip ViT (paper: ViT-L-14-336, openai), then weights
    weights: str | None = None  # CLIP weights (tag or file) when backbone is a CLIP architecture
    image_size: int = 256  # model input side (paper: 518 with ViT-L-14-336; 256 for the embedded CNN)
    resize: str = "squash"  # "squash" (paper) or "pad" (keep aspect ratio)
    blocks: tuple[int, ...] = (7, 10)  # EfficientNet-Lite0 blocks (stride 16, 80 and 112 channels): the CNN's "stages"
    score_stride: int = 16  # CNN: finer blocks are average-pooled to this stride before scoring (0: keep)
    clip_layers: tuple[int, ...] = (6, 12, 18, 24)  # paper: the 4 stages of ViT-L-14 (code: 0-based 5, 11, 17, 23)
    degrees: tuple[int, ...] = DEFAULT_DEGREES  # LNAMD aggregation degrees r (paper: 1, 3, 5)
    interval: tuple[float, float] = DEFAULT_INTERVAL  # MSM interval average: smallest 0 %..30 % of partner scores
    rscin: bool = True  # RsCIN image-level re-scoring
    rscin_neighbours: tuple[int, ...] = DEFAULT_NEIGHBOURS  # RsCIN window sizes k (code: 1, 2, 3; VisA 1, 8, 9)
    max_partners: int = 32  # partner images per image, a seeded sample (0: every other image, the paper)
    partner_seed: int = 0  # seed of the partner sample (only with max_partners > 0)
    feature_dtype: str = "float16"  # stored patch features: float16 (half the memory) or float32
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS  # largest similarity block of one matrix product
    single_image: str = "fallback"  # a batch of one image: "fallback" (self-similarity, with a warning) or "error"
    batch_size: int = 8  # images per backbone forward pass
    progress: bool = True  # progress bars for feature extraction and mutual scoring (on a terminal)
