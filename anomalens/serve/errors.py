"""Errors the service answers with: an HTTP status, a short kind (for metrics) and a message."""

from __future__ import annotations

from ..errors import AnomalensError


class ServeError(AnomalensError):
    """A request the service refuses; `kind` names the problem for clients and metrics."""

    def __init__(self, status: int, kind: str, message: str, file: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.file = file
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message, "file": self.file}}
