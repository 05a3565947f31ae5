"""`anomalens serve`: saved models behind an HTTP API and a web page (anomalens.serve does the work)."""

from __future__ import annotations

import typer

from .app import app, echo, fail
from .config import options_into


@app.command()
def serve(
    ctx: typer.Context,
    model: list[str] = typer.Option(..., "--model", help="A saved model: DIR or name=DIR (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="Model threads (one call per model at a time)."),
    max_queue: int = typer.Option(16, "--max-queue", min=0, help="Requests waiting beyond the workers; more get 503."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Queued images of a model scored in one call."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable holding the API key; requests without it get 401."
    ),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", min=0.001, help="Largest request body."),
    max_pixels: int = typer.Option(64_000_000, "--max-pixels", min=1, help="Largest image, read from its header."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve saved models over HTTP: a JSON API (/docs), Prometheus /metrics and a web page at /."""
    try:
        from ..serve import ServeSettings
        from ..serve.server import load_models, run_server
    except ModuleNotFoundError as err:
        fail(f"{err.name} is missing: pip install 'anomalens[serve]'")
    try:
        settings = options_into(ServeSettings, ctx.params, max_upload_bytes=int(max_upload_mb * 1024 * 1024))
        settings.api_key()  # fail now, not on the first request, if the variable is unset
        registry = load_models(model)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key_env:
        echo(f"warning: listening on {host} without --api-key-env: anyone who can reach it can use it")
    for name in registry.names():
        m = registry.get(name)
        echo(f"model {name}: {m.detector.method_name} on {m.detector.backbone_name} from {m.directory}")
    echo(f"serving on http://{host}:{port}/ (API docs at /docs); Ctrl-C or SIGTERM stops after in-flight requests")
    run_server(registry, settings, log_level=log_level)
