"""The dashboard's HTTP API (``raftmesh node --http``) on a real 3-node cluster: every endpoint,
both event streams (snapshot, changes, end), the bounds (streams, body size, content type,
origin, parameters), serving from a follower, and streams that live through a leader kill."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from raftmesh import DAG
from raftmesh.dashboard.listener import plaintext_warning
from raftmesh.errors import InvalidArgument
from raftmesh.localcluster import LocalCluster, free_ports, wait_until
from raftmesh.node.config import Peer, build_config

from .dashboard_http import EventStream

pytestmark = pytest.mark.e2e

MAX_STREAMS = 4
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def board(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from .conftest import shared_cluster

    c = LocalCluster(
        3,
        base_dir=str(tmp_path_factory.mktemp("dashboard")),
        http=True,
        unsafe_no_fsync=True,
        extra_args=["--http-max-streams", str(MAX_STREAMS)],
    )
    with shared_cluster(request, c):
        yield c


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20.0) as h:
        yield h


def url(c: LocalCluster, node: str, path: str) -> str:
    return f"http://{c.nodes[node].http}{path}"


def follower(c: LocalCluster) -> str:
    leader = c.wait_ready()
    return next(n for n in c.nodes if n != leader)


def gated_dag(name: str = "gated") -> DAG:
    dag = DAG(name)
    a = dag.task("a", "echo", input="go")
    dag.task("g", "echo", input="g", deps=[a], approval={"prompt": "ship?"})
    return dag


def test_reads_from_a_follower(board: LocalCluster, http: httpx.Client) -> None:
    f = follower(board)
    client = board.client()
    ok = client.run({"tasks": [{"id": "a", "agent": "echo", "input": {"x": 1}}]}, timeout_s=30)
    bad = client.submit({"tasks": [{"id": "boom", "agent": "fail", "input": "no"}]})
    client.wait(bad, timeout_s=30)
    client.kv.put("dash/k", {"v": 1})

    me = http.get(url(board, f, "/api/v1/whoami")).json()
    assert me["principal"] == "anonymous" and me["auth"] is False and me["node_id"] == f
    assert "/raftmesh.v1.Cluster/CancelRun" in me["methods"]

    cl = http.get(url(board, f, "/api/v1/cluster")).json()
    assert cl["node_id"] == f and cl["leader"] and cl["has_quorum"] is True
    assert {m["id"] for m in cl["members"]} == set(board.nodes)
    for m in cl["members"]:
        assert m["reachable"] is True and m["term"] == cl["term"] and m["leader"] == cl["leader"]
        assert m["apply_lag"] >= 0 and m["commit_index"] >= m["last_applied"] > 0
    assert cl["leader_changes"][0]["leader"] == cl["leader"]

    runs = http.get(url(board, f, "/api/v1/runs"), params={"limit": 1000}).json()["runs"]
    assert {ok.run_id, bad} <= {r["run_id"] for r in runs}
    failed = http.get(url(board, f, "/api/v1/runs"), params={"status": "failed"}).json()["runs"]
    assert [r["run_id"] for r in failed if r["run_id"] == bad] == [bad]
    assert all(r["status"] == "FAILED" for r in failed)
    assert set(runs[0]) == set(client.list_runs(limit=1)[0])  # the list_runs shape

    run = http.get(url(board, f, f"/api/v1/runs/{ok.run_id}")).json()
    assert run == client.get(ok.run_id).to_json()
    audit = http.get(url(board, f, f"/api/v1/runs/{ok.run_id}/audit")).json()
    assert audit["run_id"] == ok.run_id and audit["events"][0]["kind"] == "submitted"

    dead = http.get(url(board, f, "/api/v1/dead-letters")).json()
    assert any(d["run_id"] == bad and d["task_id"] == "boom" for d in dead["tasks"])
    assert dead["messages"] == []
    kv = http.get(url(board, f, "/api/v1/kv"), params={"prefix": "dash/"}).json()
    assert [(e["key"], e["value"]) for e in kv["entries"]] == [("dash/k", {"v": 1})]
    with client.lock("dash-lock", ttl_s=30):
        locks = http.get(url(board, f, "/api/v1/locks"), params={"prefix": "dash-"}).json()["locks"]
        assert [lk["name"] for lk in locks] == ["dash-lock"] and len(locks[0]["holders"]) == 1

    missing = http.get(url(board, f, "/api/v1/runs/r-nope"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    page = http.get(url(board, f, "/"))
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_actions_and_approvals(board: LocalCluster, http: httpx.Client) -> None:
    f = follower(board)
    client = board.client()
    slow = client.submit({"tasks": [{"id": "s", "agent": "sleep", "input": {"seconds": 30}}]})
    base = url(board, f, f"/api/v1/runs/{slow}")
    paused = http.post(f"{base}/pause", json={"cancel_running": True})
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"run_id": slow, "status": "PAUSED", "changed": True, "stopped": 1}
    assert http.post(f"{base}/resume", json={}).json()["status"] == "RUNNING"
    cancelled = http.post(f"{base}/cancel", json={"reason": "from the page"}).json()
    assert cancelled == {"run_id": slow, "status": "CANCELLED", "cancelled": True}
    assert client.get(slow).status == "CANCELLED"
    rerun = http.post(f"{base}/tasks/s/rerun", json={}).json()
    assert rerun["reopened"] is True and rerun["run_status"] == "RUNNING"
    http.post(f"{base}/cancel", json={})

    gated = client.submit(gated_dag())
    wait_until(lambda: client.approvals(gated), 30, "the gate to open")
    gates = http.get(url(board, f, "/api/v1/approvals"), params={"run": gated}).json()["approvals"]
    assert [(g["run_id"], g["task_id"], g["prompt"]) for g in gates] == [(gated, "g", "ship?")]
    decided = http.post(
        url(board, f, f"/api/v1/runs/{gated}/tasks/g/approve"), json={"comment": "lgtm"}
    ).json()
    assert decided["applied"] is True and decided["decision"] == "approved" and decided["comment"] == "lgtm"
    assert client.wait(gated, timeout_s=30).status == "SUCCEEDED"
    again = http.post(url(board, f, f"/api/v1/runs/{gated}/tasks/g/reject"), json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "FAILED_PRECONDITION"


def test_an_action_retried_with_its_request_id_applies_once(board: LocalCluster, http: httpx.Client) -> None:
    """The page sends one request_id per click and reuses it when it retries after a 503/504."""
    f = follower(board)
    client = board.client()
    slow = client.submit({"tasks": [{"id": "s", "agent": "sleep", "input": {"seconds": 30}}]})
    base = url(board, f, f"/api/v1/runs/{slow}")
    click = uuid.uuid4().hex
    first = http.post(f"{base}/pause", json={"request_id": click})
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "PAUSED" and first.json()["changed"] is True
    assert http.post(f"{base}/resume", json={"request_id": uuid.uuid4().hex}).json()["status"] == "RUNNING"
    late = http.post(f"{base}/pause", json={"request_id": click})  # the first pause, retried late
    assert late.status_code == 200 and late.json() == first.json()
    assert client.get(slow).status == "RUNNING"  # answered from the first, not paused again
    bad = http.post(f"{base}/pause", json={"request_id": "x y"})
    assert bad.status_code == 400 and "request_id must be" in bad.json()["error"]["message"]
    http.post(f"{base}/cancel", json={"request_id": uuid.uuid4().hex})

    gated = client.submit(gated_dag("gated-retry"))
    wait_until(lambda: client.approvals(gated), 30, "the gate to open")
    approve = url(board, f, f"/api/v1/runs/{gated}/tasks/g/approve")
    click = uuid.uuid4().hex
    once = http.post(approve, json={"comment": "ok", "request_id": click})
    twice = http.post(approve, json={"comment": "ok", "request_id": click})
    assert once.status_code == twice.status_code == 200, twice.text
    assert once.json() == twice.json() and once.json()["applied"] is True
    assert client.wait(gated, timeout_s=30).status == "SUCCEEDED"


def test_run_events_stream_a_snapshot_task_events_and_the_end(
    board: LocalCluster, http: httpx.Client
) -> None:
    f = follower(board)
    client = board.client()
    dag = DAG("stream")
    a = dag.task("a", "sleep", input={"seconds": 1})
    dag.task("b", "echo", input="b", deps=[a])
    run_id = client.submit(dag)
    with EventStream(http, url(board, f, f"/api/v1/runs/{run_id}/events")) as s:
        assert s.resp.headers["content-type"].startswith("text/event-stream")
        event, snap = s.next()
        assert event == "snapshot" and snap["run_id"] == run_id and set(snap["tasks"]) == {"a", "b"}
        events = []
        while True:
            event, data = s.next()
            events.append((event, data))
            if event == "end":
                break
        tasks = [d for e, d in events if e == "task"]
        assert ("b", "SUCCEEDED") in {(t["task_id"], t["status"]) for t in tasks}
        assert all(set(t) == {"task_id", "status", "attempt", "node", "revision"} for t in tasks)
        revs = [t["revision"] for t in tasks]
        assert revs == sorted(revs)
        assert ("run", {"status": "SUCCEEDED", "error": ""}) in events
        assert events[-1] == ("end", {"status": "SUCCEEDED"})
        with pytest.raises(EOFError):
            s.next()
    # A finished run: its snapshot, then the end at once.
    with EventStream(http, url(board, f, f"/api/v1/runs/{run_id}/events")) as s:
        assert s.next()[0] == "snapshot"
        assert s.next() == ("end", {"status": "SUCCEEDED"})
    gone = http.get(url(board, f, "/api/v1/runs/r-none/events"))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "NOT_FOUND"


def test_events_stream_the_cluster_and_run_changes(board: LocalCluster, http: httpx.Client) -> None:
    f = follower(board)
    client = board.client()
    with EventStream(http, url(board, f, "/api/v1/events")) as s:
        first = dict([s.next(), s.next()])
        assert first["cluster"]["node_id"] == f and "snapshot" in first["runs"]
        run_id = client.submit({"tasks": [{"id": "a", "agent": "sleep", "input": {"seconds": 0.5}}]})
        _, new = s.until(
            lambda e, d: e == "runs" and d.get("run", {}).get("run_id") == run_id, 30, "the new run"
        )
        assert new["run"]["tasks"] == 1
        _, done = s.until(
            lambda e, d: (
                e == "runs" and d.get("run", {}).get("run_id") == run_id and d["run"]["status"] != "RUNNING"
            ),
            30,
            "the run's end",
        )
        assert done["run"]["status"] == "SUCCEEDED" and done["run"]["unfinished"] == 0
        # Idle: pings keep the connection (and show a client that left).
        s.until(lambda e, d: e == "ping", 15, "a ping")


def test_bad_requests_are_refused_with_a_message(board: LocalCluster, http: httpx.Client) -> None:
    f = follower(board)
    client = board.client()
    run_id = client.submit({"tasks": [{"id": "a", "agent": "echo", "input": 1}]})
    api = url(board, f, "/api/v1")

    def refused(resp: httpx.Response, status: int, says: str) -> None:
        assert resp.status_code == status, resp.text
        assert says in resp.json()["error"]["message"]

    refused(http.get(f"{api}/runs", params={"limit": "0"}), 400, "limit must be between 1 and 1000")
    refused(http.get(f"{api}/runs", params={"limit": "x"}), 400, "whole number")
    refused(http.get(f"{api}/runs", params={"status": "DONE"}), 400, "status must be one of")
    refused(http.get(f"{api}/runs", params={"namespace": "A B"}), 400, "namespace")
    refused(http.get(f"{api}/runs", params={"sort": "name"}), 400, "unknown query parameter 'sort'")
    refused(http.get(f"{api}/runs", params={"token": "t"}), 400, "tokens never go in URLs")
    refused(http.get(f"{api}/runs?limit=1&limit=2"), 400, "more than once")
    refused(http.get(f"{api}/runs/{'r' * 200}"), 400, "run id must be")
    refused(http.get(f"{api}/kv", params={"prefix": "a\x01"}), 400, "printable")
    refused(http.get(f"{api}/events", params={"limit": "5000"}), 400, "limit")
    refused(http.get(f"{api}/runs", headers={"Authorization": "Basic eDp5"}), 401, "Bearer")
    # DNS rebinding: a page whose own name now points here is refused on an open cluster.
    refused(http.get(f"{api}/runs", headers={"Host": "evil.example"}), 403, "not this dashboard's address")
    assert http.get(f"{api}/runs", headers={"Host": "localhost"}).status_code == 200

    cancel = f"{api}/runs/{run_id}/cancel"
    refused(
        http.post(cancel, content=b"reason=x", headers={"Content-Type": "application/x-www-form-urlencoded"}),
        415,
        "application/json",
    )
    refused(http.post(cancel, content=b"{}", headers={"Content-Type": "text/plain"}), 415, "application/json")
    refused(http.post(cancel, content=b"x" * (64 * 1024 + 1), headers=JSON), 413, "65536")
    refused(http.post(cancel, content=b"{not json", headers=JSON), 400, "not JSON")
    refused(http.post(cancel, content=b"[1]", headers=JSON), 400, "JSON object")
    refused(http.post(cancel, json={"reason": 5}), 400, "reason must be a str")
    refused(http.post(cancel, json={"why": "x"}), 400, "unknown field 'why'")
    refused(http.post(cancel, json={}, headers={"Origin": "https://evil.example"}), 403, "Origin")
    same_origin = http.post(cancel, json={}, headers={"Origin": f"http://{board.nodes[f].http}"})
    assert same_origin.status_code == 200, same_origin.text
    assert http.get(cancel).status_code == 405
    unknown = http.get(f"{api}/nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "NOT_FOUND"


def test_streams_are_bounded_and_freed_when_the_client_goes(board: LocalCluster) -> None:
    f = follower(board)
    events = url(board, f, "/api/v1/events")
    with httpx.Client(timeout=20.0) as http:
        streams = [EventStream(http, events) for _ in range(MAX_STREAMS)]
        try:
            assert all(s.resp.status_code == 200 for s in streams)
            over = http.get(events)
            assert over.status_code == 503 and "at most 4 event streams" in over.json()["error"]["message"]
        finally:
            for s in streams[1:]:
                s.close()
    # The client is gone (its connections closed): the node frees their slots.
    with httpx.Client(timeout=20.0) as http:

        def all_free() -> bool:
            opened = [EventStream(http, events) for _ in range(MAX_STREAMS)]
            ok = all(s.resp.status_code == 200 for s in opened)
            for s in opened:
                s.close()
            return ok

        wait_until(all_free, 30, "the closed streams' slots to be freed")
    streams[0].close()


def test_connections_are_bounded(board: LocalCluster) -> None:
    """Beyond the streams' connections and 128 more, a new connection is closed as it is accepted."""
    f = follower(board)
    host, port = board.nodes[f].http.rsplit(":", 1)
    request = f"GET /api/v1/whoami HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    def answer() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(request)
            try:
                return s.recv(64)
            except ConnectionResetError:
                return b""

    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_STREAMS + 128)]
    try:
        wait_until(lambda: answer() == b"", 15, "a connection over the bound to be closed")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: answer().startswith(b"HTTP/1.1 200"), 15, "connections to be served again")


