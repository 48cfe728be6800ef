"""A small real HTTP server on 127.0.0.1 for the ``http`` and ``llm`` agent tests (a thread of the test).

Paths: ``/json`` (200, a JSON body), ``/text`` (200, text), ``/status/N`` (status N, with
``Retry-After: 0`` on 429), ``/bytes/N`` (N bytes), ``/slow/S`` (answers after S seconds),
``/flaky/K`` (503 for the first K calls per idempotency key, then 200), ``/echo`` (the request
as JSON), ``/echo-secret/N`` (status N, the Authorization header in the body).
Every request is recorded (``server.seen``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, Any]]
    calls: dict[str, int]
    lock: threading.Lock

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left (the timeout tests do that on purpose)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        rec = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        with self.server.lock:
            self.server.seen.append(rec)
        parts = self.path.strip("/").split("/")
        if parts[0] == "json":
            self._send(
                200,
                json.dumps({"ok": True, "items": [1, 2, 3]}).encode(),
                extra={"X-Custom": "yes", "Set-Cookie": "session=abc123"},
            )
        elif parts[0] == "text":
            self._send(200, b"plain words", "text/plain; charset=utf-8")
        elif parts[0] == "status":
            code = int(parts[1])
            self._send(
                code,
                json.dumps({"error": f"status {code}"}).encode(),
                extra={"Retry-After": "0"} if code == 429 else None,
            )
        elif parts[0] == "bytes":
            self._send(200, b"x" * int(parts[1]), "application/octet-stream")
        elif parts[0] == "slow":
            time.sleep(float(parts[1]))
            self._send(200, b"{}")
        elif parts[0] == "flaky":
            key = self.headers.get("Idempotency-Key", "")
            with self.server.lock:
                self.server.calls[key] = self.server.calls.get(key, 0) + 1
                k = self.server.calls[key]
            if k <= int(parts[1]):
                self._send(503, b'{"error": "try again"}')
            else:
                self._send(200, json.dumps({"call": k}).encode())
        elif parts[0] == "echo":
            self._send(200, json.dumps(rec).encode())
        elif parts[0] == "echo-secret":
            self._send(int(parts[1]), f"you sent {self.headers.get('Authorization')}".encode(), "text/plain")
        else:
            self._send(404, b'{"error": "no such path"}')

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


@contextmanager
def local_http_server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen, srv.calls, srv.lock = [], {}, threading.Lock()
    t = threading.Thread(target=srv.serve_forever, name="test-http", daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
