"""RsCIN against the batch's defect rate, and where it applies (a screen, session 27).

RsCIN replaces each image score by a similarity-weighted mean over the image's most similar images of the
batch. On a test set where a third to a half of the images are defective (magnetic_tile 388 of 1,140,
mpdd_metal_plate 71 of 135) defects of one type resemble each other and lift each other; in a production
batch defects are rare and their neighbours are normal. Two questions:

* screen (default): musc's default run on each category's test images (partner seeds `--seeds`) with its
  pieces recorded: the mutual scores before RsCIN, patchknn's share and the image features RsCIN compares.
  Then RsCIN is applied as variants: off, on the mutual score (the default), on the output score (the mutual
  score plus the share; RsCIN is linear, so this re-scores the share too), with other windows; over the
  test set and over batches of all its normal images plus drawn defects at `--rates` (`--draws` per seed).
  The subsampled rows apply only the RsCIN step to the subsample (the mutual scores and pseudo-references
  are those of the whole test set): an approximation of a batch with that defect rate. Other windows on the
  mutual score keep the default's pseudo-references (ranked by the default's windows): also a screen.
* `--real RATE`: musc itself (default and `rscin=false`) on batches of all normal test images plus drawn
  defects at that rate, `--draws` draws, partner seed 0: the check of the approximation.

    python benchmarks/musc_rscin_screen.py --data ../shared/data
    python benchmarks/musc_rscin_screen.py --data ../shared/data --categories magnetic_tile --real 0.03 --draws 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

WINDOWS = [(1, 2, 3), (1, 2, 3, 4, 5), (1, 2, 3, 4, 5, 6, 7), (1, 8, 9)]


def recorded_run(paths: list[str], seed: int) -> dict[str, np.ndarray]:
    """musc's default outputs on `paths` with the pieces RsCIN works on (recorded by wrapping its functions)."""
    import anomalens.methods.musc.method as musc_method
    from anomalens import Detector

    record: dict = {"pairs": []}
    rescore, with_knn = musc_method.rescore, musc_method.MuSc.with_reference_knn

    def recording_rescore(scores, features, neighbours):
        record["raw"], record["features"] = scores.numpy().copy(), features.numpy().copy()
        return rescore(scores, features, neighbours)

    def recording_with_knn(self, mutual, knn, weight=None):
        record["pairs"].append((mutual.score, knn.score, weight))
        return with_knn(self, mutual, knn, weight)

    musc_method.rescore, musc_method.MuSc.with_reference_knn = recording_rescore, recording_with_knn
    try:
        outputs = Detector("musc", progress=False, partner_seed=seed).fit([]).predict(paths)
    finally:
        musc_method.rescore, musc_method.MuSc.with_reference_knn = rescore, with_knn
    weights = {w for _, _, w in record["pairs"]}
    if len(record["pairs"]) != len(paths) or len(weights) != 1:
        raise RuntimeError("expected one patchknn share per image (a batch of at least 15 images, no references)")
    return {
        "raw": record["raw"],
        "features": record["features"],
        "share": np.array([k for _, k, _ in record["pairs"]]),
        "weight": np.array(weights.pop()),
        "final": np.array([o.score for o in outputs]),
    }


def variants(run: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    from anomalens.methods.musc.rscin import rescore

    w = float(run["weight"])
    raw, share = torch.from_numpy(run["raw"][index]), torch.from_numpy(run["share"][index])
    feats = torch.from_numpy(run["features"][index])
    out = {"RsCIN off": ((1 - w) * raw + w * share).numpy()}
    for k in WINDOWS:
        out[f"on the mutual score, k {k}"] = ((1 - w) * rescore(raw, feats, k) + w * share).numpy()
        out[f"on the output score, k {k}"] = rescore((1 - w) * raw + w * share, feats, k).numpy()
    return out


def drawn_batch(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """All normal images and defective ones drawn so that they are `rate` of the batch (at least 2)."""
    normals, defects = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    count = max(2, round(rate * len(normals) / (1 - rate)))
    return np.concatenate([normals, rng.choice(defects, count, replace=False)])


def screen(args, category: str, paths: list[str], labels: np.ndarray) -> None:
    rows: dict[tuple[str, str], list[float]] = {}
    for seed in args.seeds:
        cache = Path(args.cache) / f"{category}_seed{seed}.npz"
        if cache.exists():
            run = dict(np.load(cache))
        else:
            run = recorded_run(paths, seed)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **run)
        everything = np.arange(len(labels))
        check = variants(run, everything)["on the mutual score, k (1, 2, 3)"]
        if np.abs(check - run["final"]).max() > 1e-5:
            raise RuntimeError("the recorded pieces do not give the default's scores")
        for rate in ["test set", *args.rates]:
            draws = [everything] if rate == "test set" else []
            rng = np.random.default_rng(seed)
            draws += [drawn_batch(labels, float(rate), rng) for _ in range(args.draws if rate != "test set" else 0)]
            for index in draws:
                for name, scores in variants(run, index).items():
                    rows.setdefault((name, str(rate)), []).append(roc_auc_score(labels[index], scores))
    rates = ["test set", *map(str, args.rates)]
    print(f"\n{category}, image AUROC (mean over partner seeds {args.seeds} and draws)\n")
    print("| RsCIN | " + " | ".join(f"defects: {r}" for r in rates) + " |\n|---" * 1 + "|---" * len(rates) + "|")
    for name in dict.fromkeys(n for n, _ in rows):
        print(f"| {name} | " + " | ".join(f"{100 * np.mean(rows[(name, r)]):.2f}" for r in rates) + " |")


def real(args, category: str, paths: list[str], labels: np.ndarray) -> None:
    from anomalens import Detector

    rng = np.random.default_rng(0)
    results: dict[str, list[float]] = {}
    for _ in range(args.draws):
        index = drawn_batch(labels, args.real, rng)
        batch = [paths[i] for i in index]
        for name, extra in {"RsCIN on (default)": {}, "RsCIN off": {"rscin": False}}.items():
            scores = [o.score for o in Detector("musc", progress=False, **extra).fit([]).predict(batch)]
            results.setdefault(name, []).append(roc_auc_score(labels[index], scores))
            print(f"{category} draw {len(results[name])} {name}: {100 * results[name][-1]:.2f}", flush=True)
    for name, values in results.items():
        print(f"{category}, {args.real:.0%} defects, {name}: {100 * np.mean(values):.2f} (draws {len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--rates", default="0.03,0.1", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--real", type=float, default=None, help="run musc on batches with this defect rate")
    parser.add_argument("--cache", default="/tmp/anomalens-rscin")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from anomalens.data import load_dataset

    for category in args.categories.split(","):
        split = load_dataset(Path(args.data), categories=[category])[category]
        paths = [str(s.path) for s in split.test]
        labels = np.array([s.label for s in split.test])
        (real if args.real is not None else screen)(args, category, paths, labels)


if __name__ == "__main__":
    main()
