"""The command line starts without the heavy modules, and `python -m anomalens` runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.errors import AnomalensError, ImageLoadError, MissingWeightsError, UsageError

ROOT = Path(__file__).resolve().parents[1]


def _python(code_or_args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, timeout=120)


def test_help_does_not_import_torch_or_the_methods():
    probe = (
        "import sys; from typer.testing import CliRunner; from anomalens.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = sorted(m for m in ('torch', 'open_clip', 'anomalens.methods', 'anomalens.filo', 'transformers') "
        "if m in sys.modules); print(heavy)"
    )
    done = _python(["-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_runs_the_cli():
    done = _python(["-m", "anomalens", "--help"])
    assert done.returncode == 0, done.stderr
    assert "detect" in done.stdout and "benchmark" in done.stdout and "Usage: anomalens" in done.stdout


def test_errors_share_one_base_and_keep_their_old_bases():
    assert issubclass(ImageLoadError, AnomalensError) and issubclass(ImageLoadError, ValueError)
    assert issubclass(MissingWeightsError, AnomalensError) and issubclass(MissingWeightsError, RuntimeError)
    from anomalens.images import ImageLoadError as from_images

    assert from_images is ImageLoadError


def test_an_anomalens_error_is_one_line_and_exit_code_2(monkeypatch):
    def broken(*args, **kwargs):
        raise UsageError("settings.yaml: something the user can fix")

    monkeypatch.setattr("anomalens.methods.available_methods", broken)
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: settings.yaml: something the user can fix"


def test_openmp_threads_sleep_when_waiting_unless_the_user_chose():
    # OMP_WAIT_POLICY must be set before torch starts OpenMP: importing anomalens does it.
    code = "import os, anomalens; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_default_threads_leave_one_cpu_free(monkeypatch):
    from anomalens.cli.app import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_threads() == 15
