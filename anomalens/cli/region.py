"""`anomalens region`: draw an inspection region from rectangles, and preview it on an image."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, echo, fail


def _boxes(values: list[str] | None, flag: str) -> list[tuple[float, ...]]:
    boxes = []
    for value in values or []:
        try:
            boxes.append(tuple(float(v) for v in value.split(",")))
        except ValueError:
            fail(f"{flag} {value!r}: a box is four numbers left,top,right,bottom (pixels, or shares of the side)")
    return boxes


@app.command("region")
def region(
    like: Path = typer.Option(
        ..., "--like", help="An image of the product: the region's size, and the preview's picture."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The region's mask file (PNG: white inspected, black ignored)."),
    ignore: list[str] = typer.Option(None, "--ignore", help="A box left out: left,top,right,bottom (repeat for more)."),
    inspect: list[str] = typer.Option(
        None, "--inspect", help="A box inspected; with any, only these boxes are (less the --ignore boxes)."
    ),
    preview_file: Path | None = typer.Option(
        None, "--preview", help="Also write the image with the ignored part dimmed."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out and --preview if they exist."),
) -> None:
    """Draw an inspection region (--region) from boxes on an image of the product.

    Coordinates are pixels of the --like image, or shares of its width and height when all four
    numbers of a box are at most 1 (0.1,0.1,0.3,0.35). Any mask drawn in an image editor works too.
    """
    import numpy as np

    from ..errors import ImageLoadError
    from ..images import load_image
    from ..inspection_region import preview, region_from_boxes
    from ..outputs import atomic_write

    ignored, inspected = _boxes(ignore, "--ignore"), _boxes(inspect, "--inspect")
    if not ignored and not inspected:
        fail("give at least one --ignore or --inspect box")
    for target in (out, preview_file):
        if target is not None and target.exists() and not overwrite:
            fail(f"{target} exists; pass --overwrite to replace it")
    try:
        image = load_image(like)
        drawn = region_from_boxes(image.size_hw, ignored, inspected)
    except ImageLoadError as err:
        fail(str(err))
    except ValueError as err:
        fail(f"{like}: {err}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(drawn.png_bytes()))
    echo(f"{out}: {drawn.share:.0%} of each image inspected ({image.size_hw[1]} x {image.size_hw[0]} px)")
    if preview_file is not None:
        from ..png_encoding import encode_png

        preview_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(preview_file, lambda f: f.write(encode_png(np.ascontiguousarray(preview(image.rgb, drawn)))))
        echo(f"preview: {preview_file}")
