"""Where the embedded EfficientNet-Lite runs on the CPU: PyTorch, or the same graph in ONNX Runtime.

PyTorch's eager depthwise convolutions are slow on CPUs without AVX-512: on the 2-core AVX2 machine
of December 2026 Lite0's blocks 0-10 took 42-57 ms per 256 px image in one thread, and the same
graph in ONNX Runtime (MLAS) 13-15 ms, with block outputs equal to ~1e-6 relative
(`benchmarks/cnn_runtime_speed.py`). The frozen module (batch norms already folded) is exported
once by the TorchScript exporter (dynamic batch and image size), the ONNX bytes are cached on disk
per weights and read blocks, and one `InferenceSession` per (graph, thread count) is shared by every
backbone and thread of the process (`InferenceSession.run` is thread-safe).

The choice: `ANOMALENS_CNN_RUNTIME` (the CLI's `--cnn-runtime`) = `auto` (ONNX Runtime when it is
installed, else PyTorch), `torch` or `onnxruntime` (an error if missing). PyTorch is always used
for a module on a GPU, while tracing or exporting (the exported detector graph contains the
backbone itself), and when gradients are needed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

RUNTIME_ENV = "ANOMALENS_CNN_RUNTIME"
RUNTIMES = ("auto", "torch", "onnxruntime")
# graph cache: $ANOMALENS_GRAPH_CACHE, default ~/.cache/anomalens/graphs; empty = memory only
CACHE_ENV = "ANOMALENS_GRAPH_CACHE"
OPSET = 17
# bumped when the exported graph's contract changes, so old cache files are not read
GRAPH_FORMAT = 1

_lock = threading.Lock()
_graphs: dict[str, bytes] = {}
_sessions: dict[tuple[str, int], object] = {}


def chosen_runtime() -> str:
    """The runtime asked for: the environment's word, or `auto`."""
    value = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise UsageError(f"{RUNTIME_ENV}={value!r}: use one of {', '.join(RUNTIMES)}")
    return value


@functools.cache
def onnxruntime_available() -> bool:
    # onnx is only looked up, not imported: the exporter needs it when a graph is not cached
    # yet, and importing it (with ml_dtypes) costs ~1.2 s of every run's start-up
    if importlib.util.find_spec("onnx") is None:
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def use_onnxruntime(module: nn.Module, images: torch.Tensor) -> bool:
    """Whether this call of `module` on `images` runs in ONNX Runtime."""
    if images.device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    if torch.is_grad_enabled() and images.requires_grad:
        return False
    runtime = chosen_runtime()
    if runtime == "torch":
        return False
    if runtime == "onnxruntime":
        if not onnxruntime_available():
            raise UsageError(
                f"{RUNTIME_ENV}=onnxruntime, but onnx or onnxruntime is not installed: pip install onnx onnxruntime"
            )
        return True
    return onnxruntime_available()


def weights_fingerprint(module: nn.Module) -> str:
    """A digest of every weight (the graph holds them as constants: other weights, other graph)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value == "":
        return None
    return Path(value) if value else Path.home() / ".cache" / "anomalens" / "graphs"


class _Outputs(nn.Module):
    """The exported function: normalised images -> the read blocks' outputs, in `order`."""

    def __init__(self, backbone: nn.Module, order: tuple[int, ...]):
        super().__init__()
        self.backbone = backbone
        self.order = order

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.backbone.run_blocks_in_torch(images)
        return tuple(outputs[i] for i in self.order)


def _export(backbone: nn.Module, order: tuple[int, ...], example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Outputs(backbone, order).eval(),
            (example,),
            buffer,
            input_names=["images"],
            output_names=[f"block_{i}" for i in order],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _cache_file(key: str) -> Path | None:
    cache = default_cache_dir()
    return cache / f"{key}.onnx" if cache else None


def _graph_bytes(key: str, backbone: nn.Module, order: tuple[int, ...], example: torch.Tensor) -> bytes:
    """The graph from memory, the disk cache (written atomically), or a fresh export."""
    if key in _graphs:
        return _graphs[key]
    path = _cache_file(key)
    data = None
    if path is not None and path.is_file():
        data = path.read_bytes()
    if not data:
        data = _export(backbone, order, example)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError:
                pass  # an unwritable cache costs the export next time, nothing else
    _graphs[key] = data
    return data


def _new_session(data: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # like OMP_WAIT_POLICY=PASSIVE: idle pool threads sleep instead of spinning (busy machines)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def block_session(key: str, backbone: nn.Module, order: tuple[int, ...], example: torch.Tensor):
    """The shared session for graph `key` at the current torch thread count (built on first use).

    `backbone.run_blocks_in_torch(images)` -> {block index: output} is the function exported."""
    threads = max(1, torch.get_num_threads())
    with _lock:
        session = _sessions.get((key, threads))
        if session is None:
            data = _graph_bytes(key, backbone, order, example)
            try:
                session = _new_session(data, threads)
            except Exception:  # a damaged cache file: export again, once
                _graphs.pop(key, None)
                path = _cache_file(key)
                if path is not None:
                    path.unlink(missing_ok=True)
                session = _new_session(_graph_bytes(key, backbone, order, example), threads)
            _sessions[(key, threads)] = session
    return session


def run_blocks(session, images: torch.Tensor) -> list[torch.Tensor]:
    """The session's block outputs for (B, 3, H, W) float images, as CPU tensors."""
    array = images.detach().float().contiguous().numpy()
    return [torch.from_numpy(out) for out in session.run(None, {"images": array})]


def graph_key(variant: str, order: tuple[int, ...], fingerprint: str) -> str:
    blocks = "-".join(str(i) for i in order)
    return f"{variant}-blocks{blocks}-{fingerprint}-torch{torch.__version__.split('+')[0]}-g{GRAPH_FORMAT}"


def clear_sessions() -> None:
    """Forget the process's graphs and sessions (tests; the disk cache stays)."""
    with _lock:
        _graphs.clear()
        _sessions.clear()
