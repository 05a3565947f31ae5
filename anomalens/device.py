"""Where the models run: `--device cpu|cuda|cuda:N|auto` and moving a method's state there.

`resolve_device` turns the user's word into a `torch.device` (or a one-line error naming the
problem); `move_to` moves a method's modules, tensors and tensor holders (memory banks, text
features, lists and dicts of tensors) in place. Images are decoded and resized on the CPU;
each method moves its model inputs to its device, and maps come back to the CPU as numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .errors import UsageError

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): the first GPU when torch sees one, else the CPU; "cpu"; "cuda"; "cuda:N".

    Raises UsageError (a ValueError) with a one-line reason for an unknown word or a GPU that is not there.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UsageError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
    n = int(index or 0)
    count = torch.cuda.device_count()
    if n >= count:
        raise UsageError(f"device {spec!r} asked for, but torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    return torch.device(f"cuda:{n}")


def move_to(value: Any, device: torch.device) -> Any:
    """`value` on `device`: modules and objects with their own `.to` in place, containers rebuilt.

    Dataclass instances (e.g. cached text features) are updated field by field in place.
    Anything else (numbers, strings, settings, tokenizers) is returned unchanged.
    """
    if isinstance(value, nn.Module):
        return value.to(device)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [move_to(v, device) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(move_to(v, device) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if value.__dataclass_params__.frozen:
            return value  # settings: nothing to move
        for f in dataclasses.fields(value):
            setattr(value, f.name, move_to(getattr(value, f.name), device))
        return value
    to = getattr(value, "to", None)
    if callable(to) and getattr(value, "movable_state", False):
        to(device)
    return value


def tensors_of(value: Any, seen: set[int] | None = None) -> list[tuple[str, torch.Tensor]]:
    """Every tensor reachable as above (parameters and buffers of modules too), with a path: for tests."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, nn.Module):
        found += [(n, t) for n, t in value.state_dict(keep_vars=True).items()]
    elif isinstance(value, torch.Tensor):
        found.append(("", value))
    elif isinstance(value, dict):
        for k, v in value.items():
            found += [(f"{k}.{n}".rstrip("."), t) for n, t in tensors_of(v, seen)]
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found += [(f"{i}.{n}".rstrip("."), t) for n, t in tensors_of(v, seen)]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found += [(f"{f.name}.{n}".rstrip("."), t) for n, t in tensors_of(getattr(value, f.name), seen)]
    elif getattr(value, "movable_state", False):
        found += tensors_of(vars(value), seen)
    return found
