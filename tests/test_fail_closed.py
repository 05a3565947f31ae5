"""Thresholds and numeric settings fail closed (issue 12, item 4)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anomalens import Detector
from anomalens.calibration import Threshold
from anomalens.cli import app
from anomalens.errors import SettingsError, UsageError
from anomalens.settings import MethodSettings, setting


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.1])
def test_threshold_value_refused(value):
    with pytest.raises(UsageError, match="threshold"):
        Threshold.given(value)


@pytest.mark.parametrize(
    "field, value", [("quantile", 1.5), ("quantile", math.nan), ("margin", -1.0), ("margin", math.inf)]
)
def test_calibration_inputs_refused(field, value):
    with pytest.raises(UsageError, match=field):
        Threshold(value=0.1, method="auto", **{field: value})


def test_detector_setters_and_calibrate_refuse_nan():
    det = Detector(method="patchknn", image_size=64)
    with pytest.raises(UsageError):
        det.threshold = math.nan
    with pytest.raises(UsageError):
        det.pixel_threshold = -1.0
    with pytest.raises(UsageError, match="quantile"):
        det.calibrate(quantile=math.nan)


@dataclasses.dataclass
class _Example(MethodSettings):
    sigma: float = setting(4.0, "a float setting without bounds")
    widths: tuple[float, ...] = setting((1.0, 2.0), "several floats")


@pytest.mark.parametrize("values", [{"sigma": math.nan}, {"sigma": math.inf}, {"widths": (1.0, math.nan)}])
def test_float_setting_nan_refused(values):
    # NaN passes every `<` / `>` range check, so it must be refused by name.
    with pytest.raises(SettingsError, match="finite"):
        _Example(**values)


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5"])
def test_cli_threshold_nan_exits_2_before_scoring(tmp_path, value):
    img = tmp_path / "part.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(img)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["detect", str(img), "--threshold", value, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "threshold" in result.output
    assert not (out / "results.jsonl").exists()
