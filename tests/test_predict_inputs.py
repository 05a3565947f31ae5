"""`Detector.predict` on images in memory: each kind gives the score of the same image read from a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import striped_texture

from anomalens import Detector
from anomalens.errors import ImageLoadError
from anomalens.images import LoadedImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 40, 56


def texture(seed: int) -> np.ndarray:
    return striped_texture(seed, H, W, noise=8.0)


@pytest.fixture(scope="module")
def det(tmp_path_factory) -> Detector:
    refs = tmp_path_factory.mktemp("refs")
    for s in range(3):
        Image.fromarray(texture(s)).save(refs / f"r{s}.png")
    return Detector(method="patchknn", image_size=64).fit([refs])


def score_of_file(det, path) -> float:
    (result,) = det.predict([path])
    return result.score


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    img = texture(7)
    img[10:20, 20:30] = (10, 200, 30)
    return img


def test_rgb_inputs_of_every_kind_score_as_the_png_file(det, rgb, tmp_path):
    path = tmp_path / "q.png"
    Image.fromarray(rgb).save(path)
    expected = score_of_file(det, path)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    inputs = {
        "uint8 array": rgb,
        "float64 array": rgb / 255.0,
        "float32 array": (rgb / 255.0).astype(np.float32),
        "uint16 array": rgb.astype(np.uint16) * 257,  # high byte = the 8-bit value
        "PIL image": Image.fromarray(rgb),
        "PNG bytes": path.read_bytes(),
        "uint8 tensor": chw,
        "float tensor": chw.float() / 255.0,
        "RGBA array (opaque)": np.dstack([rgb, np.full((H, W), 255, np.uint8)]),
        "path": str(path),
    }
    results = det.predict(list(inputs.values()))
    for (kind, _), result in zip(inputs.items(), results):
        assert result.score == pytest.approx(expected, abs=1e-6), kind
        assert result.anomaly_map.shape == (H, W), kind
    names = [r.path for r in results]
    assert names[:9] == ["array-0", "array-1", "array-2", "array-3", "pil-4", "bytes-5", "tensor-6", "tensor-7",
                         "array-8"]
    assert names[9] == str(path)


def test_grey_16bit_transparent_and_jpeg_inputs_match_their_files(det, rgb, tmp_path):
    grey = rgb[:, :, 1]
    grey16 = (grey.astype(np.uint16) * 200).astype(np.uint16)
    rgba = np.dstack([rgb, np.where(np.arange(W)[None, :] < W // 2, 255, 90).astype(np.uint8).repeat(H, 0)])
    cases = {
        "grey.png": (grey, grey),
        "grey16.png": (grey16, grey16),
        "rgba.png": (rgba, rgba),
    }
    for name, (pixels, array) in cases.items():
        Image.fromarray(pixels).save(tmp_path / name)
        expected = score_of_file(det, tmp_path / name)
        (from_array,) = det.predict([array])
        assert from_array.score == pytest.approx(expected, abs=1e-6), name
    # Grey as an H x W tensor and a 1 x H x W tensor.
    expected = score_of_file(det, tmp_path / "grey.png")
    results = det.predict([torch.from_numpy(grey), torch.from_numpy(grey)[None]])
    assert [r.score for r in results] == pytest.approx([expected, expected], abs=1e-6)
    # JPEG: bytes and the PIL image decode like the file.
    Image.fromarray(rgb).save(tmp_path / "q.jpg", quality=90)
    expected = score_of_file(det, tmp_path / "q.jpg")
    with Image.open(tmp_path / "q.jpg") as pil:
        results = det.predict([(tmp_path / "q.jpg").read_bytes(), pil])
    assert [r.score for r in results] == pytest.approx([expected, expected], abs=1e-6)


def test_names_single_images_and_batches(det, rgb):
    (one,) = det.predict(rgb, names=["part 17"])  # one image alone, not in a list
    assert one.path == "part 17"
    batch = torch.from_numpy(np.stack([rgb, rgb[::-1]])).permute(0, 3, 1, 2)  # N x C x H x W
    results = det.predict(batch, names=["a", "b"])
    assert [r.path for r in results] == ["a", "b"] and results[0].score == pytest.approx(one.score, abs=1e-6)
    with pytest.raises(ValueError, match="2 names given for 1 images"):
        det.predict([rgb], names=["a", "b"])


@pytest.mark.parametrize(
    "value, message",
    [
        (np.zeros((H, W), np.int32), "unsupported image dtype int32"),
        (np.zeros((H, W, 2), np.uint8), "H x W x 3 or H x W x 4, got shape (40, 56, 2)"),
        (np.full((H, W), 1.5), "values must be in [0, 1], got 1.5 .. 1.5"),
        (np.full((H, W), np.nan), "NaN or infinite"),
        (np.zeros((0, W), np.uint8), "empty image array"),
        (torch.zeros(5, H, W), "C x H x W with C = 1, 3 or 4, got shape (5, 40, 56)"),
        (torch.zeros(H, W, dtype=torch.int64), "unsupported image dtype int64"),
        (b"not an image", "not an image file"),
        (12, "unsupported input type int"),
    ],
)
def test_unsupported_inputs_get_a_clear_error_naming_the_input(det, value, message):
    with pytest.raises(ImageLoadError) as err:
        det.predict([value])
    assert message in str(err.value) and str(err.value).startswith(("array-0:", "tensor-0:", "bytes-0:", "int-0:"))


def test_a_bad_input_in_a_run_is_reported_and_the_others_scored(det, rgb):
    items = list(det.predict_iter([rgb, np.zeros((H, W), np.int64), b"x", rgb],
                                  skip_errors=True))
    assert [type(i).__name__ for i in items] == ["AnomalyResult", "ImageLoadError", "ImageLoadError", "AnomalyResult"]
    assert items[1].path == "array-1" and items[2].path == "bytes-2"


def test_jointly_scoring_method_takes_arrays_with_names():
    det = Detector("musc", image_size=64, progress=False)  # scores the images against each other
    frames = [np.clip(texture(s)[:, :, :1].repeat(3, 2).astype(int) + s, 0, 255).astype(np.uint8) for s in range(4)]
    frames[2][10:20, 20:30] = (255, 0, 0)
    from_arrays = det.predict(frames, names=["f0", "f1", "f2", "f3"])
    from_loaded = det.predict([LoadedImage(f"f{i}", f) for i, f in enumerate(frames)])
    assert [r.path for r in from_arrays] == ["f0", "f1", "f2", "f3"]
    assert [r.score for r in from_arrays] == pytest.approx([r.score for r in from_loaded], abs=1e-6)


def test_fit_takes_the_inputs_predict_takes(det, rgb, tmp_path):
    refs = [texture(s) for s in range(3)]
    for s, ref in enumerate(refs):
        Image.fromarray(ref).save(tmp_path / f"r{s}.png")
    from_arrays = Detector(method="patchknn", image_size=64).fit(refs)
    from_pil = Detector(method="patchknn", image_size=64).fit([Image.fromarray(r) for r in refs])
    (expected,) = det.predict([rgb])  # fitted on the same images as files
    assert from_arrays.predict([rgb])[0].score == pytest.approx(expected.score, abs=1e-6)
    assert from_pil.predict([rgb])[0].score == pytest.approx(expected.score, abs=1e-6)
    one = Detector(method="patchknn", image_size=64).fit(str(tmp_path / "r0.png"))  # one path alone, not its letters
    assert one.reference_paths == [str(tmp_path / "r0.png")]
