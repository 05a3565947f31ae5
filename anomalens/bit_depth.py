"""How many bits of a 16-bit sample hold data, and what value is full scale (white).

Industrial cameras write 10-, 12- and 14-bit data into 16-bit PNG and TIFF files, usually as the
plain values (a 12-bit white is 4095, not 65535). Scaling such a file by 65535 squeezes it into
the darkest 16 grey levels. The rule (`--bit-depth`, `ImageReading.bit_depth`):

* ``auto`` (the default): the file's own significant-bits information: PNG's ``sBIT`` chunk, or
  TIFF's BitsPerSample / MaxSampleValue / SMaxSampleValue tags; without any, the container's
  depth (16). The pixel values are not used to guess: a guess would read a dark image of a part
  differently from a bright one of the same part, and change its score.
* ``8``, ``10``, ``12``, ``14``, ``16``: the samples hold that many bits, whatever the file says.

With N significant bits in a 16-bit container, values that fit N bits are read with 2^N - 1 as
white (what cameras write). Values above 2^N - 1 cannot be N-bit values: the file holds them scaled
up to the container, as the PNG specification says for ``sBIT`` (and as libpng's shift writes
them: every value a multiple of 2^(16-N)); then 65535 is white. Files of 8 bits or less per
sample are read as they are.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# TIFF tags: BitsPerSample, MaxSampleValue, SMaxSampleValue.
_BITS_PER_SAMPLE, _MAX_SAMPLE_VALUE, _SMAX_SAMPLE_VALUE = 258, 281, 341


def png_significant_bits(fp: BinaryIO) -> int | None:
    """The largest channel value of a PNG's sBIT chunk (None: no sBIT, or not a PNG).

    Reads chunk headers up to the first IDAT, from the stream's start; the position is restored.
    """
    start = fp.tell()
    try:
        fp.seek(0)
        if fp.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == b"sBIT":
                body = fp.read(min(length, 4))
                return max(body) if body else None
            fp.seek(length + 4, 1)  # the body and its CRC
    except (OSError, struct.error):
        return None
    finally:
        fp.seek(start)


def tiff_significant_bits(img: Image.Image) -> int | None:
    """Bits of a TIFF's samples from BitsPerSample and the (S)MaxSampleValue tags, if any."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    found = []
    bits = tags.get(_BITS_PER_SAMPLE)
    if bits:
        found.append(int(max(bits) if isinstance(bits, tuple) else bits))
    for tag in (_MAX_SAMPLE_VALUE, _SMAX_SAMPLE_VALUE):
        top = tags.get(tag)
        if top:
            top = max(top) if isinstance(top, tuple) else top
            if float(top) >= 1:
                found.append(int(float(top)).bit_length())
    return min(found) if found else None


def full_scale(values: np.ndarray, significant: int, container: int = 16) -> float:
    """The sample value that is white, for samples with `significant` bits in a `container`.

    See the module docstring for the rule; `values` are the decoded samples (integers, before
    any reduction: an average of shifted values is no longer a multiple of the shift).
    """
    container_top = float(2**container - 1)
    if significant >= container or values.size == 0:
        return container_top
    top = float(2**significant - 1)
    peak = float(values.max())
    if peak > top:
        return container_top  # scaled up to the container (PNG's sBIT convention)
    low_bits = 2 ** (container - significant) - 1
    integer = np.issubdtype(values.dtype, np.integer)
    if peak > 0 and integer and not int(np.bitwise_or.reduce(values, axis=None)) & low_bits:
        return container_top  # shifted up (libpng's png_set_shift): a dark image of such a file
    return top
