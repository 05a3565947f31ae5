"""patchknn on several EfficientNet-Lite backbones at once: is an ensemble worth a second backbone?

Each backbone's patch features (cached by `patchknn_variants.py`, so its `--set backbone=...` runs
fill the cache) are joined per patch: the unit directions of all backbones, then all their length
channels, divided by sqrt(number of backbones). Against the bank the squared Euclidean distance is
then the mean of the backbones' own squared distances, with one nearest neighbour for all (not
one per backbone); zero-shot compares the joined directions (the mean of the cosines). Everything
else is patchknn's own code (`PatchKnn.score` through the variant script's `evaluate`). Seeds 0, 1,
2; all test images; one JSON line per (category, shots), then the table row.

    python benchmarks/patchknn_ensemble.py --backbones efficientnet-lite0,efficientnet-lite2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import patchknn_variants as variants  # noqa: E402

from anomalens.data import load_dataset  # noqa: E402
from anomalens.methods import patch_distances  # noqa: E402
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings  # noqa: E402


class JoinedFeatures:
    """The variant script's feature cache, per image the members' features joined (see the docstring)."""

    def __init__(self, cache: variants.FeatureCache, members: list[PatchKnn]):
        self.cache = cache
        self.members = members
        self.lengths = [patch_distances.length_channels(m.settings) for m in members]

    def get(self, method, category, paths, augment="none"):
        stores = [self.cache.get(m, category, paths, augment) for m in self.members]
        joined = {}
        for path in paths:
            parts = [store[str(path)][0] for store in stores]
            dirs = [f[..., : f.shape[-1] - n] for f, n in zip(parts, self.lengths)]
            lengths = [f[..., f.shape[-1] - n :] for f, n in zip(parts, self.lengths)]
            layout = stores[0][str(path)][1]  # tiles depend on the image size alone
            joined[str(path)] = (torch.cat(dirs + lengths, dim=-1) / len(parts) ** 0.5, layout)
        return joined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None, help="comma-separated; default all")
    parser.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite2")
    parser.add_argument("--shots", default="0,1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="a setting of every member, key=value (JSON)")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if base.get("coarse_weight") or base.get("magnitudes"):
        parser.error("the ensemble joins direction and length channels: no coarse map, no magnitudes")
    members = [PatchKnn(PatchKnnSettings(**base, backbone=name)) for name in args.backbones.split(",")]
    joined = JoinedFeatures(variants.FeatureCache(Path(args.cache)), members)
    # zero-shot drops every member's length channels (they trail the joined features)
    patch_distances.length_channels = lambda settings: sum(joined.lengths)
    splits = load_dataset(args.data, categories=args.categories.split(",") if args.categories else None)
    shots = [int(k) for k in args.shots.split(",")]
    start = time.perf_counter()
    results = variants.run_variant(base, splits, shots, [int(s) for s in args.seeds.split(",")], joined)
    for (category, k), metrics in sorted(results.items()):
        cells = {m: None if metrics[m] is None else round(100 * metrics[m], 1) for m in variants.METRICS}
        print(json.dumps({"backbones": args.backbones, **base, "category": category, "shots": k, **cells}))
    print()
    name = " + ".join(args.backbones.split(","))
    for line in variants.rows(name, results, shots, time.perf_counter() - start):
        print(line)


if __name__ == "__main__":
    main()
