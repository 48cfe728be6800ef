"""Cluster.WatchRuns and WhoAmI: the hub's all-runs subscription (coalescing, bounds, resync) and
the stream through the SDK and CLI against one in-process node."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
from typing import Any

import grpc
import pytest

from raftmesh.clock import SYSTEM_CLOCK
from raftmesh.consensus import limits
from raftmesh.consensus.results import RunChanged, TaskChanged
from raftmesh.consensus.state import ClusterState, RunState, RunStatus, TaskStatus
from raftmesh.errors import InvalidArgument, NoLeader, ResourceExhausted
from raftmesh.localcluster import wait_until
from raftmesh.node import service, watch
from raftmesh.node.access import NodeAccess
from raftmesh.node.reads import ReadView
from raftmesh.node.watch import RunsWatch, WatchHub
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

from .test_node_inprocess import InProcessNode, fan_out, node  # noqa: F401  (node: the fixture)


def test_a_runs_watch_keeps_one_entry_a_run() -> None:
    hub = WatchHub()
    w = hub.subscribe_runs()
    hub.publish(
        [
            TaskChanged(5, "r1", "a", TaskStatus.RUNNING, 1, "n1"),
            TaskChanged(6, "r1", "b", TaskStatus.RUNNING, 1, "n1"),
            RunChanged(7, "r2", RunStatus.RUNNING),
            TaskChanged(8, "r2", "a", TaskStatus.READY, 0, ""),
        ]
    )
    assert w.wake.is_set()
    assert w.take() == (False, {"r1": (6, False), "r2": (8, True)})  # a status change stays marked
    assert not w.wake.is_set() and w.take() == (False, {})
    hub.unsubscribe_runs(w)
    hub.publish([RunChanged(10, "r3", RunStatus.RUNNING)])
    assert w.take() == (False, {})


def test_a_runs_watch_that_falls_behind_resyncs_instead_of_growing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MAX_QUEUED", 3)
    w = RunsWatch()
    for i in range(3):
        w.mark(f"r{i}", i, False)
    w.mark("r0", 10, False)  # a run already marked costs nothing more
    assert len(w.changed) == 3 and not w.resync
    w.mark("r9", 11, False)
    assert w.resync and w.changed == {}
    w.mark("r10", 12, True)  # nothing is kept until it has re-read its snapshot
    assert w.take() == (True, {})
    hub = WatchHub()
    w2 = hub.subscribe_runs()
    hub.resync_all()  # a snapshot installed
    assert w2.take() == (True, {})


def test_watch_runs_streams_coalesced_changes_and_resyncs(node: InProcessNode) -> None:  # noqa: F811
    c = node.client
    assert c.whoami() == {
        "principal": "anonymous",
        "role": "node",
        "namespaces": ["*"],
        "auth": False,
        "node_id": "n1",
        "methods": c.whoami()["methods"],
    }
    before = c.submit(fan_out(1))
    c.wait(before, timeout_s=30)
    events: list[dict[str, Any]] = []
    stop = threading.Event()

    def read() -> None:
        for ev in c.watch_runs(limit=10, timeout_s=60):
            events.append(ev)
            if stop.is_set():
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: events, 10, "the snapshot")
    assert [r["run_id"] for r in events[0]["snapshot"]] == [before]
    run_id = c.submit(fan_out(30))
    task_events = sum(1 for e in c.watch(run_id) if e.kind == "task")
    final = wait_until(
        lambda: [
            e
            for e in events
            if e.get("run", {}).get("run_id") == run_id and e["run"]["status"] == "SUCCEEDED"
        ],
        30,
        "the run's final summary",
    )
    assert final[0]["run"]["unfinished"] == 0 and final[0]["run"]["tasks"] == 32
    mine = [e["run"] for e in events if e.get("run", {}).get("run_id") == run_id]
    # One summary per run per coalescing period, not one per task event.
    assert len(mine) < task_events, (len(mine), task_events)
    assert [r["unfinished"] for r in mine] == sorted((r["unfinished"] for r in mine), reverse=True)
    assert all(a != b for a, b in itertools.pairwise(mine)), mine  # no summary said twice

    loop = node.runtime.loop
    assert loop is not None
    loop.call_soon_threadsafe(node.runtime.hub.resync_all)  # as after a snapshot install
    again = wait_until(lambda: [e for e in events[1:] if "snapshot" in e], 10, "a new snapshot")
    assert [r["run_id"] for r in again[0]["snapshot"]] == [run_id, before]
    stop.set()
    c.submit(fan_out(1))  # one more change lets the reader see the stop
    reader.join(timeout=30)
    assert not reader.is_alive()

    with pytest.raises(InvalidArgument, match="limit must be at most 1000"):
        next(iter(c.watch_runs(limit=5000)))
    failed = next(iter(c.watch_runs(status="FAILED", timeout_s=10)))
    assert failed == {"snapshot": []}


def test_cli_whoami_and_runs_watch(node: InProcessNode) -> None:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMESH_")}
    env["RAFTMESH_ADDRESSES"] = node.address
    me = subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", "whoami", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["node_id"] == "n1"
    plain = subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", "whoami"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "principal  anonymous" in plain.stdout and "auth       off" in plain.stdout
    run_id = node.client.submit(fan_out(1))
    node.client.wait(run_id, timeout_s=30)
    with subprocess.Popen(
        [sys.executable, "-m", "raftmesh.cli.main", "runs", "--watch", "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as watcher:
        try:
            assert watcher.stdout is not None
            first = json.loads(watcher.stdout.readline())
            assert [r["run_id"] for r in first["snapshot"]] == [run_id]
            second = node.client.submit(fan_out(1))
            line = json.loads(watcher.stdout.readline())
            assert line["run"]["run_id"] == second
        finally:
            watcher.kill()


class _Writer:
    """The replica is already current: nothing to wait for (this test drives the state itself)."""

    async def propose(self, cmd: object, timeout_s: float | None = None) -> object:
        raise AssertionError("WatchRuns proposes nothing")

    async def barrier(self, timeout_s: float | None = None) -> None:
        return None


class _Context:
    def time_remaining(self) -> float | None:
        return None


def _run_state(run_id: str, created_ms: int) -> RunState:
    return RunState(
        run_id=run_id,
        status=RunStatus.RUNNING,
        tasks={},
        unfinished=0,
        priority=0,
        idempotency_key="",
        name=run_id,
        submitter="",
        created_ms=created_ms,
    )


def test_watch_runs_sends_a_change_its_read_saw_before_the_change_event_arrived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Raft thread applies, then hands the event to the loop: a read after run A's event can
    already see run B's later change. B's event, arriving next, must still be sent (it once was
    dropped as "not newer than what was read")."""
    monkeypatch.setattr(service, "RUNS_COALESCE_S", 0.0)
    st = ClusterState(revision=10, runs={"A": _run_state("A", 1), "B": _run_state("B", 2)})
    lock = threading.Lock()
    hub = WatchHub()
    access = NodeAccess(_Writer(), ReadView(lock, lambda: st), SYSTEM_CLOCK, lambda: True, 5.0)
    svc = service.ClusterService(access, hub, lambda deep: pb.ClusterStatusResponse())

    async def main() -> list[tuple[str, str]]:
        gen = svc.WatchRuns(pb.WatchRunsRequest(limit=10), _Context())
        snap = await gen.__anext__()
        assert snap.is_snapshot and snap.revision == 10
        with lock:  # two commands applied; only the first one's events have reached the loop
            st.revision, st.runs["A"].status = 11, RunStatus.SUCCEEDED
            st.revision, st.runs["B"].status = 12, RunStatus.FAILED
        hub.publish([RunChanged(11, "A", RunStatus.SUCCEEDED)])
        got: list[tuple[str, str]] = []
        ev = await gen.__anext__()
        got.append((ev.changed.run_id, pb.RunStatus.Name(ev.changed.status)))
        hub.publish([RunChanged(12, "B", RunStatus.FAILED)])
        async with asyncio.timeout(5):
            while not any(run_id == "B" for run_id, _ in got):
                ev = await gen.__anext__()
                if ev.HasField("changed"):
                    got.append((ev.changed.run_id, pb.RunStatus.Name(ev.changed.status)))
        await gen.aclose()
        return got

    got = asyncio.run(main())
    assert got == [("A", "RUN_STATUS_SUCCEEDED"), ("B", "RUN_STATUS_FAILED")]


