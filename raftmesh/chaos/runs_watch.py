"""``Cluster.WatchRuns`` under the faults: a watcher records what it saw, a check judges it.

``RunsWatcher`` is one thread holding ``Client.watch_runs(limit=WATCH_LIMIT)`` for the whole
experiment; the SDK reconnects it across kills, pauses and partitions (a snapshot again after
each reconnect). ``SseWatcher`` reads one node's dashboard ``/api/v1/events`` the same way the
page does (the same items, over HTTP; it reconnects to that node). Each keeps every item it got,
compactly (``WatchEvent``), so the check is a pure function of that record and the cluster's
final state:

- every run in the watcher's window reached it in its final status (as a change, or in a
  snapshot after a reconnect). The window: the ``limit`` newest runs of the final state. A run
  in them was in every snapshot sent since its creation (newer runs only push it down), so
  whatever it missed while a stream was down, the next snapshot had; an older run that
  changed while the watcher reconnected may rightly be missed, so it is left out (counted).
- no run seen going from a terminal status to another status, except a dead letter's run the
  workload retried (FAILED -> RUNNING again, then its new end);
- a run's ``unfinished`` count never grows, except in runs where something adds or reopens
  tasks: the workflow shapes (spawns, maps, vote replicas, compensations) and retried dead
  letters. A plain run's tasks only ever end, so its count only falls.

Run states are monotonic across streams: each stream (and each snapshot after a reconnect)
starts behind a read barrier, so a later node is never behind what an earlier one sent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..client import Client, _runs
from ..client._security import Credentials
from ..errors import RaftmeshError
from .checker import EXAMPLES_MAX, TERMINAL, Invariant, RunRecord
from .workload import Operation, now_ms

WATCH_LIMIT = 1000
"""The watcher's ``limit``: the server's maximum, so a chaos run of up to 1,000 runs is covered whole."""
SETTLE_S = 30.0
"""After the drain, how long the watcher may take to show every run's final status."""
REOPEN_PAUSE_S = 0.5
SSE_SILENCE_S = 15.0
"""An event stream silent this long (three missed pings) is from a stalled node: reconnect."""
SSE_BACKOFF_MAX_S = 2.0

MISSED = "runs whose final status never reached the runs watcher"
REOPENED = "runs the watcher saw leave a terminal status unexplained"
GREW = "runs the watcher saw gain unfinished tasks unexplained"
WATCH_INVARIANTS = (MISSED, REOPENED, GREW)


@dataclass(frozen=True)
class WatchEvent:
    """One item of the watch: a snapshot (a connection began) or one changed run."""

    at_ms: int
    snapshot: bool
    runs: tuple[tuple[str, str, int], ...]
    """(run_id, status, unfinished) of each run in it."""

    def to_json(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "snapshot": self.snapshot, "runs": [list(r) for r in self.runs]}


