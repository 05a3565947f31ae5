"""`anomalens serve` as a real process: uvicorn on a free 127.0.0.1 port, HTTP, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from serve_helpers import encode, free_port, texture, tiny_detector  # noqa: E402

from anomalens.images import LoadedImage  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_SECONDS = 2.0

# The CLI, with every model call slowed down so a request is surely in flight when SIGTERM comes.
LAUNCHER = """
import sys, time
import anomalens.serve.server as server

load_models = server.load_models

def load_slow(specs):
    registry = load_models(specs)
    for name in registry.names():
        method = registry.get(name).detector.method
        predict = method.predict
        method.predict = lambda images, p=predict: (time.sleep(DELAY), p(images))[1]
    return registry

server.load_models = load_slow
from anomalens.cli import app
app(sys.argv[1:])
""".replace("DELAY", repr(MODEL_SECONDS))


def test_cli_serve_real_server_and_graceful_sigterm(tmp_path):
    det = tiny_detector()
    det.save(tmp_path / "model")
    image = texture(9, defect=True)
    expected = det.predict([LoadedImage("part.png", image)])[0]
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        LAUNCHER,
        "--threads",
        "1",
        "serve",
        "--model",
        f"tiny={tmp_path / 'model'}",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

        assert [m["name"] for m in httpx.get(f"{base}/v1/models").json()["models"]] == ["tiny"]
        assert httpx.get(f"{base}/docs").status_code == 200
        data = encode(image)
        r = httpx.post(f"{base}/v1/models/tiny/predict", files={"file": ("part.png", data, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(expected.score, rel=1e-5)
        assert r.json()["decision"] == expected.decision
        assert r.json()["timing"]["model_ms"] >= MODEL_SECONDS * 1000

        # A request in flight when SIGTERM arrives is answered in full; then the process exits.
        answer: dict = {}

        def in_flight() -> None:
            answer["r"] = httpx.post(
                f"{base}/v1/models/tiny/predict?overlay=true",
                content=data,
                headers={"content-type": "image/png"},
                timeout=60,
            )

        thread = threading.Thread(target=in_flight)
        thread.start()
        while httpx.get(f"{base}/health", timeout=5).json()["busy_workers"] == 0:
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert answer["r"].status_code == 200, answer["r"].text
        assert answer["r"].json()["overlay"]["data"]
        # uvicorn re-raises the signal once it has shut down, so the exit status is "killed by SIGTERM".
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert time.monotonic() - sent < MODEL_SECONDS + 30
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert "serving on http://127.0.0.1" in err and "Traceback" not in err, err


def test_cli_serve_refuses_a_bad_model_folder(tmp_path):
    from typer.testing import CliRunner

    from anomalens.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "not a saved anomalens model" in result.output
    result = CliRunner().invoke(app, ["serve", "--model", "bad name!=x"])
    assert result.exit_code == 2 and "model name" in result.output
    os.environ.pop("ANOMALENS_TEST_UNSET_KEY", None)
    det_dir = tmp_path / "m"
    tiny_detector().save(det_dir)
    result = CliRunner().invoke(app, ["serve", "--model", str(det_dir), "--api-key-env", "ANOMALENS_TEST_UNSET_KEY"])
    assert result.exit_code == 2 and "ANOMALENS_TEST_UNSET_KEY" in result.output
