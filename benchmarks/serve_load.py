"""Load test of `anomalens serve` on this machine: C concurrent clients against 127.0.0.1.

Fits a patchknn model (embedded EfficientNet-Lite0, default settings) on a few good images,
starts `anomalens serve` on it in a subprocess, and for each C sends a fixed number of
requests from C client threads (each waits for its answer before sending the next). Prints
throughput, latency percentiles, errors and the server's peak resident memory, and, for
comparison, the model-only rate of `detect` (the same model, batches of 8, decoding excluded).

    python benchmarks/serve_load.py                                   # generated 256 px images
    python benchmarks/serve_load.py --data ../shared/data/magnetic_tile --requests 200

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def generated_images(n: int, seed: int, size: int = 256) -> list[bytes]:
    """Textured PNGs (a sine pattern + noise; every third with a dark square)."""
    import io

    from PIL import Image

    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 50 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        img = np.clip(base[:, :, None] + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
        if i % 3 == 2:
            y, x = rng.integers(20, size - 60, 2)
            img[y : y + 30, x : x + 30] = 20
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def dataset_images(category: Path, refs: int, queries: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """References from train/good and queries from test/* of an MVTec-layout category folder."""
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    good = sorted(p for p in (category / "train" / "good").iterdir() if p.suffix.lower() in exts)
    test = sorted(p for p in (category / "test").rglob("*") if p.suffix.lower() in exts)
    rng = random.Random(seed)
    return (
        [p.read_bytes() for p in rng.sample(good, refs)],
        [p.read_bytes() for p in rng.sample(test, min(queries, len(test)))],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_only(det, images) -> tuple[float, float]:
    """(images per second, CPU ms per image) of the model alone, as `detect` runs it: batches of
    8, images decoded beforehand. CPU time does not depend on what else the machine runs."""
    cpu = time.process_time()
    results = det.predict(images, batch_size=8)
    cpu = time.process_time() - cpu
    return len(results) / sum(r.seconds for r in results), 1e3 * cpu / len(results)


def run_level(base: str, queries: list[bytes], clients: int, total: int, pid: int | None = None) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    batches: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    r = c.post(
                        f"{base}/v1/models/bench/predict",
                        content=queries[i % len(queries)],
                        headers={"content-type": "application/octet-stream", "x-filename": f"q{i}"},
                    )
                    status = r.status_code
                    batch = r.json()["timing"]["batch_images"] if status == 200 else 0
                except httpx.HTTPError:
                    status, batch = -1, 0
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(status)
                    batches.append(batch)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    cpu = cpu_seconds(pid) if pid else 0.0
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu if pid else float("nan")
    ok = [lat for lat, s in zip(latencies, statuses) if s == 200]
    p50, p95, p99 = (np.percentile(ok, q) * 1e3 if ok else float("nan") for q in (50, 95, 99))
    return {
        "clients": clients,
        "requests": total,
        "errors": sum(s != 200 for s in statuses),
        "rate": len(ok) / wall,
        "cpu_ms": 1e3 * cpu / max(1, len(ok)),
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "batch": float(np.mean([b for b in batches if b])) if ok else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="an MVTec-layout category folder (default: generated images)")
    ap.add_argument("--refs", type=int, default=4, help="good reference images to fit on")
    ap.add_argument("--queries", type=int, default=64, help="distinct query images (cycled)")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads, server and model-only alike")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from anomalens import Detector
    from anomalens.images import load_image_bytes

    if args.data:
        refs, queries = dataset_images(args.data, args.refs, args.queries, args.seed)
        source = f"{args.data.name}: {args.refs} train/good references, {len(queries)} test images"
    else:
        refs, queries = generated_images(args.refs, 1000), generated_images(args.queries, 0)
        source = f"generated 256x256 PNGs: {args.refs} references, {len(queries)} queries"

    with tempfile.TemporaryDirectory(prefix="anomalens-serve-load-") as tmp:
        model_dir = Path(tmp) / "model"
        det = Detector("patchknn").fit([load_image_bytes(r, f"ref{i}") for i, r in enumerate(refs)]).calibrate()
        det.save(model_dir)
        images = [load_image_bytes(q, f"q{i}") for i, q in enumerate(queries)]
        det.predict(images[:8])  # warm-up
        before = model_only(det, images)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "anomalens",
            "--threads",
            str(args.threads),
            "serve",
            "--model",
            f"bench={model_dir}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--max-queue",
            str(args.max_queue),
            "--max-batch",
            str(args.max_batch),
            "--log-level",
            "warning",
        ]
        server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env={**os.environ})
        try:
            import httpx

            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    sys.exit(f"the server exited with {server.returncode}")
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("the server did not start within 300 s")
                time.sleep(0.2)
            run_level(base, queries, 1, 8)  # warm-up
            rows = []
            for c in (int(x) for x in args.clients.split(",")):
                row = run_level(base, queries, c, args.requests, server.pid)
                row["rss"] = peak_rss_mb(server.pid)
                rows.append(row)
        finally:
            server.terminate()
            server.wait(60)
        after = model_only(det, images)  # again: the machine's load may have changed meanwhile

    print(
        f"patchknn (efficientnet-lite0, 256 px) on {source}; torch threads {args.threads}, "
        f"--workers {args.workers} --max-queue {args.max_queue} --max-batch {args.max_batch}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| clients | requests | errors | images/s | p50 ms | p95 ms | p99 ms | mean batch | "
        "server CPU ms / image | server peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['rate']:.1f} | {r['p50']:.0f} | "
            f"{r['p95']:.0f} | {r['p99']:.0f} | {r['batch']:.1f} | {r['cpu_ms']:.0f} | {r['rss']:.0f} |"
        )
    print(
        "\n`detect` model-only (same model, batches of 8, decoding excluded), before / after the load: "
        f"{before[0]:.1f} / {after[0]:.1f} images/s, {before[1]:.0f} / {after[1]:.0f} CPU ms per image"
    )
    model_rate, model_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    for r in rows:
        if r["clients"] == 4:
            print(
                f"serve at 4 clients / model-only: {100 * r['rate'] / model_rate:.0f} % of the rate, "
                f"{100 * model_cpu / r['cpu_ms']:.0f} % of the CPU efficiency"
            )


if __name__ == "__main__":
    main()
