"""Every kind of bad request gets a 4xx with a JSON error naming the problem, never a 500."""

from __future__ import annotations

import struct
import tempfile
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from serve_helpers import encode, texture, tiny_detector

from anomalens.serve import ModelRegistry, ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_BYTES = 300_000
MAX_PIXELS = 100_000


@pytest.fixture(scope="module")
def client(one_torch_thread):
    registry = ModelRegistry()
    registry.add("tiny", tiny_detector())
    settings = ServeSettings(max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    with TestClient(create_app(registry, settings)) as c:
        yield c


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and carries almost no data (a decompression bomb's
    header: a real bomb's IDAT inflates to width x height bytes; the header alone must stop it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _raw(client, data: bytes, content_type: str | None = "image/png", model: str = "tiny", **headers):
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(f"/v1/models/{model}/predict", content=data, headers=headers)


def _check(r, status: int, kind: str, file: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["kind"] == kind
    assert body["error"]["message"]
    if file is not None:
        assert body["error"]["file"] == file
    return body["error"]["message"]


GOOD = encode(texture(5))


def test_upload_too_large_by_content_length(client):
    msg = _check(_raw(client, b"\0" * (MAX_BYTES + 1)), 413, "upload_too_large")
    assert str(MAX_BYTES) in msg


def test_upload_too_large_without_content_length(client):
    def chunks():  # chunked transfer: no Content-Length, the limit is enforced while reading
        for _ in range(10):
            yield b"\0" * (MAX_BYTES // 4)

    r = client.post("/v1/models/tiny/predict", content=chunks(), headers={"content-type": "image/png"})
    _check(r, 413, "upload_too_large")


def test_too_many_pixels(client):
    big = encode(np.zeros((400, 400, 3), dtype=np.uint8))  # 160,000 px > 100,000, small file
    assert len(big) < MAX_BYTES
    msg = _check(_raw(client, big, x_filename="big.png"), 413, "too_many_pixels", "big.png")
    assert "400x400" in msg and str(MAX_PIXELS) in msg


@pytest.mark.parametrize("side", [20_000, 40_000])  # 400 MP (Pillow warns) and 1.6 GP (Pillow refuses)
def test_decompression_bomb_refused_from_the_header(client, side):
    bomb = png_header_only(side, side)
    assert len(bomb) < 200
    _check(_raw(client, bomb, x_filename="bomb.png"), 413, "too_many_pixels", "bomb.png")


def test_not_an_image(client):
    msg = _check(
        _raw(client, b"%PDF-1.4 not really an image" * 10, x_filename="doc.png"), 415, "not_an_image", "doc.png"
    )
    assert "PNG, JPEG, BMP or TIFF" in msg


def test_unsupported_image_format(client):
    gif = encode(texture(1), "GIF")
    _check(_raw(client, gif, "image/png", x_filename="anim.gif"), 415, "unsupported_format", "anim.gif")


def test_truncated_png_and_jpeg(client):
    _check(_raw(client, GOOD[: len(GOOD) // 2], x_filename="half.png"), 422, "truncated_image", "half.png")
    jpeg = encode(texture(2, 128, 128), "JPEG", quality=90)
    r = _raw(client, jpeg[: len(jpeg) // 3], "image/jpeg", x_filename="half.jpg")
    _check(r, 422, "truncated_image", "half.jpg")


def test_corrupt_png(client):
    data = bytearray(GOOD)
    data[60:200] = bytes(140)  # zeroed compressed data: the CRC and the stream are broken
    r = _raw(client, bytes(data), x_filename="corrupt.png")
    assert r.status_code == 422 and r.json()["error"]["kind"] in ("corrupt_image", "truncated_image")


def test_empty_upload(client):
    _check(_raw(client, b""), 400, "empty_file")
    _check(client.post("/v1/models/tiny/predict", files={"file": ("e.png", b"", "image/png")}), 400, "empty_file")


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/json", "image/svg+xml", "application/x-www-form-urlencoded"]
)
def test_wrong_content_type(client, ctype):
    msg = _check(_raw(client, GOOD, ctype), 415, "unsupported_content_type")
    assert ctype in msg


def test_missing_content_type(client):
    _check(_raw(client, GOOD, None), 415, "unsupported_content_type")


def test_wrong_content_type_of_a_multipart_part(client):
    r = client.post("/v1/models/tiny/predict", files={"file": ("a.json", b"{}", "application/json")})
    _check(r, 415, "unsupported_content_type", "a.json")


def test_multipart_without_a_file(client):
    r = client.post("/v1/models/tiny/predict", data={"note": "no file here"}, files={})
    # httpx sends a urlencoded form when there are no files: not an image type.
    assert r.status_code == 415
    body = b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--XyZ--\r\n'
    r = _raw(client, body, "multipart/form-data; boundary=XyZ")
    _check(r, 400, "no_file")


def test_malformed_multipart(client):
    _check(_raw(client, b"garbage", "multipart/form-data"), 400, "bad_multipart")
    r = _raw(client, b"--XyZ\r\nthis is not a header line\r\n\r\n", "multipart/form-data; boundary=XyZ")
    assert r.status_code == 400 and r.json()["error"]["kind"] in ("bad_multipart", "no_file")


def test_unknown_model(client):
    msg = _check(_raw(client, GOOD, model="nope"), 404, "unknown_model")
    assert "'nope'" in msg and "tiny" in msg
    _check(client.get("/v1/models/nope"), 404, "unknown_model")
    _check(client.post("/v1/models/nope/predict/batch", files={"f": ("a.png", GOOD)}), 404, "unknown_model")


def test_invalid_parameters_and_routes(client):
    _check(
        client.post("/v1/models/tiny/predict?map=jpeg", content=GOOD, headers={"content-type": "image/png"}),
        422,
        "invalid_parameter",
    )
    _check(client.get("/v2/nothing"), 404, "not_found")
    _check(client.get("/v1/models/tiny/predict"), 405, "method_not_allowed")
    _check(_raw(client, GOOD, **{"content-length": "many"}), 400, "bad_request")


def test_no_request_file_reaches_the_disk(client, tmp_path, monkeypatch):
    """Uploads, even large multipart ones (Starlette would spool those above 1 MB to a temporary
    file), are parsed in memory: the temporary folder stays empty."""
    registry = ModelRegistry()
    registry.add("tiny", client.app.state.registry.get("tiny").detector)
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    rng = np.random.default_rng(0)
    noisy = encode(rng.integers(0, 255, (900, 900, 3), dtype=np.uint8))  # ~2.4 MB, does not compress
    assert len(noisy) > 2_000_000
    with TestClient(create_app(registry, ServeSettings(max_upload_bytes=8_000_000))) as c:
        r = c.post("/v1/models/tiny/predict", files={"file": ("noisy.png", noisy, "image/png")})
        assert r.status_code == 200, r.text
        r = c.post("/v1/models/tiny/predict/batch", files=[("f", ("a.png", noisy)), ("f", ("b.png", noisy))])
        assert [x["status"] for x in r.json()["results"]] == ["ok", "ok"]
    assert list(spool.iterdir()) == []


def test_the_service_keeps_working_after_bad_input(client):
    r = _raw(client, GOOD)
    assert r.status_code == 200 and r.json()["decision"] in ("OK", "NG")
    health = client.get("/health").json()
    assert health["admitted"] == 0 and health["queue_depth"] == 0
