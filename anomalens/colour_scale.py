"""One colour scale for every overlay of a run, anchored to the threshold.

A map value is coloured by where it lies on the run's scale ``low .. anchor .. high``: values
below the anchor (the pixel threshold, so: below the mask) in cool colours, dark blue to cyan;
values above it in hot colours, yellow to dark red. The same value has the same colour in every
image of a run, whatever that image's own range, so a clean part scoring 0.12 stays dark blue
while a hole scoring 0.30 glows red. The scale itself is drawn under each overlay and in the report.

Everything here is a pure function of numbers and arrays (no files), so that the output writer
can cache and reuse what it draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Cool half (positions 0 .. 0.5): dark navy -> blue -> light cyan; every colour has a blue hue.
# Hot half (0.5 .. 1): yellow -> orange -> red -> dark red; every colour has a red-yellow hue.
# The jump at 0.5 is deliberate: the threshold is a boundary, not a shade.
_COOL = np.array([(16, 24, 72), (30, 70, 170), (50, 130, 220), (120, 205, 240)], dtype=np.float64)
_HOT = np.array([(255, 236, 80), (252, 160, 40), (226, 60, 24), (128, 0, 0)], dtype=np.float64)
_COOL_POS = np.linspace(0.0, 0.5, len(_COOL))
_HOT_POS = np.linspace(0.5, 1.0, len(_HOT))


@dataclass(frozen=True)
class ColourScale:
    """Map values from `low` to `high`; `anchor` (the threshold) is where cool turns hot.

    `basis` says in words where the numbers come from (shown in the report).
    """

    low: float
    anchor: float
    high: float
    basis: str = ""

    def __post_init__(self) -> None:
        values = (self.low, self.anchor, self.high)
        if not all(math.isfinite(v) for v in values) or not self.low < self.anchor < self.high:
            raise ValueError(f"colour scale needs finite low < anchor < high, got {values}")

    @classmethod
    def around(cls, anchor: float, basis: str = "") -> ColourScale:
        """The scale for a threshold: 0 .. anchor .. 2 x anchor (scores here are never negative;
        a threshold <= 0 gets anchor - 1 .. anchor + 1)."""
        a = float(anchor)
        if a > 0:
            return cls(0.0, a, 2.0 * a, basis)
        return cls(a - 1.0, a, a + 1.0, basis)

    def position(self, values: np.ndarray) -> np.ndarray:
        """Where values fall on the colour ramp, in [0, 1]: the anchor at 0.5, low at 0, high at 1.

        A value exactly at the anchor is not above it (not in the mask), so it gets the top of
        the cool half; NaN counts as the worst value (as an unscorable part is NG).
        """
        v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=np.inf, posinf=np.inf, neginf=-np.inf)
        below = 0.5 * (v - self.low) / (self.anchor - self.low)
        above = 0.5 + 0.5 * (v - self.anchor) / (self.high - self.anchor)
        pos = np.where(v > self.anchor, np.maximum(above, np.nextafter(0.5, 1.0)), np.minimum(below, 0.5))
        return np.clip(pos, 0.0, 1.0)

    def colours(self, values: np.ndarray) -> np.ndarray:
        """uint8 RGB colours of values, shape (..., 3)."""
        return ramp_colours(self.position(values))

    def to_dict(self) -> dict:
        return {"low": self.low, "anchor": self.anchor, "high": self.high, "basis": self.basis}


def ramp_colours(position: np.ndarray) -> np.ndarray:
    """Colours of ramp positions in [0, 1]: cool up to 0.5 inclusive, hot above."""
    p = np.clip(np.asarray(position, dtype=np.float64), 0.0, 1.0)
    hot = p > 0.5
    out = np.empty(p.shape + (3,), dtype=np.float64)
    for c in range(3):
        out[..., c] = np.where(hot, np.interp(p, _HOT_POS, _HOT[:, c]), np.interp(p, _COOL_POS, _COOL[:, c]))
    return np.rint(out).astype(np.uint8)


def hue_family(rgb) -> str:
    """"cool" (blue/cyan) or "hot" (red/orange/yellow) for one RGB colour: which side of the
    threshold a colour tells (used by the tests and to describe the scale)."""
    red, blue = int(rgb[0]), int(rgb[2])
    return "cool" if blue > red else "hot"


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@lru_cache(maxsize=64)
def colour_bar(width: int, scale: ColourScale) -> np.ndarray:
    """A strip to append under an overlay of `width` pixels: the ramp from low to high, a tick at
    the threshold, and the values low / threshold / high written on it when the width allows.
    Returns H x width x 3 uint8 (cached: a run draws the same strip for every image of a size)."""
    width = max(1, int(width))
    font_px = int(np.clip(width / 40, 9, 18))
    ramp_h = max(4, font_px // 2 + 2)
    text_h = font_px + 4 if width >= 120 else 0
    strip = np.full((ramp_h + text_h + 2, width, 3), 255, np.uint8)
    xs = np.linspace(0.0, 1.0, width)
    strip[1 : 1 + ramp_h] = ramp_colours(xs)[None, :, :]
    tick = round(0.5 * (width - 1))
    strip[: ramp_h + 2, max(0, tick - 1) : tick + 1] = 0  # the threshold: a black line across the ramp
    if text_h:
        img = Image.fromarray(strip)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(font_px)
        y = ramp_h + 2
        labels = ((0, _fmt(scale.low), "la"), (tick, _fmt(scale.anchor), "ma"), (width - 1, _fmt(scale.high), "ra"))
        for x, text, anchor in labels:
            draw.text((x, y), text, fill=(0, 0, 0), font=font, anchor=anchor)
        strip = np.asarray(img)
    strip.setflags(write=False)
    return strip


def with_colour_bar(overlay: np.ndarray, scale: ColourScale) -> np.ndarray:
    """The overlay with its run's colour bar appended below (same width, taller)."""
    bar = colour_bar(overlay.shape[1], scale)
    return np.concatenate([overlay, bar], axis=0)


