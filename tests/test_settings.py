"""Method settings: declared once per dataclass, converted and checked in one place."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.errors import SettingsError
from anomalens.methods import METHODS, available_methods
from anomalens.methods.patchknn import PatchKnnSettings
from anomalens.methods.winclip import WinClipSettings
from anomalens.settings import MethodSettings, build_settings


@pytest.mark.parametrize("name", available_methods())
def test_every_setting_has_a_type_a_default_and_a_help_line(name):
    settings_cls = METHODS[name].Settings
    assert issubclass(settings_cls, MethodSettings) and settings_cls.owner == name
    defaults = settings_cls()  # the defaults pass their own checks
    for f in dataclasses.fields(settings_cls):
        text = f.metadata.get("help")
        assert text and "\n" not in text, f"{name}.{f.name} has no one-line help"
        assert getattr(defaults, f.name) == f.default


def test_values_from_the_command_line_are_converted_to_the_declared_types():
    s = build_settings(PatchKnnSettings, {"image_size": "128", "blocks": [4, "10"], "neighbourhood": 1.0})
    assert (s.image_size, s.blocks, s.neighbourhood) == (128, (4, 10), 1)
    assert build_settings(WinClipSettings, {"project_patches": "true"}).project_patches is True
    assert build_settings(PatchKnnSettings, {"weights": None}).weights is None  # None = not given


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"blocks": 4}, "patchknn setting blocks must be a list of integers (e.g. blocks=4,10 or blocks=4,), got 4"),
        ({"image_size": 10}, "patchknn setting image_size must be >= 32, got 10"),
        ({"image_size": 1.5}, "patchknn setting image_size must be an integer, got 1.5"),
        ({"blocks": (4, 21)}, "patchknn setting blocks must be between 0 and 20, got 21"),
        ({"resize": "crop"}, "patchknn setting resize must be one of squash | pad, got 'crop'"),
        ({"foo": 1}, "unknown patchknn setting foo; known: backbone, weights, image_size,"),
        ({"blocks": []}, "patchknn setting blocks needs at least one value"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_setting(values, message):
    with pytest.raises(SettingsError) as info:
        build_settings(PatchKnnSettings, values)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_direct_construction_is_checked_too():
    with pytest.raises(SettingsError, match="neighbourhood must be >= 1"):
        PatchKnnSettings(neighbourhood=0)


def test_renamed_settings_of_older_saved_models_still_load():
    assert build_settings(WinClipSettings, {"num_descriptions": 3}).top_descriptions == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "blocks=4"], "error: patchknn setting blocks must be a list of integers"),
        (["--image-size", "10"], "error: patchknn setting image_size must be >= 32, got 10"),
        (["--set", "foo=1"], "error: unknown patchknn setting foo; known: "),
    ],
)
def test_cli_reports_bad_settings_in_one_line_with_exit_code_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["detect", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert (lines[-1].startswith(message) and result.exception is None) or isinstance(result.exception, SystemExit)


def test_methods_command_prints_each_settings_help():
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    assert "neighbourhood = 3" in result.output and "local aggregation window, in patches" in result.output
