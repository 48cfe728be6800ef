"""A stand-in for the observability and ticketing APIs an on-call engineer would query.

The example runs with no network, so this small HTTP server (a thread of the runner, on
127.0.0.1) serves one recognisable incident: checkout's 5xx spike after a deploy shrank its
database connection pool. Point ``INCIDENT_API_URL`` at your own API to use real data.

- ``GET /alerts/<id>``: the alert that opened the incident.
- ``GET /logs?service=&pattern=&limit=``: log lines of the last hour.
- ``GET /deploys?service=&hours=``: recent deploys.
- ``GET /metrics?service=&metric=``: a metric's summary (before and after the alert).
- ``POST /incidents/<id>/report``: files the report. A repeated ``Idempotency-Key`` gets the
  first answer back (the retried call is applied once), as real ticketing APIs do.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ALERT = {
    "id": "INC-1042",
    "title": "checkout: HTTP 5xx rate above 5% for 10 minutes",
    "service": "checkout",
    "severity": "SEV-2",
    "started_at": "2026-03-14T14:02:00Z",
    "dashboard": "https://grafana.example.com/d/checkout",
}

LOGS = {
    "checkout": [
        "14:01:58 INFO  checkout-api started v2.14.0 (pool.max_connections=5)",
        "14:02:03 WARN  checkout-api db pool: waited 2.1s for a connection (5/5 in use)",
        "14:02:05 ERROR checkout-api POST /orders 503: connection pool exhausted (5/5 in use)",
        "14:02:05 ERROR checkout-api POST /orders 503: connection pool exhausted (5/5 in use)",
        "14:02:09 ERROR checkout-api GET /cart 500: timeout acquiring db connection after 3000ms",
        "14:03:40 ERROR checkout-api POST /orders 503: connection pool exhausted (5/5 in use)",
        "14:04:12 INFO  checkout-api GET /health 200",
    ],
    "payments": [
        "14:02:30 INFO  payments-api POST /charge 200",
        "14:05:01 INFO  payments-api POST /charge 200",
    ],
}

DEPLOYS = {
    "checkout": [
        {
            "at": "2026-03-14T13:58:00Z",
            "version": "v2.14.0",
            "author": "alice",
            "change": "config cleanup: db pool.max_connections 50 -> 5 (matches staging)",
        },
        {
            "at": "2026-03-13T09:12:00Z",
            "version": "v2.13.2",
            "author": "bob",
            "change": "bump tracing library",
        },
    ],
    "payments": [
        {"at": "2026-03-12T16:40:00Z", "version": "v5.1.0", "author": "carol", "change": "new 3DS flow"}
    ],
}

METRICS = {
    ("checkout", "error_rate"): {"before": 0.002, "after": 0.121, "unit": "ratio"},
    ("checkout", "latency_p99_ms"): {"before": 180, "after": 3050, "unit": "ms"},
    ("checkout", "db_connections_in_use"): {"before": 31, "after": 5, "max": 5, "unit": "connections"},
    ("payments", "error_rate"): {"before": 0.001, "after": 0.001, "unit": "ratio"},
}


class IncidentAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.reports: dict[str, dict[str, Any]] = {}
        """Filed reports by idempotency key (a retried filing returns the first answer)."""
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name="incident-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> IncidentAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: IncidentAPI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        service = q.get("service", "")
        if u.path == f"/alerts/{ALERT['id']}":
            return self._send(200, ALERT)
        if u.path == "/logs":
            pattern = q.get("pattern", "").lower()
            lines = [ln for ln in LOGS.get(service, []) if pattern in ln.lower()]
            return self._send(200, lines[: int(q.get("limit", "20"))])
        if u.path == "/deploys":
            return self._send(200, DEPLOYS.get(service, []))
        if u.path == "/metrics":
            m = METRICS.get((service, q.get("metric", "")))
            return self._send(200, m) if m else self._send(404, {"error": "no such series"})
        self._send(404, {"error": f"no such path {u.path}"})

    def do_POST(self) -> None:
        u = urlsplit(self.path)
        if u.path != f"/incidents/{ALERT['id']}/report":
            return self._send(404, {"error": f"no such path {u.path}"})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        key = self.headers.get("Idempotency-Key") or f"anonymous-{id(body)}"
        with self.server.lock:
            first = self.server.reports.get(key)
            if first is None:
                first = {"id": f"{ALERT['id']}/report/{len(self.server.reports) + 1}", "report": body}
                self.server.reports[key] = first
        self._send(201, {"id": first["id"], "url": f"{self.server.url}/incidents/{ALERT['id']}"})
