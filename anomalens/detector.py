"""`Detector`: the public entry point. Settings in, `fit` on good images, `predict` on queries."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import DEFAULT_MARGIN, DEFAULT_QUANTILE, Threshold, apply_decision, as_threshold
from .image_inputs import NamedInput, named_inputs
from .image_inputs import as_loaded as _as_loaded
from .images import ImageLoadError, ImageReading, LoadedImage, list_images, read_ahead
from .inspection_region import InspectionRegion, as_region
from .methods import create_method
from .methods.base import settings_to_dict
from .model_files import MODEL_CONFIG, load_detector, write_model
from .progress import FitProgressCallback, finish, reporting
from .results import AnomalyResult

ImageInput = str | os.PathLike | LoadedImage


class Detector:
    """Zero- or few-shot anomaly detector.

    >>> det = Detector(method="patchknn")          # embedded backbone, no downloads
    >>> det.fit(["good1.png", "good2.png"])        # optional: few-shot references
    >>> results = det.predict(["query.png"])       # [AnomalyResult(score, anomaly_map, ...)]

    `method` is a registered method name (`patchknn`, `fade`, `winclip`, `filo`); other keyword
    arguments are that method's settings (see `anomalens.methods.<name>.<Name>Settings`).
    `device` is where the models run: "auto" (a GPU when torch sees one, else the CPU), "cpu",
    "cuda" or "cuda:N". It is not saved with the detector: a saved model loads on any device.
    `reading` is how image files are read (`ImageReading`: pixel limit, bit depth); it is saved.
    `region` is the inspection region (a mask file, a boolean array or an `InspectionRegion`;
    `anomalens.inspection_region`): only its pixels count; it is saved.
    """

    reading = ImageReading()  # the defaults, for subclasses that do not call __init__ (ONNX)

    def __init__(
        self,
        method: str = "patchknn",
        device: str | torch.device | None = "auto",
        reading: ImageReading | None = None,
        region: Any = None,
        **settings: Any,
    ):
        from .device import resolve_device

        self.device = resolve_device(device)  # before building the model: a bad device fails fast
        self.method_name = method
        self.method = create_method(method, **settings).to(self.device)
        self.threshold = None  # set by calibrate(), by hand (a number) or by loading
        self.pixel_threshold = None
        self.reference_paths: list[str] = []
        self.reading = reading or ImageReading()
        self.region = region

    @property
    def region(self) -> InspectionRegion | None:
        """The inspection region (None: the whole image); see `anomalens.inspection_region`."""
        return getattr(getattr(self, "method", None), "region", None)  # an exported model has none

    @region.setter
    def region(self, value: Any) -> None:
        region = as_region(value)
        if region is not None and not self.method.supports_region:
            raise ValueError(
                f"{self.method_name} cannot restrict its score to an inspection region (its image score is not "
                f"taken from its map alone); use --method patchknn or musc"
            )
        self.method.region = region

    def _load(self, item: ImageInput) -> LoadedImage:
        return _as_loaded(item, self.reading)

    # Thresholds are always `Threshold` objects (or None); a number given here becomes a
    # "given" one, so the rest of the code never asks which kind it holds.
    @property
    def threshold(self) -> Threshold | None:
        """The image threshold: score above it is NG. None: no decisions."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Threshold | float | None) -> None:
        self._threshold = as_threshold(value)

    @property
    def pixel_threshold(self) -> Threshold | None:
        """The mask threshold on the anomaly map (None: the image threshold's value)."""
        return self._pixel_threshold

    @pixel_threshold.setter
    def pixel_threshold(self, value: Threshold | float | None) -> None:
        self._pixel_threshold = as_threshold(value)

    @property
    def settings(self) -> dict[str, Any]:
        return settings_to_dict(self.method.settings)

    @property
    def backbone_name(self) -> str:
        return self.method.describe_backbone()

    @property
    def scores_jointly(self) -> bool:
        """Whether the method scores a run's images against each other (then one batch per run)."""
        return self.method.scores_jointly

    def fit(self, reference_images: Iterable[ImageInput] = (), progress: FitProgressCallback | None = None) -> Detector:
        """Use good reference images (few-shot); call with none (or not at all) for zero-shot.

        References are any inputs `predict` takes; directories are expanded. Unreadable references
        raise ImageLoadError naming the file: a reference set must be trusted, so it is not silently
        shrunk. `progress` is called with a FitProgress as references are read ("reading") and
        fitted ("fitting").
        """
        refs = list(named_inputs(reference_images))  # arrays, PIL images, bytes: as predict takes them
        expanded: list[ImageInput] = []
        for r in refs:
            if isinstance(r, (str, os.PathLike)) and Path(r).is_dir():
                found = list_images([r])
                if not found:
                    raise ImageLoadError(r, "reference folder holds no images")
                expanded.extend(found)
            else:
                expanded.append(r)
        loaded = [self._load(r) for r in reporting(expanded, "reading", progress)]
        self.reference_paths = [img.path for img in loaded]
        self._references = loaded  # kept for leave-one-out calibration
        with torch.inference_mode():
            self.method.fit(fitting := reporting(list(loaded), "fitting", progress))
        finish(fitting)
        return self

    def calibrate(
        self,
        images: Iterable[ImageInput] | None = None,
        quantile: float = DEFAULT_QUANTILE,
        margin: float = DEFAULT_MARGIN,
        pixel_threshold: float | None = None,
        max_images: int = 32,
        progress: FitProgressCallback | None = None,
        max_false_reject: float | None = None,
        defects: Iterable[ImageInput] | None = None,
    ) -> Detector:
        """Set the OK/NG threshold from good images; see `anomalens.threshold_calibration`.

        Few-shot: leave-one-out over the references (at most `max_images` held out, seeded),
        the quantile rule (`quantile`, `margin`) or, with `max_false_reject`, the
        order-statistic rule for that false-reject rate; `defects` (known-bad images or
        folders) choose, among thresholds that keep the target, the one catching most of them.
        Zero-shot: the given good `images` are scored as they are.
        """
        from .threshold_calibration import calibrate_detector

        return calibrate_detector(
            self,
            images,
            quantile=quantile,
            margin=margin,
            pixel_threshold=pixel_threshold,
            max_images=max_images,
            max_false_reject=max_false_reject,
            defects=defects,
            progress=progress,
        )

    def predict(self, images: Any, batch_size: int = 8, names: Sequence[str] | None = None) -> list[AnomalyResult]:
        """Score images; raises ImageLoadError on an unreadable one (see `predict_iter` to go on).

        `images`: paths, numpy arrays, PIL images, torch tensors or encoded bytes, a sequence of
        them or one alone (`anomalens.image_inputs`). Results are named `names[i]`, else the path,
        else e.g. "array-0"."""
        results = []
        for item in self.predict_iter(images, batch_size=batch_size, names=names):
            if isinstance(item, ImageLoadError):
                raise item
            results.append(item)
        return results

    def predict_iter(
        self,
        images: Any,
        batch_size: int = 8,
        jobs: int = 0,
        with_images: bool = False,
        skip_errors: bool = False,
        names: Sequence[str] | None = None,
    ) -> Iterator[AnomalyResult | ImageLoadError | tuple[AnomalyResult, LoadedImage]]:
        """Yield one result per input in order; an unreadable input yields its ImageLoadError.

        jobs > 0 reads and decodes images in that many threads ahead of the model (Pillow
        releases the GIL while decoding). with_images=True yields (result, image) pairs.
        skip_errors=True: when the method fails on a batch, its images are retried one by one
        and an image that still fails yields an ImageLoadError ("could not be scored: ...")
        instead of ending the iteration, so a long run goes on past one bad image.
        `images` and `names` as for `predict`.
        """
        images = named_inputs(images, names)
        if self.scores_jointly:
            yield from self._predict_jointly(images, jobs, with_images)
            return
        run = self._run_tolerant if skip_errors else self._run
        batch: list[LoadedImage] = []
        for loaded in read_ahead(images, self._load, jobs):
            if isinstance(loaded, ImageLoadError):
                yield from run(batch, with_images)
                batch = []
                yield loaded
                continue
            batch.append(loaded)
            if len(batch) >= batch_size:
                yield from run(batch, with_images)
                batch = []
        yield from run(batch, with_images)

    def _predict_jointly(self, images: Iterable[ImageInput], jobs: int, with_images: bool) -> Iterator:
        """Methods that score images against each other: every readable input forms one batch.

        Images are streamed into the method (which keeps features, not pixels) and read again
        for `with_images`. Unreadable inputs are reported at their place and left out of the
        batch. batch_size and skip_errors do not apply: an image cannot be rescored on its own.
        """
        items = list(images)
        slots, outputs, per_image = self._joint_batch(items, jobs)
        for i, slot in enumerate(slots):
            if isinstance(slot, ImageLoadError):
                yield slot
                continue
            with torch.inference_mode():
                out = next(outputs)
            item = items[i]
            named = isinstance(item, NamedInput)
            path = item.path if isinstance(item, LoadedImage) else item.name if named else str(item)
            result = self._result(path, out, per_image)
            if not with_images:
                yield result
                continue
            try:  # read again: the batch did not keep every image's pixels
                yield result, self._load(item)
            except ImageLoadError as err:
                yield err

    def rank_jointly(self, images: Iterable[ImageInput], jobs: int = 0) -> list[ImageLoadError]:
        """Methods that score images against each other: the readable inputs scored as one batch without
        making their outputs (what the method decides from the whole batch is set: musc's `last_batch` and
        `last_ranking`); returns the unreadable inputs' errors, in order."""
        slots, _, _ = self._joint_batch(list(images), jobs)
        return [slot for slot in slots if isinstance(slot, ImageLoadError)]

    def _joint_batch(self, items: list, jobs: int) -> tuple[list[ImageLoadError | None], Iterator, float]:
        """Per input its load error or None (in the batch), the batch's lazy outputs, and seconds per image."""
        slots: list[ImageLoadError | None] = []

        def readable() -> Iterator[LoadedImage]:
            for loaded in read_ahead(items, self._load, jobs):
                slots.append(loaded if isinstance(loaded, ImageLoadError) else None)
                if not isinstance(loaded, ImageLoadError):
                    yield loaded

        start = time.perf_counter()
        with torch.inference_mode():
            self._ensure_fitted()
            outputs = self.method.predict_joint(readable())
        per_image = (time.perf_counter() - start) / max(1, sum(not isinstance(s, ImageLoadError) for s in slots))
        return slots, outputs, per_image

    def _run_tolerant(self, batch: list[LoadedImage], with_images: bool = False) -> Iterator:
        try:
            done = list(self._run(batch, with_images))
        except Exception as err:
            if len(batch) == 1:
                yield ImageLoadError(batch[0].path, f"could not be scored: {type(err).__name__}: {err}")
                return
            for img in batch:
                yield from self._run_tolerant([img], with_images)
            return
        yield from done

    def _ensure_fitted(self) -> None:
        if not self.method.fitted_:
            self.method.fit([])  # never fitted: zero-shot, as documented ("skip fit for zero-shot")

    def _run(self, batch: list[LoadedImage], with_images: bool = False) -> Iterator:
        if not batch:
            return
        start = time.perf_counter()
        with torch.inference_mode():
            self._ensure_fitted()
            outputs = self.method.predict(batch)
        per_image = (time.perf_counter() - start) / len(batch)
        for img, out in zip(batch, outputs):
            result = self._result(img.path, out, per_image)
            yield (result, img) if with_images else result

    def _result(self, path: str, out, seconds: float) -> AnomalyResult:
        result = AnomalyResult(
            path=path,
            score=float(out.score),
            anomaly_map=np.asarray(out.anomaly_map, dtype=np.float32),
            descriptions=list(out.descriptions),
            seconds=seconds,
            extra=dict(out.extra),
        )
        result.inspected = getattr(out, "inspected", None)
        if self.threshold is not None or self.pixel_threshold is not None:
            apply_decision(result, self.threshold, self.pixel_threshold)
        return result

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write settings, threshold and learned tensors (safetensors + JSON); see `model_files.write_model`."""
        return write_model(self, directory, overwrite)

    def export(self, out: str | os.PathLike, format: str = "onnx", **options: Any):
        """Write the fitted detector as a standalone model; see `anomalens.export.export_onnx`."""
        if format != "onnx":
            raise ValueError(f"unknown export format {format!r}; supported: onnx")
        from .export import export_onnx

        return export_onnx(self, out, **options)


def threshold_from_dict(data: dict) -> Threshold:
    """A Threshold from its saved JSON form (export and the ray engine import it from here)."""
    return as_threshold(data)


# Imported from here by the CLI, serve, the engines and the tests; their home is model_files.
__all__ = ["MODEL_CONFIG", "Detector", "load_detector", "threshold_from_dict"]