def test_a_run_watch_on_a_node_that_lost_its_leader_ends_so_the_client_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node cut off from the leader never sees the run move again: at its next idle heartbeat
    it ends the stream with UNAVAILABLE (NoLeader), which the SDK retries on another node."""
    monkeypatch.setattr(service, "STREAM_HEARTBEAT_S", 0.01)
    st = ClusterState(revision=10, runs={"A": _run_state("A", 1)})
    leader = [True]
    access = NodeAccess(
        _Writer(), ReadView(threading.Lock(), lambda: st), SYSTEM_CLOCK, lambda: leader[0], 5.0
    )
    svc = service.ClusterService(access, WatchHub(), lambda deep: pb.ClusterStatusResponse())

    async def main() -> None:
        gen = svc._watch("A", True, None)
        snap = await gen.__anext__()
        assert snap.revision == 10 and snap.snapshot.run_id == "A"
        heartbeat = await gen.__anext__()  # idle, with a leader: "alive"
        assert not heartbeat.HasField("snapshot") and not heartbeat.HasField("task")
        leader[0] = False
        with pytest.raises(NoLeader):
            async with asyncio.timeout(5):
                await gen.__anext__()

    asyncio.run(main())


def test_watch_runs_streams_are_capped_per_node(
    node: InProcessNode,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MAX_WATCH_RUNS_STREAMS", 2)
    c = node.client
    open_ = [iter(c.watch_runs(limit=5, timeout_s=30)) for _ in range(2)]
    for it in open_:
        assert "snapshot" in next(it)
    with pytest.raises(ResourceExhausted, match="serves 2 WatchRuns streams already"):
        next(iter(c.watch_runs(limit=5, timeout_s=30)))
    for it in open_:
        it.close()  # type: ignore[attr-defined]
    # A closed stream frees its place (the server notices the cancelled call).
    wait_until(lambda: _watch_opens(c), 10, "a WatchRuns stream after two closed")


def _watch_opens(c: Any) -> bool:
    it = iter(c.watch_runs(limit=5, timeout_s=30))
    try:
        return "snapshot" in next(it)
    except ResourceExhausted:
        return False
    finally:
        it.close()


def _slow(seconds: float) -> Any:
    from raftmesh import DAG

    dag = DAG("slow")
    dag.task("s", "sleep", input={"seconds": seconds})
    return dag


def test_run_to_end_answers_the_ended_run_or_names_the_run_still_going(
    node: InProcessNode,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc

    from raftmesh.client._runs import submit_request
    from raftmesh.errors import DeadlineExceeded
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    c = node.client
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        req = submit_request(fan_out(2))
        run = stub.RunToEnd(pb.RunToEndRequest(submit=req), timeout=30)
        assert run.status == pb.RUN_STATUS_SUCCEEDED and len(run.tasks) == 4
        assert {t.id: t.output_json for t in run.tasks} == {
            tid: json.dumps(t.output) for tid, t in c.get(run.run_id).tasks.items()
        }
        again = stub.RunToEnd(pb.RunToEndRequest(submit=req), timeout=30)  # the key's run, read again
        assert again.run_id == run.run_id and again.status == pb.RUN_STATUS_SUCCEEDED

        # Not ended within wait_ms, or before the call's own deadline: DEADLINE_EXCEEDED naming it.
        slow = submit_request(_slow(3.0))
        with pytest.raises(grpc.RpcError) as err:
            stub.RunToEnd(pb.RunToEndRequest(submit=slow, wait_ms=200), timeout=30)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        run_id = dict(err.value.trailing_metadata())[service.RUN_ID_METADATA]
        assert f"run {run_id} is still going" in err.value.details()
        assert f"WatchRun {run_id}" in err.value.details()
        assert c.get(run_id).status not in ("SUCCEEDED", "FAILED", "CANCELLED")
        with pytest.raises(grpc.RpcError) as err:  # a call without a deadline: wait_ms alone
            stub.RunToEnd(pb.RunToEndRequest(submit=slow, wait_ms=300))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert dict(err.value.trailing_metadata())[service.RUN_ID_METADATA] == run_id
        with pytest.raises(grpc.RpcError) as err:
            stub.RunToEnd(pb.RunToEndRequest(submit=slow), timeout=1.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert dict(err.value.trailing_metadata())[service.RUN_ID_METADATA] == run_id
        ended = stub.RunToEnd(pb.RunToEndRequest(submit=slow), timeout=30)
        assert ended.run_id == run_id and ended.status == pb.RUN_STATUS_SUCCEEDED

        cycle = pb.SubmitRunRequest(
            tasks=[
                pb.TaskSpec(id="a", agent="echo", deps=["b"]),
                pb.TaskSpec(id="b", agent="echo", deps=["a"]),
            ]
        )
        too_long = pb.RunToEndRequest(submit=req, wait_ms=limits.MAX_RUN_WAIT_MS + 1)
        for bad, says in ((pb.RunToEndRequest(submit=cycle), "cycle"), (too_long, "wait_ms")):
            with pytest.raises(grpc.RpcError) as err:
                stub.RunToEnd(bad, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in err.value.details()

        # Bounded: past MAX_RUN_WAITS waiting calls a node refuses another.
        monkeypatch.setattr(limits, "MAX_RUN_WAITS", 0)
        with pytest.raises(grpc.RpcError) as err:
            stub.RunToEnd(pb.RunToEndRequest(submit=req), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        monkeypatch.undo()

    # The SDK's run is RunToEnd; its timeout names the run still going.
    with pytest.raises(DeadlineExceeded, match=r"run r-\S+ did not finish within 0.3 s; it is still going"):
        c.run(_slow(2.0), timeout_s=0.3)
    assert c.run(fan_out(1), timeout_s=30).tasks["total"].output == 1  # seed 1 -> p0 1 -> total 1


def test_run_to_end_waits_without_the_watch_stream(
    node: InProcessNode,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RunToEnd reads only the run's status until it ends: the watch's snapshot and events, built
    while the agent waited to start, are a stream's. A run reopened, or one the key named, still
    answers once ended."""
    from raftmesh.client._runs import submit_request
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    def no_watch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("RunToEnd streamed the watch")

    monkeypatch.setattr(service.ClusterService, "_watch", no_watch)
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        req = submit_request(fan_out(2))
        run = stub.RunToEnd(pb.RunToEndRequest(submit=req), timeout=30)
        assert run.status == pb.RUN_STATUS_SUCCEEDED and len(run.tasks) == 4
        again = stub.RunToEnd(pb.RunToEndRequest(submit=req), timeout=30)  # the key's run: a barrier
        assert again.run_id == run.run_id and again.status == pb.RUN_STATUS_SUCCEEDED
        slow = stub.RunToEnd(pb.RunToEndRequest(submit=submit_request(_slow(0.3))), timeout=30)
        assert slow.status == pb.RUN_STATUS_SUCCEEDED
    assert node.client.run(fan_out(1), timeout_s=30).tasks["total"].output == 1


