"""Choosing the torch device: cpu | cuda | cuda:N | auto (a GPU when torch sees one)."""

from __future__ import annotations

import re

import torch

DEVICE_HELP = "cpu | cuda | cuda:N | auto (a GPU when torch sees one)"


def resolve_device(name: str | None = "cpu") -> torch.device:
    """A torch.device for a user's device name; ValueError (one line) when it cannot be used."""
    text = (name or "cpu").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise ValueError(f"unknown device {name!r}; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)
