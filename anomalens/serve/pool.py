"""A bounded pool of model threads: admission control, a queue, and batching of queued requests.

Requests first take an admission slot (`admit`): at most `workers + max_queue` requests are
admitted at once, the rest are refused at once with 503 + Retry-After, so load beyond the bound
costs neither memory nor latency for the admitted ones. Admitted requests queue their decoded
images (`run`); each of the `workers` threads takes the oldest job and, with it, further queued
jobs for the same model up to `max_batch` images, and scores them in one model call. A model
runs one call at a time (see `_take_batch`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ImageLoadError
from ..images import LoadedImage
from ..results import AnomalyResult
from .errors import ServeError


@dataclass
class BatchInfo:
    """How a job was run: time spent queued, the model call's wall time and its batch size."""

    queue_seconds: float
    model_seconds: float
    batch_images: int


@dataclass
class _Job:
    detector: object
    images: list[LoadedImage]
    deliver: object  # callable(outcomes, BatchInfo), called from the worker thread
    submitted: float = field(default_factory=time.perf_counter)


class InferencePool:
    def __init__(self, workers: int = 1, max_queue: int = 16, max_batch: int = 8, retry_after: int = 1):
        self.workers = workers
        self.capacity = workers + max_queue
        self.max_batch = max_batch
        self.retry_after = retry_after
        self._cv = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._admitted = 0
        self._busy = 0
        self._running: set[int] = set()  # id() of the detectors being run
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"anomalens-model-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # ---- state, for metrics and /health ----
    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a model thread."""
        return len(self._pending)

    @property
    def busy_workers(self) -> int:
        return self._busy

    @contextmanager
    def admit(self):
        """Hold one of the `workers + max_queue` slots for a request, or raise a 503 ServeError."""
        with self._cv:
            if self._closed:
                raise ServeError(503, "shutting_down", "the service is shutting down", headers=self._retry())
            if self._admitted >= self.capacity:
                raise ServeError(
                    503,
                    "queue_full",
                    f"all {self.capacity} request slots are taken ({self.workers} running, "
                    f"{self.capacity - self.workers} queued); retry later",
                    headers=self._retry(),
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._cv:
                self._admitted -= 1

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    async def run(self, detector, images: list[LoadedImage]) -> tuple[list, BatchInfo]:
        """Score images with a detector on a model thread; one outcome (result or error) per image."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def deliver(outcomes, info) -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future, (outcomes, info))
            except RuntimeError:  # the event loop is gone (server stopped): nobody is waiting
                pass

        with self._cv:
            if self._closed:
                raise ServeError(503, "shutting_down", "the service is shutting down", headers=self._retry())
            self._pending.append(_Job(detector, images, deliver))
            self._cv.notify_all()  # an idle worker may skip it if its model is busy
        return await future

    def _take_batch(self) -> list[_Job] | None:
        """The oldest job whose model is idle, with the queued jobs of that model that fit beside it.

        One call per model at a time: methods keep per-call state on the model object (e.g.
        feature hooks), so a model is not thread-safe; more workers serve more models at once.
        """
        with self._cv:
            while True:
                first = next((j for j in self._pending if id(j.detector) not in self._running), None)
                if first is not None:
                    break
                if self._closed and not self._pending:
                    return None
                self._cv.wait()
            self._pending.remove(first)
            batch, size = [first], len(first.images)
            for job in list(self._pending):
                if job.detector is first.detector and size + len(job.images) <= self.max_batch:
                    self._pending.remove(job)
                    batch.append(job)
                    size += len(job.images)
            self._running.add(id(first.detector))
            self._busy += 1
            return batch

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                self._run_batch(batch)
            finally:
                with self._cv:
                    self._busy -= 1
                    self._running.discard(id(batch[0].detector))
                    self._cv.notify_all()

    def _run_batch(self, batch: list[_Job]) -> None:
        images = [img for job in batch for img in job.images]
        start = time.perf_counter()
        try:
            # skip_errors: a model failure on one image is that image's error, the others go on.
            outcomes: list[AnomalyResult | ImageLoadError | Exception] = list(
                batch[0].detector.predict_iter(images, batch_size=self.max_batch, skip_errors=True)
            )
        except Exception as err:  # the whole call failed: every image gets the error
            outcomes = [err] * len(images)
        model_seconds = time.perf_counter() - start
        i = 0
        for job in batch:
            n = len(job.images)
            info = BatchInfo(start - job.submitted, model_seconds, len(images))
            job.deliver(outcomes[i : i + n], info)
            i += n

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work; queued jobs still run; wait for the threads to finish them."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():  # the request may have been cancelled (client gone)
        future.set_result(value)
