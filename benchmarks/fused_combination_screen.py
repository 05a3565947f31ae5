"""Screen how `fused_recipe` combines its two standardised maps and scores: the larger (the default) or the mean.

With references both recipes' maps and scores are standardised by their references' levels and the image keeps
the pixelwise maximum and the larger score (`recipe_fusion.fuse_inputs`). This screen replaces the combination,
in this process only, and runs `anomalens` with the remaining arguments (README "Both recipes at once",
session 31):

    python benchmarks/fused_combination_screen.py --map mean --score max -- --threads 1 benchmark \\
        --data ../shared/data --categories magnetic_tile,mpdd_metal_plate --method patchknn --shots 1,4 \\
        --seeds 0,1,2 --out combination_screen
"""

from __future__ import annotations

import argparse

import torch
from screen_cli import run_anomalens, split_arguments

from anomalens.methods import recipe_fusion

COMBINE_MAPS = {"max": torch.maximum, "mean": lambda a, b: (a + b) / 2}
COMBINE_SCORES = {"max": max, "mean": lambda a, b: (a + b) / 2}


def combination(map_rule: str, score_rule: str):
    """`fuse_inputs` with the given rules for the standardised maps and scores."""

    def fuse_inputs(first, second, levels):
        (a_maps, a_score), (b_maps, b_score) = first, second
        a, b = levels
        maps = COMBINE_MAPS[map_rule](a.standardise(a_maps), b.standardise(b_maps))
        return maps, COMBINE_SCORES[score_rule](float(a.standardise(a_score)), float(b.standardise(b_score)))

    return fuse_inputs


def main() -> None:
    own, arguments = split_arguments(__doc__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", choices=sorted(COMBINE_MAPS), default="max")
    parser.add_argument("--score", choices=sorted(COMBINE_SCORES), default="max")
    args = parser.parse_args(own)
    recipe_fusion.fuse_inputs = combination(args.map, args.score)  # looked up at call time
    run_anomalens(arguments)


if __name__ == "__main__":
    main()
