"""Running an exported model with onnxruntime: the same `AnomalyResult`s as the PyTorch detector.

Preprocessing (resize, normalisation) and bringing the map back to the image's size use the
same functions as the PyTorch path, driven by the file's metadata; everything between runs in
onnxruntime.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..detector import Detector
from ..geometry import input_box, map_to_image, to_model_input
from ..image_reading import ImageReading
from ..images import LoadedImage
from ..inspection_region import NOTHING_COUNTS, InspectionRegion, apply_to_map, counted_pixels
from ..results import AnomalyResult
from ..tiling import Box, assemble, crop, tile_boxes
from .errors import OnnxModelError, missing_extra
from .graph import valid_mask
from .metadata import decode


def _session(path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise missing_extra(err) from None
    if not path.exists():
        raise FileNotFoundError(f"{path}: ONNX model file does not exist")
    if path.is_dir() or path.stat().st_size == 0:
        raise OnnxModelError(f"{path}: not an ONNX model file ({'a directory' if path.is_dir() else 'empty'})")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise OnnxModelError(f"{path}: not a readable ONNX model (corrupt or truncated?): {detail}") from None


class _ExportedMethod:
    """What callers ask of `Detector.method` about an exported model (there is no PyTorch method)."""

    scores_jointly = False  # exported methods score each image on its own

    def __init__(self, meta: dict[str, Any]):
        self.name = meta["method"]
        self.uses_text = bool(meta.get("descriptions"))
        self.num_references = int(meta.get("num_references") or 0)
        self.region = None  # the inspection region the model was exported with (OnnxDetector sets it)

    def describe_backbone(self) -> str:
        return f"{self.name} (ONNX)"


class OnnxDetector(Detector):
    """An exported detector: predicts like `Detector` (same results), cannot be refitted."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        # Not Detector.__init__: there is no PyTorch method to build, only a session.
        self.path = Path(path)
        if threads is None:
            threads = torch.get_num_threads()
        self.session = _session(self.path, threads)
        self.meta = decode(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.method_name = self.meta["method"]
        self.method = _ExportedMethod(self.meta)
        self.reference_paths = list(self.meta.get("references") or [])
        try:  # files exported before it was recorded: the defaults
            self.reading = ImageReading.from_dict(self.meta.get("image_reading"))
        except (ValueError, TypeError, AttributeError) as err:
            raise OnnxModelError(f"{self.path}: metadata 'image_reading': {err}") from None
        # Saved dicts (or numbers) become Thresholds through Detector's setters.
        self.threshold = self.meta.get("threshold")
        self.pixel_threshold = self.meta.get("pixel_threshold")
        self._bank = self._read_bank()
        self.method.region = self._read_region()
        names = {i.name for i in self.session.get_inputs()}
        expected = {i["name"] for i in self.meta["preprocessing"]["inputs"]}
        if self.method.region is not None:
            expected.add(self.meta["inspection_region"]["input"])
        if self.meta.get("valid_patches"):
            expected.add(self.meta["valid_patches"]["name"])
        if self._bank is not None:
            expected.add(self.meta["memory_bank"]["input"])
        if names != expected:
            raise OnnxModelError(
                f"{self.path}: graph inputs {sorted(names)} do not match its metadata {sorted(expected)}"
            )

    def _read_bank(self) -> np.ndarray | None:
        bank = self.meta.get("memory_bank")
        if not bank or bank.get("mode") != "input":
            return None
        file = self.path.with_name(bank["file"])
        if not file.exists():
            raise OnnxModelError(
                f"{self.path}: its memory bank file {file} is missing (it is written beside the model)"
            )
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except Exception as err:
            raise OnnxModelError(f"{file}: unreadable memory bank ({err})") from None
        if list(array.shape) != list(bank["shape"]) or array.dtype != np.float32:
            raise OnnxModelError(
                f"{file}: memory bank of shape {array.shape} {array.dtype}, expected {bank['shape']} float32"
            )
        return np.ascontiguousarray(array)

    def _read_region(self) -> InspectionRegion | None:
        entry = self.meta.get("inspection_region")
        if not entry:
            return None
        try:
            region = InspectionRegion.from_png_bytes(base64.b64decode(entry["png"]), source=entry.get("source", ""))
        except Exception as err:
            raise OnnxModelError(f"{self.path}: metadata 'inspection_region' is not a readable mask ({err})") from None
        if region.digest != entry.get("digest"):
            raise OnnxModelError(f"{self.path}: metadata 'inspection_region' does not match its digest")
        return region

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.meta["settings"])

    @property
    def backbone_name(self) -> str:
        return f"{self.meta.get('backbone', '')} (ONNX)"

    def fit(self, reference_images=()):
        raise TypeError(f"{self.path} is an exported model: it cannot be refitted; fit and export a new one")

    def calibrate(self, *args, **kwargs):
        raise TypeError(f"{self.path} is an exported model: its threshold is fixed at export")

    def save(self, *args, **kwargs):
        raise TypeError(f"{self.path} is an exported model already")

    def export(self, *args, **kwargs):
        raise TypeError(f"{self.path} is an exported model already")

    # ---- inference -----------------------------------------------------------------------
    def _feeds(
        self, batch: list[LoadedImage], regions: list[np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, int, int, int]]]:
        prep = self.meta["preprocessing"]
        feeds: dict[str, np.ndarray] = {}
        for spec in prep["inputs"]:
            xs = [to_model_input(img.rgb, spec["size"], prep["mean"], prep["std"], prep["resize"])[0] for img in batch]
            feeds[spec["name"]] = torch.stack(xs).numpy()
        boxes = [input_box(*img.size_hw, self.meta["map_size"], prep["resize"]) for img in batch]
        valid = self.meta.get("valid_patches")
        if valid:
            feeds[valid["name"]] = np.stack(
                [
                    valid_mask(
                        input_box(*img.size_hw, valid["size"], prep["resize"]), valid["size"], tuple(valid["grid"])
                    )
                    for img in batch
                ]
            )
        if regions is not None:
            feeds[self.meta["inspection_region"]["input"]] = np.stack(regions)
        if self._bank is not None:
            feeds[self.meta["memory_bank"]["input"]] = self._bank
        return feeds, boxes

    def _infer(self, batch: list[LoadedImage], regions: list[np.ndarray] | None = None) -> tuple[dict, list]:
        if self.meta["batch"] == "dynamic":
            feeds, boxes = self._feeds(batch, regions)
            outputs = self.session.run(None, feeds)
            return dict(zip(self.meta["outputs"], outputs)), boxes
        return _concatenated(  # fixed batch of 1
            [self._infer_fixed([img], None if regions is None else [regions[i]]) for i, img in enumerate(batch)]
        )

    def _infer_fixed(self, batch, regions=None):
        feeds, boxes = self._feeds(batch, regions)
        return dict(zip(self.meta["outputs"], self.session.run(None, feeds))), boxes

    def _inspected(self, batch: list[LoadedImage], tiles: list[list[Box]]) -> tuple[list, list[np.ndarray] | None]:
        """With an inspection region, as PatchKnn.model_inputs: each image's pixels that count and, per
        tile, the same on its model input (the graph's region input); without one: Nones."""
        region = self.method.region
        if region is None:
            return [None] * len(batch), None
        size, resize = self.meta["map_size"], self.meta["preprocessing"]["resize"]
        margin = int(self.meta["inspection_region"]["margin"])
        per_image, per_tile = [], []
        for img, image_tiles in zip(batch, tiles):
            boxes = [input_box(t[2], t[3], size, resize) for t in image_tiles]
            inspected, on_inputs = counted_pixels(region, img.size_hw, image_tiles, boxes, size, margin)
            per_image.append(inspected)
            per_tile.extend(r.numpy().astype(np.float32) for r in on_inputs)
        return per_image, per_tile

    def _tiles(self, batch: list[LoadedImage]) -> tuple[list[LoadedImage], list[list[Box]]]:
        """Each image's tiles (patchknn's `tile_above_aspect`, as `PatchKnn.model_inputs`) as images of
        their own, and per image its tile boxes; files exported without tiling: the images themselves."""
        above = float(self.meta["preprocessing"].get("tile_above_aspect") or 0)
        tiles = [tile_boxes(*img.size_hw, above) for img in batch]
        crops = [LoadedImage(img.path, crop(img.rgb, box)) for img, boxes in zip(batch, tiles) for box in boxes]
        return crops, tiles

    def _run(self, batch: list[LoadedImage], with_images: bool = False) -> Iterator:
        if not batch:
            return
        from ..calibration import apply_decision

        start = time.perf_counter()
        crops, tiles = self._tiles(batch)
        inspected, regions = self._inspected(batch, tiles)
        first = np.cumsum([0] + [len(t) for t in tiles])  # image i's tiles are rows first[i]:first[i + 1]
        if self.meta["preprocessing"].get("tiles_scored_together"):  # zero-shot: one image's tiles per call
            out, boxes = _concatenated(
                [
                    self._infer(
                        crops[first[i] : first[i + 1]], None if regions is None else regions[first[i] : first[i + 1]]
                    )
                    for i in range(len(batch))
                ]
            )
        else:
            out, boxes = self._infer(crops, regions)
        size = self.meta["map_size"]
        descriptions = self.meta.get("descriptions") or []
        top = int(self.meta.get("top_descriptions", 0))
        results = []
        for i, (img, image_tiles) in enumerate(zip(batch, tiles)):
            rows = range(first[i], first[i + 1])
            maps = [torch.from_numpy(np.ascontiguousarray(out["anomaly_map"][r])) for r in rows]
            if len(image_tiles) == 1:
                amap = map_to_image(maps[0], boxes[rows[0]], size, img.size_hw)
            else:  # as PatchKnn.score: each tile's map on its input box, put back on the image
                cropped = [m[t : t + h, left : left + w] for m, (t, left, h, w) in zip(maps, (boxes[r] for r in rows))]
                # files exported before session 33 carry no tile_blend: their maps were averaged
                amap = assemble(cropped, image_tiles, img.size_hw, self.meta["preprocessing"].get("tile_blend", "mean"))
            # the maximum over all tiles' maps (the export requires the maximum as image score)
            score = max(float(out["score"][r]) for r in rows)
            if inspected[i] is not None:
                if not np.isfinite(score):
                    raise ValueError(NOTHING_COUNTS)
                amap = apply_to_map(amap, inspected[i])
            described = []
            if "description_similarity" in out and top:  # language methods are not tiled: one row
                sims = torch.from_numpy(out["description_similarity"][rows[0]])
                best = sims.topk(min(top, len(descriptions)))
                described = [(descriptions[j], float(v)) for v, j in zip(best.values, best.indices)]
            result = AnomalyResult(path=img.path, score=score, anomaly_map=amap, descriptions=described)
            result.inspected = inspected[i]
            results.append(result)
        per_image = (time.perf_counter() - start) / len(batch)
        for img, result in zip(batch, results):
            result.seconds = per_image
            if self.threshold is not None or self.pixel_threshold is not None:
                apply_decision(result, self.threshold, self.pixel_threshold)
            yield (result, img) if with_images else result


def _concatenated(parts: list[tuple[dict[str, np.ndarray], list]]) -> tuple[dict[str, np.ndarray], list]:
    """The outputs and boxes of several `_infer` calls as those of one call on all their images."""
    return {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}, [b for p in parts for b in p[1]]


def load_onnx_detector(path: str | os.PathLike, threads: int | None = None) -> OnnxDetector:
    """Open an exported model; OnnxModelError for a corrupt file or one without anomalens metadata."""
    return OnnxDetector(path, threads=threads)


def is_onnx_path(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".onnx"
