"""--device: resolution of the user's word (CPU-only tests) and placement of every module and tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anomalens import Detector
from anomalens.device import move_to, resolve_device, tensors_of
from anomalens.images import LoadedImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "fade": {"backbone": "test-tiny", "classification_size": 32, "segmentation_sizes": (32, 64)},
    "winclip": {"backbone": "test-tiny", "image_size": 32},
    "patchknn": {"image_size": 64},
}


def _images(n: int, seed: int = 0) -> list[LoadedImage]:
    rng = np.random.default_rng(seed)
    return [LoadedImage(f"i{i}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for i in range(n)]


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# ---- resolution --------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "expected"), [(0, "cpu"), (2, "cuda:0")])
def test_auto_picks_a_gpu_when_torch_sees_one(monkeypatch, count, expected):
    _gpus(monkeypatch, count)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(None) == torch.device(expected)
    assert resolve_device(" AUTO ") == torch.device(expected)


def test_explicit_devices(monkeypatch):
    _gpus(monkeypatch, 2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda:1")


@pytest.mark.parametrize(
    ("count", "spec", "message"),
    [
        (0, "cuda", "sees no CUDA GPU"),
        (0, "cuda:0", "sees no CUDA GPU"),
        (2, "cuda:2", r"sees 2 CUDA GPU\(s\) \(cuda:0..cuda:1\)"),
        (2, "cuda:x", "unknown device"),
        (2, "gpu", "unknown device"),
        (2, "mps", "unknown device"),
    ],
)
def test_bad_devices_are_one_line_errors(monkeypatch, count, spec, message):
    _gpus(monkeypatch, count)
    with pytest.raises(ValueError, match=message) as err:
        resolve_device(spec)
    assert "\n" not in str(err.value)


def test_cli_reports_a_bad_device(tmp_path, monkeypatch):
    from anomalens.cli import app

    _gpus(monkeypatch, 0)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(_images(1)[0].rgb).save(img)
    result = CliRunner().invoke(app, ["detect", str(img), "--device", "cuda:1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "sees no CUDA GPU" in result.output
    assert not (tmp_path / "o" / "results.jsonl").exists()


# ---- placement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fade", "winclip", "patchknn"])
def test_move_to_reaches_every_tensor_the_method_holds(method):
    """On the 'meta' device (CPU-only machines have it): after .to(), nothing is left behind."""
    det = Detector(method, device="cpu", **TINY[method]).fit(_images(2))
    det.predict(_images(1))  # builds whatever a method computes lazily (text features)
    before = tensors_of(vars(det.method))
    assert len(before) > 2 and {t.device.type for _, t in before} == {"cpu"}
    det.method.to("meta")
    after = tensors_of(vars(det.method))
    assert len(after) == len(before)
    left = [name for name, t in after if t.device.type != "meta"]
    assert left == []
    assert det.method.device == torch.device("meta")


def test_move_to_containers():
    holder = {"a": [torch.zeros(1), (torch.ones(2), "text")], "n": 3}
    moved = move_to(holder, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == "text" and moved["n"] == 3


@pytest.mark.parametrize("method", ["patchknn", "fade", "winclip"])
def test_cpu_device_gives_the_default_results(method):
    torch.manual_seed(0)
    default = Detector(method, **TINY[method]).fit(_images(2))
    torch.manual_seed(0)
    on_cpu = Detector(method, device="cpu", **TINY[method]).fit(_images(2))
    a, b = default.predict(_images(1, seed=3))[0], on_cpu.predict(_images(1, seed=3))[0]
    assert a.score == b.score
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_saved_model_loads_on_the_requested_device(tmp_path):
    from anomalens import load_detector

    torch.manual_seed(0)
    det = Detector("patchknn", device="cpu", **TINY["patchknn"]).fit(_images(2))
    det.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m", device="cpu")
    assert loaded.device == torch.device("cpu") and "device" not in loaded.settings
    assert loaded.predict(_images(1))[0].score == pytest.approx(det.predict(_images(1))[0].score, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["patchknn", "fade", "winclip"])
def test_everything_lands_on_the_gpu(method):
    torch.manual_seed(0)
    det = Detector(method, device="cuda", **TINY[method]).fit(_images(2))
    result = det.predict(_images(1, seed=3))[0]
    held = tensors_of(vars(det.method))
    assert held and [n for n, t in held if t.device.type != "cuda"] == []
    assert isinstance(result.anomaly_map, np.ndarray) and np.isfinite(result.anomaly_map).all()
    torch.manual_seed(0)
    cpu = Detector(method, device="cpu", **TINY[method]).fit(_images(2)).predict(_images(1, seed=3))[0]
    assert result.score == pytest.approx(cpu.score, abs=1e-3)