class _Recorder:
    """What a watcher saw (``events``), its latest view of each run and its thread."""

    source = ""
    """What it watches, for the report."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.events: list[WatchEvent] = []
        self.errors = 0
        """Errors that ended a watch (the watcher then opened a new one); the first few in ``error_examples``."""
        self.error_examples: list[str] = []
        self._view: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Unblock the watch in progress (called with the lock held, ``_stop`` set)."""
        raise NotImplementedError

    def _error(self, what: str) -> None:
        if not self._stop.is_set():
            self.errors += 1
            if len(self.error_examples) < EXAMPLES_MAX:
                self.error_examples.append(what)

    def _record(self, item: dict[str, Any]) -> None:
        snapshot = "snapshot" in item
        summaries = item["snapshot"] if snapshot else [item["run"]]
        runs = tuple((s["run_id"], s["status"], int(s["unfinished"])) for s in summaries)
        with self._lock:
            self.events.append(WatchEvent(now_ms(), snapshot, runs))
            for run_id, status, unfinished in runs:
                self._view[run_id] = (status, unfinished)

    def missing(self, final: Mapping[str, str], covered: Sequence[str]) -> list[str]:
        """The covered runs whose final status the watcher has not shown yet."""
        with self._lock:
            return [r for r in covered if self._view.get(r, ("", 0))[0] != final[r]]

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Close the watch; whether the thread ended."""
        with self._lock:
            self._stop.set()
            self._close()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def snapshot(self) -> list[WatchEvent]:
        with self._lock:
            return list(self.events)


class RunsWatcher(_Recorder):
    """One thread iterating ``Client.watch_runs`` as a dashboard would, until ``stop``; the SDK
    reconnects it across the faults."""

    def __init__(
        self, addresses: list[str], credentials: Credentials | None = None, limit: int = WATCH_LIMIT
    ) -> None:
        super().__init__(limit, "chaos-runs-watcher")
        self.source = f"Client.watch_runs, limit {limit}"
        self.addresses = addresses
        self.credentials = credentials
        self._plan: _runs.RunsWatch | None = None

    def _loop(self) -> None:
        with Client(self.addresses, credentials=self.credentials) as sdk:
            while True:
                with self._lock:
                    if self._stop.is_set():
                        return
                    # What ``sdk.watch_runs(limit=...)`` iterates, with its plan at hand so that
                    # ``stop`` can close it from another thread (an idle watch yields nothing).
                    plan = self._plan = _runs.RunsWatch(sdk, self.limit, None, "", None)
                try:
                    for item in sdk._stream(plan):
                        self._record(item)
                except RaftmeshError as exc:  # the SDK gave up: a consumer opens a new watch
                    self._error(f"{type(exc).__name__}: {exc.message}")
                self._stop.wait(REOPEN_PAUSE_S)

    def _close(self) -> None:
        if self._plan is not None:
            self._plan.close()


class SseWatcher(_Recorder):
    """One ``GET /api/v1/events?limit=...`` on one node's dashboard, read as the page reads it:
    ``event: runs`` items (a snapshot, then changed runs); on an error event, a dropped
    connection or ``SSE_SILENCE_S`` without a byte (pings come every 5 s), it reconnects to
    the same node with backoff."""

    def __init__(
        self, node: str, address: str, credentials: Credentials | None = None, limit: int = WATCH_LIMIT
    ) -> None:
        super().__init__(limit, "chaos-sse-watcher")
        scheme = "https" if credentials is not None and credentials.ca else "http"
        self.source = f"dashboard {scheme}://{address}/api/v1/events?limit={limit} on {node}"
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.headers = {"Accept": "text/event-stream"}
        self.tls: ssl.SSLContext | None = None
        if credentials is not None and credentials.token:
            self.headers["Authorization"] = f"Bearer {credentials.token}"
        if scheme == "https" and credentials is not None:
            self.tls = ssl.create_default_context(cafile=credentials.ca)
            if credentials.cert and credentials.key:
                self.tls.load_cert_chain(credentials.cert, credentials.key)
        self._sock: socket.socket | None = None
        """The open stream's socket (the response keeps it after the connection lets it go)."""

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=SSE_SILENCE_S, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=SSE_SILENCE_S)

    def _loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            conn = self._connect()
            resp: http.client.HTTPResponse | None = None
            try:
                conn.request("GET", f"/api/v1/events?limit={self.limit}", headers=self.headers)
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._sock = conn.sock
                resp = conn.getresponse()
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}: {resp.read(500).decode(errors='replace')}")
                event, data = "", ""
                for raw in resp:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event: "):
                        event = line[len("event: ") :]
                    elif line.startswith("data: "):
                        data = line[len("data: ") :]
                    elif not line:
                        if event == "runs":
                            self._record(json.loads(data))
                            attempt = 0
                        elif event == "error":
                            self._error(f"event: error {data[:300]}")
                        event, data = "", ""
                self._error("the dashboard ended the stream")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._error(f"{type(exc).__name__}: {exc}")
            finally:
                if resp is not None:
                    resp.close()
                conn.close()
            attempt += 1
            self._stop.wait(min(SSE_BACKOFF_MAX_S, 0.1 * 2**attempt))

    def _close(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class WatchCheck:
    invariants: dict[str, Invariant]
    stats: dict[str, Any] = field(default_factory=dict)
    title: str = "runs watch"

    @property
    def violations(self) -> int:
        return sum(i.count for i in self.invariants.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "invariants": {
                i.name: {"count": i.count, "examples": i.examples, "unchecked": i.unchecked}
                for i in self.invariants.values()
            },
            "stats": self.stats,
        }

    def lines(self) -> list[str]:
        s = self.stats
        out = [
            f"{self.title} ({s.get('source', '')}): {s.get('connections', 0)} snapshots"
            f" (a connection each), {s.get('changes', 0)} changes, {s.get('errors', 0)} errors that ended a"
            f" watch; {s.get('covered', 0)} runs in its window, {s.get('outside_window', 0)} older ones"
            f" outside it; final statuses shown {s.get('settle_s', 0)} s after the drain",
            f"  allowed: {s.get('reopened_by_a_retry', 0)} terminal runs seen reopened by a dead letter's retry,"
            f" {s.get('grew_in_workflows_or_retried_runs', 0)} unfinished counts seen growing in workflow"
            " or retried runs",
            f"{self.title} invariants:",
        ]
        for inv in self.invariants.values():
            if inv.unchecked:
                out.append(f"  [n/a ] {inv.name}: not checked: {inv.unchecked}")
                continue
            out.append(f"  [{'ok  ' if inv.count == 0 else 'FAIL'}] {inv.name}: {inv.count}")
            out += [f"         {e}" for e in inv.examples[:EXAMPLES_MAX]]
        return out


def check_runs_watch(
    events: Sequence[WatchEvent],
    final: Mapping[str, RunRecord],
    covered: Sequence[str],
    ops: Sequence[Operation],
) -> WatchCheck:
    """Judge what the watcher saw against the final state (``final``: every run, by id;
    ``covered``: the run ids of the watcher's window) and what the workload did (``ops``)."""
    inv = {name: Invariant(name) for name in WATCH_INVARIANTS}
    ops_by_key = {op.key: op for op in ops}
    last: dict[str, tuple[str, int]] = {}
    reopened: set[str] = set()
    grew: set[str] = set()
    explained = {"reopened_by_a_retry": 0, "grew_in_workflows_or_retried_runs": 0}
    for ev in events:
        for run_id, status, unfinished in ev.runs:
            before = last.get(run_id)
            last[run_id] = (status, unfinished)
            if before is None:
                continue
            run = final.get(run_id)
            op = ops_by_key.get(run.key) if run is not None else None
            retried = op is not None and bool(op.retries)
            was, had = before
            if was in TERMINAL and status != was:
                if retried and was == "FAILED":
                    explained["reopened_by_a_retry"] += 1
                elif run_id not in reopened:
                    reopened.add(run_id)
                    inv[REOPENED].add(f"run {run_id}: seen {was}, then {status} at {ev.at_ms}")
            if unfinished > had:
                if op is not None and (bool(op.workflow) or retried):
                    explained["grew_in_workflows_or_retried_runs"] += 1
                elif run_id not in grew:
                    grew.add(run_id)
                    inv[GREW].add(f"run {run_id} ({status}): unfinished {had} -> {unfinished} at {ev.at_ms}")
    for run_id in covered:
        want = final[run_id].status
        seen = last.get(run_id)
        if seen is None:
            inv[MISSED].add(f"run {run_id} ({want}): never seen")
        elif seen[0] != want:
            inv[MISSED].add(f"run {run_id}: last seen {seen[0]}, final {want}")
    stats = {
        "connections": sum(1 for e in events if e.snapshot),
        "changes": sum(1 for e in events if not e.snapshot),
        "runs_seen": len(last),
        "covered": len(covered),
        "outside_window": len(final) - len(covered),
        "seen_not_in_final_state": len(set(last) - set(final)),
        **explained,
    }
    return WatchCheck(inv, stats)


__all__ = [
    "GREW",
    "MISSED",
    "REOPENED",
    "WATCH_LIMIT",
    "RunsWatcher",
    "SseWatcher",
    "WatchCheck",
    "WatchEvent",
    "check_runs_watch",
]
