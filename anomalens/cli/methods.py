"""`anomalens methods`: the registered methods and their settings."""

from __future__ import annotations

import typer

from .app import app


@app.command("methods")
def list_methods() -> None:
    """List the registered methods and their settings: default and what each one does."""
    from ..methods import METHODS, available_methods
    from ..settings import setting_help

    for name in available_methods():
        typer.echo(name)
        rows = [(f"{key} = {default!r}", text) for key, default, text in setting_help(METHODS[name].Settings)]
        width = max(len(left) for left, _ in rows)
        for left, text in rows:
            typer.echo(f"    {left.ljust(width)}  {text}".rstrip())
