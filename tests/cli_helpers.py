"""The command line in-process for tests: `run` invokes `anomalens` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from anomalens.cli import app


def run(args: list, code: int = 0):
    """`anomalens *args` (each argument as a string); asserts the exit code and returns the result."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}\n{result.output}\n{result.exception!r}"
    return result