def test_sdk_and_cli_watch_runs_and_whoami(board: LocalCluster) -> None:
    client = board.client()
    me = client.whoami()
    assert me["principal"] == "anonymous" and me["auth"] is False and me["node_id"] in board.nodes
    seen: list[dict[str, Any]] = []
    key = uuid.uuid4().hex
    for ev in client.watch_runs(limit=5, timeout_s=30):
        seen.append(ev)
        if len(seen) == 1:
            assert "snapshot" in ev and len(ev["snapshot"]) <= 5
            client.submit({"tasks": [{"id": "a", "agent": "echo", "input": 1}]}, idempotency_key=key)
        elif ev["run"]["idempotency_key"] == key and ev["run"]["status"] == "SUCCEEDED":
            break
    else:
        pytest.fail(f"no SUCCEEDED summary of the new run: {seen}")


def test_streams_live_through_a_leader_kill(board: LocalCluster, http: httpx.Client) -> None:
    """The page's promise: a follower's dashboard keeps streaming while the leader dies and
    another is elected; the SDK's watch_runs on the killed node moves to another one."""
    leader = board.wait_ready()
    f = next(n for n in board.nodes if n != leader)
    client = board.client([board.nodes[f].grpc])
    dag = DAG("through-a-kill")
    a = dag.task("a", "sleep", input={"seconds": 1})
    dag.task("b", "echo", input="b", deps=[a])
    on_leader = board.client(
        [board.nodes[leader].grpc, *(board.nodes[n].grpc for n in board.nodes if n != leader)]
    )
    on_leader._current = 0
    watched: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        for ev in on_leader.watch_runs(timeout_s=90):
            watched.append(ev)
            if stop.is_set():
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_until(lambda: watched, 30, "the SDK's first snapshot")
    try:
        with (
            EventStream(http, url(board, f, "/api/v1/events")) as all_events,
            EventStream(http, url(board, f, f"/api/v1/runs/{client.submit(dag)}/events")) as one,
        ):
            assert one.next()[0] == "snapshot"
            all_events.until(lambda e, d: e == "cluster", 10, "the cluster")
            board.kill(leader)
            _, after = all_events.until(
                lambda e, d: e == "cluster" and d["leader"] not in (None, leader),
                60,
                "a cluster event naming the new leader",
            )
            gone = next(m for m in after["members"] if m["id"] == leader)
            assert gone["reachable"] is False and gone["term"] is None
            assert [c["leader"] for c in after["leader_changes"]][:1] == [after["leader"]]
            one.until(lambda e, d: e == "end", 90, "the run's end through the leader change")
            late = client.submit({"tasks": [{"id": "a", "agent": "echo", "input": 2}]})
            all_events.until(
                lambda e, d: e == "runs" and d.get("run", {}).get("run_id") == late, 30, "a new run"
            )
        snapshots = wait_until(
            lambda: [e for e in watched if "snapshot" in e][1:], 60, "the SDK to resnapshot"
        )
        assert snapshots
    finally:
        stop.set()
        board.restart(leader)
        board.wait_ready()
        deadline = time.monotonic() + 60
        while watcher.is_alive() and time.monotonic() < deadline:
            on_leader.submit(
                {"tasks": [{"id": "a", "agent": "echo", "input": 3}]}
            )  # wakes the watcher to stop
            watcher.join(timeout=1)


