"""Scoring a run's images in more than one thread: how many batches at once, and the items in input order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice


def scoring_workers(detector) -> int:
    """Batches scored at once by default: 2 when the model runs on the CPU with one torch thread,
    the machine has 2 or more CPUs and the method can predict in two threads at once
    (`concurrent_predict`, patchknn), else 1.

    With one thread per batch nothing waits for another thread inside an operation: on 2 cores
    two batches and the writer share them evenly, where 2 torch threads on one batch stall each
    time the writer (or another process) takes one of the cores (README "Speed and memory").
    """
    import torch

    if (
        detector.scores_jointly
        or not getattr(detector.method, "concurrent_predict", False)
        or getattr(detector.device, "type", "cpu") != "cpu"
        or torch.get_num_threads() > 1
    ):
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


def scored_items(detector, todo, batch_size: int, jobs: int, workers: int, batch=None) -> Iterator:
    """`detector.predict_iter` items (result and image, or load error) of `todo`, in input order.

    workers > 1: batches of `batch_size` images are read and scored by that many threads at
    once (torch releases the GIL); a batch starts when the oldest one is handed on, so at most
    `workers` batches are held besides the one being yielded (memory stays bounded)."""
    if workers <= 1 or batch is not None:
        yield from detector.predict_iter(
            batch or todo, batch_size=batch_size, jobs=jobs, with_images=True, skip_errors=True
        )
        return

    def score(chunk: list) -> list:
        return list(detector.predict_iter(chunk, batch_size=len(chunk), jobs=0, with_images=True, skip_errors=True))

    chunks = iter([todo[i : i + batch_size] for i in range(0, len(todo), batch_size)])
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anomalens-score")
    try:
        pending = deque(pool.submit(score, chunk) for chunk in islice(chunks, workers))
        while pending:
            items = pending.popleft().result()
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append(pool.submit(score, chunk))
            yield from items
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: the batches being scored end, no new ones
