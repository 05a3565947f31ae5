"""The errors anomalens raises for problems the user can fix, under one base class.

Every `AnomalensError` carries a one-line message that names the file or setting and the
problem; the command line prints it as ``error: <message>`` and exits with ``exit_code`` (2:
a usage error), in one place (`anomalens.cli.app`). Each class also derives from the built-in
exception callers caught before it existed (ValueError, FileNotFoundError, RuntimeError), so
``except ValueError`` keeps working. This module imports nothing heavy.
"""

from __future__ import annotations

import os


class AnomalensError(Exception):
    """Base class: a problem with the user's input, settings, files or weights."""

    exit_code = 2


class UsageError(AnomalensError, ValueError):
    """A bad option, setting or combination of them."""


class SettingsError(UsageError):
    """A method setting that is unknown, of the wrong type or out of range."""


class NotFittedError(AnomalensError, RuntimeError):
    """A method used before `fit` (scikit-learn's name for the same thing)."""


class ImageLoadError(AnomalensError, ValueError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable with its two arguments (worker threads/processes)
        return type(self), (self.path, self.reason)


class MissingWeightsError(AnomalensError, RuntimeError):
    """CLIP weights that are not on this machine and could not be fetched."""


class MissingBackboneError(AnomalensError, RuntimeError):
    """The embedded backbone's packages are not installed."""


class MissingCheckpointError(AnomalensError, FileNotFoundError):
    """A FiLo checkpoint directory that is missing or incomplete."""


class MissingGroundingError(AnomalensError, FileNotFoundError):
    """Grounding DINO weights that are not on this machine."""


__all__ = [
    "AnomalensError",
    "ImageLoadError",
    "MissingBackboneError",
    "MissingCheckpointError",
    "MissingGroundingError",
    "MissingWeightsError",
    "NotFittedError",
    "SettingsError",
    "UsageError",
]


class ModelFileError(AnomalensError, ValueError):
    """A saved model folder (detector.json / detector.safetensors) that is incomplete or tampered with."""
