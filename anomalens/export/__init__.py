"""Exporting fitted detectors to ONNX and running them with onnxruntime (optional extra `onnx`).

    from anomalens import Detector
    from anomalens.export import export_onnx, load_onnx_detector

    export_onnx(det, "part42.onnx")                      # or det.export("part42.onnx")
    results = load_onnx_detector("part42.onnx").predict(["img.png"])   # same AnomalyResults

`patchknn`: the whole path, normalised image -> map and score. `fade`, `winclip`: the image
encoders with their dense paths and the scoring, text features of the saved category as
constants. See `metadata` for what the file carries.
"""

from .errors import ExportError, MissingOnnxRuntimeError, OnnxModelError
from .runner import OnnxDetector, is_onnx_path, load_onnx_detector
from .writer import TOLERANCE, ExportReport, export_onnx

__all__ = [
    "TOLERANCE",
    "ExportError",
    "ExportReport",
    "MissingOnnxRuntimeError",
    "OnnxDetector",
    "OnnxModelError",
    "export_onnx",
    "is_onnx_path",
    "load_onnx_detector",
]
