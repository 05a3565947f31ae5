"""Stated vs reached false-reject rates: `fit` with a threshold rule, then `evaluate` on the test set.

For each (references, rule): a seeded draw of N references from the category's train/good
(symlinked into OUT/refsN), `anomalens fit` with the rule, `anomalens evaluate` of the saved
model on the category's labelled test images. The table compares the false-reject rate the
calibration states (expected, 95 % bound) with the one reached on the test's good images, and
gives the escape rate. Every command is printed before it runs (the README shows them).

    python benchmarks/thresholds.py --data ../shared/data/magnetic_tile \
        --runs 8:quantile 8:0.01 64:0.01 64:0.05 200:0.01
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from anomalens.data import load_dataset, sample_references


def sh(args: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="one MVTec-layout category folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/anomalens_thresholds"))
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["8:quantile", "8:0.01", "64:0.01", "64:0.05"],
        help="N:RULE, RULE 'quantile' (the default --quantile 0.99 --margin 0.1) or a target rate",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="patchknn")
    parser.add_argument("--table-only", action="store_true", help="print the table of the runs already in --out")
    args = parser.parse_args()
    data = args.data.resolve()
    split = load_dataset(data.parent, categories=[data.name])[data.name]
    cli = [sys.executable, "-m", "anomalens", "--threads", "1"]
    rows = []
    for run in args.runs:
        n, rule = run.split(":")
        refs = args.out / f"refs{n}"
        if not refs.exists():
            refs.mkdir(parents=True)
            for path in sample_references(split, int(n), args.seed):
                (refs / path.name).symlink_to(path)
        name = f"{args.method}-{n}-{rule}"
        model, evaluation = args.out / f"model-{name}", args.out / f"eval-{name}"
        rule_args = [] if rule == "quantile" else ["--max-false-reject", rule]
        if not args.table_only:
            start = time.perf_counter()
            sh([*cli, "fit", "--refs", refs, "-m", args.method, "--out", model, "--overwrite", *rule_args])
            (evaluation.parent / f"fit-seconds-{name}.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
            sh([*cli, "evaluate", data, "--model", model, "--out", evaluation, "--overwrite", "--no-progress"])
        seconds_file = evaluation.parent / f"fit-seconds-{name}.txt"
        fit_seconds = float(seconds_file.read_text()) if seconds_file.exists() else float("nan")
        summary = json.loads((evaluation / "summary.json").read_text())
        t, conf = summary["threshold"], summary["confusion"]
        rows.append((n, rule, t, conf, summary["at_target"], fit_seconds))
    print(
        "\n| refs | rule | LOO scores | stated false-reject: expected (95 % bound) | reached on test good "
        "| escape rate | threshold |"
    )
    print("|---|---|---|---|---|---|---|")
    for n, rule, t, conf, _at, _seconds in rows:
        m = conf["matrix"]
        stated = f"{100 * t['expected_false_reject']:.1f} % ({100 * t['false_reject_bound']:.1f} %)"
        reached = f"{100 * conf['false_reject_rate']:.1f} % ({m['good']['NG']}/{m['good']['OK'] + m['good']['NG']})"
        escaped = f"{100 * conf['escape_rate']:.1f} % ({m['defect']['OK']}/{m['defect']['OK'] + m['defect']['NG']})"
        label = "--quantile 0.99 --margin 0.1" if rule == "quantile" else f"--max-false-reject {rule}"
        print(f"| {n} | {label} | {t['n_scores']} | {stated} | {reached} | {escaped} | {t['value']:.4f} |")

    timed = [f"{n} refs {rule}: {s:.0f} s" for n, rule, _t, _c, _a, s in rows if s == s]  # NaN: not timed
    if timed:
        print("\nfit times (torch threads 1): " + "; ".join(timed))


if __name__ == "__main__":
    main()
