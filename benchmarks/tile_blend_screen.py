"""Screen how far the ramps that blend overlapping tiles' maps reach (`anomalens.tiling.TILE_RAMP_SHARE`).

Runs `anomalens` with the arguments after `--`, in this process with the ramps spanning the given share of
each overlap (1: the whole overlap; the default is 0.25; `--set tile_blend=mean` needs no screen). README
"Tiles for elongated images", session 33:

    python benchmarks/tile_blend_screen.py --ramp-share 1 -- --threads 1 benchmark --data ../shared/data \\
        --categories magnetic_tile --method patchknn --shots 0,1,4 --seeds 0,1,2 --out blend_whole
"""

from __future__ import annotations

import argparse

from screen_cli import run_anomalens, split_arguments

from anomalens import tiling


def main() -> None:
    own, arguments = split_arguments(__doc__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ramp-share", type=float, required=True, help="share of each overlap the ramps span")
    share = parser.parse_args(own).ramp_share
    if not 0 < share <= 1:
        raise SystemExit(f"--ramp-share must lie in (0, 1], got {share}")
    tiling.TILE_RAMP_SHARE = share  # read by tile_weights at each call
    run_anomalens(arguments)


if __name__ == "__main__":
    main()
