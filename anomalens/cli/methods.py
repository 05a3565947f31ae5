"""`anomalens methods`: the registered methods and their settings."""

from __future__ import annotations

import dataclasses

import typer

from .app import app


@app.command("methods")
def list_methods() -> None:
    """List the registered methods and their settings with defaults."""
    from ..methods import METHODS, available_methods

    for name in available_methods():
        typer.echo(name)
        for f in dataclasses.fields(METHODS[name].Settings):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            typer.echo(f"    {f.name} = {default!r}")
