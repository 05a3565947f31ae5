"""Screen what `fused_recipe` standardises each map by: the MAD of the references' maps (the default) or the
distance from their median to a high quantile of them (the tail, where a defect and the normal maps meet).

With references each recipe's map and score are standardised by the median and the MAD of the references'
leave-one-out maps (`recipe_fusion.level_of_samples`), and the image keeps the pixelwise maximum. Two recipes
whose maps have tails of different shapes are matched in their bulk by the MAD, not where their largest
normal values lie. This screen replaces the spread, in this process only, by `quantile(q) - median` divided
by what that distance is in MADs for a normal distribution (so the units stay comparable), and runs
`anomalens` with the remaining arguments (README "Both recipes at once", session 32):

    python benchmarks/fused_level_screen.py --quantile 0.99 -- --threads 1 benchmark --data ../shared/data \\
        --categories magnetic_tile,mpdd_metal_plate --method patchknn --shots 1,4 --seeds 0,1,2 --out level_q99
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm
from screen_cli import run_anomalens, split_arguments

from anomalens.methods import recipe_fusion


def tail_level(quantile: float):
    """`level_of_samples` with the spread read at `quantile` of the normal pixels instead of their MAD."""
    # For a normal distribution the MAD is 0.6745 sigma and quantile q lies norm.ppf(q) sigma above the median.
    mads_to_quantile = norm.ppf(quantile) / norm.ppf(0.75)

    def level_of_samples(samples):
        sample = np.concatenate(samples).astype(np.float64)
        median = float(np.median(sample))
        spread = (float(np.quantile(sample, quantile)) - median) / mads_to_quantile
        return recipe_fusion.MapLevel(median, max(spread, recipe_fusion.MIN_SPREAD))

    return level_of_samples


def main() -> None:
    own, arguments = split_arguments(__doc__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantile", type=float, required=True, help="the normal pixels' quantile, e.g. 0.99")
    args = parser.parse_args(own)
    if not 0.5 < args.quantile < 1:
        parser.error("--quantile must lie between 0.5 and 1")
    recipe_fusion.level_of_samples = tail_level(args.quantile)  # looked up at call time by map_level
    run_anomalens(arguments)


if __name__ == "__main__":
    main()
