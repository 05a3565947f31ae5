"""The EfficientNet backbone in ONNX Runtime: the same block outputs as PyTorch, the choice of
runtime, the graph cache on disk, and threads sharing one session."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from anomalens.backbones import cnn_runtime
from anomalens.backbones.cnn import EfficientNetPatchBackbone
from anomalens.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty graph cache of this test and no session of an earlier one."""
    monkeypatch.setenv(cnn_runtime.CACHE_ENV, str(tmp_path / "graphs"))
    monkeypatch.delenv(cnn_runtime.RUNTIME_ENV, raising=False)
    cnn_runtime.clear_sessions()
    yield tmp_path / "graphs"
    cnn_runtime.clear_sessions()


@pytest.fixture(scope="module")
def backbone():
    return EfficientNetPatchBackbone(image_size=64, length_weight=4.0, length_log=True)


def images(batch=2, h=64, w=96, seed=0):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_onnxruntime_gives_the_torch_block_outputs(fresh, backbone):
    x = images()
    got = backbone._run_until_last_block(x)
    assert cnn_runtime._sessions, "auto with onnxruntime installed runs the blocks there"
    want = backbone.run_blocks_in_torch(x)
    assert sorted(got) == sorted(want) == [4, 10]
    for block in want:
        assert got[block].shape == want[block].shape
        scale = want[block].abs().max()
        torch.testing.assert_close(got[block], want[block], atol=1e-5 * scale, rtol=0)
    # and the features built from them (any batch and image size: the graph's axes are dynamic)
    other = images(batch=1, h=96, w=64, seed=1)
    features = backbone(other)
    with torch.no_grad():
        outputs = backbone.run_blocks_in_torch(other)
        reference = backbone.combine([outputs[4], outputs[10]], [outputs[4], outputs[10]])
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=0)


def test_torch_runtime_builds_no_graph(fresh, backbone, monkeypatch):
    monkeypatch.setenv(cnn_runtime.RUNTIME_ENV, "torch")
    backbone(images(batch=1))
    assert not cnn_runtime._sessions and not cnn_runtime._graphs
    assert not fresh.exists()


def test_missing_onnxruntime(fresh, backbone, monkeypatch):
    monkeypatch.setattr(cnn_runtime, "onnxruntime_available", lambda: False)
    backbone(images(batch=1))  # auto falls back to PyTorch
    assert not cnn_runtime._sessions
    monkeypatch.setenv(cnn_runtime.RUNTIME_ENV, "onnxruntime")
    with pytest.raises(UsageError, match="pip install onnx onnxruntime"):
        backbone(images(batch=1))
    monkeypatch.setenv(cnn_runtime.RUNTIME_ENV, "tensorrt")
    with pytest.raises(UsageError, match="auto, torch, onnxruntime"):
        backbone(images(batch=1))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace: what the ONNX exporter uses
def test_tracing_gradients_and_other_devices_run_in_torch(fresh, backbone):
    traced = torch.jit.trace(lambda x: backbone.block_outputs(x)[0], images(batch=1), check_trace=False)
    assert not cnn_runtime._sessions
    other = images(batch=1, seed=2)
    torch.testing.assert_close(traced(other), backbone.run_blocks_in_torch(other)[4])
    x = images(batch=1).requires_grad_(True)
    assert not cnn_runtime.use_onnxruntime(backbone.model, x)
    # inputs on another device (a GPU; here the storage-less meta device) stay with PyTorch
    assert not cnn_runtime.use_onnxruntime(backbone.model, torch.empty(1, 3, 64, 64, device="meta"))
    assert cnn_runtime.use_onnxruntime(backbone.model, images(batch=1))


def test_graph_cache_round_trip(fresh, backbone, monkeypatch):
    x = images(batch=1)
    first = backbone(x)
    files = list(fresh.glob("*.onnx"))
    assert len(files) == 1 and "efficientnet-lite0-blocks4-10" in files[0].name
    assert not list(fresh.glob(".*tmp*")), "the cache file is written atomically"

    def no_export(*_args, **_kwargs):
        raise AssertionError("the cached graph should have been read")

    cnn_runtime.clear_sessions()
    monkeypatch.setattr(cnn_runtime, "_export", no_export)
    assert torch.equal(backbone(x), first)

    # a damaged cache file is exported again, once, and replaced
    files[0].write_bytes(b"not an onnx graph")
    cnn_runtime.clear_sessions()
    monkeypatch.undo()
    monkeypatch.setenv(cnn_runtime.CACHE_ENV, str(fresh))
    assert torch.equal(backbone(x), first)
    assert files[0].stat().st_size > 1_000_000


def test_memory_only_cache(fresh, backbone, monkeypatch):
    monkeypatch.setenv(cnn_runtime.CACHE_ENV, "")
    backbone(images(batch=1))
    assert cnn_runtime._sessions and not fresh.exists()


def test_other_weights_other_graph(backbone):
    changed = EfficientNetPatchBackbone(image_size=64, length_weight=4.0, length_log=True)
    same = cnn_runtime.weights_fingerprint(changed.model)
    assert same == cnn_runtime.weights_fingerprint(backbone.model)
    with torch.no_grad():
        changed.model._blocks[3]._project_conv.weight[0, 0] += 1e-3
    assert cnn_runtime.weights_fingerprint(changed.model) != same
    deeper = EfficientNetPatchBackbone(image_size=64, length_blocks=(4, 10, 14), length_weight=4.0)
    assert cnn_runtime.graph_key("efficientnet-lite0", (4, 10, 14), same) != cnn_runtime.graph_key(
        "efficientnet-lite0", (4, 10), same
    )
    assert sorted(deeper._read) == [4, 10, 14]


def test_threads_share_one_session(fresh, backbone):
    inputs = [images(batch=1, seed=s) for s in range(6)]
    alone = [backbone(x) for x in inputs]
    results = [None] * len(inputs)

    def score(i):
        results[i] = backbone(inputs[i])

    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(alone, results))
    assert len(cnn_runtime._sessions) == 1


def test_a_cached_graph_runs_without_importing_onnx(fresh, backbone):
    """onnx (with ml_dtypes, ~1.2 s) is needed to export a graph, not to run a cached one."""
    backbone(images(batch=1))  # exports the graph into this test's cache
    code = (
        "import sys, torch\n"
        "from anomalens.backbones.cnn import EfficientNetPatchBackbone\n"
        "b = EfficientNetPatchBackbone(image_size=64, length_weight=4.0, length_log=True)\n"
        "b(torch.zeros(1, 3, 64, 64))\n"
        "from anomalens.backbones import cnn_runtime\n"
        "assert cnn_runtime._sessions, 'ran in PyTorch'\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    env = {**os.environ, cnn_runtime.CACHE_ENV: str(fresh)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
