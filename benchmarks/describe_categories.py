"""The embedded language model's defect lists for the dataset categories and a few unusual products.

For each category: the cleaned list `anomalens describe` would write, what the cleaning filter
dropped and why, the hand-written list in anomalens/text/data/defects.json (if any), and the
seconds it took. Slow on a CPU: the first run de-quantises the GGUF weights (minutes) and
caches them; each category then takes seconds.

    python benchmarks/describe_categories.py --threads 1 --n 8
"""

from __future__ import annotations

import argparse
import time

from anomalens.describe import EmbeddedBackend, GenerationSettings, describe_category
from anomalens.describe.embedded import load_cached_model
from anomalens.text.prompts import MVTEC_CATEGORIES, VISA_CATEGORIES, load_defect_vocabulary

EXTRA_CATEGORIES = ("magnetic_tile", "steel_strip", "ball screw drive", "wooden pallet", "solar cell", "rubber o-ring")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="phrases asked for per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--categories", nargs="*", help="default: MVTec AD + VisA + the extra ones")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_cached_model(log=print)
    print(f"model loaded in {time.perf_counter() - start:.1f} s ({args.threads} thread(s))\n")
    backend = EmbeddedBackend(model, tokenizer, GenerationSettings(seed=args.seed))
    hand = load_defect_vocabulary()
    rows = []
    for category in args.categories or (*MVTEC_CATEGORIES, *VISA_CATEGORIES, *EXTRA_CATEGORIES):
        result = describe_category(backend, category, n=args.n)
        rows.append(result)
        print(f"## {category}  ({result.seconds:.1f} s, {result.attempts} request(s))")
        print(f"  generated   : {'; '.join(result.kept) or '(nothing usable)'}")
        if result.dropped:
            print("  dropped     : " + "; ".join(f"{item!r} ({why})" for item, why in result.dropped))
        if category in hand.categories:
            print(f"  hand-written: {'; '.join(hand.categories[category])}")
        print(flush=True)

    total = sum(r.seconds for r in rows)
    print("| category | kept | dropped | requests | seconds |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.category} | {len(r.kept)} | {len(r.dropped)} | {r.attempts} | {r.seconds:.1f} |")
    print(f"\n{len(rows)} categories, {total:.0f} s, {total / max(len(rows), 1):.1f} s per category")


if __name__ == "__main__":
    main()
