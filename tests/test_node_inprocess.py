"""Integration: one node in this process (NodeRuntime on an asyncio loop in a thread), real gRPC on 127.0.0.1.

The layer between the unit tests (no network) and the end-to-end tests (real node
processes): submit/get/watch, KV and locks go through the SDK and the wire, and a
test can look at the node's own state to check what the wire said.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftmesh import DAG, Client
from raftmesh.consensus import limits
from raftmesh.errors import InvalidArgument, NotFound, OutOfRange, RaftmeshError
from raftmesh.localcluster import wait_until
from raftmesh.node.proposer import Proposer

from .inprocess import InProcessNode, in_process_node


@pytest.fixture
def node(tmp_path: os.PathLike[str]) -> Iterator[InProcessNode]:
    with in_process_node(os.path.join(str(tmp_path), "n1")) as n:
        yield n


def fan_out(n: int) -> DAG:
    dag = DAG("inproc")
    seed = dag.task("seed", "sum", input={"value": 1})
    parts = [dag.task(f"p{i}", "sum", input={"value": i}, deps=[seed]) for i in range(n)]
    dag.task("total", "sum", deps=parts)
    return dag


def test_submit_get_and_watch_a_run(node: InProcessNode) -> None:
    c = node.client
    run_id = c.submit(fan_out(20), idempotency_key="k1")
    assert c.submit(fan_out(20), idempotency_key="k1") == run_id  # same key, same run
    events = list(c.watch(run_id, timeout_s=30))
    assert events[0].kind == "snapshot"
    assert events[-1].status == "SUCCEEDED"
    run = c.get(run_id)
    # seed = 1; p_i = i + 1; total = sum(p_i) = sum(range(20)) + 20
    assert run.status == "SUCCEEDED" and run.tasks["total"].output == sum(range(20)) + 20
    stale = c.get(run_id, stale_ok=True)
    assert stale.tasks["total"].output == run.tasks["total"].output
    assert [r["run_id"] for r in c.list_runs()] == [run_id]


def test_errors_reach_the_wire_with_their_status(node: InProcessNode) -> None:
    c = node.client
    with pytest.raises(NotFound, match="not found"):
        c.get("r-missing")
    dag = DAG("cycle")
    dag.task("a", "echo", deps=["b"])
    dag.task("b", "echo", deps=["a"])
    with pytest.raises(InvalidArgument, match="cycle"):
        c.submit(dag)
    # A run status this server does not know is an error, not "any status".
    import grpc

    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    with grpc.insecure_channel(node.address) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClusterStub(ch).ListRuns(pb.ListRunsRequest(status=99), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "unknown run status 99" in (err.value.details() or "")


def test_status_digest_is_the_replicas_digest(node: InProcessNode) -> None:
    node.client.kv.put("d/x", 1)

    def same() -> bool:
        st = node.client.status(include_digest=True)
        mine = node.state(lambda s: (s.revision, s.digest()))
        return (st.revision, st.digest) == mine

    wait_until(same, 10.0, "status --digest to match the replica at the same revision")


def test_kv_put_get_cas_list_and_watch(node: InProcessNode) -> None:
    kv = node.client.kv
    rev = kv.put("cfg/a", {"v": 1})
    entry = kv.get("cfg/a")
    assert entry is not None and entry.value == {"v": 1} and entry.mod_revision == rev
    assert kv.cas("cfg/a", rev, {"v": 2})
    assert not kv.cas("cfg/a", rev, {"v": 3})  # rev is no longer the key's mod_revision
    kv.put("cfg/b", 2)
    assert [e.key for e in kv.list("cfg/")] == ["cfg/a", "cfg/b"]
    events = list(kv.watch(prefix="cfg/", from_revision=rev, timeout_s=2.0))
    assert [(e.kind, e.key) for e in events] == [("put", "cfg/a"), ("put", "cfg/b")]
    assert node.state(lambda s: s.kv.get("cfg/a").value) == {"v": 2}  # type: ignore[union-attr]


def test_kv_watch_from_a_compacted_revision_is_out_of_range(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node runs in this process, so a smaller history limit applies to it (one replica).
    monkeypatch.setattr(limits, "KV_HISTORY_EVENTS", 3)
    kv = node.client.kv
    first = kv.put("w/a", 0)
    for i in range(1, 6):
        kv.put("w/a", i)
    assert node.state(lambda s: s.kv.compacted) >= first  # type: ignore[operator]
    with pytest.raises(OutOfRange, match="compacted"):
        next(iter(kv.watch("w/a", from_revision=first - 1, timeout_s=5.0)))


def test_locks_acquire_release_and_fencing(node: InProcessNode) -> None:
    locks = node.client.locks
    granted, token, _ = locks.acquire("db", owner="alice", ttl_s=10, wait_s=1)
    assert granted and token > 0
    granted_b, _, _ = locks.acquire("db", owner="bob", ttl_s=10, wait_s=0.3)
    assert not granted_b
    assert [lk["name"] for lk in locks.list()] == ["db"]
    locks.release("alice", "db", token)
    granted_b, token_b, _ = locks.acquire("db", owner="bob", ttl_s=10, wait_s=1)
    assert granted_b and token_b > token


def test_an_acquire_that_must_wait_goes_out_with_the_holders_release(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contended acquire is held back on the node until the next lock command proposed there
    (here the holder's release), and both are one log entry; the waiter is granted by it. With
    no lock command coming, the hold ends on its own and the acquire waits in the queue."""
    from raftmesh.node import coordination_service

    runtime = node.runtime
    batches: list[int] = []
    metrics_hook = runtime.proposer.on_batch

    def seen(commands: int, size: int) -> None:
        batches.append(commands)
        if metrics_hook is not None:
            metrics_hook(commands, size)

    def queue() -> Any:
        return node.state(lambda st: list(st.locks.locks["hot"].queue))

    locks = node.client.locks
    granted, token, _ = locks.acquire("hot", owner="alice", ttl_s=30, wait_s=1)
    assert granted
    bob = Client([node.address], timeout_s=10.0)
    got: dict[str, tuple[bool, int, str]] = {}

    def acquire(c: Client, owner: str) -> threading.Thread:
        t = threading.Thread(
            target=lambda: got.update({owner: c.locks.acquire("hot", owner=owner, wait_s=20)})
        )
        t.start()
        return t

    try:
        # Long enough that only the release can let it go (the defaults are a few milliseconds).
        with monkeypatch.context() as m:
            m.setattr(coordination_service, "LOCK_COALESCE_S", 60.0)
            m.setattr(coordination_service, "LOCK_COALESCE_QUEUED_S", 60.0)
            m.setattr(runtime.proposer, "on_batch", seen)
            t = acquire(bob, "bob")
            wait_until(lambda: runtime.lock_waits.waiting == 1, 10.0, "bob's acquire to reach the node")
            assert queue() == []  # held back, not proposed
            locks.release("alice", "hot", token)
            t.join(timeout=20)
        assert got["bob"][0] and got["bob"][1] > token
        assert 2 in batches, batches  # the release and bob's acquire in one entry
        # The default hold: carol's acquire is proposed by its timer and queued behind bob.
        t = acquire(node.client, "carol")
        wait_until(lambda: len(queue()) == 1, 10.0, "carol's acquire to be queued")
        bob.locks.release("bob", "hot", got["bob"][1])
        t.join(timeout=20)
        assert got["carol"][0] and got["carol"][1] > got["bob"][1]
    finally:
        bob.close()


