"""Reading option values: --config YAML files, --set key=value, thresholds, integer lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from .app import fail

_CONFIG_ALIASES = {"set": "set_", "describe": "describe_"}


def apply_config(ctx: typer.Context, config: Path | None) -> tuple[dict[str, Any], set[str]]:
    """Fill options not given on the command line from a YAML file.

    Returns the effective values and the names given explicitly (on the command line or in the
    file). Keys are option names, with "-" or "_" (``pixel-threshold``, ``pixel_threshold``),
    ``images`` for the inputs and ``set`` for --set (a list of "key=value", or a mapping).
    Values are converted and checked as on the command line; the command line wins; relative
    paths are relative to the working directory. A settings.json written by ``detect`` is a
    valid config too (its "options" are used), so ``--config OUT/settings.json`` repeats a run.
    """
    import click  # typer's own click: only its exception types are needed here

    params = dict(ctx.params)
    # By name: typer ships its own copy of click, whose ParameterSource is another enum.
    defaults = ("DEFAULT", "DEFAULT_MAP")
    explicit = {n for n in params if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in defaults}
    if config is None:
        return params, explicit
    import yaml

    try:
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        fail(f"{config}: cannot read config: {err}")
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        fail(f"{config}: expected a mapping of option names to values")
    if isinstance(loaded.get("options"), dict) and "command" in loaded:  # a run's settings.json
        if loaded["command"] != ctx.command.name:
            fail(f"{config}: settings of `anomalens {loaded['command']}`, not of `{ctx.command.name}`")
        loaded = {k: v for k, v in loaded["options"].items() if k != "config"}
    by_name = {prm.name: prm for prm in ctx.command.params}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        name = _CONFIG_ALIASES.get(name, name)
        if name not in params or name == "config":
            known = sorted(n.rstrip("_") for n in params if n != "config")
            fail(f"{config}: unknown option {key!r}; known: {', '.join(known)}")
        if name in explicit:
            continue  # given on the command line: it overrides the file
        prm = by_name[name]
        if value is None:
            if prm.default is None or prm.multiple or prm.nargs == -1:
                params[name] = None
            continue
        if name == "set_" and isinstance(value, dict):
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        if (prm.multiple or prm.nargs == -1) and not isinstance(value, (list, tuple)):
            value = [value]
        try:
            params[name] = prm.process_value(ctx, value)  # the command line's conversion and checks
        except (typer.BadParameter, click.BadParameter) as err:
            fail(f"{config}: option {key!r}: {err.message}")
        explicit.add(name)
    return params, explicit


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """--set key=value pairs; values are YAML ("3.5", "[240, 448]", "true"); "a,b" becomes a list."""
    import yaml

    settings: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set expects key=value, got {item!r}")
        text = value.strip()
        if "," in text and not text.startswith(("[", "{", "'", '"')):
            text = f"[{text}]"
        try:
            settings[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            fail(f"--set {item!r}: cannot parse value: {err}")
    return settings


def parse_threshold(value: Any) -> str | float | None:
    """None (not given), "auto", "none" (no threshold) or a number."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        return float(text)
    except ValueError:
        fail(f"--threshold must be a number, 'auto' or 'none', got {value!r}")


def int_list(text: str) -> list[int]:
    """"0,1,4" -> [0, 1, 4]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"expected comma-separated integers, got {text!r}")
