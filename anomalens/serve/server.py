"""Running the app under uvicorn, with graceful shutdown on SIGTERM / Ctrl-C."""

from __future__ import annotations

from ..errors import UsageError
from .registry import ModelRegistry
from .settings import ServeSettings


def load_models(specs: list[str]) -> ModelRegistry:
    """A registry holding every `name=DIR` / `DIR` model, loaded now (errors name the model)."""
    if not specs:
        raise UsageError("give at least one model: --model DIR or --model name=DIR")
    registry = ModelRegistry()
    for spec in specs:
        registry.load(spec)
    return registry


def run_server(registry: ModelRegistry, settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, let in-flight requests finish (at most
    `graceful_timeout` s), and let the model threads finish their queue."""
    import uvicorn

    from .app import create_app

    app = create_app(registry, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_timeout,
        # Slots beyond the pool's bound get a 503 from the app; this caps open connections well above it.
        limit_concurrency=max(64, 4 * (settings.workers + settings.max_queue)),
        access_log=False,
    )
    uvicorn.Server(config).run()
