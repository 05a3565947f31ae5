"""Drawing anomaly maps over images: a colour heatmap, the predicted mask's contour.

Only numpy, scipy.ndimage and Pillow are used, so drawing needs no plotting library.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from anomalens.colour_scale import ColourScale, ramp_colours

# Control points of a turbo-like rainbow ramp (dark blue -> cyan -> green -> yellow -> dark red),
# hand-picked so lightness rises then falls smoothly and low values stay dark and unobtrusive.
_RAMP_POSITIONS = np.linspace(0.0, 1.0, 9)
_RAMP_COLOURS = np.array(
    [
        (48, 18, 59),
        (68, 108, 228),
        (38, 172, 250),
        (28, 226, 184),
        (112, 252, 96),
        (198, 238, 54),
        (250, 186, 58),
        (232, 94, 20),
        (122, 6, 4),
    ],
    dtype=np.float64,
)

# White reads against every colour of the ramp except its bright middle; a 1 px black halo
# outside it keeps the contour visible there too.
CONTOUR_COLOUR = (255, 255, 255)
CONTOUR_HALO = (0, 0, 0)
# Pixels outside the inspection region keep this share of their brightness and no heat colour.
IGNORED_DIMMING = 0.35


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN -> 0) to uint8 RGB colours of the ramp, shape (..., 3)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    v = np.clip(v, 0.0, 1.0)
    channels = [np.interp(v, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def normalize_map(
    anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Scale a map to [0, 1] between vmin and vmax (default: the map's own finite min and max).

    Pass the same vmin/vmax for every image of a run so colours are comparable between images;
    with the per-image default, a clean image's noise is stretched to the full colour range.
    """
    m = np.asarray(anomaly_map, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    lo, hi = float(vmin), float(vmax)
    if hi <= lo:
        # A constant map (or an inverted range) carries no contrast: show it as "lowest".
        return np.zeros(m.shape, dtype=np.float64)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept HxW grey, HxWx1, HxWx3 or HxWx4 uint8 and return HxWx3 uint8."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def _resize_float(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (height, width)."""
    pil = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32))
    return np.asarray(pil.resize((hw[1], hw[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to (height, width)."""
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(pil.resize((hw[1], hw[0]), Image.Resampling.NEAREST)) > 127


def mask_contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The inner border of a boolean mask, `thickness` pixels wide (mask minus its erosion)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    from scipy import ndimage  # imported on first use: ~0.3 s of start-up, needed only for NG masks

    # border_value=0 so a region touching the image edge is outlined along the edge too.
    eroded = ndimage.binary_erosion(mask, iterations=max(1, int(thickness)), border_value=0)
    return mask & ~eroded


# Colours on a run's scale come from a table of this many steps per half of the ramp: one
# float32 index and one lookup per pixel instead of float64 interpolation per channel (10 ms
# of a 330 x 320 overlay, then ~1 ms). A colour differs from the exact ramp by at most 1 of
# 255 per channel; cool (<= threshold) and hot (above) stay exact.
SCALE_STEPS = 1024


@lru_cache(maxsize=16)
def _scale_table(scale: ColourScale) -> np.ndarray:
    """(2 * SCALE_STEPS + 2, 3) uint8: the cool half at positions 0 .. 0.5, then the hot half just above 0.5 .. 1."""
    steps = np.arange(SCALE_STEPS + 1) / (2 * SCALE_STEPS)
    hot = np.maximum(0.5 + steps, np.nextafter(0.5, 1.0))
    return np.concatenate([ramp_colours(steps), ramp_colours(hot)])


def scale_colours(scale: ColourScale, values: np.ndarray) -> np.ndarray:
    """`scale.colours(values)` from a lookup table (within 1 level per channel; NaN counts as worst)."""
    v = np.asarray(values, dtype=np.float32)
    lo, anchor, hi = scale.low, scale.anchor, scale.high
    hot = np.greater(v, np.float64(anchor)) | np.isnan(v)  # float64 comparison, as scale.position
    cool_steps = (v - np.float32(lo)) * np.float32(SCALE_STEPS / (anchor - lo))
    hot_steps = (v - np.float32(anchor)) * np.float32(SCALE_STEPS / (hi - anchor))
    steps = np.where(hot, hot_steps, cool_steps)
    np.nan_to_num(steps, copy=False, nan=SCALE_STEPS)
    np.clip(steps, 0, SCALE_STEPS, out=steps)
    index = np.rint(steps).astype(np.intp) + hot * (SCALE_STEPS + 1)
    return _scale_table(scale)[index]


def heatmap_overlay(
    image_rgb_uint8: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    contour_thickness: int = 2,
    scale: ColourScale | None = None,
    ignored: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image and outline the predicted mask.

    The map (and mask) are resized to the image if their size differs. `alpha` is the weight of
    the heatmap (0 = image only, 1 = heatmap only). With `scale` (a run's ColourScale) the map is
    coloured on that scale, cool below its threshold and hot above; without, on the rainbow ramp
    between vmin and vmax. `ignored` (HxW bool, outside the inspection region) is shown as the
    image dimmed, without heat colours. Returns HxWx3 uint8.
    """
    img = _as_rgb(image_rgb_uint8)
    h, w = img.shape[:2]
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"anomaly_map must be HxW, got shape {m.shape}")
    if m.shape != (h, w):
        m = _resize_float(m, (h, w))
    if scale is not None:
        colours = scale_colours(scale, m).astype(np.float32)
    else:
        colours = colormap(normalize_map(m, vmin, vmax)).astype(np.float32)
    a = float(np.clip(alpha, 0.0, 1.0))
    out = np.rint((1.0 - a) * img.astype(np.float32) + a * colours).astype(np.uint8)
    if ignored is not None:
        ig = np.asarray(ignored, dtype=bool)
        dim_ignored(out, img, ig if ig.shape == (h, w) else _resize_mask(ig, (h, w)))
    if mask is not None:
        mk = np.asarray(mask, dtype=bool)
        if mk.shape != (h, w):
            mk = _resize_mask(mk, (h, w))
        if mk.any():  # most parts are clean: no contour to draw
            contour = mask_contour(mk, contour_thickness)
            from scipy import ndimage

            halo = ndimage.binary_dilation(contour, iterations=1) & ~mk
            out[halo] = CONTOUR_HALO
            out[contour] = CONTOUR_COLOUR
    return out


def dim_ignored(out: np.ndarray, image: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """`out` (in place) with the `ignored` pixels set to `image`'s, dimmed: how overlays show what
    an inspection region leaves out."""
    out[ignored] = np.rint(IGNORED_DIMMING * image[ignored].astype(np.float32)).astype(np.uint8)
    return out


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as a uint8 image: 255 where anomalous, 0 elsewhere."""
    return np.where(np.asarray(mask, dtype=bool), np.uint8(255), np.uint8(0))
