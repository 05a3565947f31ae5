"""Method settings: each method's dataclass declares every setting once, checked in one place.

A method declares its settings as a dataclass deriving from `MethodSettings`, each field made
with `setting(default, help, ...)`: the default (the paper's value), a one-line help text that
`anomalens methods` prints, and optionally `choices` or a `minimum`/`maximum` (for a tuple,
each element). The field's type annotation is the type. `validate_settings` (run by
`__post_init__`, so every way of building settings goes through it) converts what the command
line, YAML and JSON give (strings, lists) to that type and raises a one-line `SettingsError`
naming the setting for a wrong type, a value out of range or not among the choices.
`build_settings` adds the check for unknown names. Nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from .errors import SettingsError


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field with its help text and the constraints `validate_settings` checks."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    return dataclasses.field(default=default, metadata=meta)


class MethodSettings:
    """Base of the settings dataclasses: converts and checks the values on construction."""

    owner: ClassVar[str] = "method"  # the method's name, set by register_method, for messages
    renamed: ClassVar[dict[str, str]] = {}  # old name -> new name, so older saved models load
    # setting -> the value that reproduces models saved before the setting existed (their
    # thresholds were calibrated on those scores), where that differs from today's default
    absent_in_older_models: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        validate_settings(self)


def setting_help(settings_cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) per setting, in declaration order."""
    out = []
    for f in dataclasses.fields(settings_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


def build_settings(settings_cls: type, values: dict[str, Any]) -> Any:
    """Settings from a mapping; unknown names and None values (= "not given") handled here."""
    owner = getattr(settings_cls, "owner", settings_cls.__name__)
    renamed = getattr(settings_cls, "renamed", {})
    values = {renamed.get(k, k): v for k, v in values.items()}
    names = [f.name for f in dataclasses.fields(settings_cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise SettingsError(
            f"unknown {owner} setting{plural} {', '.join(unknown)}; known: {', '.join(names)}"
        )
    return settings_cls(**{k: v for k, v in values.items() if v is not None})


def validate_settings(settings: Any) -> None:
    """Convert every field of a settings dataclass to its declared type and check its range."""
    owner = getattr(type(settings), "owner", type(settings).__name__)  # e.g. "patchknn"
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = _convert(getattr(settings, f.name), hints[f.name], f.name, owner)
        _check(value, f, owner)
        object.__setattr__(settings, f.name, value)


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a text", "texts")}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a list of {_NAMES.get(typing.get_args(tp)[0], ('', 'values'))[1]}"
    return _NAMES.get(tp, ("true or false" if tp is bool else str(tp), ""))[0]


def _convert(value: Any, tp: Any, name: str, owner: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for arg in args:
            try:
                return _convert(value, arg, name, owner)
            except SettingsError as err:
                errors.append(err)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):  # one value is written "4," (or [4]) on the command line
            raise SettingsError(
                f"{owner} setting {name} must be {_type_name(tp)} (e.g. {name}=4,10 or {name}=4,), got {value!r}"
            )
        return tuple(_convert(v, typing.get_args(tp)[0], name, owner) for v in value)
    try:
        return _scalar(value, tp)
    except (TypeError, ValueError):
        pass
    raise SettingsError(f"{owner} setting {name} must be {_type_name(tp)}, got {value!r}")


def _scalar(value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise ValueError(value)
    if value is None or isinstance(value, bool):
        raise TypeError(value)
    if tp is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value) if isinstance(value, (int, float)) else int(str(value).strip())
    if tp is float:
        return float(value)
    if tp is str:
        if isinstance(value, (list, tuple, dict)):
            raise TypeError(value)
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported setting type {tp}")


def _check(value: Any, f: dataclasses.Field, owner: str) -> None:
    meta = f.metadata
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if item is None:
            continue
        if meta.get("choices") is not None and item not in meta["choices"]:
            choices = " | ".join(map(str, meta["choices"]))
            raise SettingsError(f"{owner} setting {f.name} must be one of {choices}, got {item!r}")
        if isinstance(item, float) and not math.isfinite(item):
            raise SettingsError(f"{owner} setting {f.name} must be a finite number, got {item!r}")
        low, high = meta.get("minimum"), meta.get("maximum")
        if (low is not None and item < low) or (high is not None and item > high):
            bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"between {low} and {high}"
            raise SettingsError(f"{owner} setting {f.name} must be {bounds}, got {item!r}")
    if isinstance(value, tuple) and not value:
        raise SettingsError(f"{owner} setting {f.name} needs at least one value")
