"""A TorchScript weights file is read for its tensors only: nothing in it runs."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
from torch import nn

from anomalens.backbones.clip_loading import _read_state_dict
from anomalens.backbones.torchscript_reader import UnsafeArchiveError, read_torchscript_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _scripted(tmp_path, module: nn.Module, name="model.pt"):
    path = tmp_path / name
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_tensors_equal_torchscripts_own_state_dict(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Sequential(nn.Linear(4, 2).half()))
    path = _scripted(tmp_path, module)
    ours = read_torchscript_state_dict(path)
    theirs = torch.jit.load(str(path)).state_dict()
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_reading_never_calls_torch_jit_load(tmp_path, monkeypatch):
    path = _scripted(tmp_path, nn.Linear(2, 3))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    state = _read_state_dict(path)
    assert set(state) == {"weight", "bias"}


class _Payload:
    """Pickles as a call of os.system: what a crafted data.pkl can ask an unpickler to do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def _malicious_archive(tmp_path, marker):
    """A zip laid out like a TorchScript archive whose data.pkl runs a shell command when unpickled."""
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"weight": _Payload(f"touch {marker}")}, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/version", "3\n")
        archive.writestr("evil/code/__torch__/evil.py", "def forward(self):\n  pass\n")
    return path


def test_malicious_archive_is_refused_and_writes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious_archive(tmp_path, marker)
    with pytest.raises(UnsafeArchiveError, match=r"os\.system|posix\.system"):
        _read_state_dict(path)
    assert not marker.exists()


def test_malicious_archive_through_create_clip_is_refused(tmp_path):
    from anomalens.backbones import create_clip

    marker = tmp_path / "pwned"
    path = _malicious_archive(tmp_path, marker)
    with pytest.raises(UnsafeArchiveError, match="never runs code"):
        create_clip("test-tiny", pretrained=str(path))
    assert not marker.exists()


def test_truncated_storage_is_named(tmp_path):
    path = _scripted(tmp_path, nn.Linear(8, 8))
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if "/data/" in item.filename and not item.filename.endswith(".pkl"):
                data = data[:4]
            dst.writestr(item, data)
    with pytest.raises(UnsafeArchiveError, match="truncated"):
        read_torchscript_state_dict(broken)
