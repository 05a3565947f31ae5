"""The FastAPI application: routes, API-key check, error bodies and metrics. The work is elsewhere:
uploads.py reads images, pool.py runs the models, responses.py shapes the answers."""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ImageLoadError
from .errors import ServeError
from .metrics import Metrics
from .pool import InferencePool
from .registry import ModelRegistry
from .responses import (
    BatchItem,
    BatchResponse,
    ErrorDetail,
    ErrorResponse,
    Health,
    MapFormat,
    ModelInfo,
    ModelList,
    Prediction,
    Timing,
    prediction,
)
from .settings import ServeSettings
from .uploads import decode_upload, parse_uploads, read_body

log = logging.getLogger("anomalens.serve")

STATIC_DIR = resources.files("anomalens.serve") / "static"

_ERRORS = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        400: "bad request: empty upload, malformed multipart, no file part",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "upload too large, or an image with too many pixels (decompression bomb)",
        415: "not an image, or a content type / image format the service does not take",
        422: "truncated or corrupt image, or an invalid query parameter",
        503: "queue full (see Retry-After) or shutting down",
    }.items()
}

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image as a multipart form file, or the image bytes as the body "
        "(Content-Type image/png, image/jpeg, image/bmp, image/tiff or application/octet-stream; "
        "optional X-Filename header). PNG, JPEG, BMP, TIFF, 8 or 16 bit.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            **{
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Several images as multipart form files (any field name, e.g. repeated 'files').",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["files"],
                }
            }
        },
    }
}


# Module level: the annotations below are strings (PEP 563) that FastAPI resolves in this module.
HEADER_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key from --api-key-env")
BEARER = HTTPBearer(auto_error=False, description="the key from --api-key-env, as a bearer token")
MapQuery = Annotated[MapFormat, Query(description="include the anomaly map: png (8-bit) or float32")]
OverlayQuery = Annotated[bool, Query(description="include the heat-map overlay as a PNG")]


