"""`ImageReading`: how image files are read (pixel limit, bit depth), a light module the CLI can
import without numpy or Pillow. The reading itself is `anomalens.images`; the bit-depth rule is
`anomalens.bit_depth`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UsageError

# A decoded image above this many pixels is refused unread (`--max-pixels` raises it). 50 MP holds
# a 16k line-scan camera's 3,000 lines; decoding it needs at most ~150 MB (RGB) or ~300 MB (16 bit).
DEFAULT_MAX_PIXELS = 50_000_000
BIT_DEPTHS = ("auto", "8", "10", "12", "14", "16")


def parse_bit_depth(value: object) -> str | int:
    """"auto" or one of 8, 10, 12, 14, 16; anything else raises ValueError naming the choices."""
    text = str(value).strip().lower()
    if text not in BIT_DEPTHS:
        raise ValueError(f"bit depth must be one of {', '.join(BIT_DEPTHS)}, got {value!r}")
    return text if text == "auto" else int(text)


@dataclass(frozen=True)
class ImageReading:
    """How image files are read: the pixel limit and the bit depth of deep samples.

    bit_depth: "auto" (the file's significant-bits information, else its container depth) or
    8, 10, 12, 14, 16 (see `anomalens.bit_depth` for the rule). max_pixels: images whose decoded
    size is above this many pixels are refused unread (a JPEG counts at the reduced scale it is
    decoded at). Raises UsageError for other values.
    """

    bit_depth: str | int = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "bit_depth", parse_bit_depth(self.bit_depth))
        except ValueError as err:
            raise UsageError(f"--bit-depth: {err}") from None
        limit = self.max_pixels
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"--max-pixels must be a positive whole number of pixels, got {self.max_pixels!r}")
        object.__setattr__(self, "max_pixels", limit)

    def to_dict(self) -> dict[str, Any]:
        return {"bit_depth": self.bit_depth, "max_pixels": self.max_pixels}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ImageReading:
        data = data or {}
        return cls(data.get("bit_depth", "auto"), data.get("max_pixels", DEFAULT_MAX_PIXELS))


