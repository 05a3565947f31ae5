"""anomalens: zero- and few-shot industrial visual anomaly detection (FADE, FiLo, WinCLIP, patch kNN).

The public names are imported on first use, so that `import anomalens` (and the command
line's `--help`) does not load torch.
"""

from __future__ import annotations

import importlib
import os as _os

from .errors import AnomalensError, ImageLoadError, NotFittedError

__version__ = "0.1.0"

# OpenMP threads (torch's CPU kernels) spin-wait between parallel regions by default. On a
# machine whose cores are taken by other processes, a spinning thread holds a core that the
# thread it waits for needs: a step that takes milliseconds can take seconds. PASSIVE makes
# waiting threads sleep. It is read when torch's OpenMP starts, so it is set here (anomalens
# itself imports torch lazily, after this) and only when the user has not chosen a policy.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Not `from typing import TYPE_CHECKING`: `import anomalens` is the first thing the command line
# does, and the less it imports, the shorter the moment in which Ctrl-C is Python's, not ours.
TYPE_CHECKING = False

# public name -> module that defines it
_LAZY = {
    "Detector": "detector",
    "load_detector": "detector",
    "load_image": "images",
    "AnomalyResult": "results",
}

if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from .detector import Detector, load_detector
    from .images import load_image
    from .results import AnomalyResult


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnomalensError",
    "AnomalyResult",
    "Detector",
    "ImageLoadError",
    "NotFittedError",
    "__version__",
    "load_detector",
    "load_image",
]
