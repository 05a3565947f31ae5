"""Kept for imports from the FiLo trainer: the device logic lives in `anomalens.device`."""

from __future__ import annotations

from ..device import DEVICE_CHOICES as DEVICE_HELP
from ..device import move_to, resolve_device

__all__ = ["DEVICE_HELP", "move_to", "resolve_device"]
