"""Reading image files of every mode, clear errors naming the file, and fitting to the model input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalens import images as images_mod
from anomalens.images import (
    ImageLoadError,
    _to_rgb_uint8,
    list_images,
    load_image,
    map_to_image,
    to_model_input,
)

MEAN = (0.5, 0.25, 0.0)
STD = (0.5, 0.25, 1.0)


def rgb_array(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


# ---- modes -----------------------------------------------------------------------------------


def test_rgb_png_round_trip(tmp_path):
    arr = rgb_array()
    loaded = load_image(save(Image.fromarray(arr), tmp_path / "a.png"))
    assert loaded.rgb.dtype == np.uint8 and loaded.size_hw == (20, 30)
    assert np.array_equal(loaded.rgb, arr)
    assert loaded.path == str(tmp_path / "a.png")


def test_greyscale_l(tmp_path):
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    rgb = load_image(save(Image.fromarray(grey, "L"), tmp_path / "g.png")).rgb
    assert rgb.shape == (20, 30, 3)
    for c in range(3):
        assert np.array_equal(rgb[:, :, c], grey)


def test_rgba_transparent_becomes_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    rgba[2, 0, 3] = 128  # one half-transparent pixel
    rgb = load_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")).rgb
    assert (rgb[:2] == [200, 0, 0]).all()
    assert (rgb[3] == 255).all()
    # 50 % red over white: 0.5 * 200 + 0.5 * 255 ~ 228, 0.5 * 0 + 0.5 * 255 ~ 127.
    assert abs(int(rgb[2, 0, 0]) - 228) <= 1 and abs(int(rgb[2, 0, 1]) - 127) <= 1


def test_la_transparent_becomes_white(tmp_path):
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[0, :, 1] = 255
    rgb = load_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png")).rgb
    assert (rgb[0] == 40).all() and (rgb[1] == 255).all()


def palette_image() -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putpixel((0, 0), 1)
    img.putpixel((1, 0), 2)
    return img


def test_palette_without_transparency(tmp_path):
    rgb = load_image(save(palette_image(), tmp_path / "p.png")).rgb
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[0, 1]) == (0, 0, 255)
    assert (rgb[1:] == 0).all()  # index 0 is black, and opaque


def test_palette_with_transparency(tmp_path):
    rgb = load_image(save(palette_image(), tmp_path / "pt.png", transparency=0)).rgb
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[0, 1]) == (0, 0, 255)
    assert (rgb[1:] == 255).all()  # transparent index 0 -> white, not black


def test_palette_alpha_in_memory():
    img = Image.new("PA", (2, 1))
    img.putpalette([10, 20, 30] + [0] * 765)
    img.putpixel((0, 0), (0, 255))
    img.putpixel((1, 0), (0, 0))
    rgb = _to_rgb_uint8(img)
    assert tuple(rgb[0, 0]) == (10, 20, 30) and tuple(rgb[0, 1]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "d.png")
    assert Image.open(path).mode.startswith("I;16")
    rgb = load_image(path).rgb
    assert rgb.shape == (1, 4, 3)
    assert list(rgb[0, :, 0]) == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # no black, full magenta + yellow = red
    rgb = load_image(save(cmyk, tmp_path / "c.jpg", quality=100)).rgb
    assert rgb.shape == (6, 8, 3)
    r, g, b = rgb.reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 25 and b < 25


def test_exif_rotated_jpeg(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = [250, 0, 0]  # left half red, right half blue (as stored)
    arr[:, 20:] = [0, 0, 250]
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(img, tmp_path / "r.jpg", exif=exif, quality=95)
    rgb = load_image(path).rgb
    assert rgb.shape == (40, 20, 3)
    # Rotated 90 degrees clockwise: the stored left half (red) is now on top.
    assert rgb[:15, :, 0].mean() > 200 and rgb[25:, :, 2].mean() > 200


# ---- errors ----------------------------------------------------------------------------------


def expect_error(path: Path, *words: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    msg = str(info.value)
    assert str(path) in msg and info.value.path == str(path)
    for word in words:
        assert word in msg
    return info.value


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.png", "does not exist")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    expect_error(path, "empty")


def test_directory(tmp_path):
    (tmp_path / "d.png").mkdir()
    expect_error(tmp_path / "d.png", "directory")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    expect_error(path, "not an image file")


@pytest.mark.parametrize("suffix,keep", [(".png", 0.5), (".png", 100), (".jpg", 0.5), (".jpg", 100)])
def test_truncated_files(tmp_path, suffix, keep):
    full = save(Image.fromarray(rgb_array(64, 64)), tmp_path / f"full{suffix}")
    data = full.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    expect_error(path, "truncated")


def test_unreadable_file(tmp_path, monkeypatch):
    # We may run as root, which reads anything whatever its mode: simulate the check instead.
    path = save(Image.fromarray(rgb_array()), tmp_path / "locked.png")
    real_access = os.access
    monkeypatch.setattr(images_mod.os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    expect_error(path, "permission denied")


def test_unreadable_file_for_real(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read a chmod 000 file")
    path = save(Image.fromarray(rgb_array()), tmp_path / "locked.png")
    path.chmod(0)
    try:
        expect_error(path, "permission denied")
    finally:
        path.chmod(0o644)


# ---- listing ---------------------------------------------------------------------------------


def test_list_images(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    for p in (a / "2.png", a / "1.JPG", a / "sub" / "3.bmp", b / "x.tif"):
        p.write_bytes(b"x")
    (a / "readme.txt").write_text("skip me")
    (a / ".hidden.png").write_bytes(b"x")
    explicit = tmp_path / "odd.txt"
    explicit.write_text("explicit files are kept")
    found = list_images([a, b / "x.tif", b, explicit, a / "2.png", str(a)])
    assert found == [a / "1.JPG", a / "2.png", a / "sub" / "3.bmp", b / "x.tif", explicit]
    assert list_images([a], recursive=False) == [a / "1.JPG", a / "2.png"]
    # A relative spelling of the same file is a duplicate too.
    rel = Path(os.path.relpath(a / "2.png"))
    assert list_images([a / "2.png", rel]) == [a / "2.png"]


# ---- model input -----------------------------------------------------------------------------


def test_squash_shape_box_and_normalisation():
    rgb = np.full((30, 60, 3), 255, dtype=np.uint8)
    x, box = to_model_input(rgb, 32, MEAN, STD, policy="squash")
    assert x.shape == (3, 32, 32) and box == (0, 0, 32, 32)
    # White (1.0) normalised per channel: (1 - mean) / std.
    expected = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)])
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected)
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_pad_places_wide_image_in_the_middle():
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :, 0] = 255
    rgb[:10, :, 1] = 255  # top half yellow, bottom half red
    x, box = to_model_input(rgb, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), policy="pad")
    assert x.shape == (3, 32, 32)
    assert box == (8, 0, 16, 32)  # 20 x 40 -> 16 x 32, centred vertically
    top, left, h, w = box
    # The padding is the image's mean colour: red 1.0, green 0.5.
    torch.testing.assert_close(x[:, :top].mean(dim=(1, 2)), torch.tensor([1.0, 0.5, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(x[:, top + h :].mean(dim=(1, 2)), torch.tensor([1.0, 0.5, 0.0]), atol=1e-3, rtol=0)
    inside = x[:, top : top + h, left : left + w]
    assert inside[1, :6].min() > 0.95 and inside[1, -6:].max() < 0.05
    # A tall image is centred horizontally.
    _, tall_box = to_model_input(np.zeros((40, 20, 3), np.uint8), 32, MEAN, STD, policy="pad")
    assert tall_box == (0, 8, 32, 16)
    with pytest.raises(ValueError, match="unknown resize policy"):
        to_model_input(rgb, 32, MEAN, STD, policy="crop")


def test_model_input_does_not_touch_the_array():
    rgb = rgb_array()
    copy = rgb.copy()
    rgb.setflags(write=False)  # as np.asarray(PIL image) returns
    to_model_input(rgb, 16, MEAN, STD)
    assert np.array_equal(rgb, copy)


def test_map_to_image_squash_and_pad():
    # Squash: a constant map stays constant at the original size.
    out = map_to_image(torch.full((4, 4), 0.3), (0, 0, 32, 32), 32, (20, 40))
    assert out.shape == (20, 40) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
    # Pad: 1 inside the image's box, 0 in the padding -> the crop is (almost) all 1.
    box = (8, 0, 16, 32)
    full = torch.zeros(32, 32)
    full[8:24, :] = 1.0
    out = map_to_image(full, box, 32, (20, 40))
    assert out.shape == (20, 40)
    assert out.min() > 0.99
    # A coarse patch map (4 x 4 on a 32 px input) is upsampled first, then cropped.
    coarse = torch.tensor([[0.0] * 4, [1.0] * 4, [1.0] * 4, [0.0] * 4])
    out = map_to_image(coarse, box, 32, (20, 40))
    assert out.shape == (20, 40)
    assert out[6:14].min() > 0.99 and out.min() > 0.5  # bilinear blur only at the box's edges
