"""The fixed-filter PNG encoder: files that Pillow (an independent decoder) reads back exactly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from anomalens.png_encoding import PNG_SIGNATURE, encode_png


def decoded(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()  # Pillow checks each chunk's CRC while reading
    return np.asarray(img)


@pytest.mark.parametrize("shape", [(37, 53, 3), (37, 53), (1, 9, 3), (9, 1), (1, 1), (1, 1, 3)])
@pytest.mark.parametrize(
    ("deflate", "level", "strategy"),
    [
        ("zlib", 1, zlib.Z_DEFAULT_STRATEGY),
        ("zlib", 1, zlib.Z_HUFFMAN_ONLY),
        ("isal", 0, zlib.Z_DEFAULT_STRATEGY),
        ("isal", 1, zlib.Z_DEFAULT_STRATEGY),
        ("isal", 3, zlib.Z_DEFAULT_STRATEGY),
    ],
)
def test_pillow_reads_back_the_same_pixels(shape, deflate, level, strategy):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(array, level, strategy, deflate=deflate)
    assert data.startswith(PNG_SIGNATURE)
    img = Image.open(io.BytesIO(data))
    assert img.mode == ("RGB" if array.ndim == 3 else "L")
    np.testing.assert_array_equal(decoded(data), array)


def test_up_filter_wraps_modulo_256():
    # a row of 255 under a row of 0 (and back): differences that wrap around in uint8
    array = np.array([[0, 255, 7], [255, 0, 7], [1, 254, 8]], dtype=np.uint8)
    np.testing.assert_array_equal(decoded(encode_png(array)), array)


@pytest.mark.parametrize("deflate", ["isal", "zlib"])
def test_header_and_filtered_rows_by_hand(deflate):
    array = np.array([[10, 20], [15, 5]], dtype=np.uint8)
    data = encode_png(array, deflate=deflate)
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    assert struct.unpack(">IIBBBBB", data[16:29]) == (2, 2, 8, 0, 0, 0, 0)  # 2 x 2, 8 bit, grey
    idat_at = data.index(b"IDAT")
    size = struct.unpack(">I", data[idat_at - 4 : idat_at])[0]
    raw = zlib.decompress(data[idat_at + 4 : idat_at + 4 + size])
    # filter byte 2 (Up) per row; row 0 as is, row 1 minus row 0 modulo 256
    assert raw == bytes([2, 10, 20, 2, 5, (5 - 20) % 256])
    assert data.endswith(b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_a_non_contiguous_view_is_encoded_as_its_pixels():
    array = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)[::2, ::3]
    np.testing.assert_array_equal(decoded(encode_png(array)), array)


@pytest.mark.parametrize(
    "array",
    [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((4,), np.uint8), np.zeros((0, 4), np.uint8)],
)
def test_other_arrays_are_refused(array):
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(array)


def test_the_default_deflate_is_isal_and_an_unknown_one_is_refused():
    from anomalens.png_encoding import DEFAULT_DEFLATE

    assert DEFAULT_DEFLATE == "isal"  # a dependency: its absence would make every run's PNGs ~3x slower
    with pytest.raises(ValueError, match="deflate must be one of"):
        encode_png(np.zeros((2, 2), np.uint8), deflate="gzip")