def test_a_node_with_streams_open_stops_gracefully(board: LocalCluster, http: httpx.Client) -> None:
    """SIGTERM with the page's streams open: they are cut (not waited on) and the node exits by itself."""
    f = follower(board)
    gated = board.client().submit(gated_dag("held"))  # a run that does not end on its own
    try:
        with (
            EventStream(http, url(board, f, "/api/v1/events")) as all_events,
            EventStream(http, url(board, f, f"/api/v1/runs/{gated}/events")) as one,
        ):
            assert one.next()[0] == "snapshot" and all_events.next()[0] == "cluster"
            board.stop_node(f, timeout_s=30)  # SIGKILL only after 30 s
            proc = board.nodes[f].proc
            assert proc is not None and proc.returncode == 0, proc.returncode
            for s in (all_events, one):
                with pytest.raises((EOFError, httpx.HTTPError)):
                    while True:
                        s.next()
    finally:
        board.restart(f)
        board.wait_ready()
        board.client().cancel(gated)


def test_http_flags_are_checked(tmp_path: pathlib.Path) -> None:
    raft, grpc_addr = "127.0.0.1:1", "127.0.0.1:2"
    peers = [Peer("n1", raft, grpc_addr)]
    cfg = build_config("n1", raft, grpc_addr, peers, str(tmp_path))
    assert cfg.http == "" and cfg.http_max_streams == 64
    with pytest.raises(InvalidArgument, match="--http 'nowhere' must look like HOST:PORT"):
        build_config("n1", raft, grpc_addr, peers, str(tmp_path), http="nowhere")
    with pytest.raises(InvalidArgument, match="already the node's gRPC"):
        build_config("n1", raft, grpc_addr, peers, str(tmp_path), http=grpc_addr)
    for bad in (0, 10_001):
        with pytest.raises(InvalidArgument, match="--http-max-streams must be between 1 and 10000"):
            build_config(
                "n1", raft, grpc_addr, peers, str(tmp_path), http="127.0.0.1:3", http_max_streams=bad
            )
    assert cfg.dashboard_client_auth == "none"  # no TLS: nothing to ask for
    with pytest.raises(InvalidArgument, match="--http-client-auth must be require or none"):
        build_config("n1", raft, grpc_addr, peers, str(tmp_path), http_client_auth="optional")
    with pytest.raises(InvalidArgument, match="--http-client-auth require needs TLS"):
        build_config("n1", raft, grpc_addr, peers, str(tmp_path), http_client_auth="require")


