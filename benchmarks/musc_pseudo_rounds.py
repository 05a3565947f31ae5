"""Screen how musc picks its pseudo-references, and print how many defective images each pick lets in.

Zero-shot, musc ranks the batch by its mutual score and makes the lowest-scored tenth patchknn's references
(`pseudo_reference_share`); since session 32 a second round picks them again by the joined score
(`pseudo_reference_rounds` 2: the mutual score and patchknn's share on the first pick). This screen runs
`anomalens` with the remaining arguments and, in this process only, changes the pick:

- `--pick default`: as the library does (compare `--set pseudo_reference_rounds=1` and `2`);
- `--pick knn`: later rounds rank by patchknn's share alone instead of the joined score;
- `--pick oracle`: the first pick takes the lowest-scored images under a `good` folder only, the most a
  cleaner pick could give (an upper bound no user has; add `--set pseudo_reference_rounds=1`);
- `--again F`: later picks take F times as many images as the first.

Each pick prints to stderr how many of its images lie outside a `good` folder (README "Pseudo-references
picked twice", session 32):

    python benchmarks/musc_pseudo_rounds.py --pick oracle -- --threads 1 benchmark --data ../shared/data \\
        --categories magnetic_tile --method musc --shots 0 --set pseudo_reference_rounds=1 --out pseudo_oracle
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from screen_cli import run_anomalens, split_arguments

from anomalens.methods.musc import method as musc_method
from anomalens.methods.musc import pseudo_references


def is_good(path: str) -> bool:
    return "good" in Path(str(path)).parent.parts


PICKS: list[int] = []  # each pick's count of images not under good/, in order (both modules')


def reporting(lowest_scored, oracle: bool = False):
    """`lowest_scored` that prints how many picked images are not under good/ (and, `oracle`, picks among those
    that are)."""
    picks = PICKS

    def pick(scores, paths, count):
        if oracle:
            good = [i for i in range(len(paths)) if is_good(paths[i])]
            chosen = [good[j] for j in lowest_scored([scores[i] for i in good], [paths[i] for i in good], count)]
        else:
            chosen = lowest_scored(scores, paths, count)
        defective = [Path(str(paths[i])).parent.name for i in chosen if not is_good(paths[i])]
        picks.append(len(defective))
        kinds = ", ".join(f"{kind} {defective.count(kind)}" for kind in sorted(set(defective)))
        print(
            f"pick {len(picks)}: {picks[-1]} of {len(chosen)} pseudo-references are not under good/ ({kinds})",
            file=sys.stderr,
        )
        return chosen

    return pick


def ranked_by_knn_alone(picked_again):
    """`picked_again` whose later rounds rank by patchknn's share alone (the mutual score weighed 0)."""

    def again(first, fitted, scores, paths, weight, rounds, progress=False):
        return picked_again(first, fitted, np.zeros(len(paths)), paths, 1.0, rounds, progress)

    return again


def fewer_again(picked_again, fraction: float):
    """`picked_again` whose later rounds pick `fraction` as many images as the first."""

    def again(first, fitted, scores, paths, weight, rounds, progress=False):
        from anomalens.methods.musc import pseudo_references as module

        lowest = module.lowest_scored
        module.lowest_scored = lambda values, names, count: lowest(values, names, max(2, round(fraction * count)))
        try:
            return picked_again(first, fitted, scores, paths, weight, rounds, progress)
        finally:
            module.lowest_scored = lowest

    return again


def main() -> None:
    own, arguments = split_arguments(__doc__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pick", choices=("default", "knn", "oracle"), default="default")
    parser.add_argument("--again", type=float, default=1.0, help="later picks take this fraction of the first's count")
    args = parser.parse_args(own)
    # the first pick is made in method.py, later ones in pseudo_references.py: each by its own imported name
    musc_method.lowest_scored = reporting(musc_method.lowest_scored, oracle=args.pick == "oracle")
    pseudo_references.lowest_scored = reporting(pseudo_references.lowest_scored)
    if args.pick == "knn":
        musc_method.picked_again = ranked_by_knn_alone(musc_method.picked_again)
    if args.again != 1.0:
        musc_method.picked_again = fewer_again(musc_method.picked_again, args.again)
    run_anomalens(arguments)


if __name__ == "__main__":
    main()