def test_a_held_back_acquire_goes_out_when_an_applied_change_empties_its_queue(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held behind a waiter, an acquire is let go when the applied log grants that waiter (here a
    lease expiry: no lock command on this node to carry it), not only at the end of its hold."""
    from raftmesh.node import coordination_service

    def queue() -> Any:
        return node.state(lambda st: list(st.locks.locks["q"].queue))

    got: dict[str, tuple[bool, int, str]] = {}

    def acquire(owner: str, c: Client) -> threading.Thread:
        t = threading.Thread(target=lambda: got.update({owner: c.locks.acquire("q", owner=owner, wait_s=20)}))
        t.start()
        return t

    locks = node.client.locks
    assert locks.acquire("q", owner="alice", ttl_s=1.0, wait_s=1)[0]  # never released: it expires
    carol = acquire("carol", node.client)
    wait_until(lambda: len(queue()) == 1, 10.0, "carol's acquire to be queued")
    dave_client = Client([node.address], timeout_s=10.0)
    try:
        monkeypatch.setattr(coordination_service, "LOCK_COALESCE_QUEUED_S", 60.0)
        dave = acquire("dave", dave_client)
        wait_until(lambda: node.runtime.lock_waits.waiting == 2, 10.0, "dave's acquire to reach the node")
        carol.join(timeout=20)
        assert got["carol"][0]
        wait_until(lambda: len(queue()) == 1, 10.0, "dave's acquire to be let go and queued behind carol")
        locks.release("carol", "q", got["carol"][1])
        dave.join(timeout=20)
        assert got["dave"][0] and got["dave"][1] > got["carol"][1]
    finally:
        dave_client.close()


def test_dead_letter_and_retry_requests_are_checked_at_the_boundary(node: InProcessNode) -> None:
    """Bad ListDeadLetters / RetryTask requests are INVALID_ARGUMENT with a short message."""
    import grpc

    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    bad = [
        ("ListDeadLetters", pb.ListDeadLettersRequest(limit=1001), "1000"),
        ("RetryTask", pb.RetryTaskRequest(run_id="r-1", task_id=""), "task_id"),
        ("RetryTask", pb.RetryTaskRequest(run_id="x" * 5000, task_id="t"), "run id"),
        ("RetryTask", pb.RetryTaskRequest(run_id="r-1", task_id="t", request_id="a\x00b"), "request_id"),
        ("RetryTask", pb.RetryTaskRequest(run_id="r-1", task_id="t", request_id="q" * 300), "request_id"),
    ]
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        for method, req, says in bad:
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, req, err.value)
            details = err.value.details() or ""
            assert says in details and len(details.encode()) <= 1100, (method, details)
        # A map instance's id (ID[i]) is a task a retry may name: past the boundary, to the state.
        for task_id, code in (("m[0]", grpc.StatusCode.NOT_FOUND), ("m[0", grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as err:
                stub.RetryTask(pb.RetryTaskRequest(run_id="r-none", task_id=task_id, attempt=1), timeout=10)
            assert err.value.code() == code, (task_id, err.value)


def test_approval_and_run_control_requests_are_checked_at_the_boundary(node: InProcessNode) -> None:
    """Bad ApproveTask / ListApprovals / PauseRun / ResumeRun / RerunTask requests and specs are
    INVALID_ARGUMENT with a short message that says what to fix."""
    import grpc

    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    def approve(**kw: object) -> pb.ApproveTaskRequest:
        return pb.ApproveTaskRequest(**({"run_id": "r-1", "task_id": "t", "gate": 5} | kw))

    gated = pb.TaskSpec(id="g", agent="echo", approval=pb.ApprovalSpec(prompt="p", on_timeout="later"))
    bad = [
        ("ApproveTask", approve(gate=0), "gate is required"),
        ("ApproveTask", approve(task_id=""), "task id"),
        ("ApproveTask", approve(run_id=""), "run_id"),
        ("ApproveTask", approve(by="a b"), "by"),
        ("ApproveTask", approve(by="x" * 200), "by"),
        ("ApproveTask", approve(comment="c" * 3000), "comment"),
        ("ApproveTask", approve(comment="\x1b[2J"), "control characters"),
        ("ApproveTask", approve(request_id="q" * 300), "request_id"),
        ("ListApprovals", pb.ListApprovalsRequest(limit=1001), "1000"),
        ("ListApprovals", pb.ListApprovalsRequest(run_id="x" * 5000), "run_id"),
        ("PauseRun", pb.PauseRunRequest(run_id=""), "run_id"),
        ("PauseRun", pb.PauseRunRequest(run_id="r-1", request_id="a\x00b"), "request_id"),
        ("ResumeRun", pb.ResumeRunRequest(run_id="x" * 5000), "run_id"),
        ("RerunTask", pb.RerunTaskRequest(run_id="r-1", task_id=""), "task id"),
        ("SubmitRun", pb.SubmitRunRequest(tasks=[gated]), "on_timeout"),
    ]
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        for method, req, says in bad:
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, req, err.value)
            details = err.value.details() or ""
            assert says in details and len(details.encode()) <= 1100, (method, details)
        for method, req in [
            ("ApproveTask", approve(run_id="no-such-run")),
            ("PauseRun", pb.PauseRunRequest(run_id="no-such-run")),
            ("ResumeRun", pb.ResumeRunRequest(run_id="no-such-run")),
            ("RerunTask", pb.RerunTaskRequest(run_id="no-such-run", task_id="t")),
            ("ListApprovals", pb.ListApprovalsRequest(run_id="no-such-run")),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, method)(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, (method, err.value)


def test_get_audit_is_not_complete_while_the_writer_lags_the_applied_state(node: InProcessNode) -> None:
    """GetAudit waits (bounded) for the audit writer to reach the revision this replica applied;
    if it does not, the answer is flagged incomplete rather than missing the latest rows."""
    from raftmesh.node import service

    audit = node.runtime.audit
    assert audit is not None
    dag = DAG("gated")
    dag.task("g", "echo", approval={"prompt": "ok?"})
    run_id = node.client.submit(dag)
    wait_until(lambda: node.client.get(run_id).tasks["g"].status == "WAITING_APPROVAL", 30.0, "the gate")
    trail = node.client.audit(run_id)
    assert trail.complete and trail.events[-1].kind == "awaiting_approval"
    old = service.AUDIT_FLUSH_S
    service.AUDIT_FLUSH_S = 0.3
    txn = audit._env.begin(write=True)  # a stalled disk: the writer cannot commit
    try:
        node.client.pause(run_id)
        assert node.state(lambda st: st.runs[run_id].status.value) == "PAUSED"
        trail = node.client.audit(run_id)
        assert "paused" not in [e.kind for e in trail]
        assert not trail.complete
    finally:
        txn.abort()
        service.AUDIT_FLUSH_S = old
    trail = node.client.audit(run_id)
    assert trail.complete and trail.events[-1].kind == "paused"


def test_run_spans_are_built_outside_the_apply_lock(node: InProcessNode) -> None:
    """The leader reports each ended run's span: fields are copied under the apply lock, the span
    is built and queued after it (the Raft thread must not wait for an exporter's queue)."""
    lock = node.runtime.reads._lock
    held: list[tuple[str, bool]] = []

    class Spans:
        def run_ended(self, trace_id: str, run_id: str, *rest: Any) -> None:
            held.append((run_id, lock._is_owned()))  # type: ignore[attr-defined]

        def attempt_ended(self, *args: Any) -> None:
            pass

        def shutdown(self) -> None:
            pass

    node.runtime.spans = Spans()  # type: ignore[assignment]
    try:
        run_id = node.client.submit(fan_out(2))
        wait_until(lambda: bool(held), 30.0, "the run's span")
    finally:
        node.runtime.spans = None
    assert held == [(run_id, False)]


def test_wait_and_run_take_the_ended_run_from_the_stream(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait`` and ``run`` read nothing after the stream: its last event carries the whole run
    (a second read cost a round trip per run; timeline in the commit message)."""
    from raftmesh.client import _runs

    def no_read(*_: Any, **__: Any) -> Any:
        raise AssertionError("the ended run was read again after the stream")

    monkeypatch.setattr(_runs, "ended", no_read)
    c = node.client
    run_id = c.submit(fan_out(5))
    done = c.wait(run_id, timeout_s=30)
    assert done.run_id == run_id and done.status == "SUCCEEDED"
    assert done.tasks["total"].output == sum(range(5)) + 5 and len(done.tasks) == 7
    ran = c.run(fan_out(3), idempotency_key="run-once", timeout_s=30)
    assert ran.status == "SUCCEEDED" and ran.tasks["total"].output == sum(range(3)) + 3
    again = c.run(fan_out(3), idempotency_key="run-once", timeout_s=30)  # the key's run, watched
    assert again.run_id == ran.run_id and again.tasks["total"].output == ran.tasks["total"].output
    assert [r["run_id"] for r in c.list_runs() if r["idempotency_key"] == "run-once"] == [ran.run_id]
    assert c.wait(ran.run_id).tasks == ran.tasks  # an ended run: the snapshot carries it


def test_watch_run_sends_the_final_run_only_when_asked(node: InProcessNode) -> None:
    import grpc

    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    c = node.client
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        events = list(stub.SubmitAndWatchRun(pb.SubmitAndWatchRunRequest(submit=_submit_pb(fan_out(2)))))
        run_id = events[0].snapshot.run_id
        assert run_id and all(not e.HasField("final") for e in events[:-1])
        last = events[-1]
        assert last.final.run_id == run_id and last.final.status == pb.RUN_STATUS_SUCCEEDED
        assert {t.id for t in last.final.tasks} == {"seed", "p0", "p1", "total"}
        assert last.run.status == pb.RUN_STATUS_SUCCEEDED or last.HasField("snapshot")
        got = c.get(run_id)
        assert {t.id: t.output_json for t in last.final.tasks} == {
            tid: _json(t.output) for tid, t in got.tasks.items()
        }
        # A client that does not ask (an older one) gets the stream it always got.
        plain = list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id, status_only=True)))
        assert len(plain) == 1 and not plain[0].HasField("final")
        asked = list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id, status_only=True, final_run=True)))
        assert len(asked) == 1 and asked[0].final.run_id == run_id and len(asked[0].final.tasks) == 4
        assert len(asked[0].snapshot.tasks) == 0  # the snapshot is still status only


def test_run_on_a_node_without_submit_and_watch_falls_back_before_submitting() -> None:
    import grpc

    from raftmesh.client import _runs
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    c = Client(["127.0.0.1:1"])
    try:
        plan = _runs.SubmitWatch(c, pb.SubmitRunRequest(idempotency_key="k"), None)
        assert plan.start() is not None and plan.method == "SubmitAndWatchRun"
        assert plan.failed(grpc.StatusCode.UNIMPLEMENTED, None, False) is None and plan.unsupported
        # Once the run's id is known a reconnect watches it, and UNIMPLEMENTED is an error.
        plan = _runs.SubmitWatch(c, pb.SubmitRunRequest(idempotency_key="k"), None)
        plan.accept(pb.RunEvent(revision=3, snapshot=pb.Run(run_id="r-1", status=pb.RUN_STATUS_RUNNING)))
        opened = plan.start()
        assert opened is not None and plan.method == "WatchRun" and opened[1].run_id == "r-1"
        with pytest.raises(RaftmeshError):
            plan.failed(grpc.StatusCode.UNIMPLEMENTED, None, False)
        assert not plan.unsupported
    finally:
        c.close()


def _submit_pb(dag: DAG) -> Any:
    from raftmesh.client._runs import submit_request

    return submit_request(dag)


def _json(value: Any) -> str:
    import json

    return "" if value is None else json.dumps(value, separators=(",", ":"))


def test_stream_watchdogs_share_one_thread_and_cancel_only_silent_calls() -> None:
    import time as _time

    from raftmesh.client._client import Watchdog

    class Call:
        def __init__(self) -> None:
            self.cancelled = threading.Event()

        def cancel(self) -> None:
            self.cancelled.set()

    quiet, busy = Call(), Call()
    dogs = [Watchdog(quiet, silence_s=0.2), Watchdog(busy, silence_s=1.0)]
    try:
        assert sum(t.name == "stream-watchdog" for t in threading.enumerate()) == 1
        end = _time.monotonic() + 10.0
        while not quiet.cancelled.is_set() and _time.monotonic() < end:
            dogs[1].feed()
            _time.sleep(0.05)
        assert quiet.cancelled.is_set() and dogs[0].fired
        assert not busy.cancelled.is_set() and not dogs[1].fired
    finally:
        for d in dogs:
            d.close()


def test_watch_run_streams_every_task_change_in_order_then_heartbeats(node: InProcessNode) -> None:
    """A stream whose events queue up (a fan-out) gets each of them once, in apply order, and
    the run's end last; a stream with nothing to send still says it is alive (heartbeats)."""
    import grpc

    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
    from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    c = node.client
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        events = list(stub.SubmitAndWatchRun(pb.SubmitAndWatchRunRequest(submit=_submit_pb(fan_out(40)))))
        snap, changes, last = events[0], events[1:-1], events[-1]
        assert snap.HasField("snapshot") and last.run.status == pb.RUN_STATUS_SUCCEEDED
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions) and revisions[1] > snap.revision
        assert all(e.WhichOneof("event") == "task" for e in changes)
        seen: dict[str, list[int]] = {t.id: [t.status] for t in snap.snapshot.tasks}
        for e in changes:
            seen[e.task.task_id].append(e.task.status)
        order = [
            pb.TASK_STATUS_PENDING,
            pb.TASK_STATUS_READY,
            pb.TASK_STATUS_RUNNING,
            pb.TASK_STATUS_SUCCEEDED,
        ]
        for tid, statuses in seen.items():  # each task's changes, in order and never repeated
            assert statuses[-1] == pb.TASK_STATUS_SUCCEEDED, (tid, statuses)
            assert [order.index(s) for s in statuses] == sorted({order.index(s) for s in statuses}), (
                tid,
                statuses,
            )
        assert {t.id: t.output_json for t in last.final.tasks} == {
            tid: _json(t.output) for tid, t in c.get(last.final.run_id).tasks.items()
        }

        gated = DAG("gated")
        gated.task("g", "echo", input=1, approval={"prompt": "ok?"})
        stream = stub.WatchRun(pb.WatchRunRequest(run_id=c.submit(gated), status_only=True))
        first = next(stream)
        beats = []
        for e in stream:  # the gate holds the run: only heartbeats come (one a STREAM_HEARTBEAT_S)
            assert e.WhichOneof("event") is None and e.revision >= first.revision, e
            beats.append(e)
            if len(beats) == 2:
                break
        c.cancel(first.snapshot.run_id)
        rest = list(stream)
        assert rest[-1].run.status == pb.RUN_STATUS_CANCELLED
        assert all(e.WhichOneof("event") is None for e in rest[:-1])


@pytest.fixture
def failing_leader_changed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``Proposer.leader_changed`` raises (the node's health loop calls it when it learns
    of a leader); the list counts the calls."""
    calls: list[int] = []

    def fail(self: Proposer) -> None:
        calls.append(1)
        raise RuntimeError("injected: leader_changed failed")

    monkeypatch.setattr(Proposer, "leader_changed", fail)
    return calls


def test_the_health_loop_survives_a_failing_reaction_to_a_new_leader(
    failing_leader_changed: list[int], node: InProcessNode
) -> None:
    """The leader-change hooks are a speed-up: one that raises must not end the health loop
    (readiness would stay NOT_SERVING for good)."""
    assert failing_leader_changed, "the health loop never saw the leader change (elected before it ran)"
    with grpc.insecure_channel(node.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def serving() -> bool:
            resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, 20.0, "the node to report SERVING")


def test_a_large_run_is_submitted_in_parts_and_appears_whole(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small stage sizes (read at each submit), so that a run of 30 tasks goes in parts of 7.
    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 10)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 7)
    c = node.client
    run_id = c.submit(fan_out(28), idempotency_key="big")
    parts = node.state(
        lambda st: sorted(k.rsplit("-", 1)[0] for k in st.dedup if k.startswith(f"g-{run_id}-"))
    )
    assert parts == [f"g-{run_id}-{i}" for i in range(4)]  # 28 + 2 tasks: 4 parts of 7, then the submit
    assert c.submit(fan_out(28), idempotency_key="big") == run_id  # a retry answers the same run
    run = c.wait(run_id, timeout_s=30)
    assert run.status == "SUCCEEDED" and len(run.tasks) == 30
    assert run.tasks["total"].output == sum(range(28)) + 28
    assert node.state(lambda st: dict(st.stages)) == {}


def test_a_staged_submit_slower_than_the_client_timeout_completes_through_its_retries(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK retries DEADLINE_EXCEEDED with the same idempotency key: each attempt goes on
    where the last stopped, so a staged submit longer than one call's deadline completes."""
    import asyncio

    from raftmesh.consensus.commands import StageRun

    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 10)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 3)
    real = Proposer.propose

    async def slow_stage_commits(self: Proposer, cmd: Any, timeout_s: float | None = None) -> Any:
        res = await real(self, cmd, timeout_s)
        if isinstance(cmd, StageRun):  # committed; its proposer learns so later (a loaded cluster)
            await asyncio.sleep(0.2)
        return res

    monkeypatch.setattr(Proposer, "propose", slow_stage_commits)
    # 32 tasks: 10 parts of 3, then the submit: over 2 s of parts against a 0.5 s call deadline.
    with Client([node.address], timeout_s=0.5, retry_deadline_s=30.0) as c:
        run_id = c.submit(fan_out(30), idempotency_key="slow-big")
    monkeypatch.setattr(Proposer, "propose", real)
    assert run_id.startswith("rk-")
    run = node.client.wait(run_id, timeout_s=30)
    assert run.status == "SUCCEEDED" and len(run.tasks) == 32
    assert node.state(lambda st: dict(st.stages)) == {}
    # No part was applied twice: each seq once in the dedup table (one attempt's id each).
    seqs = node.state(
        lambda st: sorted(int(k.split("-")[-2]) for k in st.dedup if k.startswith(f"g-{run_id}-"))
    )
    assert seqs == list(range(10))


