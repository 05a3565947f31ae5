"""Issue 12 items 5, 10, 11: bit depth of 16-bit files, the pixel limit, and what was read."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import anomalens.images as images
from anomalens.errors import ImageLoadError, UsageError
from anomalens.image_reading import DEFAULT_MAX_PIXELS, ImageReading
from anomalens.images import load_image, read_ahead


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_sbit(png: Path, bits: int, channels: int = 1) -> Path:
    """Insert an sBIT chunk (significant bits per channel) right after IHDR, as cameras write it."""
    data = png.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    png.write_bytes(data[:ihdr_end] + _chunk(b"sBIT", bytes([bits] * channels)) + data[ihdr_end:])
    return png


def grey16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


def bomb_png(path: Path, width: int = 28000, height: int = 28000) -> Path:
    """A valid 8-bit greyscale PNG of zeros declaring width x height: ~0.8 MB on disk."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    rows_per_call = max(1, 4_000_000 // len(row))
    block = row * rows_per_call
    parts = []
    for start in range(0, height, rows_per_call):
        n = min(rows_per_call, height - start)
        parts.append(packer.compress(block if n == rows_per_call else row * n))
    idat = b"".join(parts) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


EIGHT_BIT = np.arange(256, dtype=np.int64).reshape(16, 16)  # every 8-bit grey level


# ---- item 5: 10/12/14-bit data in 16-bit files -------------------------------------------------


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_n_bit_data_reads_like_the_8_bit_image_with_sbit_or_bit_depth(tmp_path, bits):
    top = 2**bits - 1
    deep = np.rint(EIGHT_BIT * top / 255)  # the same image as the camera's N-bit values
    plain = grey16(tmp_path / "plain.png", deep)
    sbit = with_sbit(grey16(tmp_path / "sbit.png", deep), bits)
    expected = np.repeat(EIGHT_BIT[:, :, None], 3, axis=2)
    # auto + sBIT, and --bit-depth N on a file without sBIT: exactly the 8-bit image.
    assert (load_image(sbit).rgb == expected).all()
    assert (load_image(plain, ImageReading(bit_depth=bits)).rgb == expected).all()
    # auto without sBIT: the container's 16 bits (documented), so N-bit white is dark grey.
    assert load_image(plain).rgb.max() == round(top / 65535 * 255)


def test_bit_depth_16_and_8(tmp_path):
    full = grey16(tmp_path / "full.png", np.rint(EIGHT_BIT * 65535 / 255))
    assert (load_image(full, ImageReading(bit_depth=16)).rgb[..., 0] == EIGHT_BIT).all()
    low = grey16(tmp_path / "low.png", EIGHT_BIT)  # 8-bit values in a 16-bit file
    assert (load_image(low, ImageReading(bit_depth=8)).rgb[..., 0] == EIGHT_BIT).all()
    assert load_image(low).rgb.max() == 1  # auto: 255 / 65535 of white


def test_sbit_file_scaled_to_16_bits_as_the_png_spec_says(tmp_path):
    # 12 significant bits, values scaled up to 0..65535 (PNG spec, pypng): white is 65535.
    scaled = with_sbit(grey16(tmp_path / "scaled.png", np.rint(EIGHT_BIT * 65535 / 255)), 12)
    assert (load_image(scaled).rgb[..., 0] == EIGHT_BIT).all()
    # Shifted up by 4 bits (libpng's png_set_shift) and dark: every value a multiple of 16.
    dark = np.rint(EIGHT_BIT / 255 * 200) * 16  # 12-bit values 0..200, shifted: all below 4096
    shifted = with_sbit(grey16(tmp_path / "shifted.png", dark), 12)
    assert load_image(shifted).rgb.max() == round(200 * 16 / 65535 * 255)


def test_explicit_bit_depth_wins_over_sbit(tmp_path):
    deep = np.rint(EIGHT_BIT * 4095 / 255)
    sbit = with_sbit(grey16(tmp_path / "sbit.png", deep), 12)
    assert load_image(sbit, ImageReading(bit_depth=16)).rgb.max() == round(4095 / 65535 * 255)


def test_tiff_max_sample_value_gives_the_bit_depth(tmp_path):
    deep = np.rint(EIGHT_BIT * 4095 / 255).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "tagged.tif", tiffinfo={281: 4095})  # MaxSampleValue
    Image.fromarray(deep).save(tmp_path / "plain.tif")
    expected = EIGHT_BIT
    assert (load_image(tmp_path / "tagged.tif").rgb[..., 0] == expected).all()
    assert load_image(tmp_path / "plain.tif").rgb.max() == 16  # auto without tags: 16 bits
    assert (load_image(tmp_path / "plain.tif", ImageReading(bit_depth=12)).rgb[..., 0] == expected).all()