@pytest.fixture
def without_run_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node started after this has no RunToEnd (an older one): the servicer's base answers
    UNIMPLEMENTED. Name it before ``node`` in a test's arguments."""
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    monkeypatch.setattr(service.ClusterService, "RunToEnd", pb_grpc.ClusterServicer.RunToEnd)


def test_run_on_a_node_without_run_to_end_falls_back_to_the_stream(
    without_run_to_end: None,
    node: InProcessNode,  # noqa: F811
) -> None:
    import grpc

    from raftmesh.client._runs import submit_request
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    with grpc.insecure_channel(node.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.ClusterStub(ch).RunToEnd(
                pb.RunToEndRequest(submit=submit_request(fan_out(1))), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    ran = node.client.run(fan_out(2), idempotency_key="old-node", timeout_s=30)
    assert ran.status == "SUCCEEDED" and ran.tasks["total"].output == 1 + 2
    assert [r["run_id"] for r in node.client.list_runs() if r["idempotency_key"] == "old-node"] == [
        ran.run_id
    ]


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


def test_run_to_end_resends_the_same_submit_after_a_dropped_connection() -> None:
    """What ``Client.run`` does with each answer of RunToEnd: a dropped connection resends the
    same request (its idempotency key: the same run) to the next node after a backoff; a run
    still going is asked for again; UNIMPLEMENTED hands over to the stream (None)."""
    from raftmesh import Client
    from raftmesh.client import _runs
    from raftmesh.client._core import Rpc, Sleep
    from raftmesh.client._types import RunInfo

    c = Client(["127.0.0.1:1", "127.0.0.1:2"])
    try:
        req = pb.SubmitRunRequest(idempotency_key="k")
        op = _runs.run_to_end(c, req, None)
        first = next(op)
        assert isinstance(first, Rpc) and first.method == "RunToEnd" and first.request.submit == req
        assert first.request.wait_ms == _runs.RUN_WAIT_SLICE_S * 1000
        assert isinstance(op.send(_Failed(grpc.StatusCode.UNAVAILABLE)), Sleep)
        second = op.send(None)
        assert isinstance(second, Rpc) and second.addr != first.addr and second.request.submit == req
        going = _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, ((service.RUN_ID_METADATA, "r-1"),))
        third = op.send(going)  # still going: asked again at once, same node
        assert isinstance(third, Rpc) and third.addr == second.addr and third.request.submit == req
        with pytest.raises(StopIteration) as done:
            op.send(pb.Run(run_id="r-1", status=pb.RUN_STATUS_SUCCEEDED))
        assert isinstance(done.value.value, RunInfo) and done.value.value.run_id == "r-1"

        op = _runs.run_to_end(c, req, None)
        next(op)
        with pytest.raises(StopIteration) as done:
            op.send(_Failed(grpc.StatusCode.UNIMPLEMENTED))
        assert done.value.value is None
        with pytest.raises(StopIteration) as done:  # remembered: that node is not asked again
            next(_runs.run_to_end(c, req, None))
        assert done.value.value is None
        c._rotate()  # the other node has it
        op = _runs.run_to_end(c, req, None)
        next(op)
        with pytest.raises(InvalidArgument):
            op.send(_Failed(grpc.StatusCode.INVALID_ARGUMENT))
    finally:
        c.close()