def test_another_request_under_a_key_being_staged_is_failed_precondition(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two different requests under one key: the second is refused (FAILED_PRECONDITION over
    gRPC, naming the key) while the first's stage is live, instead of dropping it; the first's
    retry then resumes and makes the run, which the second is then answered."""
    from raftmesh.consensus.commands import StageRun
    from raftmesh.errors import FailedPrecondition, Unavailable

    monkeypatch.setattr(limits, "STAGE_ABOVE_TASKS", 10)
    monkeypatch.setattr(limits, "STAGE_PART_TASKS", 7)
    real = Proposer.propose

    async def stop_after_part_0(self: Proposer, cmd: Any, timeout_s: float | None = None) -> Any:
        if isinstance(cmd, StageRun) and cmd.seq > 0:  # e.g. the leader lost mid-stage
            raise Unavailable("no leader (test)")
        return await real(self, cmd, timeout_s)

    monkeypatch.setattr(Proposer, "propose", stop_after_part_0)
    with Client([node.address], retry_deadline_s=0.5) as c:
        with pytest.raises(RaftmeshError):
            c.submit(fan_out(28), idempotency_key="shared")
        with pytest.raises(FailedPrecondition, match="idempotency key 'shared' is in use") as err:
            c.submit(fan_out(27), idempotency_key="shared")
    assert "expires at state time" in err.value.message
    assert [s.idempotency_key for s in node.state(lambda st: list(st.stages.values()))] == ["shared"]
    monkeypatch.setattr(Proposer, "propose", real)
    run_id = node.client.submit(fan_out(28), idempotency_key="shared")  # the first one's retry
    assert node.client.wait(run_id, timeout_s=30).status == "SUCCEEDED"
    assert node.client.submit(fan_out(27), idempotency_key="shared") == run_id
    assert node.state(lambda st: dict(st.stages)) == {}
