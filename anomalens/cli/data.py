"""`anomalens data index`: write the meta.json index for any dataset layout."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail

data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")
app.add_typer(data_app, name="data")


@data_app.command("index")
def data_index(
    root: Path = typer.Argument(..., help="Dataset root."),
    dataset: str = typer.Option("auto", "--dataset"),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default ROOT/meta.json)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Write the meta.json index used by FiLo, AnomalyCLIP and APRIL-GAN for any dataset."""
    from ..data import load_dataset, write_meta

    try:
        splits = load_dataset(root, kind=dataset)
        path = write_meta(root, splits, path=out, overwrite=overwrite)
    except FileExistsError as err:
        fail(f"{err}; pass --overwrite to replace it")
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    n = sum(len(s.test) + len(s.train_good) for s in splits.values())
    typer.echo(f"wrote {path}: {len(splits)} categories, {n} images")