def _error_response(err: ServeError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The service for the models in `registry`. The pool starts and stops with the app's lifespan."""
    settings = settings or ServeSettings()
    api_key = settings.api_key()
    metrics = Metrics()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = InferencePool(settings.workers, settings.max_queue, settings.max_batch, settings.retry_after_seconds)
        state["pool"] = pool
        try:
            yield
        finally:
            # Reached after the server has stopped taking connections and in-flight requests are done.
            pool.close()

    def pool() -> InferencePool:
        if "pool" not in state:
            raise ServeError(503, "not_ready", "the service is starting or stopped")
        return state["pool"]

    app = FastAPI(
        title="anomalens",
        version=__version__,
        description="Zero- and few-shot visual anomaly detection as a service: score images with saved models.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.settings = settings

    metrics.describe("requests_total", "HTTP requests by route, method and status")
    metrics.describe("request_seconds", "HTTP request latency by route")
    metrics.describe("errors_total", "refused or failed requests and images by kind")
    metrics.describe("images_total", "scored images by model and decision")
    metrics.describe("queue_depth", "requests waiting for a model thread")
    metrics.describe("admitted_requests", "requests holding a slot (running, queued or uploading)")
    metrics.describe("busy_workers", "model threads running a batch")
    metrics.gauge("queue_depth", lambda: state["pool"].queue_depth if "pool" in state else 0)
    metrics.gauge("admitted_requests", lambda: state["pool"].admitted if "pool" in state else 0)
    metrics.gauge("busy_workers", lambda: state["pool"].busy_workers if "pool" in state else 0)
    metrics.gauge("workers", lambda: settings.workers)
    metrics.gauge("queue_capacity", lambda: settings.workers + settings.max_queue)

    # ---- errors: always a JSON body {"error": {kind, message, file}} ----
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, err: ServeError):
        metrics.inc("errors_total", {"kind": err.kind})
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors()]
        return await _serve_error(request, ServeError(422, "invalid_parameter", "; ".join(parts)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(err.status_code, f"http_{err.status_code}")
        return await _serve_error(request, ServeError(err.status_code, kind, str(err.detail), headers=err.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return await _serve_error(request, ServeError(500, "internal_error", f"{type(err).__name__}: {err}"))

    # ---- metrics of every request ----
    @app.middleware("http")
    async def _count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.inc("requests_total", {"route": route, "method": request.method, "status": str(response.status_code)})
        metrics.observe("request_seconds", time.perf_counter() - start, {"route": route})
        return response

    # ---- API key ----
    async def require_key(
        key: Annotated[str | None, Depends(HEADER_KEY)] = None,
        token: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    ) -> None:
        given = key or (token.credentials if token else None)
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ServeError(
                401,
                "unauthorized",
                "missing or wrong API key: send it as X-API-Key or Authorization: Bearer",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_key)] if api_key else []

    # ---- page and probes (no key: they reveal nothing about the models or images) ----
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.get("/health", response_model=Health, summary="Liveness and load")
    async def health():
        p = pool()
        return Health(
            status="ok",
            models=registry.names(),
            workers=p.workers,
            busy_workers=p.busy_workers,
            queue_depth=p.queue_depth,
            admitted=p.admitted,
            capacity=p.capacity,
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=guarded,
        summary="Prometheus metrics (text format 0.0.4)",
        responses={200: {"content": {"text/plain": {}}}, 401: _ERRORS[401]},
    )
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- models ----
    @app.get("/v1/models", response_model=ModelList, dependencies=guarded, responses={401: _ERRORS[401]})
    async def list_models():
        return ModelList(models=[ModelInfo(**registry.get(n).info()) for n in registry.names()])

    @app.get(
        "/v1/models/{name}",
        response_model=ModelInfo,
        dependencies=guarded,
        responses={s: _ERRORS[s] for s in (401, 404)},
    )
    async def model_info(name: str):
        return ModelInfo(**registry.get(name).info())

    async def _score(request: Request, name: str, batch: bool, map_format: MapFormat, overlay: bool):
        arrived = time.perf_counter()
        model = registry.get(name)
        with pool().admit():
            body = await read_body(request, settings.max_upload_bytes)
            uploads = parse_uploads(body, request.headers.get("content-type"), request.headers.get("x-filename"))
            del body
            if not batch and len(uploads) > 1:
                raise ServeError(400, "too_many_files", f"{len(uploads)} files sent; use /predict/batch for several")
            if len(uploads) > settings.max_batch_files:
                raise ServeError(
                    413, "too_many_files", f"{len(uploads)} files sent; the limit is {settings.max_batch_files}"
                )
            depth = model.detector.reading.bit_depth
            decoded = await run_in_threadpool(_decode_all, uploads, settings.max_pixels, batch, depth)
            images = [d for d, _ in decoded if not isinstance(d, ServeError)]
            outcomes, info = await pool().run(model.detector, images) if images else ([], None)
            return await run_in_threadpool(
                _answer, model.name, decoded, outcomes, info, map_format, overlay, arrived, metrics, batch
            )

    def scoring_route(path: str, response_model, body: dict, codes: tuple[int, ...], summary: str, **extra):
        """The POST route of a scoring endpoint: API key, request body and error responses."""
        responses = {s: _ERRORS[s] for s in codes}
        return app.post(
            path,
            response_model=response_model,
            dependencies=guarded,
            openapi_extra=body,
            responses=responses,
            summary=summary,
            **extra,
        )

    @scoring_route(
        "/v1/models/{name}/predict",
        Prediction,
        _IMAGE_BODY,
        (400, 401, 404, 413, 415, 422, 503),
        "Score one image",
        response_model_exclude_none=False,
    )
    async def predict(request: Request, name: str, map: MapQuery = MapFormat.none, overlay: OverlayQuery = False):
        items = await _score(request, name, False, map, overlay)
        if items[0].status != "ok":
            raise ServeError(items[0].status_code, items[0].error.kind, items[0].error.message, file=items[0].file)
        return items[0].prediction

    @scoring_route(
        "/v1/models/{name}/predict/batch",
        BatchResponse,
        _BATCH_BODY,
        (400, 401, 404, 413, 415, 503),
        "Score several images; a bad image gets its own error and the others go on",
    )
    async def predict_batch(request: Request, name: str, map: MapQuery = MapFormat.none, overlay: OverlayQuery = False):
        items = await _score(request, name, True, map, overlay)
        return BatchResponse(model=name, results=[BatchItem(**i.model_dump(exclude={"status_code"})) for i in items])

    return app


class _Item(BatchItem):
    status_code: int = 200


def _decode_all(uploads, max_pixels: int, batch: bool, bit_depth: str | int = "auto") -> list:
    """(LoadedImage or ServeError, seconds) per upload; a single upload's error is raised at once."""
    out = []
    for up in uploads:
        start = time.perf_counter()
        try:
            out.append((decode_upload(up, max_pixels, bit_depth), time.perf_counter() - start))
        except ServeError as err:
            if not batch:
                raise
            out.append((err, 0.0))
    return out


def _answer(model, decoded, outcomes, info, map_format, overlay, arrived, metrics, count_errors) -> list[_Item]:
    """One item per upload. count_errors: count per-image errors here (batch); a single request's
    error is raised and counted by the error handler instead."""
    items, k = [], 0
    for image, decode_seconds in decoded:
        if isinstance(image, ServeError):
            if count_errors:
                metrics.inc("errors_total", {"kind": image.kind})
            err = ErrorDetail(kind=image.kind, message=image.message, file=image.file)
            items.append(_Item(file=image.file or "", status="error", error=err, status_code=image.status))
            continue
        outcome = outcomes[k]
        k += 1
        if isinstance(outcome, Exception):
            # The model failed on this image alone (others of its batch were scored): the image's fault.
            reason = outcome.reason if isinstance(outcome, ImageLoadError) else f"{type(outcome).__name__}: {outcome}"
            if count_errors:
                metrics.inc("errors_total", {"kind": "not_scorable"})
            err = ErrorDetail(kind="not_scorable", message=reason, file=image.path)
            items.append(_Item(file=image.path, status="error", error=err, status_code=422))
            continue
        start = time.perf_counter()
        timing = Timing(
            decode_ms=decode_seconds * 1e3,
            queue_ms=info.queue_seconds * 1e3,
            model_ms=info.model_seconds * 1e3,
            batch_images=info.batch_images,
            encode_ms=0.0,
            total_ms=0.0,
        )
        pred = prediction(model, outcome, image, timing, map_format, overlay)
        now = time.perf_counter()
        pred.timing.encode_ms = (now - start) * 1e3
        pred.timing.total_ms = (now - arrived) * 1e3
        metrics.inc("images_total", {"model": model, "decision": outcome.decision or "none"})
        items.append(_Item(file=image.path, status="ok", prediction=pred))
    return items
