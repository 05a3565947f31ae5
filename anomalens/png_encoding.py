"""PNG files for overlays and masks, encoded with one fixed row filter.

Pillow's PNG encoder chooses a filter per row by trying all five (adaptive filtering) and has no
setting to fix one; for a run's overlays that search was most of the time spent writing a file.
Here every row uses the "Up" filter (the difference to the row above, one numpy subtraction for
the whole image), compressed by zlib: `python benchmarks/png_speed.py` (100 magnetic_tile overlays,
one thread): 10.3 -> 4.2 ms per overlay, files 5 % larger (161 against 153 KB); masks 0.76 -> 0.21
ms. Since session 37 ISA-L's deflate (python-isal) compresses instead when installed: 2.8 -> 1.1 ms
per overlay at the same size (160 KB), masks 0.12 -> 0.03 ms (1.9 against 2.3 KB).
The pixels are the same (PNG is lossless; tests read the files back with Pillow).

The file is the PNG specification's minimal one: signature, IHDR, one IDAT, IEND (8-bit
greyscale or RGB, no interlacing, no ancillary chunks; what Pillow writes for these arrays too).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

try:  # python-isal: Intel ISA-L's deflate, the same stream format ~3x faster than zlib at its fast levels
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheel: zlib alone
    isal_zlib = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2  # PNG filter type 2: each byte minus the byte above it (the first row: as is)
COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (0 greyscale, 2 RGB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Deflate engines: "isal" (the default when python-isal is installed, as anomalens requires) compresses at
# ISA-L's `level` (0-3, fastest first) and has no strategies; "zlib" at zlib's `level` with `strategy`. A
# 394 x 248 magnetic_tile overlay: ISA-L level 1 0.9 ms, 115 KB; zlib level 1 Huffman-only 3.2 ms, 128 KB
# (`python benchmarks/png_speed.py`).
DEFLATE_ENGINES = ("isal", "zlib")
DEFAULT_DEFLATE = "isal" if isal_zlib is not None else "zlib"


def encode_png(
    array: np.ndarray, level: int = 1, strategy: int = zlib.Z_DEFAULT_STRATEGY, deflate: str = DEFAULT_DEFLATE
) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> the bytes of a PNG file of it (Up filter, then `deflate` at `level`;
    zlib also takes `strategy`)."""
    if deflate not in DEFLATE_ENGINES or (deflate == "isal" and isal_zlib is None):
        raise ValueError(f"encode_png: deflate must be one of {DEFLATE_ENGINES} (isal: python-isal), got {deflate!r}")
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in COLOUR_TYPES):
        raise ValueError(f"encode_png takes (H, W) or (H, W, 3) uint8 arrays, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"encode_png: an empty image ({h} x {w})")
    channels = 1 if a.ndim == 2 else a.shape[2]
    flat = a.reshape(h, w * channels)
    rows = np.empty((h, w * channels + 1), dtype=np.uint8)
    rows[:, 0] = FILTER_UP
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG's does
    if deflate == "isal":
        data = isal_zlib.compress(rows.data, level)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
        data = compressor.compress(rows.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, COLOUR_TYPES[channels], 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
