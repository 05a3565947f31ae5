"""Images given to `Detector.predict` in memory: numpy arrays, PIL images, torch tensors, encoded bytes.

Each becomes the same RGB uint8 image a file with the same pixels would give, so it gets the same
score (tests/test_predict_inputs.py checks this for every kind):

- numpy arrays: H x W (grey), H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA: composited onto white,
  as PNG files with transparency are); dtype uint8; uint16 (a grey image is read as a 16-bit PNG
  is; an RGB one keeps its high byte, as Pillow reads 16-bit RGB files); float (any float dtype)
  with values in [0, 1], scaled by 255 and rounded.
- torch tensors: C x H x W (C = 1, 3 or 4) or H x W, uint8 or float in [0, 1] (torch's layout);
  a 4-D tensor (or array) given as the whole input is a batch of images.
- PIL images: any mode, read as files are (EXIF orientation applied, 16-bit grey scaled).
- bytes: an encoded file (PNG, JPEG, ...) decoded exactly as the file would be.
- paths (str or os.PathLike): files, as before.

Results are named by `names` when given, else paths keep their path and other inputs get
"<kind>-<index>" ("array-0", "tensor-3", "pil-1", "bytes-2"; index = position in the input).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .bit_depth import full_scale
from .errors import ImageLoadError
from .image_reading import ImageReading
from .images import LoadedImage, _to_rgb_uint8, load_image, load_image_bytes

# Values a float image may stray outside [0, 1] by (rounding in the caller's arithmetic).
FLOAT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class NamedInput:
    """An in-memory image and the name its result will carry."""

    value: Any
    name: str


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_single(x: Any) -> bool:
    """Is `x` one image (rather than a sequence of them)?"""
    if isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, LoadedImage)):
        return True
    if isinstance(x, np.ndarray) or _is_tensor(x):
        return x.ndim <= 3
    return False


def _kind(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "array"
    if _is_tensor(x):
        return "tensor"
    if isinstance(x, Image.Image):
        return "pil"
    if isinstance(x, (bytes, bytearray, memoryview)):
        return "bytes"
    return type(x).__name__


def named_inputs(images: Any, names: Sequence[str] | None = None) -> Iterator[Any]:
    """The inputs of `predict` one by one: paths and LoadedImages as they are (renamed when a name
    is given), in-memory images wrapped with their name. A single image may be given alone."""
    items: Iterable[Any] = [images] if _is_single(images) else images
    given = None if names is None else list(names)
    count = 0
    for i, item in enumerate(items):
        count += 1
        if given is not None and i >= len(given):
            raise ValueError(f"{len(given)} names given for more images than that")
        name = given[i] if given is not None else None
        if isinstance(item, (str, os.PathLike, LoadedImage)) and name is None:
            yield item
        else:
            yield NamedInput(item, name if name is not None else _default_name(item, i))
    if given is not None and count != len(given):
        raise ValueError(f"{len(given)} names given for {count} images")


def _default_name(item: Any, index: int) -> str:
    if isinstance(item, LoadedImage):
        return item.path
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return f"{_kind(item)}-{index}"


def load_input(item: NamedInput, reading: ImageReading | None = None) -> LoadedImage:
    """The LoadedImage of one named input; ImageLoadError (naming it) for what cannot be an image.

    `reading` (bit depth, pixel limit) applies as to files: paths and bytes are read with it, and
    a uint16 grey array's white is 2^bit_depth - 1 when a bit depth is given (else 65535)."""
    value, name = item.value, item.name
    if isinstance(value, LoadedImage):
        return dataclasses.replace(value, path=name)
    if isinstance(value, (str, os.PathLike)):
        return dataclasses.replace(load_image(value, reading), path=name)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return load_image_bytes(bytes(value), name, reading)
    if isinstance(value, Image.Image):
        return LoadedImage(name, _pil_rgb(value, name))
    if _is_tensor(value):
        return LoadedImage(name, array_to_rgb(_tensor_to_hwc(value, name), name, reading))
    if isinstance(value, np.ndarray):
        return LoadedImage(name, array_to_rgb(value, name, reading))
    raise ImageLoadError(
        name,
        f"unsupported input type {type(value).__name__} "
        "(expected a path, bytes, numpy array, PIL image or torch tensor)",
    )


def _pil_rgb(img: Image.Image, name: str) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
        return np.ascontiguousarray(_to_rgb_uint8(img))
    except (OSError, ValueError) as err:
        raise ImageLoadError(name, f"cannot read this PIL image ({img.mode}): {err}") from err


def _tensor_to_hwc(tensor: Any, name: str) -> np.ndarray:
    """A C x H x W (or H x W) tensor as an H x W x C (or H x W) numpy array on the CPU."""
    t = tensor.detach().cpu()
    if t.ndim == 3:
        if t.shape[0] not in (1, 3, 4):
            raise ImageLoadError(name, f"a 3-D tensor must be C x H x W with C = 1, 3 or 4, got shape {tuple(t.shape)}")
        t = t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise ImageLoadError(name, f"a tensor image must be C x H x W or H x W, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point:
        t = t.float()
    return t.contiguous().numpy()


def array_to_rgb(array: np.ndarray, name: str, reading: ImageReading | None = None) -> np.ndarray:
    """An H x W (x 1/3/4) array as RGB uint8, by the rules in this module's docstring."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        shapes = "H x W, H x W x 1, H x W x 3 or H x W x 4"
        raise ImageLoadError(name, f"an image array must be {shapes}, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageLoadError(name, f"empty image array, shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.uint16:
        if a.ndim == 2:  # as a 16-bit grey PNG without significant-bits information is read
            bits = 16 if reading is None or reading.bit_depth == "auto" else int(reading.bit_depth)
            return _to_rgb_uint8(Image.fromarray(np.ascontiguousarray(a)), full_scale(a, bits))
        u8 = (a >> 8).astype(np.uint8)  # as Pillow reads a 16-bit RGB(A) file
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise ImageLoadError(name, "float image holds NaN or infinite values")
        lo, hi = float(f.min()), float(f.max())
        if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
            raise ImageLoadError(name, f"float image values must be in [0, 1], got {lo:.4g} .. {hi:.4g}")
        u8 = np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ImageLoadError(
            name, f"unsupported image dtype {a.dtype} (expected uint8, uint16, or float with values in [0, 1])"
        )
    if u8.ndim == 2:
        return np.ascontiguousarray(np.repeat(u8[:, :, None], 3, axis=2))
    if u8.shape[2] == 4:  # composite onto white, as a transparent PNG file is read
        return _to_rgb_uint8(Image.fromarray(np.ascontiguousarray(u8)))
    return np.ascontiguousarray(u8)


def as_loaded(item: Any, reading: ImageReading | None = None) -> LoadedImage:
    """Any input of `predict` (a path, a LoadedImage, a NamedInput) as a LoadedImage."""
    if isinstance(item, NamedInput):
        return load_input(item, reading)
    return item if isinstance(item, LoadedImage) else load_image(item, reading)
