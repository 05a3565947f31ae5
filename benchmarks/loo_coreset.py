"""patchknn's leave-one-out above the coreset size: the one-coreset scheme against refitting.

`PatchKnn.leave_one_out` chooses one greedy k-centre coreset over all references and, for
held-out reference r, drops r's patches from it. Refitting would choose a new coreset over the
other references' patches for each r. This script scores the first --held-out references of a
seeded draw (as `benchmarks/thresholds.py` draws them) both ways and prints the scores, their
differences, and the seconds each way took.

    python benchmarks/loo_coreset.py --data ../shared/data/magnetic_tile --refs 64 --held-out 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from anomalens.data import load_dataset, sample_references
from anomalens.images import load_image
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings, reference_augmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="one MVTec-layout category folder")
    parser.add_argument("--refs", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data.resolve()
    split = load_dataset(data.parent, categories=[data.name])[data.name]
    refs = [load_image(p) for p in sample_references(split, args.refs, args.seed)]
    method = PatchKnn(PatchKnnSettings())
    with torch.inference_mode():
        start = time.perf_counter()
        augment = reference_augmentation(method.settings, len(refs))
        per_reference = [method.reference_patches(r, augment) for r in refs]
        features = time.perf_counter() - start
        start = time.perf_counter()
        bank, origin = method.bank_with_origin(per_reference)
        one_coreset = time.perf_counter() - start
        held = list(range(min(args.held_out, len(refs))))
        feats, layouts = method._features([refs[i] for i in held])
        rows, refit_seconds = [], 0.0
        for i, f, layout in zip(held, feats, layouts):
            approx = method.score(f, layout, bank[origin != i])
            start = time.perf_counter()
            others = method.build_bank(per_reference[:i] + per_reference[i + 1 :])
            refit_seconds += time.perf_counter() - start
            exact = method.score(f, layout, others)
            rows.append((i, int((origin == i).sum()), approx, exact))
    print(f"{data.name}: {len(refs)} references (seed {args.seed}), {sum(p.shape[0] for p in per_reference)} patches, "
          f"coreset_size {method.settings.coreset_size}; features {features:.1f} s; one coreset {one_coreset:.1f} s, "
          f"refitting {refit_seconds / len(held):.1f} s per held-out reference\n")
    print("| held-out reference | its patches in the coreset | score, one coreset | score, refit | difference "
          "| map: mean abs difference |")
    print("|---|---|---|---|---|---|")
    for i, own, approx, exact in rows:
        diff = float(np.abs(approx.anomaly_map - exact.anomaly_map).mean())
        scores = f"{approx.score:.4f} | {exact.score:.4f} | {approx.score - exact.score:+.4f}"
        print(f"| {i} | {own} | {scores} | {diff:.4f} |")
    d = np.array([a.score - e.score for _, _, a, e in rows])
    print(f"\nscore difference (one coreset - refit): mean {d.mean():+.4f}, min {d.min():+.4f}, max {d.max():+.4f}; "
          f"largest score {max(a.score for _, _, a, _ in rows):.4f} vs {max(e.score for _, _, _, e in rows):.4f}")


if __name__ == "__main__":
    main()
