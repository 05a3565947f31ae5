"""OK/NG decisions with `--threshold auto` on `anomalens demo`'s set, per variant of patchknn's settings.

For each texture (brick, grass, gravel) the demo's references are drawn as `anomalens demo --seed` draws
them, the detector is fitted and calibrated (leave-one-out over the references, the default rule), and the
script counts the good test tiles rejected (NG) and the defective ones passed (OK). The demo's references
come from the top half of each photograph and its test tiles from the bottom half, so this shows how a
threshold from a few references carries to new good images. Each variant is a JSON object of settings.

    python benchmarks/demo_thresholds.py --seeds 0 '{"fused_recipe": "none"}' '{}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from anomalens.data import load_dataset, sample_references
from anomalens.demo import DemoSettings, build_demo_dataset
from anomalens.detector import Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="JSON objects of patchknn settings ('{}' = the defaults)")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    print("| variant | seed | texture | threshold | good rejected | defects passed |\n|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            settings = DemoSettings(seed=seed)
            root = build_demo_dataset(Path(tmp), settings)
            for variant in args.variants:
                for name, split in load_dataset(root).items():
                    refs = sample_references(split, settings.references, seed)
                    det = Detector("patchknn", **json.loads(variant)).fit(refs).calibrate()
                    results = det.predict([s.path for s in split.test])
                    good = [r for r, s in zip(results, split.test) if s.label == 0]
                    bad = [r for r, s in zip(results, split.test) if s.label == 1]
                    rejected = sum(r.decision == "NG" for r in good)
                    passed = sum(r.decision == "OK" for r in bad)
                    print(
                        f"| {variant} | {seed} | {name} | {det.threshold.value:.3f} | {rejected} / {len(good)} "
                        f"| {passed} / {len(bad)} |"
                    )


if __name__ == "__main__":
    main()
