"""anomalens: zero- and few-shot industrial visual anomaly detection (FADE, FiLo, WinCLIP, patch kNN)."""

__version__ = "0.1.0"

from .detector import Detector, load_detector
from .images import ImageLoadError, load_image
from .results import AnomalyResult

__all__ = ["AnomalyResult", "Detector", "ImageLoadError", "__version__", "load_detector", "load_image"]
