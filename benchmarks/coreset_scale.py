"""patchknn with many references: the greedy k-centre coreset's fit time, per-image time and accuracy cost.

For each (shots, coreset size) on one category (all test images unless --every N), with the
default patchknn settings otherwise: the seconds to build the bank (reference features, then
the coreset), the per-image milliseconds of patch kNN + map (`PatchKnn.score`, the detector's
own code) on one torch thread, and image AUROC / pixel AUROC / AUPRO. The test images'
features are extracted once (the backbone does not depend on the bank; its per-image time is
printed once); references are the first N of `train/good` in sorted order (as
`benchmarks/detect_speed.py --shots N` takes them).

    python benchmarks/coreset_scale.py --data ../shared/data/magnetic_tile \\
        --runs 4:0 4:1024 4:410 200:16384 200:4096
    python benchmarks/coreset_scale.py --data ../shared/data/magnetic_tile --runs 200:0 200:16384 --every 4
    python benchmarks/coreset_scale.py --data ../shared/data/magnetic_tile --runs 4:8192 200:8192 --set augment='"none"'

`SHOTS:0` is the whole bank (no coreset); a coreset size at or above the bank changes nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anomalens.data import load_dataset, load_mask
from anomalens.images import load_image
from anomalens.methods.patchknn import PatchKnn, PatchKnnSettings, reference_augmentation
from anomalens.metrics import PixelMetricAccumulator, image_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="one MVTec-layout category folder")
    parser.add_argument("--runs", nargs="+", default=["4:0", "4:1024", "200:16384", "200:4096"], help="SHOTS:CORESET")
    parser.add_argument("--every", type=int, default=1, help="score every N-th test image (sorted)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="a patchknn setting, key=value (JSON value)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data.resolve()
    split = load_dataset(data.parent, categories=[data.name])[data.name]
    test = sorted(split.test, key=lambda s: str(s.path))[:: args.every]
    runs = [tuple(int(v) for v in r.split(":")) for r in args.runs]

    method = PatchKnn(PatchKnnSettings(**{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}))
    with torch.inference_mode():
        start = time.perf_counter()
        test_feats = [method._features([load_image(s.path)]) for s in test]
        model_ms = 1000 * (time.perf_counter() - start) / len(test)
        # per augmentation (`reference_augmentation`: none above augment_max_references), the
        # references' patches, and the seconds spent reading and encoding them, cumulative over the
        # growing reference list
        per_reference: dict[str, list[torch.Tensor]] = {}
        elapsed: dict[str, float] = {}
        extract_seconds: dict[int, float] = {}
        references = sorted(split.train_good)
        for shots in sorted({s for s, _ in runs}):
            augment = reference_augmentation(method.settings, shots)
            done = per_reference.setdefault(augment, [])
            start = time.perf_counter()
            done += [method.reference_patches(load_image(p), augment) for p in references[len(done) : shots]]
            elapsed[augment] = elapsed.get(augment, 0.0) + time.perf_counter() - start
            extract_seconds[shots] = elapsed[augment]

        print(f"{data.name}: {len(test)} test images; decode + backbone {model_ms:.1f} ms/image; "
              f"torch threads {args.threads}\n")
        print("| references | bank patches | coreset | fit s (features + coreset) | kNN + map ms/image "
              "| image AUROC | pixel AUROC | AUPRO |")
        print("|---|---|---|---|---|---|---|---|")
        for shots, size in runs:
            method.settings.coreset_size = size
            method.use_rank_for(shots)  # `few_shot_k` as fit resolves it for this many references
            start = time.perf_counter()
            chosen = per_reference[reference_augmentation(method.settings, shots)][:shots]
            bank = method.build_bank(chosen)
            coreset_seconds = time.perf_counter() - start
            labels, scores = [], []
            pixels = PixelMetricAccumulator()
            scoring = 0.0
            for sample, (feats, layouts) in zip(test, test_feats):
                start = time.perf_counter()
                out = method.score(feats[0], layouts[0], bank)
                scoring += time.perf_counter() - start
                labels.append(sample.label)
                scores.append(out.score)
                pixels.update(out.anomaly_map, load_mask(sample, out.anomaly_map.shape))
            metrics = {**image_metrics(labels, scores), **pixels.compute()}
            total = sum(p.shape[0] for p in chosen)
            features = extract_seconds[shots]
            fit = f"{features + coreset_seconds:.1f} ({features:.1f} + {coreset_seconds:.1f})"
            print(
                f"| {shots} | {total} | {bank.shape[0] if bank.shape[0] < total else 'none'} | {fit} | "
                f"{1000 * scoring / len(test):.1f} | {100 * metrics['image_auroc']:.1f} | "
                f"{100 * metrics['pixel_auroc']:.1f} | {100 * metrics['pixel_aupro']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
