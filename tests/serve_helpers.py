"""Helpers shared by the serve tests: tiny images, a tiny fitted patchknn, a server in a thread."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
from PIL import Image


def texture(seed: int, h: int = 48, w: int = 56, defect: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    noise = np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    img = np.clip(base[:, :, None] + noise, 0, 255).astype(np.uint8)
    if defect:
        img[16:28, 20:32] = 10
    return img


def encode(rgb: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def tiny_detector():
    """patchknn on the embedded backbone at 64 px, fitted on 3 textures and calibrated."""
    from anomalens import Detector
    from anomalens.images import LoadedImage

    refs = [LoadedImage(f"ref{i}.png", texture(i)) for i in range(3)]
    return Detector("patchknn", image_size=64).fit(refs).calibrate()


def slow_down(detector, seconds: float):
    """Make every model call of this detector take at least `seconds` longer (to hold requests)."""
    predict = detector.method.predict

    def slow(images):
        time.sleep(seconds)
        return predict(images)

    detector.method.predict = slow
    return detector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_in_thread(app):
    """A real uvicorn server for `app` on a free 127.0.0.1 port, in a thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
