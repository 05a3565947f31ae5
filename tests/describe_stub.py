"""A scripted OpenAI-compatible /v1/chat/completions server on 127.0.0.1 for the describe tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stub:
    """A scripted OpenAI-compatible server: each request pops the next (status, body, delay)."""

    def __init__(self):
        self.script: list[tuple[int, object, float]] = []
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, body, delay = stub.script.pop(0) if stub.script else (500, "script exhausted", 0)
                time.sleep(delay)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, content: str, status: int = 200, delay: float = 0.0):
        self.script.append((status, {"choices": [{"message": {"role": "assistant", "content": content}}]}, delay))

    def close(self):
        self.server.shutdown()
        self.server.server_close()