def test_a_node_whose_dashboard_port_is_taken_stops_at_start_saying_so(tmp_path: pathlib.Path) -> None:
    raft_port, grpc_port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_addr = f"127.0.0.1:{taken.getsockname()[1]}"
        raft, grpc_addr = f"127.0.0.1:{raft_port}", f"127.0.0.1:{grpc_port}"
        argv = [
            sys.executable,
            "-m",
            "raftmesh.cli.main",
            "node",
            "--id",
            "n1",
            "--raft",
            raft,
            "--grpc",
            grpc_addr,
        ]
        argv += ["--peers", f"n1={raft}/{grpc_addr}", "--data-dir", str(tmp_path / "d"), "--http", http_addr]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f"cannot serve the dashboard on --http {http_addr}" in out.stderr, out.stderr[-2000:]


def test_tokens_over_plain_http_off_loopback_are_warned_about() -> None:
    assert "clear text" in plaintext_warning("10.0.0.5:7301", tls=False, auth=True)
    assert "clear text" in plaintext_warning("0.0.0.0:7301", tls=False, auth=True)
    assert plaintext_warning("127.0.0.1:7301", tls=False, auth=True) == ""
    assert plaintext_warning("[::1]:7301", tls=False, auth=True) == ""
    assert plaintext_warning("10.0.0.5:7301", tls=True, auth=True) == ""
    assert plaintext_warning("10.0.0.5:7301", tls=False, auth=False) == ""
