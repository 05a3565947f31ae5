"""Settings of `anomalens serve`: where it listens, how much work it accepts, what input it takes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"  # loopback by default: exposing the service is an explicit choice
    port: int = 8000
    workers: int = 1  # threads running the models; each holds one batch at a time
    max_queue: int = 16  # requests admitted beyond the running ones; more get 503 + Retry-After
    max_batch: int = 8  # images one model call may take (queued requests of a model are batched)
    max_upload_bytes: int = 32 * 1024 * 1024  # per request body
    max_pixels: int = 64_000_000  # per image, read from the header before decoding
    max_batch_files: int = 32  # images in one /predict/batch request
    retry_after_seconds: int = 1  # the Retry-After header of a 503
    api_key_env: str | None = None  # name of the environment variable holding the API key
    graceful_timeout: float = 30.0  # seconds SIGTERM waits for in-flight requests

    def __post_init__(self) -> None:
        for name in ("workers", "max_batch", "max_upload_bytes", "max_pixels", "max_batch_files"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise UsageError(f"max_queue must be at least 0, got {self.max_queue}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be within 0..65535, got {self.port}")

    def api_key(self) -> str | None:
        """The key requests must carry, read from the environment; None when no key is required."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise UsageError(f"--api-key-env {self.api_key_env}: that environment variable is empty or unset")
        return key
