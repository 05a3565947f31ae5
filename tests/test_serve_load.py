"""The service under concurrent load: the bounded pool, batching, 503 + Retry-After, real uvicorn."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from serve_helpers import encode, server_in_thread, slow_down, texture, tiny_detector  # noqa: E402

from anomalens.serve import ModelRegistry, ServeSettings, create_app  # noqa: E402
from anomalens.serve.errors import ServeError  # noqa: E402
from anomalens.serve.pool import InferencePool  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES = [encode(texture(i, defect=i % 3 == 0)) for i in range(8)]


class _RecordingDetector:
    """Stands in for a Detector: records the size of every model call; the first call waits."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[list[str]] = []
        self.gate = gate

    def predict_iter(self, images, batch_size=8, skip_errors=False):
        if self.gate is not None and not self.calls:
            self.calls.append([i for i in images])
            self.gate.wait(10)
        else:
            self.calls.append(list(images))
        return iter([f"result of {i}" for i in images])


def test_pool_batches_queued_jobs_of_one_model_and_keeps_their_order():
    gate = threading.Event()
    a, b = _RecordingDetector(gate), _RecordingDetector()
    pool = InferencePool(workers=1, max_queue=8, max_batch=4)

    async def scenario():
        first = asyncio.ensure_future(pool.run(a, ["a0"]))
        while not a.calls:  # the worker holds a0
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(pool.run(a, [f"a{i}"])) for i in range(1, 4)]
        other = asyncio.ensure_future(pool.run(b, ["b0"]))
        big = asyncio.ensure_future(pool.run(a, ["a4", "a5"]))  # would exceed max_batch with a1..a3
        await asyncio.sleep(0.05)
        assert pool.queue_depth == 5
        gate.set()
        return await asyncio.gather(first, *queued, other, big)

    try:
        outcomes = asyncio.run(scenario())
    finally:
        pool.close()
    assert a.calls == [["a0"], ["a1", "a2", "a3"], ["a4", "a5"]]
    assert b.calls == [["b0"]]  # never mixed with another model's images
    results = [o for o, _ in outcomes]
    assert results[1:4] == [["result of a1"], ["result of a2"], ["result of a3"]]
    assert results[-1] == ["result of a4", "result of a5"]
    assert [info.batch_images for _, info in outcomes[1:4]] == [3, 3, 3]


def test_pool_admission_bound():
    pool = InferencePool(workers=2, max_queue=1, retry_after=7)
    try:
        with pool.admit(), pool.admit(), pool.admit():
            assert pool.admitted == 3
            with pytest.raises(ServeError) as err, pool.admit():
                pass
            assert err.value.status == 503 and err.value.kind == "queue_full"
            assert err.value.headers == {"Retry-After": "7"}
        assert pool.admitted == 0
        with pool.admit():
            pass
    finally:
        pool.close()


@pytest.fixture(scope="module")
def detector(one_torch_thread):
    return tiny_detector()


def _post(client: httpx.Client, base: str, data: bytes) -> httpx.Response:
    return client.post(f"{base}/v1/models/tiny/predict", content=data, headers={"content-type": "image/png"})


def test_sixteen_clients_without_errors(detector):
    registry = ModelRegistry()
    registry.add("tiny", detector)
    with server_in_thread(create_app(registry, ServeSettings(workers=2, max_queue=16, max_batch=8))) as base:

        def client(k: int) -> list[tuple[int, int, float, int]]:
            out = []
            with httpx.Client(timeout=60) as c:
                for j in range(4):
                    i = (k + j) % len(IMAGES)
                    r = _post(c, base, IMAGES[i])
                    body = r.json()
                    out.append((r.status_code, i, body.get("score"), body.get("timing", {}).get("batch_images", 0)))
            return out

        with ThreadPoolExecutor(16) as ex:
            done = [x for xs in ex.map(client, range(16)) for x in xs]
        metrics = httpx.get(f"{base}/metrics").text
        health = httpx.get(f"{base}/health").json()
    assert len(done) == 64 and [status for status, *_ in done] == [200] * 64
    # Batching changes nothing: each image's score is what it gets alone.
    alone = {}
    with server_in_thread(create_app(registry)) as base1, httpx.Client() as c:
        for i, data in enumerate(IMAGES):
            alone[i] = _post(c, base1, data).json()["score"]
    for _, i, score, batch in done:
        assert score == pytest.approx(alone[i], rel=1e-4, abs=1e-6)
        assert 1 <= batch <= 8
    assert (
        sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines() if ln.startswith("anomalens_images_total")) == 64
    )
    assert "anomalens_errors_total" not in metrics
    assert health["admitted"] == 0 and health["queue_depth"] == 0


def test_full_queue_answers_503_with_retry_after(detector):
    registry = ModelRegistry()
    registry.add("tiny", slow_down(tiny_detector(), 0.6))
    settings = ServeSettings(workers=1, max_queue=2, max_batch=1, retry_after_seconds=2)
    with server_in_thread(create_app(registry, settings)) as base:
        barrier = threading.Barrier(16)

        def client(k: int) -> httpx.Response:
            with httpx.Client(timeout=60) as c:
                barrier.wait()
                return _post(c, base, IMAGES[k % len(IMAGES)])

        start = time.perf_counter()
        with ThreadPoolExecutor(16) as ex:
            responses = list(ex.map(client, range(16)))
        elapsed = time.perf_counter() - start
        metrics = httpx.get(f"{base}/metrics").text
        after = _post(httpx.Client(timeout=60), base, IMAGES[0])
    statuses = [r.status_code for r in responses]
    refused = [r for r in responses if r.status_code == 503]
    assert set(statuses) <= {200, 503}
    # 1 running + 2 queued are admitted; the others arrive while all 3 slots are held (0.6 s each).
    assert statuses.count(200) >= 3 and len(refused) >= 8, statuses
    for r in refused:
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"]["kind"] == "queue_full"
    # Refusals are immediate: the whole burst takes about the admitted requests' model time.
    assert elapsed < 0.6 * statuses.count(200) + 5
    assert f'anomalens_errors_total{{kind="queue_full"}} {len(refused)}' in metrics
    assert after.status_code == 200  # the slots are free again