def test_reduced_16_bit_image_keeps_its_bit_depth(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_WORKING_PIXELS", 8 * 8)
    deep = np.full((16, 16), 4095, np.uint16)
    deep[:, :8] = 0
    path = with_sbit(grey16(tmp_path / "deep.png", deep), 12)
    img = load_image(path)
    assert img.rgb.shape == (8, 8, 3) and img.rgb[0, 0, 0] == 0 and img.rgb[0, -1, 0] == 255


def test_16_bit_colour_with_few_significant_bits_is_refused_by_name(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0] = 4095
    # A 16-bit RGB PNG written by hand (Pillow writes no 48-bit colour).
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(4))
    header = struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    path = tmp_path / "rgb48.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    with_sbit(path, 12, channels=3)
    with pytest.raises(ImageLoadError, match=r"rgb48.png: 16-bit colour image holding 12-bit values"):
        load_image(path)
    assert load_image(path, ImageReading(bit_depth=16)).rgb.max() == 15  # read as it is: the top byte


@pytest.mark.parametrize("value", ["9", "32", "deep", "0"])
def test_bad_bit_depth_is_refused(value):
    with pytest.raises(UsageError, match="--bit-depth: bit depth must be one of auto, 8, 10, 12, 14, 16"):
        ImageReading(bit_depth=value)


@pytest.mark.parametrize("value", [0, -5, 1.5, "many", True])
def test_bad_max_pixels_is_refused(value):
    with pytest.raises(UsageError, match="--max-pixels must be a positive whole number"):
        ImageReading(max_pixels=value)


# ---- item 10: decompression bombs -------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 3_000_000
    return path


def test_bomb_is_refused_from_its_header_with_the_true_numbers(bomb, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageLoadError) as info:
        load_image(bomb)
    msg = str(info.value)
    assert "bomb.png: 28000 x 28000 = 784,000,000 pixels is more than the limit of 50,000,000" in msg
    assert "--max-pixels" in msg
    assert DEFAULT_MAX_PIXELS == 50_000_000
    with pytest.raises(ImageLoadError, match=r"784,000,000 pixels is more than the limit of 1,000,000"):
        load_image(bomb, ImageReading(max_pixels=1_000_000))


def test_bomb_costs_no_memory_in_a_fresh_process(bomb):
    code = (
        "import resource, sys, time\n"
        "from anomalens.images import load_image, ImageLoadError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "for _ in range(4):\n"  # a batch of four bombs
        "    try:\n"
        "        load_image(sys.argv[1])\n"
        "    except ImageLoadError as err:\n"
        "        msg = str(err)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024, time.perf_counter() - t, msg)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(images.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, env=env, check=True)
    grown_mb, seconds, msg = out.stdout.split(" ", 2)
    assert "784,000,000 pixels" in msg
    assert int(grown_mb) < 50, out.stdout  # decoding one would take 784 MB
    assert float(seconds) < 5  # header only (decoding takes seconds per bomb); loose for a busy machine


def test_jpeg_counts_at_the_scale_it_is_decoded_at(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_WORKING_PIXELS", 100 * 100)
    Image.fromarray(np.full((400, 400, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.full((400, 400, 3), 90, np.uint8)).save(tmp_path / "a.png")
    limit = ImageReading(max_pixels=20_000)
    assert load_image(tmp_path / "a.jpg", limit).original_hw == (400, 400)  # drafted to 100 x 100
    with pytest.raises(ImageLoadError, match=r"400 x 400 = 160,000 pixels is more than the limit of 20,000"):
        load_image(tmp_path / "a.png", limit)


def test_large_images_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_WORKING_PIXELS", 50 * 50)
    for i in range(6):
        Image.fromarray(np.full((120, 120, 3), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    active, peak, lock = [0], [0], threading.Lock()
    real_load = ImageFile.ImageFile.load

    def slow_load(self):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return real_load(self)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)
    got = list(read_ahead(sorted(tmp_path.glob("*.png")), load_image, jobs=3))
    assert len(got) == 6 and all(g.original_hw == (120, 120) for g in got)
    assert peak[0] == 1


# ---- item 11: say what was read ----------------------------------------------------------------


def test_animated_gif_multipage_tiff_and_tiny_images_say_what_was_read(tmp_path):
    frames = [Image.fromarray(np.full((20, 20, 3), 20 * i, np.uint8)) for i in range(12)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:3])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    frames[3].save(tmp_path / "single.gif")
    assert load_image(tmp_path / "anim.gif").notes == ("first frame of 12 read",)
    assert load_image(tmp_path / "pages.tif").notes == ("first page of 3 read",)
    assert load_image(tmp_path / "dot.png").notes == ("1 x 1 pixels: upscaled to the model's input",)
    assert load_image(tmp_path / "single.gif").notes == ()
    assert (load_image(tmp_path / "anim.gif").rgb == 0).all()  # the first frame


def test_symlink_loop_and_broken_link_are_named(tmp_path):
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    with pytest.raises(ImageLoadError, match="a.png: symbolic link loop"):
        load_image(tmp_path / "a.png")
    with pytest.raises(ImageLoadError, match=r"broken.png: broken symbolic link \(points to .*gone.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ImageLoadError, match="nothing.png: file does not exist"):
        load_image(tmp_path / "nothing.png")
