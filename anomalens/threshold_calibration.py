"""Calibrating a detector's thresholds: score good (and known-bad) images, apply a rule.

`Detector.calibrate` is this function. The scores come from leave-one-out over the detector's
references (each one scored by the method fitted on the others: what an unseen good part
would get), or, zero-shot, from good images scored as they are. The rules are in
`anomalens.calibration` (quantile + margin) and `anomalens.threshold_rule` (a false-reject
target, optionally with known defects).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from .calibration import (
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    Threshold,
    calibrate_for_target,
    calibrate_threshold,
    pixel_threshold_from_maps,
)
from .images import ImageLoadError, LoadedImage, list_images, load_image
from .progress import finish, reporting


def expand_folders(items: Iterable, what: str) -> list:
    """Files as given, folders replaced by their images; an empty folder raises ImageLoadError."""
    expanded: list = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            found = list_images([item])
            if not found:
                raise ImageLoadError(item, f"{what} folder holds no images")
            expanded.extend(found)
        else:
            expanded.append(item)
    return expanded


def _loader(detector):
    """The detector's own image reader (its reading options), or the plain one."""
    own = getattr(detector, "_load", None)
    return own if own is not None else (lambda item: item if isinstance(item, LoadedImage) else load_image(item))


def calibrate_detector(
    detector,
    images: Iterable | None = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    pixel_threshold: float | None = None,
    max_images: int = 32,
    max_false_reject: float | None = None,
    defects: Iterable | None = None,
    progress=None,
):
    """Set `detector.threshold` and `.pixel_threshold`; returns the detector.

    Everything that can be refused (a quantile outside [0, 1], a negative or non-finite margin
    or pixel threshold, a target outside (0, 1), an empty defect folder) is refused before
    anything is scored (fail closed). With `max_false_reject` every reference is held out
    (`max_images` applies to the quantile rule only): the target needs as many scores as there
    are. `defects` without `max_false_reject` take 1 - quantile as the target. `progress` is
    called with a FitProgress ("calibrating") as the held-out references are gone through.
    """
    Threshold(value=0.0, method="auto", quantile=quantile, margin=margin)  # validates both
    if max_false_reject is None and defects is not None:
        max_false_reject = 1.0 - quantile
    if max_false_reject is not None:
        if not 0.0 < max_false_reject < 1.0:
            raise ValueError(f"the false-reject target must be a rate in (0, 1), got {max_false_reject!r}")
    if pixel_threshold is not None:
        Threshold.given(pixel_threshold)
    refs = list(getattr(detector, "_references", []))
    load = _loader(detector)
    extra = [load(i) for i in images] if images is not None else []
    bad = [load(i) for i in expand_folders(defects, "defect")] if defects is not None else []
    if defects is not None and not bad:
        raise ValueError("no known-defect images given")
    with torch.inference_mode():
        if refs:
            if len(refs) < 2:
                raise ValueError("--threshold auto needs at least 2 reference images for leave-one-out")
            held_out = list(range(len(refs)))
            if max_false_reject is None and len(held_out) > max_images:
                # Enough held-out scores for a quantile, without len(refs) refits.
                held_out = sorted(random.Random(0).sample(held_out, max_images))
            outputs = detector.method.leave_one_out(looped := reporting(refs, "calibrating", progress), held_out)
            finish(looped)
            if extra:
                outputs.extend(detector.method.predict(extra))
        else:
            if not extra:
                raise ValueError("--threshold auto needs good reference images (--refs)")
            detector._ensure_fitted()
            outputs = detector.method.predict(extra)
        defect_scores = [o.score for o in detector.method.predict(bad)] if bad else None
    scores = [o.score for o in outputs]
    if max_false_reject is None:
        detector.threshold = calibrate_threshold(scores, quantile=quantile, margin=margin)
    else:
        detector.threshold = calibrate_for_target(scores, max_false_reject, defect_scores)
    if pixel_threshold is not None:
        detector.pixel_threshold = pixel_threshold
    else:
        # with an inspection region only the pixels that count
        maps = [o.anomaly_map if o.inspected is None else o.anomaly_map[o.inspected] for o in outputs]
        detector.pixel_threshold = pixel_threshold_from_maps(
            maps,
            detector.threshold,
            quantile=quantile,
            margin=margin,
            max_false_reject=max_false_reject,
        )
    return detector
