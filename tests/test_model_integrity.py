"""A saved model folder loads whole or not at all (issue 12, item 2; file modes, item 11)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from anomalens import Detector, load_detector
from anomalens.errors import ModelFileError


def _images(rng, n, size=48):
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for i, img in enumerate(_images(rng, 3)):
        p = folder / f"good{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    det = Detector(method="patchknn", image_size=64).fit(paths)
    out = tmp_path_factory.mktemp("model") / "m"
    det.save(out)
    return out


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_whole_folder_loads(saved):
    det = load_detector(saved, device="cpu")
    assert det.method.fitted_


def test_json_without_tensors_is_refused(saved, tmp_path):
    m = _copy(saved, tmp_path / "m")
    (m / "detector.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"detector\.safetensors is missing"):
        load_detector(m, device="cpu")


def test_renamed_tensor_is_named(saved, tmp_path):
    m = _copy(saved, tmp_path / "m")
    state = load_file(str(m / "detector.safetensors"))
    key = sorted(state)[0]
    state["renamed"] = state.pop(key)
    save_file(state, str(m / "detector.safetensors"))
    with pytest.raises(ModelFileError, match=rf"missing \['{key}'\].*unexpected \['renamed'\]"):
        load_detector(m, device="cpu")


def test_changed_shape_and_dtype_are_named(saved, tmp_path):
    m = _copy(saved, tmp_path / "m")
    state = load_file(str(m / "detector.safetensors"))
    key = sorted(state)[0]
    state[key] = state[key][:1].double()
    save_file(state, str(m / "detector.safetensors"))
    with pytest.raises(ModelFileError, match=rf"{key}: expected float32.*found float64"):
        load_detector(m, device="cpu")


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "not a readable model file"), ("[]", "expected a JSON object"), ('{"method": 3}', "'method'")],
)
def test_tampered_json_is_one_clear_error(saved, tmp_path, text, message):
    m = _copy(saved, tmp_path / "m")
    (m / "detector.json").write_text(text)
    with pytest.raises(ModelFileError, match=message):
        load_detector(m, device="cpu")


def test_corrupt_safetensors_is_named(saved, tmp_path):
    m = _copy(saved, tmp_path / "m")
    (m / "detector.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_detector(m, device="cpu")


def test_old_folder_without_manifest_still_loads(saved, tmp_path):
    m = _copy(saved, tmp_path / "m")
    config = json.loads((m / "detector.json").read_text())
    del config["tensors"]
    (m / "detector.json").write_text(json.dumps(config))
    assert load_detector(m, device="cpu").method.fitted_
    (m / "detector.safetensors").unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_detector(m, device="cpu")  # it was fitted on references: its bank is needed


def test_both_files_get_the_same_mode(saved):
    umask = os.umask(0)
    os.umask(umask)
    modes = {stat.S_IMODE((saved / n).stat().st_mode) for n in ("detector.json", "detector.safetensors")}
    assert modes == {0o666 & ~umask}
