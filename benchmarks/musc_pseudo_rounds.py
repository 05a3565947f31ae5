"""Screen how musc picks its pseudo-references, and print how many defective images each pick lets in.

Zero-shot, musc ranks the batch by its mutual score and makes the lowest-scored tenth patchknn's references
(`pseudo_reference_share`); since session 32 a second round picks them again by the joined score
(`pseudo_reference_rounds` 2: the mutual score and patchknn's share on the first pick). This screen runs
`anomalens` with the remaining arguments and, in this process only, changes the pick:

- `--pick default`: as the library does (compare `--set pseudo_reference_rounds=1` and `2`);
- `--pick knn`: later rounds rank by patchknn's share alone instead of the joined score;
- `--pick oracle`: the first pick takes the lowest-scored images under a `good` folder only, the most a
  cleaner pick could give (an upper bound no user has; add `--set pseudo_reference_rounds=1`);
- `--pick random-good`: the first pick takes as many images at random (seed 0) under a `good` folder (ground truth:
  clean and as varied as the good images are; add `--set pseudo_reference_rounds=1`);
- `--pick raw`: the first pick ranks by the mutual score before RsCIN (which mixes in the scores of each image's
  most similar images);
- `--spread F`: the first pick takes its images at random (seed 0) among the F x as many lowest-scored;
- `--stratify C`: every pick takes each of C k-means clusters of the batch's image features (RsCIN's) its share of
  the images, the lowest-scored of the cluster;
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
from sklearn.cluster import KMeans

from anomalens.methods.musc import method as musc_method
from anomalens.methods.musc import pseudo_references


def is_good(path: str) -> bool:
    return "good" in Path(str(path)).parent.parts


PICKS: list[int] = []  # each pick's count of images not under good/, in order (both modules')
BATCH: dict = {}  # the batch being scored: its image features, their clusters, its mutual scores before RsCIN


def reporting(lowest_scored, pick_rule: str = "default", spread: float = 0.0):
    """`lowest_scored` that prints how many picked images are not under good/ (and picks by `pick_rule` or
    `spread`, see the module docstring)."""
    picks = PICKS

    def pick(scores, paths, count):
        good = [i for i in range(len(paths)) if is_good(paths[i])]
        if pick_rule == "oracle":
            chosen = [good[j] for j in lowest_scored([scores[i] for i in good], [paths[i] for i in good], count)]
        elif pick_rule == "random-good":
            chosen = sorted(np.random.default_rng(0).choice(good, size=count, replace=False).tolist())
        elif spread:
            pool = lowest_scored(scores, paths, min(len(paths), round(spread * count)))
            chosen = sorted(np.random.default_rng(0).choice(pool, size=count, replace=False).tolist())
        elif pick_rule == "raw":
            chosen = lowest_scored(BATCH["raw_scores"], paths, count)
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


def stratified(lowest_scored, clusters: int):
    """`lowest_scored` that gives each k-means cluster of the batch's image features its share of the count
    (largest remainders), filled with the cluster's lowest-scored images."""

    def pick(scores, paths, count):
        if "clusters" not in BATCH:  # once per batch: every round picks from the same clusters
            feats = BATCH["image_features"].double().numpy()
            feats = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
            BATCH["clusters"] = KMeans(n_clusters=clusters, n_init=10, random_state=0).fit_predict(feats)
        labels = BATCH["clusters"]
        exact = count * np.bincount(labels, minlength=clusters) / len(paths)
        quota = np.floor(exact).astype(int)
        quota[np.argsort(-(exact - quota), kind="stable")[: count - quota.sum()]] += 1
        chosen = []
        for c in range(clusters):
            members = [i for i in range(len(paths)) if labels[i] == c]
            lowest = lowest_scored([scores[i] for i in members], [paths[i] for i in members], int(quota[c]))
            chosen += [members[j] for j in lowest]
        return sorted(chosen)

    return pick


def recording_the_batch() -> None:
    """Keep each batch's image features and its scores before RsCIN in `BATCH`, for the picks above."""
    score_features, rescore = musc_method.MuSc.score_features, musc_method.rescore

    def scoring(self, feats, *args, **kwargs):
        BATCH.clear()
        BATCH["image_features"] = feats.per_image_features()
        return score_features(self, feats, *args, **kwargs)

    def rescoring(scores, *args, **kwargs):
        BATCH["raw_scores"] = scores.clone()
        return rescore(scores, *args, **kwargs)

    musc_method.MuSc.score_features, musc_method.rescore = scoring, rescoring


def main() -> None:
    own, arguments = split_arguments(__doc__)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pick", choices=("default", "knn", "oracle", "random-good", "raw"), default="default")
    parser.add_argument("--spread", type=float, default=0.0, help="first pick: at random among F x as many lowest")
    parser.add_argument("--stratify", type=int, default=0, help="every pick: its share from each of C clusters")
    parser.add_argument("--again", type=float, default=1.0, help="later picks take this fraction of the first's count")
    args = parser.parse_args(own)
    # the first pick is made in method.py, later ones in pseudo_references.py: each by its own imported name
    if args.stratify or args.pick == "raw":
        recording_the_batch()
    first, later = musc_method.lowest_scored, pseudo_references.lowest_scored
    if args.stratify:
        first, later = stratified(first, args.stratify), stratified(later, args.stratify)
    musc_method.lowest_scored = reporting(first, args.pick, args.spread)
    pseudo_references.lowest_scored = reporting(later)
    if args.pick == "knn":
        musc_method.picked_again = ranked_by_knn_alone(musc_method.picked_again)
    if args.again != 1.0:
        musc_method.picked_again = fewer_again(musc_method.picked_again, args.again)
    run_anomalens(arguments)


if __name__ == "__main__":
    main()
