"""`anomalens serve`: saved detectors behind an HTTP API and a web page (FastAPI + uvicorn).

Needs the `serve` extra: pip install "anomalens[serve]".
"""

from .registry import ModelRegistry
from .settings import ServeSettings

__all__ = ["ModelRegistry", "ServeSettings", "create_app", "run_server"]


def __getattr__(name: str):
    # FastAPI is imported only when the app is built, so `ServeSettings` works without the extra.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run_server":
        from .server import run_server

        return run_server
    raise AttributeError(name)