def scale_svg(scale: ColourScale, width: int = 360, height: int = 46) -> str:
    """The colour scale as an inline SVG for the report: gradient, threshold line and values."""
    stops = []
    for pos in np.linspace(0.0, 1.0, 41):
        # Two stops at the threshold so the jump from cool to hot stays sharp.
        for p in ((0.5, 0.5 + 1e-6) if abs(pos - 0.5) < 1e-9 else (pos,)):
            r, g, b = ramp_colours(np.array(p))
            stops.append(f'<stop offset="{p:.6f}" stop-color="rgb({r},{g},{b})"/>')
    pad, bar_h = 30, 16
    inner = width - 2 * pad
    mid = pad + inner / 2
    return (
        f'<svg id="colour-scale" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Colour scale of the overlays">'
        f'<defs><linearGradient id="scale-gradient">{"".join(stops)}</linearGradient></defs>'
        f'<rect x="{pad}" y="4" width="{inner}" height="{bar_h}" fill="url(#scale-gradient)" stroke="#888"/>'
        f'<line x1="{mid:.1f}" y1="0" x2="{mid:.1f}" y2="{bar_h + 8}" stroke="#111" stroke-width="2"/>'
        f'<text x="{pad}" y="{bar_h + 20}" text-anchor="middle">{_fmt(scale.low)}</text>'
        f'<text x="{mid:.1f}" y="{bar_h + 20}" text-anchor="middle" font-weight="600">{_fmt(scale.anchor)}</text>'
        f'<text x="{pad + inner}" y="{bar_h + 20}" text-anchor="middle">{_fmt(scale.high)}</text>'
        "</svg>"
    )


# Without a threshold, this many references are scored leave-one-out to find the good range.
SCALE_REFERENCES = 4


def scale_for_run(detector) -> ColourScale:
    """The colour scale of a run of `detector`, fixed before its first image.

    - With a threshold: anchored to the pixel threshold (the mask's; else the image threshold),
      0 .. threshold .. 2 x threshold.
    - Without, but with reference images in memory: anchored to the highest map value of up to
      SCALE_REFERENCES references scored leave-one-out (what a good part reaches); not a decision.
    - Otherwise (zero-shot, no threshold): the fixed scale 0 .. 0.5 .. 1.
    """
    for name, t in (("pixel threshold", detector.pixel_threshold), ("threshold", detector.threshold)):
        if t is not None:
            return ColourScale.around(t.value, f"{name} {_fmt(t.value)}: cool below it, hot above (0 .. 2 x threshold)")
    refs = list(getattr(detector, "_references", None) or [])
    if len(refs) >= 2:
        import torch

        held_out = list(range(min(SCALE_REFERENCES, len(refs))))
        with torch.inference_mode():
            outputs = detector.method.leave_one_out(refs, held_out)
        top = max(float(np.nanmax(o.anomaly_map)) for o in outputs)
        if math.isfinite(top):
            return ColourScale.around(
                top,
                f"no threshold: the highest map value of {len(held_out)} reference images (leave-one-out), "
                f"{_fmt(top)}, separates cool from hot; it is not a decision",
            )
    return ColourScale(0.0, 0.5, 1.0, "no threshold and no references: fixed scale 0 .. 1, not a decision")
