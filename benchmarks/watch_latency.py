"""How long `detect --watch` takes for a new image when many are already done (README "Watching a folder").

Copies --images good test images of a category into a temporary folder (the same files again under
other names when more are asked for than the category has), fits patchknn on 4 of its
train/good images, lets `anomalens.watch.watch` inspect the folder (its first poll: the batch), then
drops one new image in before each of --new further polls and prints the time from poll to poll's
run end: listing the folder, reading results.jsonl, scoring and writing the new image.

    python benchmarks/watch_latency.py --data ../shared/data --category magnetic_tile --images 500 --new 5
    python benchmarks/watch_latency.py --data ../shared/data --category magnetic_tile --images 5000 --new 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from anomalens import Detector
from anomalens.data import load_dataset, sample_references
from anomalens.watch import watch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="a dataset in MVTec layout")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--new", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_dataset(args.data, categories=[args.category])[args.category]
    pool = [s.path for s in split.test if s.label == 0]
    # more images than the category has: the same files again under other names (a long shift's folder)
    goods = [(i, pool[i % len(pool)]) for i in range(args.images + args.new)]
    work = Path(tempfile.mkdtemp(prefix="watch-latency-"))
    inbox = work / "inbox"
    inbox.mkdir()
    settled = time.time() - 100  # copies that have long stopped changing

    def drop(item: tuple[int, Path]) -> None:
        index, path = item
        target = inbox / f"{index:06d}_{path.name}"
        shutil.copy(path, target)
        os.utime(target, (settled, settled))

    for item in goods[: args.images]:
        drop(item)
    detector = Detector(method="patchknn").fit(sample_references(split, 4, 0)).calibrate()
    queue = list(goods[args.images :])
    rows, clock = [], [time.perf_counter()]

    def between_polls(seconds: float) -> None:
        clock[0] = time.perf_counter()
        if queue:
            drop(queue.pop(0))

    def after_run(summary) -> None:
        rows.append((summary.scored, summary.done, time.perf_counter() - clock[0]))

    clock[0] = time.perf_counter()
    watch(
        detector,
        [inbox],
        work / "out",
        poll_seconds=0,
        sleep=between_polls,
        max_polls=args.new + 1,
        on_run=after_run,
        report_seconds=1e9,
    )
    print(
        f"patchknn, 4 references, {args.images} images first, then one new image per poll; "
        f"torch threads {args.threads}\n"
    )
    print("| run | new images scored | images done | seconds (poll + run) |\n|---|---|---|---|")
    for i, (scored, done, seconds) in enumerate(rows):
        kind = "first poll" if i == 0 else "end: report" if scored == 0 else f"new image {i}"
        print(f"| {kind} | {scored} | {done} | {seconds:.3f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
