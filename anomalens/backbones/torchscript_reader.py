"""Read the tensors of a TorchScript archive without running anything in it.

`torch.jit.load` compiles and runs the archive's code (the `code/` folder and the `__setstate__`
methods it defines), so a crafted file can act while it loads. OpenAI's original CLIP release is
such an archive, but all we need from it is its parameters. Here the archive's `data.pkl` is read
by a restricted unpickler: tensors are rebuilt from the archive's raw storages, every TorchScript
object (`__torch__.*`) becomes an inert record of its attributes, and any other global (``os``,
``builtins``, ``subprocess``, ...) stops the read with `UnsafeArchiveError`. Nothing in `code/` is
ever looked at.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import AnomalensError


class UnsafeArchiveError(AnomalensError, ValueError):
    """The archive asks for something other than tensors and plain containers."""


class _ScriptObject:
    """Stands in for a TorchScript module: keeps its attributes, has no behaviour."""

    def __init__(self, *args, **kwargs):
        self.attributes: dict = {}

    def __setstate__(self, state):
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *extra):
    untyped, dtype = storage  # as persistent_load returns it
    return torch.empty(0, dtype=dtype).set_(untyped, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, *extra):
    return data


# TorchScript's pickler writes these helpers around lists and type tags; all are data-only.
def _identity(value, *extra):
    return value


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: Path):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module.startswith("__torch__.") or module == "__torch__":
            return _ScriptObject
        raise UnsafeArchiveError(
            f"{self._source}: the TorchScript archive asks for {module}.{name}, which is not tensor data; "
            "refused (anomalens never runs code from a weights file)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"{self._source}: unexpected persistent id in the TorchScript archive")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, torch.dtype):
            raise UnsafeArchiveError(f"{self._source}: unexpected storage type {dtype!r}")
        key = str(key)
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            expected = int(numel) * torch.empty(0, dtype=dtype).element_size()
            if len(raw) < expected:
                raise UnsafeArchiveError(f"{self._source}: storage {key} is truncated ({len(raw)} < {expected} bytes)")
            self._storages[key] = torch.UntypedStorage.from_buffer(raw[:expected], dtype=torch.uint8)
        return self._storages[key], dtype


def _collect(obj, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, _ScriptObject):
        for name, value in obj.attributes.items():
            _collect(value, f"{prefix}{name}.", out, seen)
    elif isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive by attribute path (as `ScriptModule.state_dict()` names
    them), read without compiling or running any of the archive's code."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise UnsafeArchiveError(f"{path}: not a TorchScript archive (no <name>/data.pkl)")
        prefix = pkl[: -len("data.pkl")]
        root = _ArchiveUnpickler(archive.read(pkl), archive, prefix, path).load()
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state, set())
    # Views share one storage in the archive; give each tensor its own memory.
    return {k: v.clone() for k, v in state.items()}
