"""What can go wrong when exporting a detector or loading an exported one (all AnomalensErrors)."""

from __future__ import annotations

from ..errors import AnomalensError, UsageError


class ExportError(UsageError):
    """A method or configuration that cannot be exported; the message names what is unsupported."""


class OnnxModelError(AnomalensError, ValueError):
    """An ONNX file that anomalens cannot run: unreadable, corrupt, or without anomalens metadata."""


class MissingOnnxRuntimeError(AnomalensError, RuntimeError):
    """The optional `onnx` extra (onnx, onnxruntime) is not installed."""


def missing_extra(err: ImportError) -> MissingOnnxRuntimeError:
    return MissingOnnxRuntimeError(
        f"ONNX support needs the optional packages onnx and onnxruntime ({err.name} is missing): "
        'pip install "anomalens[onnx]"'
    )
