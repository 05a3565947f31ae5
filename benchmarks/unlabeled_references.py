"""References from unlabeled images (`fit --unlabeled`) against single-image zero-shot and real references.

For each seed the category's test images are split in two random halves: the first is the unlabeled
folder, whose images musc's mutual score ranks (`choose_typical_images`, musc's defaults), the second
is scored one image at a time by `patchknn` fitted on references chosen from the first by a rule:

* `lowest:S` : the share S of the folder ranked most typical (what `fit --unlabeled` does, S = 0.1);
* `spread:S:W`: S of the folder drawn at random (seeded) from the share W ranked most typical: more of
  the product's variation, and more risk of a defect;
* `cluster:S:W`: the images ranked most typical W split into as many k-means clusters (image
  descriptors: patchknn's patch features averaged, unit length) as S of the folder, and from each
  cluster its most typical image: typical, and spread over the product's variation;
* `joined:S`: the S of the folder that musc picks as pseudo-references in its second round (the mutual score
  picks S, patchknn on them scores the folder, and the S lowest by the joined score are picked again:
  `pseudo_reference_rounds` 2, README "Pseudo-references picked twice");
* `oracle:S`: S of the folder drawn at random from its *normal* images (uses the labels: the bound a
  perfect ranking would give with random draws);
* `zero`: no references (single-image zero-shot), `real:K`: K real references (`train/good`, the
  benchmark's draw for that seed).

"chosen (defective)": how many references each seed got and how many of them are defective (labels
used only for this and `oracle`). Metrics as `anomalens benchmark` computes them (`evaluate_category`).
The mutual scores are cached per data, category and seed under `--cache`. Run it on
`zero_shot_marks.py`'s marked copies (`--data /tmp/anomalens-marks/stamp`) to see a part's own mark.

    python benchmarks/unlabeled_references.py --data ../shared/data --categories magnetic_tile,mpdd_metal_plate
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from anomalens.benchmark import evaluate_category
from anomalens.data import load_dataset, sample_references
from anomalens.detector import Detector
from anomalens.images import load_image
from anomalens.typical_images import DEFAULT_TYPICAL_MINIMUM, choose_typical_images, typical_count

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")
DEFAULT_RULES = f"zero,lowest:{0.1},real:4"
NAMES = {
    "zero": "none (single-image zero-shot)",
    "lowest": "the most typical {0} of the other half",
    "spread": "{0} at random from the most typical {1}",
    "joined": "the {0} of musc's second pick (the joined score)",
    "oracle": "{0} at random from the normal images",
    "cluster": "{0} from k-means clusters of the most typical {1}",
    "real": "{0} real references",
}


def mutual_scores(pool, data: str, category: str, seed: int, cache: Path) -> dict[str, float]:
    """The pool's mutual scores (musc's defaults), from the cache when it has them."""
    key = hashlib.sha256(f"{Path(data).resolve()}|{category}|{seed}|{len(pool)}".encode()).hexdigest()[:16]
    path = cache / f"{category}-{seed}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = choose_typical_images([s.path for s in pool], rounds=1, progress=False).mutual_scores
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores))
    return scores


def second_pick(pool, data: str, category: str, seed: int, share: float, cache: Path) -> list[str]:
    """What `fit --unlabeled` chooses from the pool: musc's second pick of `share` (`choose_typical_images`
    with rounds 2), cached."""
    key = hashlib.sha256(f"{Path(data).resolve()}|{category}|{seed}|{len(pool)}|{share}".encode()).hexdigest()[:16]
    path = cache / f"{category}-{seed}-second-pick-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    chosen = choose_typical_images([s.path for s in pool], share=share, rounds=2, progress=False).chosen
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chosen))
    return chosen


DESCRIPTORS: dict[str, np.ndarray] = {}
DESCRIBER: list = []


def descriptor(path: str) -> np.ndarray:
    """One image's descriptor: patchknn's (default settings, 256 px) patch features averaged, unit length."""
    if not DESCRIBER:
        DESCRIBER.append(Detector("patchknn"))
    if path not in DESCRIPTORS:
        det = DESCRIBER[0]
        with torch.inference_mode():
            feats, _ = det.method._features([load_image(path)])
        mean = feats[0].float().reshape(-1, feats[0].shape[-1]).mean(0)
        DESCRIPTORS[path] = torch.nn.functional.normalize(mean, dim=0).numpy()
    return DESCRIPTORS[path]


def references(rule: str, pool, scores: dict[str, float], split, seed: int, where=(), cache=None) -> list:
    """The references one rule chooses from the pool (see the module's docstring)."""
    kind, *args = rule.split(":")
    ranked = sorted(scores, key=lambda p: (scores[p], p))
    rng = np.random.default_rng(1000 + seed)
    if kind == "zero":
        return []
    if kind == "real":
        return sample_references(split, int(args[0]), seed)
    count = typical_count(float(args[0]), DEFAULT_TYPICAL_MINIMUM, len(ranked))
    if kind == "lowest":
        return ranked[:count]
    if kind == "joined":
        return second_pick(pool, *where, float(args[0]), cache)
    if kind == "spread":
        window = ranked[: typical_count(float(args[1]), count, len(ranked))]
        return [window[i] for i in sorted(rng.choice(len(window), count, replace=False))]
    if kind == "cluster":
        window = ranked[: typical_count(float(args[1]), count, len(ranked))]
        x = np.stack([descriptor(p) for p in window])
        labels = KMeans(n_clusters=count, n_init=4, random_state=seed).fit_predict(x)
        # ranked order: the first member of each cluster in `window` is its most typical one
        return [window[i] for i in sorted({int(c): i for i, c in reversed(list(enumerate(labels)))}.values())]
    if kind == "oracle":
        normal = sorted(str(s.path) for s in pool if s.label == 0)
        return [normal[i] for i in sorted(rng.choice(len(normal), min(count, len(normal)), replace=False))]
    raise ValueError(f"unknown rule {rule!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--rules",
        default=DEFAULT_RULES,
        help="comma-separated: zero, lowest:S, joined:S, spread:S:W, cluster:S:W, oracle:S, real:K",
    )
    parser.add_argument("--cache", default="/tmp/anomalens-mutual-scores")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rules = args.rules.split(",")
    print(f"data: {args.data}; mean over seeds {args.seeds}")
    print("| category | patchknn's references | image AUROC | pixel AUROC | AUPRO | chosen (defective) |")
    print("|---|---|---|---|---|---|")
    for category in args.categories.split(","):
        split = load_dataset(args.data, categories=[category])[category]
        label = {str(s.path): s.label for s in split.test}
        results: dict[str, list[dict]] = {rule: [] for rule in rules}
        counts: dict[str, list[str]] = {rule: [] for rule in rules}
        for seed in map(int, args.seeds.split(",")):
            order = np.random.default_rng(seed).permutation(len(split.test))
            pool = [split.test[i] for i in order[: len(order) // 2]]
            held_out = replace(split, test=[split.test[i] for i in order[len(order) // 2 :]])
            scores = mutual_scores(pool, args.data, category, seed, Path(args.cache))
            for rule in rules:
                where = (args.data, category, seed)
                refs = references(rule, pool, scores, split, seed, where, Path(args.cache))
                results[rule].append(evaluate_category(Detector("patchknn"), held_out, refs))
                if rule.split(":")[0] in ("lowest", "joined", "spread", "oracle", "cluster"):
                    counts[rule].append(f"{len(refs)} ({sum(label[str(p)] for p in refs)})")
        for rule in rules:
            kind, *rest = rule.split(":")
            cells = " | ".join(f"{100 * np.mean([r[k] for r in results[rule]]):.1f}" for k in KEYS)
            print(f"| {category} | {NAMES[kind].format(*rest)} | {cells} | {', '.join(counts[rule])} |", flush=True)


if __name__ == "__main__":
    main()
