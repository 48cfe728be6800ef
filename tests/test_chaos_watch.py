"""The chaos checks of issue 12: the runs watcher's history and the DAG clients' two kinds.

Synthetic histories only (no cluster): each check must report a fabricated violation, and
pass the same history without it. The real runs are scripts/chaos.py (tests/test_chaos.py).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from raftmesh.chaos.checker import RunRecord, TaskRecord, check_history
from raftmesh.chaos.runner import ChaosConfig, replay_command
from raftmesh.chaos.runs_watch import GREW, MISSED, REOPENED, SseWatcher, WatchEvent, check_runs_watch
from raftmesh.chaos.workload import ApproveCall, Operation, RetryCall, Workload
from raftmesh.errors import InvalidArgument
from raftmesh.verify.audit import Audit


def op(key: str, client: int = 0, driver: str = "sync", **kw: Any) -> Operation:
    o = Operation(client, 0, key, "chain", 1, {"a": 1}, call_ms=1, outcome="ok", run_id=f"r-{key}")
    o.driver = driver  # type: ignore[assignment]
    for name, value in kw.items():
        setattr(o, name, value)
    return o


def run(key: str, status: str = "SUCCEEDED") -> RunRecord:
    return RunRecord(f"r-{key}", key, status, "", {"a": TaskRecord(status, 1, 1, "n1", 10)})


def snap(at: int, *runs: tuple[str, str, int]) -> WatchEvent:
    return WatchEvent(at, True, runs)


def change(at: int, run_id: str, status: str, unfinished: int) -> WatchEvent:
    return WatchEvent(at, False, ((run_id, status, unfinished),))


def judge(events: list[WatchEvent], runs: list[RunRecord], ops: list[Operation], window: int = 100) -> Any:
    final = {r.run_id: r for r in runs}
    return check_runs_watch(events, final, list(final)[:window], ops)


def counts(check: Any) -> dict[str, int]:
    return {name: inv.count for name, inv in check.invariants.items()}


CLEAN = [
    snap(1, ("r-k1", "RUNNING", 3)),
    change(2, "r-k1", "RUNNING", 2),
    change(3, "r-k2", "RUNNING", 4),
    # A reconnect: the new node's snapshot is at least as new as what the old one sent.
    snap(4, ("r-k2", "RUNNING", 1), ("r-k1", "RUNNING", 1)),
    change(5, "r-k1", "SUCCEEDED", 0),
    change(6, "r-k2", "FAILED", 0),
]


def test_a_watch_that_saw_every_final_status_passes() -> None:
    check = judge(CLEAN, [run("k1"), run("k2", "FAILED")], [op("k1"), op("k2")])
    assert check.violations == 0, {n: i.examples for n, i in check.invariants.items() if i.count}
    assert check.stats["connections"] == 2 and check.stats["changes"] == 4
    assert check.stats["covered"] == 2 and check.stats["outside_window"] == 0


def test_a_final_status_that_never_reached_the_watcher_is_reported() -> None:
    runs = [run("k1"), run("k2", "FAILED"), run("k3")]
    # k2's end never came; k3 was never seen at all.
    check = judge(CLEAN[:-1], runs, [op("k1"), op("k2"), op("k3")])
    assert counts(check) == {MISSED: 2, REOPENED: 0, GREW: 0}
    examples = " ".join(check.invariants[MISSED].examples)
    assert "r-k2: last seen RUNNING, final FAILED" in examples and "r-k3 (SUCCEEDED): never seen" in examples


def test_a_run_outside_the_window_is_not_held_to_it() -> None:
    runs = [run("k1"), run("k2", "FAILED"), run("k0")]  # newest first: k0 is the oldest
    check = judge(CLEAN, runs, [op("k1"), op("k2"), op("k0")], window=2)
    assert check.violations == 0 and check.stats["outside_window"] == 1


def test_a_run_seen_leaving_a_terminal_status_is_reported() -> None:
    events = [*CLEAN, change(7, "r-k1", "RUNNING", 1), change(8, "r-k1", "SUCCEEDED", 0)]
    check = judge(events, [run("k1"), run("k2", "FAILED")], [op("k1"), op("k2")])
    assert counts(check) == {MISSED: 0, REOPENED: 1, GREW: 1}
    assert "seen SUCCEEDED, then RUNNING" in check.invariants[REOPENED].examples[0]


def test_a_retried_dead_letter_may_reopen_its_failed_run_but_nothing_else_may() -> None:
    events = [
        change(1, "r-k1", "RUNNING", 2),
        change(2, "r-k1", "FAILED", 0),
        change(3, "r-k1", "RUNNING", 2),  # the retry requeued the dead letter
        change(4, "r-k1", "SUCCEEDED", 0),
    ]
    retried = op("k1", doomed=True, retries=[RetryCall("k1-retry", 1, 2, "ok", True)])
    allowed = judge(events, [run("k1")], [retried])
    assert allowed.violations == 0
    assert (
        allowed.stats["reopened_by_a_retry"] == 1 and allowed.stats["grew_in_workflows_or_retried_runs"] == 1
    )
    # The same history without a retry: a FAILED run came back and gained tasks.
    check = judge(events, [run("k1")], [op("k1")])
    assert counts(check) == {MISSED: 0, REOPENED: 1, GREW: 1}
    # A retry explains FAILED -> RUNNING only: a SUCCEEDED run may not come back.
    events[1] = change(2, "r-k1", "SUCCEEDED", 0)
    assert counts(judge(events, [run("k1")], [retried]))[REOPENED] == 1


def test_unfinished_may_grow_only_where_the_workload_adds_tasks() -> None:
    events = [
        change(1, "r-k1", "RUNNING", 3),
        snap(2, ("r-k1", "RUNNING", 5)),
        change(3, "r-k1", "SUCCEEDED", 0),
    ]
    check = judge(events, [run("k1")], [op("k1")])
    assert counts(check) == {MISSED: 0, REOPENED: 0, GREW: 1}
    assert "unfinished 3 -> 5" in check.invariants[GREW].examples[0]
    # A workflow run spawns, maps and replicates tasks as it goes: its count may grow.
    flow = op("k1", workflow={"kind": "flow", "spawn": {"task": "spawn", "outputs": [1]}})
    assert judge(events, [run("k1")], [flow]).violations == 0


def test_the_report_counts_each_client_kind() -> None:
    ops = [
        op("k1", 0),
        op("k2", 0, outcome="unknown"),
        op("k3", 1, "aio", approvals=[ApproveCall("a", 1, 2, "ok", True, "approved", 1)]),
        op("k4", 2, "aio", outcome="failed"),
    ]
    ops[1].one_call = True  # Client.run: counted with its client kind
    result = check_history(ops, {r.run_id: r for r in (run("k1"), run("k3"))}, Audit(), {})
    assert result.outcomes.by_driver == {
        "aio": {
            "clients": 2,
            "submits": 2,
            "ok": 1,
            "failed": 1,
            "unknown": 0,
            "ok_succeeded": 1,
            "approve_calls": 1,
            "retry_calls": 0,
            "one_call": 0,
        },
        "sync": {
            "clients": 1,
            "submits": 2,
            "ok": 1,
            "failed": 0,
            "unknown": 1,
            "ok_succeeded": 1,
            "approve_calls": 0,
            "retry_calls": 0,
            "one_call": 1,
        },
    }


def test_half_the_dag_clients_drive_the_asyncio_sdk_by_default() -> None:
    cfg = ChaosConfig(seed=3)
    assert (cfg.clients, cfg.aio) == (4, 2)
    w = Workload(["127.0.0.1:1"], 3, clients=cfg.clients, aio_clients=cfg.aio)
    assert [w.driver_of(c) for c in range(4)] == ["sync", "sync", "aio", "aio"]
    assert ChaosConfig(clients=1).aio == 0
    assert "--aio-clients" not in replay_command(cfg)
    assert replay_command(ChaosConfig(seed=3, aio_clients=4)).endswith("--aio-clients 4")
    with pytest.raises(InvalidArgument, match="--aio-clients must be 0-4"):
        ChaosConfig(aio_clients=5)


class _EventStream(BaseHTTPRequestHandler):
    """A dashboard's ``/api/v1/events`` as the chaos consumer reads it: the first connection
    sends a snapshot and a change, then ends; the next sends a newer snapshot, then only pings."""

    connections: list[str] = []

    def do_GET(self) -> None:
        self.connections.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(event: str, data: Any) -> None:
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        def summary(status: str, unfinished: int) -> dict[str, Any]:
            return {"run_id": "r-k1", "status": status, "unfinished": unfinished}

        send("cluster", {"leader": "n1"})
        if len(self.connections) == 1:
            send("runs", {"snapshot": [summary("RUNNING", 2)]})
            send("runs", {"run": summary("RUNNING", 1)})
            return
        send("runs", {"snapshot": [summary("SUCCEEDED", 0)]})
        with contextlib.suppress(OSError):
            while True:
                send("ping", {})
                time.sleep(0.05)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_event_stream_consumer_records_runs_reconnects_and_stops() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EventStream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watcher = SseWatcher("n1", f"127.0.0.1:{server.server_address[1]}", limit=7)
    try:
        watcher.start()
        deadline = time.monotonic() + 10
        while watcher.missing({"r-k1": "SUCCEEDED"}, ["r-k1"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not watcher.missing({"r-k1": "SUCCEEDED"}, ["r-k1"])
        assert watcher.stop(timeout_s=5), "closing the connection did not end the consumer"
    finally:
        server.shutdown()
        server.server_close()
    assert _EventStream.connections[:2] == ["/api/v1/events?limit=7"] * 2
    assert [(e.snapshot, e.runs) for e in watcher.snapshot()] == [
        (True, (("r-k1", "RUNNING", 2),)),
        (False, (("r-k1", "RUNNING", 1),)),
        (True, (("r-k1", "SUCCEEDED", 0),)),
    ]
    assert watcher.errors == 1 and watcher.error_examples == ["the dashboard ended the stream"]
