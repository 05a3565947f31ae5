"""`anomalens serve` through FastAPI's test client: every endpoint, the answers, the API key."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from serve_helpers import encode, texture, tiny_detector

from anomalens.images import load_image
from anomalens.serve import ModelRegistry, ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector(one_torch_thread):
    return tiny_detector()


@pytest.fixture(scope="module")
def client(detector):
    registry = ModelRegistry()
    registry.add("tiny", detector, "models/tiny")
    with TestClient(create_app(registry, ServeSettings(max_pixels=200_000))) as c:
        yield c


def _png(seed=7, defect=False) -> bytes:
    return encode(texture(seed, defect=defect))


def test_models_list_and_info(client, detector):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny"]
    info = client.get("/v1/models/tiny").json()
    assert info["method"] == "patchknn" and info["backbone"] == "efficientnet-lite0"
    assert info["threshold"]["value"] == pytest.approx(detector.threshold.value)
    assert info["threshold"]["method"] == "auto"
    assert "leave-one-out" in info["threshold"]["description"]
    assert info["num_references"] == 3 and info["references"] == ["ref0.png", "ref1.png", "ref2.png"]
    assert info["settings"]["image_size"] == 64 and info["directory"] == "models/tiny"


def test_health(client):
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "models": ["tiny"],
        "workers": 1,
        "busy_workers": 0,
        "queue_depth": 0,
        "admitted": 0,
        "capacity": 17,
    }


def test_predict_multipart_matches_the_detector(client, detector, tmp_path):
    data = _png(defect=True)
    path = tmp_path / "part.png"
    path.write_bytes(data)
    expected = detector.predict([load_image(path)])[0]
    r = client.post("/v1/models/tiny/predict", files={"file": ("part.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["file"] == "part.png" and body["model"] == "tiny"
    assert body["score"] == pytest.approx(expected.score, rel=1e-5)
    assert body["decision"] == expected.decision and body["threshold"] == pytest.approx(detector.threshold.value)
    assert (body["width"], body["height"]) == (56, 48)
    assert body["descriptions"] == [] and body["map"] is None and body["overlay"] is None
    t = body["timing"]
    assert t["batch_images"] == 1 and 0 < t["model_ms"] <= t["total_ms"]


def test_predict_raw_body_with_filename_header(client):
    data = _png()
    r = client.post(
        "/v1/models/tiny/predict", content=data, headers={"content-type": "image/png", "x-filename": "cam1.png"}
    )
    assert r.status_code == 200 and r.json()["file"] == "cam1.png"
    r2 = client.post("/v1/models/tiny/predict", content=data, headers={"content-type": "application/octet-stream"})
    assert r2.json()["file"] == "upload" and r2.json()["score"] == pytest.approx(r.json()["score"])


def test_map_float32_and_png_and_overlay(client, detector, tmp_path):
    data = _png(3, defect=True)
    (tmp_path / "x.png").write_bytes(data)
    expected = detector.predict([load_image(tmp_path / "x.png")])[0]
    f32 = client.post("/v1/models/tiny/predict?map=float32", content=data, headers={"content-type": "image/png"})
    m = f32.json()["map"]
    values = np.frombuffer(base64.b64decode(m["data"]), dtype="<f4").reshape(m["height"], m["width"])
    np.testing.assert_allclose(values, expected.anomaly_map, rtol=1e-5, atol=1e-6)
    assert m["vmin"] == pytest.approx(values.min()) and m["vmax"] == pytest.approx(values.max())

    r = client.post("/v1/models/tiny/predict?map=png&overlay=true", content=data, headers={"content-type": "image/png"})
    body = r.json()
    grey = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["map"]["data"]))))
    assert grey.shape == (48, 56) and grey.dtype == np.uint8
    # 8-bit map: black at the minimum, white at the maximum, same ordering as the float map.
    assert grey.flat[np.argmax(values)] == 255 and grey.flat[np.argmin(values)] == 0
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"]["data"])))
    assert overlay.format == "PNG" and overlay.size == (56, 48) and overlay.mode == "RGB"


@pytest.mark.parametrize(
    ("fmt", "kwargs", "mode"),
    [
        ("JPEG", {"quality": 95}, "RGB"),
        ("BMP", {}, "RGB"),
        ("TIFF", {}, "RGB"),
        ("PNG", {}, "I;16"),
        ("TIFF", {}, "I;16"),
    ],
)
def test_formats_and_16_bit(client, fmt, kwargs, mode, tmp_path):
    rgb = texture(11)
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith(mode)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    r = client.post("/v1/models/tiny/predict?map=float32", files={"file": (path.name, buf.getvalue(), "image/x")})
    assert r.status_code == 415  # image/x is not an image type we take
    r = client.post("/v1/models/tiny/predict?map=float32", files={"file": (path.name, buf.getvalue())})
    assert r.status_code == 200, r.text
    # Decoded exactly as `anomalens detect` reads the same file.
    ref = client.app.state.registry.get("tiny").detector.predict([load_image(path)])[0]
    assert r.json()["score"] == pytest.approx(ref.score, rel=1e-5)


def test_batch_keeps_order_and_reports_a_bad_image_alone(client):
    files = [
        ("files", ("a.png", _png(1), "image/png")),
        ("files", ("broken.png", _png(2)[:100], "image/png")),
        ("files", ("c.png", _png(3, defect=True), "image/png")),
    ]
    r = client.post("/v1/models/tiny/predict/batch?overlay=true", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["file"] for x in results] == ["a.png", "broken.png", "c.png"]
    assert [x["status"] for x in results] == ["ok", "error", "ok"]
    assert results[1]["error"]["kind"] == "truncated_image" and results[1]["prediction"] is None
    assert results[0]["prediction"]["overlay"] is not None
    single = client.post("/v1/models/tiny/predict", files={"file": ("c.png", _png(3, defect=True))}).json()
    assert results[2]["prediction"]["score"] == pytest.approx(single["score"], rel=1e-5)


def test_batch_file_limit(detector):
    registry = ModelRegistry()
    registry.add("tiny", detector)
    with TestClient(create_app(registry, ServeSettings(max_batch_files=2))) as c:
        files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(3)]
        r = c.post("/v1/models/tiny/predict/batch", files=files)
        assert r.status_code == 413 and r.json()["error"]["kind"] == "too_many_files"


def test_single_predict_refuses_several_files(client):
    files = [("file", ("a.png", _png(1))), ("file", ("b.png", _png(2)))]
    r = client.post("/v1/models/tiny/predict", files=files)
    assert r.status_code == 400 and r.json()["error"]["kind"] == "too_many_files"


def test_api_key(detector, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", "s3cret")
    registry = ModelRegistry()
    registry.add("tiny", detector)
    with TestClient(create_app(registry, ServeSettings(api_key_env="TEST_SERVE_KEY"))) as c:
        for method, url in [
            ("get", "/v1/models"),
            ("get", "/v1/models/tiny"),
            ("get", "/metrics"),
            ("post", "/v1/models/tiny/predict"),
            ("post", "/v1/models/tiny/predict/batch"),
        ]:
            r = getattr(c, method)(url)
            assert r.status_code == 401, url
            assert r.json()["error"]["kind"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = c.post(
            "/v1/models/tiny/predict", content=_png(), headers={"X-API-Key": "s3cret", "content-type": "image/png"}
        )
        assert r.status_code == 200
        schema = c.get("/openapi.json").json()
        assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])
        assert all(
            p["in"] != "query" or p["name"] in ("map", "overlay")
            for p in schema["paths"]["/v1/models/{name}/predict"]["post"]["parameters"]
        )
        # The page and the probe carry no data: open without the key.
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
    monkeypatch.delenv("TEST_SERVE_KEY")
    with pytest.raises(ValueError, match="TEST_SERVE_KEY"):
        create_app(registry, ServeSettings(api_key_env="TEST_SERVE_KEY"))


_SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|\+Inf)$')


def test_metrics_prometheus_text(detector):
    registry = ModelRegistry()
    registry.add("tiny", detector)
    with TestClient(create_app(registry)) as c:
        for _ in range(3):
            c.post("/v1/models/tiny/predict", content=_png(), headers={"content-type": "image/png"})
        c.post("/v1/models/tiny/predict", content=b"not an image", headers={"content-type": "image/png"})
        c.get("/v1/models/nope")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = r.text.strip().splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or _SAMPLE.match(line), line
    text = r.text
    route = 'route="/v1/models/{name}/predict"'
    assert f'anomalens_requests_total{{method="POST",{route},status="200"}} 3' in text
    assert f'anomalens_requests_total{{method="POST",{route},status="415"}} 1' in text
    assert 'anomalens_errors_total{kind="not_an_image"} 1' in text
    assert 'anomalens_errors_total{kind="unknown_model"} 1' in text
    images = [ln for ln in lines if ln.startswith("anomalens_images_total")]
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in images) == 3
    buckets = [
        float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(f"anomalens_request_seconds_bucket{{{route}")
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 4  # cumulative; +Inf holds every request
    assert f"anomalens_request_seconds_count{{{route}}} 4" in text
    assert "anomalens_queue_depth 0" in text and "anomalens_workers 1" in text


def test_openapi_schema_describes_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/predict",
        "/v1/models/{name}/predict/batch",
    }
    predict = paths["/v1/models/{name}/predict"]["post"]
    content = predict["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/jpeg", "image/bmp", "image/tiff"} <= set(content)
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert {"200", "400", "404", "413", "415", "422", "503"} <= set(predict["responses"])
    params = {p["name"] for p in predict["parameters"]}
    assert params == {"name", "map", "overlay"}
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/Prediction")
    assert {"Prediction", "ErrorResponse", "ModelInfo", "BatchResponse"} <= set(schema["components"]["schemas"])
    assert client.get("/docs").status_code == 200
    # And valid OpenAPI 3.1, checked by an independent validator.
    from openapi_spec_validator import validate

    validate(schema)


def test_page_is_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
        assert "http://" not in text and "https://" not in text


def test_prediction_carries_descriptions_and_reduced_size():
    """Text methods' descriptions and a reduced image's file size reach the response unchanged."""
    from anomalens.images import LoadedImage
    from anomalens.results import AnomalyResult
    from anomalens.serve.responses import MapFormat, Timing, prediction

    image = LoadedImage("big.png", np.zeros((4, 6, 3), dtype=np.uint8), original_hw=(40, 60))
    result = AnomalyResult(
        path="big.png",
        score=float("nan"),
        anomaly_map=np.arange(24, dtype=np.float32).reshape(4, 6),
        descriptions=[("a crack on the surface", 0.31), ("a scratch", 0.12)],
        decision="NG",
        threshold=0.5,
    )
    timing = Timing(decode_ms=1, queue_ms=0, model_ms=2, batch_images=1, encode_ms=0, total_ms=3)
    pred = prediction("m", result, image, timing, MapFormat.none, overlay=False).model_dump()
    assert pred["descriptions"] == [
        {"text": "a crack on the surface", "similarity": 0.31},
        {"text": "a scratch", "similarity": 0.12},
    ]
    assert pred["score"] is None and pred["decision"] == "NG"  # NaN is not valid JSON: null, and NG
    assert (pred["width"], pred["height"], pred["original_width"], pred["original_height"]) == (6, 4, 60, 40)
