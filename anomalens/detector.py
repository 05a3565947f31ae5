"""`Detector`: the public entry point. Settings in, `fit` on good images, `predict` on queries."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .calibration import DEFAULT_MARGIN, DEFAULT_QUANTILE
from .images import ImageLoadError, LoadedImage, list_images, load_image
from .methods import create_method
from .methods.base import settings_to_dict
from .results import AnomalyResult

ImageInput = str | os.PathLike | LoadedImage

MODEL_CONFIG = "detector.json"
MODEL_WEIGHTS = "detector.safetensors"


def _as_loaded(item: ImageInput) -> LoadedImage:
    return item if isinstance(item, LoadedImage) else load_image(item)


def _try_load(item: ImageInput) -> LoadedImage | ImageLoadError:
    try:
        return _as_loaded(item)
    except ImageLoadError as err:
        return err


def _load_ahead(items: Iterable[ImageInput], jobs: int) -> Iterator[LoadedImage | ImageLoadError]:
    """Load images in order; with jobs > 0, up to 2 * jobs images are decoded ahead in threads."""
    if jobs <= 0:
        yield from map(_try_load, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(_try_load, item))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Detector:
    """Zero- or few-shot anomaly detector.

    >>> det = Detector(method="patchknn")          # embedded backbone, no downloads
    >>> det.fit(["good1.png", "good2.png"])        # optional: few-shot references
    >>> results = det.predict(["query.png"])       # [AnomalyResult(score, anomaly_map, ...)]

    `method` is a registered method name (`patchknn`, `fade`, `winclip`, `filo`); other keyword
    arguments are that method's settings (see `anomalens.methods.<name>.<Name>Settings`).
    """

    def __init__(self, method: str = "patchknn", **settings: Any):
        self.method_name = method
        self.method = create_method(method, **settings)
        self.threshold = None  # anomalens.calibration.Threshold, set by calibration or loading
        self.pixel_threshold: float | None = None
        self.reference_paths: list[str] = []

    @property
    def settings(self) -> dict[str, Any]:
        return settings_to_dict(self.method.settings)

    @property
    def backbone_name(self) -> str:
        return self.method.describe_backbone()

    def fit(self, reference_images: Iterable[ImageInput] = ()) -> Detector:
        """Use good reference images (few-shot); call with none (or not at all) for zero-shot.

        Directories are expanded. Unreadable references raise ImageLoadError naming the file:
        a reference set must be trusted, so it is not silently shrunk.
        """
        refs = list(reference_images)
        expanded: list[ImageInput] = []
        for r in refs:
            if not isinstance(r, LoadedImage) and Path(r).is_dir():
                found = list_images([r])
                if not found:
                    raise ImageLoadError(r, "reference folder holds no images")
                expanded.extend(found)
            else:
                expanded.append(r)
        loaded = [_as_loaded(r) for r in expanded]
        self.reference_paths = [img.path for img in loaded]
        self._references = loaded  # kept for leave-one-out calibration
        with torch.inference_mode():
            self.method.fit(loaded)
        return self

    def calibrate(
        self,
        images: Iterable[ImageInput] | None = None,
        quantile: float = DEFAULT_QUANTILE,
        margin: float = DEFAULT_MARGIN,
        pixel_threshold: float | None = None,
        max_images: int = 32,
    ) -> Detector:
        """Set the OK/NG threshold from good images (see anomalens.calibration for the rule).

        Few-shot: leave-one-out over the references (each is scored by a detector fitted on
        the others), so the threshold sees scores of good images the model did not memorise.
        Zero-shot: the given good images (or the references) are scored as they are.
        With more than `max_images` references, a seeded subset of them is held out in turn.
        """
        from .calibration import calibrate_threshold, pixel_threshold_from_maps

        refs = list(getattr(self, "_references", []))
        extra = [_as_loaded(i) for i in images] if images is not None else []
        with torch.inference_mode():
            if refs:
                if len(refs) < 2:
                    raise ValueError("--threshold auto needs at least 2 reference images for leave-one-out")
                held_out = list(range(len(refs)))
                if len(held_out) > max_images:
                    # Enough held-out scores for a quantile, without len(refs) refits.
                    held_out = sorted(random.Random(0).sample(held_out, max_images))
                outputs = self.method.leave_one_out(refs, held_out)
                if extra:
                    outputs.extend(self.method.predict(extra))
            else:
                if not extra:
                    raise ValueError("--threshold auto needs good reference images (--refs)")
                outputs = self.method.predict(extra)
        self.threshold = calibrate_threshold([o.score for o in outputs], quantile=quantile, margin=margin)
        if pixel_threshold is not None:
            self.pixel_threshold = float(pixel_threshold)
        else:
            self.pixel_threshold = pixel_threshold_from_maps(
                [o.anomaly_map for o in outputs], self.threshold, quantile=quantile, margin=margin
            )
        return self

    def predict(self, images: Iterable[ImageInput], batch_size: int = 8) -> list[AnomalyResult]:
        """Score images; raises ImageLoadError on an unreadable file (see `predict_iter` to go on)."""
        results = []
        for item in self.predict_iter(images, batch_size=batch_size):
            if isinstance(item, ImageLoadError):
                raise item
            results.append(item)
        return results

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        batch_size: int = 8,
        jobs: int = 0,
        with_images: bool = False,
        skip_errors: bool = False,
    ) -> Iterator[AnomalyResult | ImageLoadError | tuple[AnomalyResult, LoadedImage]]:
        """Yield one result per input in order; an unreadable input yields its ImageLoadError.

        jobs > 0 reads and decodes images in that many threads ahead of the model (Pillow
        releases the GIL while decoding). with_images=True yields (result, image) pairs.
        skip_errors=True: when the method fails on a batch, its images are retried one by one
        and an image that still fails yields an ImageLoadError ("could not be scored: ...")
        instead of ending the iteration, so a long run goes on past one bad image.
        """
        run = self._run_tolerant if skip_errors else self._run
        batch: list[LoadedImage] = []
        for loaded in _load_ahead(images, jobs):
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

    def predict_loaded(self, images: list[LoadedImage]) -> list[AnomalyResult]:
        return list(self._run(images))

    def _run(self, batch: list[LoadedImage], with_images: bool = False) -> Iterator:
        if not batch:
            return
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self.method.predict(batch)
        per_image = (time.perf_counter() - start) / len(batch)
        for img, out in zip(batch, outputs):
            result = AnomalyResult(
                path=img.path,
                score=float(out.score),
                anomaly_map=np.asarray(out.anomaly_map, dtype=np.float32),
                descriptions=list(out.descriptions),
                seconds=per_image,
            )
            if self.threshold is not None:
                from .calibration import apply_decision

                apply_decision(result, self.threshold, self.pixel_threshold)
            yield (result, img) if with_images else result

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write settings, threshold and learned tensors (safetensors + JSON)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        config_path = directory / MODEL_CONFIG
        if config_path.exists() and not overwrite:
            raise FileExistsError(
                f"{config_path} exists; pass overwrite=True (CLI: --overwrite) to replace it"
            )
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.method.state_dict().items()}
        save_file(state, str(directory / MODEL_WEIGHTS))
        config = {
            "anomalens_version": __version__,
            "method": self.method_name,
            "settings": self.settings,
            "threshold": _threshold_json(self.threshold),
            "pixel_threshold": _threshold_json(self.pixel_threshold),
            "references": self.reference_paths,
            "num_references": len(self.reference_paths),
        }
        config_path.write_text(json.dumps(config, indent=2))
        return directory


def _threshold_json(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


def threshold_from_dict(data: dict):
    """Rebuild a calibration.Threshold from its saved JSON form."""
    import dataclasses

    from .calibration import Threshold

    names = {f.name for f in dataclasses.fields(Threshold)}
    return Threshold(**{k: v for k, v in data.items() if k in names})


def load_detector(directory: str | os.PathLike, **overrides: Any) -> Detector:
    """Load a detector written by `Detector.save` (no unpickling: JSON + safetensors)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / MODEL_CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not a saved anomalens model (no {MODEL_CONFIG})")
    config = json.loads(config_path.read_text())
    settings = {**config["settings"], **overrides}
    det = Detector(method=config["method"], **settings)
    weights = directory / MODEL_WEIGHTS
    if weights.exists():
        det.method.load_state_dict(load_file(str(weights)))
    det.reference_paths = list(config.get("references", []))
    det.method.num_references = int(config.get("num_references", len(det.reference_paths)))
    if config.get("threshold") is not None:
        det.threshold = threshold_from_dict(config["threshold"])
    pix = config.get("pixel_threshold")
    det.pixel_threshold = threshold_from_dict(pix) if isinstance(pix, dict) else pix
    return det
