"""Reading option values: --config YAML files, --set key=value, thresholds, integer lists."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from .app import fail

_CONFIG_ALIASES = {"set": "set_", "describe": "describe_"}


CONFIG_FILE = "anomalens.config"  # key in ctx.meta: the --config file, for error messages
CONFIG_SETS = "anomalens.config_sets"  # key in ctx.meta: the --config file's --set items
PRESETS = Path(__file__).resolve().parent.parent / "presets"  # named configs: --config NAME


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config(config: Path) -> Path:
    """A --config value: a file, or the name of a preset shipped with anomalens (`preset_names`)."""
    if Path(config).exists() or len(Path(config).parts) != 1:
        return Path(config)
    preset = PRESETS / f"{Path(config).name.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    fail(f"{config}: no such config file, and not a preset (presets: {', '.join(preset_names())})")


def load_config(ctx: typer.Context, param: typer.CallbackParam, config: Path | None) -> Path | None:
    """--config (an eager option): the file's values become the command's defaults.

    Click's documented route for configuration files: the values go into ``ctx.default_map``,
    so the command line overrides them and click converts and checks them as it does typed
    options (a bad value is reported by `config_value_error`). Keys are option names, with "-"
    or "_" (``pixel-threshold``, ``pixel_threshold``), ``images`` for the inputs and ``set``
    for --set (a list of "key=value", or a mapping). Relative paths are relative to the working
    directory. A settings.json written by ``detect`` is a valid config too (its "options" are
    used), so ``--config OUT/settings.json`` repeats a run.
    """
    if config is None or ctx.resilient_parsing:
        return config
    import yaml

    config = resolve_config(config)

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
    options = {prm.name: prm for prm in ctx.command.params if prm.name != param.name}
    defaults: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        name = _CONFIG_ALIASES.get(name, name)
        if name not in options:
            known = sorted(n.rstrip("_") for n in options)
            fail(f"{config}: unknown option {key!r}; known: {', '.join(known)}")
        if value is None:
            continue  # null: the option's own default
        if name == "set_" and isinstance(value, dict):
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        prm = options[name]
        if (prm.multiple or prm.nargs == -1) and not isinstance(value, (list, tuple)):
            value = [value]
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[CONFIG_FILE] = config
    if "set_" in defaults:
        ctx.meta[CONFIG_SETS] = [str(item) for item in defaults["set_"]]
    return config


def given_options(ctx: typer.Context) -> tuple[dict[str, Any], set[str]]:
    """The command's option values and the names given explicitly (command line or --config)."""
    params = dict(ctx.params)
    # By name: typer ships its own copy of click, whose ParameterSource is another enum.
    sources = {n: getattr(ctx.get_parameter_source(n), "name", "DEFAULT") for n in params}
    explicit = {n for n, source in sources.items() if source != "DEFAULT"}
    # --set on the command line adds to the config's settings (a later item wins) instead of dropping
    # them: `--config textured-surface --set image_size=320` keeps the preset's settings
    if sources.get("set_") == "COMMANDLINE" and ctx.meta.get(CONFIG_SETS):
        params["set_"] = [*ctx.meta[CONFIG_SETS], *params["set_"]]
    return params, explicit


def config_value_error(err: Exception) -> str | None:
    """A one-line message for click's BadParameter when the bad value came from --config."""
    ctx, prm = getattr(err, "ctx", None), getattr(err, "param", None)
    if ctx is None or prm is None or CONFIG_FILE not in ctx.meta:
        return None
    if getattr(ctx.get_parameter_source(prm.name), "name", "") != "DEFAULT_MAP":
        return None
    return f"{ctx.meta[CONFIG_FILE]}: option {prm.name.rstrip('_')!r}: {err.message}"


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
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            fail(f"--set {item!r}: cannot parse the value as YAML ({problem})")
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


def options_into(cls: type, params: dict[str, Any], **converted: Any) -> Any:
    """The dataclass `cls` built from the options named like its fields, and `converted` values
    for the fields whose option needs converting first (or is named otherwise)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names and k not in converted}, **converted)
