"""Response bodies (pydantic models, so /docs shows them) and turning results into them."""

from __future__ import annotations

import base64
import io
import math
from enum import Enum

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from ..images import LoadedImage
from ..overlay import heatmap_overlay, normalize_map
from ..results import AnomalyResult


class MapFormat(str, Enum):
    none = "none"
    png = "png"
    float32 = "float32"


class ErrorDetail(BaseModel):
    kind: str = Field(description="short name of the problem, e.g. upload_too_large, not_an_image, queue_full")
    message: str = Field(description="what is wrong, in one line")
    file: str | None = Field(None, description="the uploaded file the error is about, if any")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Description(BaseModel):
    text: str
    similarity: float


class Timing(BaseModel):
    decode_ms: float = Field(description="reading and decoding the upload")
    queue_ms: float = Field(description="waiting for a model thread")
    model_ms: float = Field(description="the model call (shared by the batch_images it scored together)")
    batch_images: int = Field(description="images scored in that model call")
    encode_ms: float = Field(description="building the map and overlay of this image")
    total_ms: float = Field(description="from the request's arrival to the response")


class MapData(BaseModel):
    format: MapFormat
    width: int
    height: int
    data: str = Field(description="base64: a PNG, or float32 little-endian values row by row (height x width)")
    vmin: float = Field(description="map value shown as black (png) / the map's minimum")
    vmax: float = Field(description="map value shown as white (png) / the map's maximum")


class ImageData(BaseModel):
    format: str = "png"
    width: int
    height: int
    data: str = Field(description="base64 PNG")


class Prediction(BaseModel):
    model: str
    file: str
    score: float | None = Field(description="image anomaly score; null if the model gave NaN (then NG)")
    decision: str | None = Field(description="OK or NG; null when the model has no threshold")
    threshold: float | None
    pixel_threshold: float | None
    descriptions: list[Description] = Field(description="best-matching defect descriptions (text methods)")
    width: int = Field(description="width of the image the map belongs to")
    height: int
    original_width: int | None = Field(None, description="the file's width, when it was reduced on reading")
    original_height: int | None = None
    timing: Timing
    map: MapData | None = None
    overlay: ImageData | None = None


class BatchItem(BaseModel):
    file: str
    status: str = Field(description="ok or error")
    prediction: Prediction | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    model: str
    results: list[BatchItem]


class ThresholdInfo(BaseModel):
    value: float
    method: str = Field(description="given (set by the user) or auto (calibrated)")
    description: str = Field(description="how it was set")


class ModelInfo(BaseModel):
    name: str = Field(description="the name in the model's URLs: /v1/models/{name}/predict")
    method: str = Field(description="patchknn | musc | fade | winclip | filo")
    backbone: str = Field(description="the backbone the method runs on")
    threshold: ThresholdInfo | None = Field(description="image threshold of OK/NG; null: scores only")
    pixel_threshold: ThresholdInfo | None = Field(description="threshold of the defect mask")
    num_references: int = Field(description="good images the model was fitted on")
    references: list[str] = Field(description="their paths, as given when fitting")
    settings: dict = Field(description="the method's settings (anomalens methods lists them)")
    directory: str | None = Field(description="the saved model's folder")
    inspection_region: dict | None = Field(
        default=None, description="share of each image inspected and the mask's digest; null: the whole image"
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: list[str]
    workers: int
    busy_workers: int
    queue_depth: int
    admitted: int
    capacity: int


def png_base64(rgb_or_grey: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_or_grey)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_map(anomaly_map: np.ndarray, fmt: MapFormat) -> MapData | None:
    if fmt == MapFormat.none:
        return None
    amap = np.asarray(anomaly_map, dtype=np.float32)
    h, w = amap.shape
    finite = amap[np.isfinite(amap)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    if fmt == MapFormat.float32:
        data = base64.b64encode(amap.astype("<f4").tobytes()).decode("ascii")
    else:  # 8-bit grey, the map's own range (vmin/vmax say which values black and white stand for)
        grey = np.rint(normalize_map(amap, lo, hi) * 255).astype(np.uint8)
        data = png_base64(grey)
    return MapData(format=fmt, width=w, height=h, data=data, vmin=lo, vmax=hi)


def encode_overlay(result: AnomalyResult, image: LoadedImage) -> ImageData:
    ignored = None if result.inspected is None else ~result.inspected
    over = heatmap_overlay(image.rgb, result.anomaly_map, result.mask, ignored=ignored)
    return ImageData(width=over.shape[1], height=over.shape[0], data=png_base64(over))


def prediction(
    model: str, result: AnomalyResult, image: LoadedImage, timing: Timing, map_format: MapFormat, overlay: bool
) -> Prediction:
    h, w = image.size_hw
    oh, ow = image.original_hw if image.original_hw else (None, None)
    return Prediction(
        model=model,
        file=image.path,
        score=None if math.isnan(result.score) else float(result.score),
        decision=result.decision,
        threshold=result.threshold,
        pixel_threshold=result.pixel_threshold,
        descriptions=[Description(text=t, similarity=float(s)) for t, s in result.descriptions],
        width=w,
        height=h,
        original_width=ow,
        original_height=oh,
        timing=timing,
        map=encode_map(result.anomaly_map, map_format),
        overlay=encode_overlay(result, image) if overlay else None,
    )
