"""The audit timeline (``raftmesh.storage.audit``): rows made from applied commands, the LMDB
archive (order, idempotent re-apply, snapshot gaps, the bound), and GetAudit / SDK / CLI end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import lmdb
import pytest

from raftmesh.consensus import ClusterState, TaskStatus, encode_batch
from raftmesh.consensus.commands import (
    Approval,
    ApproveTask,
    Budget,
    CancelRun,
    Command,
    NodeDown,
    Origin,
    PauseRun,
    ResumeRun,
    SuspectNode,
    Usage,
)
from raftmesh.consensus.machine import Applied
from raftmesh.redaction import SecretsFilter, env_secrets, redact, reveal, scrub, secret, secret_values
from raftmesh.storage import audit as audit_mod
from raftmesh.storage.audit import AuditArchive, rows_for

from .test_machine import Cluster, spec

ALICE = Origin("token:alice", "req-a", "0af7651916cd43dd8448eb211c80319c")


class Audited(Cluster):
    """The machine test cluster, fed through ``apply_batch`` with a trail into a real archive."""

    def __init__(self, archive: AuditArchive | None = None) -> None:
        super().__init__()
        self.archive = archive
        self.trail: list[Applied] = []

    def apply(self, cmd: Command, origin: Origin | None = None) -> Any:
        if origin is not None:
            object.__setattr__(cmd, "origin", origin)
        trail: list[Applied] = []
        results, events = self.sm.apply_batch(encode_batch([cmd]), trail)
        self.events.extend(events)
        self.trail.extend(trail)
        if self.archive is not None and trail:
            self.archive.applied(trail)
        return results[0]

    def ok(self, cmd: Command, origin: Origin | None = None) -> Any:
        res = self.apply(cmd, origin)
        assert res.ok, res
        return res


def kinds(rows: list[Any]) -> list[tuple[str, str]]:
    return [(r.kind, r.task_id) for r in rows]


@pytest.fixture
def archive(tmp_path: Any) -> Any:
    a = AuditArchive(str(tmp_path))
    yield a
    a.close()


def test_trail_has_one_entry_per_changing_command_and_apply_results_are_unchanged() -> None:
    plain, audited = Cluster(), Audited()
    for c in (plain, audited):
        c.ok(c.register("n1"))
        c.ok(c.submit("r1", [spec("a"), spec("b", "a")], key="k1"))
        c.run_task("r1", "a")
        c.unchanged(c.submit("r1", [spec("a")], key="k1"))  # a known key changes nothing
    assert plain.sm.digest() == audited.sm.digest()
    assert [a.revision for a in audited.trail] == [1, 2, 3, 4]
    assert all(a.time_ms == 1_000_000 for a in audited.trail)


def test_a_runs_life_in_order_with_who_did_it(archive: AuditArchive) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a"), spec("b", "a", retries=1)], key="idem-1"), ALICE)
    c.ok(c.assign(("r1", "a", "n1")))
    assert not c.apply(c.complete("r1", "a", token=999)).ok  # fenced out: nothing changes
    c.ok(c.complete("r1", "a"))
    c.ok(c.assign(("r1", "b", "n1")))
    c.ok(c.fail("r1", "b", error="secret-ish error text"))  # retried
    c.ok(c.assign(("r1", "b", "n1")))
    c.ok(c.complete("r1", "b"))
    assert archive.flush()
    tl = archive.timeline("r1")
    assert tl.known and tl.complete
    ks = kinds(tl.rows)
    assert ks[0] == ("submitted", "")
    sub = tl.rows[0]
    assert (sub.principal, sub.request_id, sub.trace_id) == (ALICE.principal, ALICE.request, ALICE.trace)
    assert sub.detail["idempotency_key"] == "idem-1" and sub.detail["tasks"] == 2
    assert ("placed", "a") in ks and ("completed", "a") in ks and ("fenced", "a") in ks
    assert ks.index(("placed", "a")) < ks.index(("completed", "a"))
    assert ("retry_scheduled", "b") in ks
    assert ks[-1] == ("run_finished", "") and tl.rows[-1].detail["status"] == "SUCCEEDED"
    revs = [r.revision for r in tl.rows]
    assert revs == sorted(revs)
    placed = next(r for r in tl.rows if r.kind == "placed")
    assert placed.node == "n1" and placed.attempt == 1
    assert "secret-ish" not in json.dumps([dataclasses.asdict(r) for r in tl.rows])  # no error texts


def test_approvals_pause_resume_cancel_name_who(archive: AuditArchive) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a", approval=Approval("ok?", 0, "reject")), spec("b", "a")]))
    gate = c.task("r1", "a").gate
    assert c.task("r1", "a").status is TaskStatus.WAITING_APPROVAL and gate is not None
    bob = Origin("token:bob", "req-b", "")
    c.ok(ApproveTask(c.rid(), c.ts, "r1", "a", gate.id, True, "bob"), bob)
    c.ok(PauseRun(c.rid(), c.ts, "r1"), bob)
    c.ok(ResumeRun(c.rid(), c.ts, "r1"), bob)
    c.ok(CancelRun(c.rid(), c.ts, "r1", "enough"), ALICE)
    assert archive.flush()
    rows = archive.timeline("r1").rows
    by_kind = {r.kind: r for r in rows}
    assert by_kind["approved"].detail["by"] == "bob" and by_kind["approved"].principal == "token:bob"
    assert by_kind["paused"].principal == "token:bob" and by_kind["resumed"].principal == "token:bob"
    assert by_kind["cancel_requested"].principal == "token:alice"
    assert rows[-1].kind == "run_finished" and rows[-1].detail["status"] == "CANCELLED"


def test_reapplying_after_a_restart_writes_no_duplicates(tmp_path: Any) -> None:
    a = AuditArchive(str(tmp_path))
    c = Audited(a)
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a")]))
    c.run_task("r1", "a")
    assert a.flush()
    first = a.timeline("r1").rows
    a.close()
    again = AuditArchive(str(tmp_path))  # the journal is replayed into a fresh machine
    try:
        again.applied(c.trail)
        assert again.flush()
        assert again.timeline("r1").rows == first
    finally:
        again.close()


def test_a_snapshot_over_a_gap_marks_open_runs_incomplete(archive: AuditArchive) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("open", [spec("a")]))
    c.ok(c.submit("done", [spec("a")]))
    c.run_task("done", "a")
    assert archive.flush()
    # This node misses entries: the leader's snapshot is ahead of what it archived.
    other = Cluster()
    other.ok(other.register("n1"))
    other.ok(other.submit("open", [spec("a")]))
    other.ok(other.submit("later", [spec("a")]))
    for _ in range(10):
        other.ok(other.register("n1", slots=5 + _))
    archive.restored(other.st)
    c.sm.state = ClusterState.decode(other.st.encode())  # as pysyncobj installs it
    c._n = 1000  # fresh request ids past the other cluster's
    assert archive.flush()
    assert archive.timeline("done").complete  # it ended before the gap
    assert not archive.timeline("open").complete
    assert not archive.timeline("later").complete  # never saw it submitted
    # A snapshot this archive already covers (the node's own, at restart) marks nothing.
    archive.restored(c.st)
    c.ok(c.submit("fresh", [spec("a")]))
    assert archive.flush() and archive.timeline("fresh").complete


def _ended_and_quiet(archive: AuditArchive, again_tasks: list[Any] | None = None) -> Audited:
    """Two runs ended and archived whole: "again" (to be reopened and ended again in a gap) and
    "quiet" (left alone)."""
    c = Audited(archive)
    c.ok(c.register("n1"))
    tasks = again_tasks or [spec("a")]
    c.ok(c.submit("again", tasks))
    for t in tasks:
        c.run_task("again", t.id)
    c.ok(c.submit("quiet", [spec("a")]))
    c.run_task("quiet", "a")
    assert archive.flush()
    assert archive.timeline("again").complete and archive.timeline("quiet").complete
    return c


@contextlib.contextmanager
def _writer_blocked(archive: AuditArchive, c: Audited) -> Iterator[None]:
    """A slow disk: the writer blocks in its next transaction (one ``register`` hands it a batch),
    so what is applied meanwhile queues up; released at exit."""
    txn = archive._env.begin(write=True)
    try:
        c.ok(c.register("n2"))
        _until(lambda: archive._queue.qsize() == 0)  # the writer holds it, waiting for the lock
        yield
    finally:
        txn.abort()


@contextlib.contextmanager
def _writes_fail(archive: AuditArchive, monkeypatch: Any) -> Iterator[None]:
    """Every write transaction fails (a full disk) until exit."""

    def failing(txn: Any, trail: Any, metas: Any) -> None:
        raise lmdb.MapFullError("the disk is full")

    write = archive._write
    monkeypatch.setattr(archive, "_write", failing)
    try:
        yield
    finally:
        monkeypatch.setattr(archive, "_write", write)


def test_a_snapshot_over_a_gap_marks_a_run_reopened_and_ended_again_within_it(archive: AuditArchive) -> None:
    """The chaos run's find (seed 23, snapshots every 100 entries): a node archived a run's end,
    missed a retry that reopened it and its second end (a snapshot covered them), and answered
    GetAudit with a timeline it called complete but without the rerun's completed rows."""
    c = _ended_and_quiet(archive, [spec("a"), spec("b", "a")])
    # The leader went on: "again" was rerun and ended again, "quiet" did not change.
    other = Audited()
    other.sm.state = ClusterState.decode(c.st.encode())
    other._n = 1000
    other.ok(other.rerun("again", "a"))
    other.run_task("again", "a")
    other.run_task("again", "b")
    assert other.st.runs["again"].status is c.st.runs["quiet"].status
    archive.restored(other.st)
    c.sm.state = ClusterState.decode(other.st.encode())
    c._n = 2000
    assert archive.flush()
    tl = archive.timeline("again")
    assert not tl.complete, [(r.kind, r.task_id, r.attempt) for r in tl.rows]
    assert archive.timeline("quiet").complete  # it did not change in the gap


def test_a_dropped_batch_marks_a_run_it_reopened_and_ended_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = AuditArchive(str(tmp_path))
    try:
        c = _ended_and_quiet(archive)
        monkeypatch.setattr(audit_mod, "QUEUE_BATCHES", 2)
        with _writer_blocked(archive, c):
            c.ok(c.register("n3"))  # these two fill the queue
            c.ok(c.register("n4"))
            c.ok(c.rerun("again", "a"))  # dropped, and so are its run's placement and second end
            c.run_task("again", "a")
        assert archive.flush()
        assert c.st.runs["again"].status is c.st.runs["quiet"].status  # ended again
        assert not archive.timeline("again").complete
        assert archive.timeline("quiet").complete  # nothing of it was dropped
    finally:
        archive.close()


def test_a_failed_write_marks_a_run_its_batches_reopened_and_ended_again(
    archive: AuditArchive, monkeypatch: Any
) -> None:
    c = _ended_and_quiet(archive)
    with _writes_fail(archive, monkeypatch):
        c.ok(c.rerun("again", "a"))
        c.run_task("again", "a")  # reopened and ended again, all in lost transactions
        assert archive.flush()
    assert archive.failures >= 1
    assert not archive.timeline("again").complete
    assert archive.timeline("quiet").complete


def test_runs_touched_covers_every_run_rows_for_writes(archive: AuditArchive) -> None:
    """What a dropped batch marks (``runs_touched``, no rows built) includes every run it had rows for."""
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.register("n2"))
    c.ok(c.submit("r1", [spec("a", retries=1), spec("b", "a")]), ALICE)
    c.ok(c.submit("r2", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r2", "a", "n2")))
    first = c.task("r1", "a")
    stale = c.complete("r1", "a", node="n1", attempt=first.attempt, token=first.token)
    c.ok(c.fail("r1", "a"))
    c.ok(c.assign(("r1", "a", "n2")))
    c.ok(c.complete("r1", "a", node="n2"))
    c.apply(stale)  # the first attempt's late report: fenced
    c.run_task("r1", "b")
    c.ok(c.rerun("r1", "b"))
    c.ok(CancelRun(c.rid(), c.ts, "r2", "enough"))
    c.ok(c.tick(c.ts + 60_000))
    assert len(c.trail) > 8
    for a in c.trail:
        assert {run_id for run_id, _ in rows_for(a)} <= audit_mod.runs_touched(a), a.cmd


def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_dropped_batch_marks_runs_submitted_in_batches_queued_before_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_mod, "QUEUE_BATCHES", 3)
    archive = AuditArchive(str(tmp_path))
    try:
        _dropped_batch(archive, monkeypatch)
    finally:
        archive.close()


def _dropped_batch(archive: AuditArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("before", [spec("a")]))
    assert archive.flush()
    c.ok(c.assign(("before", "a", "n1")))
    assert archive.flush()
    c.ok(c.complete("before", "a"))
    assert archive.flush()
    with _writer_blocked(archive, c):
        c.ok(c.submit("r1", [spec("a")]))  # these three fill the queue
        c.ok(c.assign(("r1", "a", "n1")))
        c.ok(c.register("n3"))
        c.ok(c.complete("r1", "a"))  # the run finishes: dropped
    assert archive.flush()
    tl = archive.timeline("r1")
    assert tl.known and "run_finished" not in [r.kind for r in tl.rows]
    assert not tl.complete  # it missed its end: not complete, though its submission is here
    assert archive.timeline("before").complete  # it ended before the drop
    monkeypatch.setattr(audit_mod, "QUEUE_BATCHES", 100)
    c.ok(c.submit("after", [spec("a")]))
    c.run_task("after", "a")
    assert archive.flush() and archive.timeline("after").complete


def test_a_failed_write_marks_the_runs_open_then_incomplete(archive: AuditArchive, monkeypatch: Any) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.submit("done", [spec("a")]))
    c.run_task("done", "a")
    assert archive.flush()
    with _writes_fail(archive, monkeypatch):
        c.ok(c.assign(("r1", "a", "n1")))
        c.ok(c.complete("r1", "a"))  # the run's end is lost with the failed transaction
        assert archive.flush()
        assert archive.failures == 1
    tl = archive.timeline("r1")
    assert tl.known and not tl.complete and "run_finished" not in [r.kind for r in tl.rows]
    assert archive.timeline("done").complete
    c.ok(c.submit("after", [spec("a")]))
    c.run_task("after", "a")
    assert archive.flush() and archive.timeline("after").complete


def test_the_nodes_own_rows_carry_the_runs_trace_and_the_archive_keeps_its_namespace(
    archive: AuditArchive,
) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(dataclasses.replace(c.submit("r1", [spec("a")]), namespace="team-a"), ALICE)
    c.ok(c.assign(("r1", "a", "n1")))  # the scheduler's placement: no call bound, no trace
    c.ok(c.complete("r1", "a"), Origin("node:n1"))
    assert archive.flush()
    tl = archive.timeline("r1")
    assert tl.namespace == "team-a"
    assert {r.kind for r in tl.rows} >= {"submitted", "placed", "completed", "run_finished"}
    assert all(r.trace_id == ALICE.trace for r in tl.rows), [(r.kind, r.trace_id) for r in tl.rows]
    assert next(r for r in tl.rows if r.kind == "placed").principal == ""  # still the node's own
    # A run this node never saw submitted (a snapshot over a gap): its trace and namespace come
    # from the restored state.
    other = Cluster()
    other.ok(other.register("n1"))
    sub = dataclasses.replace(other.submit("r2", [spec("a")]), namespace="team-b")
    object.__setattr__(sub, "origin", ALICE)
    other.ok(sub)
    for i in range(5):
        other.ok(other.register("n1", slots=5 + i))
    archive.restored(other.st)
    c.sm.state = ClusterState.decode(other.st.encode())
    c._n = 1000
    c.ok(c.assign(("r2", "a", "n1")))
    assert archive.flush()
    tl = archive.timeline("r2")
    assert tl.namespace == "team-b" and not tl.complete
    assert [(r.kind, r.trace_id) for r in tl.rows] == [("placed", ALICE.trace)]


def test_attempt_ends_carry_usage_seconds_and_the_node(archive: AuditArchive) -> None:
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.register("n2"))
    c.ok(c.submit("r1", [spec("a", retries=1)]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ts += 1500
    f = c.fail("r1", "a")
    c.ok(dataclasses.replace(f, items=(dataclasses.replace(f.items[0], usage=Usage(10, 2, 0.01)),)))
    c.ok(c.assign(("r1", "a", "n2")))
    c.ts += 2500
    done = c.complete("r1", "a", node="n2")
    c.ok(dataclasses.replace(done, items=(dataclasses.replace(done.items[0], usage=Usage(900, 100, 1.5)),)))
    assert archive.flush()
    rows = {r.kind: r for r in archive.timeline("r1").rows}
    retry, completed = rows["retry_scheduled"], rows["completed"]
    assert retry.node == "n1" and retry.attempt == 1
    assert (retry.detail["tokens_in"], retry.detail["tokens_out"], retry.detail["cost"]) == (10, 2, 0.01)
    assert retry.detail["seconds"] == 1.5
    assert completed.node == "n2" and completed.attempt == 2
    assert (completed.detail["tokens_in"], completed.detail["cost"], completed.detail["seconds"]) == (
        900,
        1.5,
        2.5,
    )


def test_one_huge_run_is_cut_at_its_share_and_said_incomplete(tmp_path: Any) -> None:
    a = AuditArchive(str(tmp_path), max_bytes=8000)
    try:
        c = Audited(a)
        c.ok(c.register("n1"))
        c.ok(c.submit("huge", [spec(f"t{i}") for i in range(60)]))
        for i in range(60):
            c.run_task("huge", f"t{i}")
        c.ok(c.submit("small", [spec("a")]))
        c.run_task("small", "a")
        assert a.flush()
        tl = a.timeline("huge")
        assert tl.known and not tl.complete
        assert tl.rows[-1].kind == "truncated" and tl.rows[-1].detail["limit_bytes"] == a.max_run_bytes
        assert sum(len(r.encode()) for r in tl.rows) <= a.max_run_bytes
        assert a.timeline("small").complete  # the rest keep their timelines
    finally:
        a.close()


def test_the_writer_queue_is_bounded_by_bytes_too(archive: AuditArchive, monkeypatch: Any) -> None:
    monkeypatch.setattr(audit_mod, "QUEUE_BYTES", 1000)
    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a")]))
    assert archive.flush()
    txn = archive._env.begin(write=True)
    try:
        c.ok(c.register("n2"))
        _until(lambda: archive._queue.qsize() == 0)
        trail: list[Applied] = []
        c.sm.apply_batch(encode_batch([c.assign(("r1", "a", "n1"))]), trail)
        archive.applied(trail, 800)
        trail = []
        c.sm.apply_batch(encode_batch([c.complete("r1", "a")]), trail)
        archive.applied(trail, 800)  # 1600 bytes waiting: dropped
        assert archive._queued == 2 and archive._queued_bytes == 800  # n2's registration (0) and the first
    finally:
        txn.abort()
    assert archive.flush()
    assert archive._queued == 0 and archive._queued_bytes == 0
    tl = archive.timeline("r1")
    assert "placed" in [r.kind for r in tl.rows] and not tl.complete


def test_the_bound_drops_the_oldest_runs_whole(tmp_path: Any) -> None:
    a = AuditArchive(str(tmp_path), max_runs=3)
    try:
        c = Audited(a)
        c.ok(c.register("n1"))
        for i in range(5):
            c.ok(c.submit(f"r{i}", [spec("a")]))
            c.run_task(f"r{i}", "a")
        assert a.flush()
        assert [a.timeline(f"r{i}").known for i in range(5)] == [False, False, True, True, True]
        assert a.timeline("r0").rows == []
    finally:
        a.close()
    b = AuditArchive(str(tmp_path / "bytes"), max_bytes=3000)
    try:
        c = Audited(b)
        c.ok(c.register("n1"))
        for i in range(20):
            c.ok(c.submit(f"r{i}", [spec("a")]))
            c.run_task(f"r{i}", "a")
        assert b.flush()
        known = [i for i in range(20) if b.timeline(f"r{i}").known]
        assert known and known == list(range(known[0], 20)) and known[0] > 0
        size = sum(len(r.encode()) for i in known for r in b.timeline(f"r{i}").rows)
        assert size <= 3000
    finally:
        b.close()


def test_spawned_tasks_and_budget_exceeded_are_recorded(archive: AuditArchive) -> None:
    from raftmesh.consensus.commands import Complete, Completion

    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    t = c.task("r1", "a")
    c.ok(
        Complete(c.rid(), c.ts, "n1", (Completion("r1", "a", t.attempt, t.token, "x", spawn=(spec("kid"),)),))
    )
    assert archive.flush()
    rows = archive.timeline("r1").rows
    kid = next(r for r in rows if r.kind == "spawned")
    assert kid.task_id == "kid" and kid.detail == {"origin": "spawn", "parent": "a"}
    capped = dataclasses.replace(c.submit("r2", [spec("a")]), budget=Budget(max_tasks=1))
    c.ok(capped)
    c.ok(c.assign(("r2", "a", "n1")))
    t = c.task("r2", "a")
    c.ok(
        Complete(c.rid(), c.ts, "n1", (Completion("r2", "a", t.attempt, t.token, "x", spawn=(spec("kid"),)),))
    )
    assert archive.flush()
    rows = archive.timeline("r2").rows
    over = next(r for r in rows if r.kind == "budget_exceeded")
    assert "max_tasks" in over.detail["why"]
    assert rows[-1].kind == "run_finished" and rows[-1].detail["status"] == "FAILED"


def test_rows_never_raise_into_apply_when_the_archive_is_closed(tmp_path: Any) -> None:
    a = AuditArchive(str(tmp_path))
    a.close()
    c = Audited(a)
    c.ok(c.register("n1"))  # handing a batch to a closed archive must not fail the command
    assert c.trail and rows_for(c.trail[0]) == []
    assert not os.path.exists(os.path.join(str(tmp_path), "nothing"))


# ---- redaction (pure) -------------------------------------------------------------


def test_reveal_redact_scrub() -> None:
    inp = {"user": "ana", "password": secret("hunter22"), "more": [secret(123456), {"$secret": "x", "y": 1}]}
    assert reveal(inp) == {"user": "ana", "password": "hunter22", "more": [123456, {"$secret": "x", "y": 1}]}
    assert redact(inp) == {"user": "ana", "password": "***", "more": ["***", {"$secret": "x", "y": 1}]}
    assert sorted(secret_values(inp)) == ["123456", "hunter22"]
    assert scrub("bad hunter22 / 123456", secret_values(inp)) == "bad *** / ***"


def test_a_reader_sees_stars_and_an_operator_the_marker() -> None:
    from raftmesh import calls
    from raftmesh.node.service import _for_caller
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    run = pb.Run(
        run_id="r1",
        tasks=[
            pb.Task(
                id="t",
                input_json=json.dumps({"password": secret("hunter22")}),
                output_json=json.dumps({"echo": "hunter22"}),
            )
        ],
    )
    with calls.bound(calls.Call(principal="token:rita", role="reader")):
        seen = _for_caller(run)
    assert "hunter22" not in seen.SerializeToString().decode(errors="replace")
    assert json.loads(seen.tasks[0].input_json) == {"password": "***"}
    assert json.loads(run.tasks[0].input_json) == {"password": secret("hunter22")}  # never changed in place
    with calls.bound(calls.Call(principal="token:olga", role="operator")):
        assert _for_caller(run) is run


def test_an_echoed_secret_is_masked_in_its_escaped_json_forms_and_downstream() -> None:
    from raftmesh import calls
    from raftmesh.node.service import _for_caller
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    pw, quoted, num = "pässwörd-1", 'say "hi" \\ there', 98765
    inp = {"pw": secret(pw), "q": secret(quoted), "n": secret(num)}
    echoed = json.dumps({"pw": pw, "q": quoted, "n": num, "note": f"was {pw}!"})  # ASCII: \u00e4...
    assert pw not in echoed and json.dumps(pw)[1:-1] in echoed
    run = pb.Run(
        run_id="r1",
        tasks=[
            pb.Task(id="up", input_json=json.dumps(inp), output_json=echoed),
            # A downstream task whose own input has no marker echoes what upstream gave it.
            pb.Task(id="down", input_json="{}", output_json=json.dumps({"got": pw}, ensure_ascii=False)),
        ],
    )
    with calls.bound(calls.Call(principal="token:rita", role="reader")):
        seen = _for_caller(run)
    assert json.loads(seen.tasks[0].output_json) == {"pw": "***", "q": "***", "n": "***", "note": "was ***!"}
    assert json.loads(seen.tasks[1].output_json) == {"got": "***"}
    # Free text (an error, a log line) holding a JSON-escaped copy is scrubbed too.
    assert scrub(f"bad input {echoed}", secret_values(inp)).count("***") == 4
    assert pw not in scrub(f"{pw} {json.dumps(quoted)}", [pw, quoted]) and "hi" not in scrub(
        json.dumps(quoted), [quoted]
    )


def test_node_log_filter_masks_env_keys_and_tracebacks() -> None:
    import io
    import logging

    from raftmesh.log_format import JsonFormatter

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("n1"))
    handler.addFilter(
        SecretsFilter(
            env_secrets(
                {"OPENAI_API_KEY": "sk-abcdef123456", "OTHER_TOKEN": 'sk-ä"bcdef123456', "HOME": "/home/x"}
            )
        )
    )
    lg = logging.getLogger("test.audit.filter")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        lg.warning("key is %s", "sk-abcdef123456")
        lg.warning("body %s", json.dumps({"k": 'sk-ä"bcdef123456'}))
        try:
            raise ValueError("sk-abcdef123456 refused")
        except ValueError:
            lg.exception("call failed")
    finally:
        lg.removeHandler(handler)
    out = buf.getvalue()
    assert "sk-abcdef123456" not in out and out.count("***") >= 3 and "/home/x" not in out
    assert "bcdef123456" not in out  # the JSON-escaped form too


# ---- end to end ----------------------------------------------------------------------


@pytest.mark.e2e
def test_audit_and_secrets_on_a_cluster(make_cluster: Any) -> None:
    from raftmesh import DAG
    from raftmesh.localcluster import wait_until

    from .test_cli import cli

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cluster = make_cluster(
        3,
        agents_modules=["tests.secret_agents:register_agents"],
        env={"PYTHONPATH": repo, "RAFTMESH_TEST_API_KEY": "sk-node-key-0123456789"},
    )
    c = cluster.client()
    dag = DAG("secrets")
    dag.task("d", "digest", input={"password": secret("hunter22")})
    run_id = c.submit(dag, idempotency_key="audit-e2e")
    info = c.wait(run_id, timeout_s=60)
    assert info.status == "SUCCEEDED"
    # The agent received the value itself, not the marker.
    assert info.tasks["d"].output == {"sha256": hashlib.sha256(b"hunter22").hexdigest()}

    trail = c.audit(run_id)
    assert trail.complete and trail.node
    ks = [e.kind for e in trail]
    assert ks[0] == "submitted" and ks[-1] == "run_finished" and "placed" in ks and "completed" in ks
    assert trail.events[0].detail["idempotency_key"] == "audit-e2e"
    assert trail.events[0].principal == "anonymous" and len(trail.events[0].trace_id) == 32
    assert [e.revision for e in trail] == sorted(e.revision for e in trail)
    # Every node's archive holds the same complete timeline.
    for addr in cluster.addresses:
        resp = cluster.client([addr]).audit(run_id)
        assert resp.complete and [e.kind for e in resp] == ks

    addrs = ",".join(cluster.addresses)
    res = cli("audit", run_id, "--json", addresses=addrs)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["run_id"] == run_id and doc["complete"] is True and doc["node"]
    assert [e["kind"] for e in doc["events"]] == ks
    assert set(doc["events"][0]) == {
        "revision",
        "time_ms",
        "kind",
        "task_id",
        "attempt",
        "node",
        "principal",
        "request_id",
        "trace_id",
        "detail",
    }
    table = cli("audit", run_id, "--limit", "2", addresses=addrs)
    assert table.returncode == 0 and "submitted" in table.stdout and "run_finished" not in table.stdout
    assert cli("audit", "r-nosuchrun", addresses=addrs).returncode == 3

    leak = DAG("leak")
    leak.task("l", "leaky", input={"password": secret("hunter22")}, retries=0)
    bad = c.wait(c.submit(leak), timeout_s=60)
    assert bad.status == "FAILED"
    err = bad.tasks["l"].error
    assert "login refused" in err and "hunter22" not in err and "***" in err

    def logs() -> str:
        return "".join(open(n.log_path, errors="replace").read() for n in cluster.nodes.values())

    wait_until(
        lambda: "calling out with key" in logs() and "logging in with" in logs(), 30, "the agent log lines"
    )
    text = logs()
    assert "sk-node-key-0123456789" not in text and "hunter22" not in text


# ---- the chaos runner's check --------------------------------------------------------


def _ev(rev: int, kind: str, task: str = "", attempt: int = 0) -> Any:
    from raftmesh.client._audit import AuditEventInfo

    return AuditEventInfo(rev, 0, kind, task, attempt, "", "", "", "", {})


def test_the_chaos_check_accepts_a_coherent_timeline_and_names_each_problem() -> None:
    from raftmesh.chaos.audit_check import timeline_problems

    good = [
        _ev(1, "submitted"),
        _ev(2, "placed", "a", 1),
        _ev(3, "fenced", "a", 0),
        _ev(4, "completed", "a", 1),
        _ev(4, "completed", "map", 0),  # a group parent ends through its children
        _ev(4, "run_finished"),
        _ev(9, "fenced", "a", 1),  # a stale report after the end changes nothing
        _ev(10, "rerun", "a"),
        _ev(11, "placed", "a", 2),
        _ev(12, "completed", "a", 2),
        _ev(12, "run_finished"),
        _ev(13, "fenced", "a", 1),  # the chaos run saw these: a zombie's report after the end
    ]
    assert timeline_problems(good) == []
    assert timeline_problems([]) == ["empty timeline"]
    bad = [
        _ev(2, "placed", "a", 1),
        _ev(1, "completed", "b", 1),
        _ev(3, "run_finished"),
        _ev(4, "completed", "a", 1),
    ]
    problems = timeline_problems(bad)
    assert any("first event is placed" in p for p in problems)
    assert any("last change is completed" in p for p in problems)
    assert any("revision 1" in p for p in problems)
    assert any("b#1 completed" in p and "never placed" in p for p in problems)
    assert any("after the run's end" in p for p in problems)


@pytest.mark.e2e
def test_with_tokens_a_reader_sees_secrets_masked_and_the_audit_names_the_token(
    make_cluster: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raftmesh import DAG
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
    from raftmesh.security.tokens import add_token

    path = str(tmp_path / "tokens.yaml")
    admin = add_token(path, "root", "admin")[1]
    reader = add_token(path, "rita", "reader")[1]
    monkeypatch.setenv("RAFTMESH_TOKEN", admin)  # the harness's own status calls
    cluster = make_cluster(3, extra_args=["--tokens-file", path])
    c = cluster.client(token=admin)
    dag = DAG("masked")
    dag.task("e", "echo", input={"user": "ana", "password": secret("hunter22")})
    run_id = c.submit(dag)
    assert c.wait(run_id, timeout_s=60).status == "SUCCEEDED"

    def get_as(token: str) -> Any:
        client = cluster.client(token=token)
        return client._stub(cluster.addresses[0]).GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)

    seen_by_admin, seen_by_reader = get_as(admin), get_as(reader)
    assert json.loads(seen_by_admin.tasks[0].input_json)["password"] == secret("hunter22")
    assert json.loads(seen_by_reader.tasks[0].input_json) == {"user": "ana", "password": "***"}
    assert "hunter22" not in seen_by_reader.SerializeToString().decode(errors="replace")  # the echo too

    trail = cluster.client(token=reader).audit(run_id)  # GetAudit is a reader's call
    assert trail.complete and trail.events[0].kind == "submitted"
    assert trail.events[0].principal == "token:root"
    # Placed in the submit's own apply (so under the submitter's name); the result is the node's.
    assert any(e.kind == "placed" and e.principal == "token:root" for e in trail)
    assert any(e.kind == "completed" and e.principal.startswith("node:") for e in trail)


def test_the_chaos_check_cross_checks_completed_rows_with_the_log_audit(archive: AuditArchive) -> None:
    from raftmesh.chaos.audit_check import AuditCheck
    from raftmesh.verify.audit import Audit

    c = Audited(archive)
    log: list[Command] = []

    def ok(cmd: Command) -> None:
        log.append(cmd)
        c.ok(cmd)

    ok(c.register("n1"))
    ok(c.submit("r1", [spec("a", retries=1), spec("b", "a")]))
    ok(c.assign(("r1", "a", "n1")))
    ok(c.fail("r1", "a"))
    ok(c.assign(("r1", "a", "n1")))
    ok(c.complete("r1", "a"))
    ok(c.assign(("r1", "b", "n1")))
    ok(c.complete("r1", "b"))
    assert archive.flush()
    audit = Audit()
    for cmd in log:
        audit.feed(encode_batch([cmd]))
    assert audit.succeeded == {("r1", "a"): 2, ("r1", "b"): 1}
    rows = archive.timeline("r1").rows
    whole = AuditCheck(completed={"r1": {(r.task_id, r.attempt) for r in rows if r.kind == "completed"}})
    whole.cross_check(audit.succeeded)
    assert whole.cross_checked == 2 and whole.problems == []
    # A timeline that lost a's final completion (its first attempt's row is no stand-in).
    lost = AuditCheck(completed={"r1": {("a", 1), ("b", 1)}})
    lost.cross_check(audit.succeeded)
    assert lost.problems == ["r1: a#2 succeeded in the log but its timeline has no completed row"]
    assert lost.to_json()["cross_checked"] == 2


def test_get_audit_checks_a_gone_runs_namespace_from_the_archive_or_sends_the_caller_on(
    archive: AuditArchive,
) -> None:
    """The run has left the state (retention): the namespace the archive kept decides; a node that
    never saw the submission cannot tell, and a limited token is sent on (FAILED_PRECONDITION:
    the SDK asks the next node), not refused."""
    import asyncio
    import threading

    from raftmesh import calls
    from raftmesh.clock import SYSTEM_CLOCK
    from raftmesh.errors import FailedPrecondition, PermissionDenied
    from raftmesh.node.access import NodeAccess
    from raftmesh.node.reads import ReadView
    from raftmesh.node.service import ClusterService
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    c = Audited(archive)
    c.ok(c.register("n1"))
    c.ok(dataclasses.replace(c.submit("r1", [spec("a")]), namespace="team-a"))
    c.run_task("r1", "a")
    c.archive = None  # this node's archive misses r2's submission (a lost batch) ...
    c.ok(dataclasses.replace(c.submit("r2", [spec("a")]), namespace="team-a"))
    c.archive = archive
    c.run_task("r2", "a")  # ... and sees the rest
    assert archive.flush()
    gone = ClusterState()  # neither run is in the state any more
    access = NodeAccess(None, ReadView(threading.RLock(), lambda: gone), SYSTEM_CLOCK, lambda: False, 5.0)  # type: ignore[arg-type]
    svc = ClusterService(access, None, None, archive, "n1")  # type: ignore[arg-type]
    get_audit = ClusterService.GetAudit.__wrapped__  # type: ignore[attr-defined]

    def ask(run_id: str, *namespaces: str) -> Any:
        async def go() -> Any:
            with calls.bound(calls.Call("token:t", "reader", namespaces=namespaces)):
                return await get_audit(svc, pb.GetAuditRequest(run_id=run_id), None)

        return asyncio.run(go())

    resp = ask("r1", "team-a")
    assert resp.complete and resp.events[0].kind == "submitted"
    with pytest.raises(PermissionDenied):
        ask("r1", "team-b")
    with pytest.raises(FailedPrecondition, match="lacks the submission"):
        ask("r2", "team-a")
    resp = ask("r2", "*")  # a token for every namespace needs no namespace
    assert not resp.complete and resp.events[0].kind == "placed"


def test_a_move_by_suspicion_has_its_own_row_not_a_node_down_lost(archive: AuditArchive) -> None:
    """``SuspectNode.requeue`` moves an attempt off a member that is still up: its timeline says
    so (``suspect_moved``), where node-down's move reads ``lost``, and the move's row was missing."""
    c = Audited(archive)
    c.ok(dataclasses.replace(c.register("n1", slots=1), places=True))
    c.ok(c.submit("r1", [spec("a"), spec("b")]))
    c.ok(c.register("n2", slots=1))
    c.ok(c.assign(("r1", "b", "n2")))
    a, b = c.task("r1", "a"), c.task("r1", "b")
    assert (a.node, b.node) == ("n1", "n2")
    inc = c.st.members["n1"].incarnation
    c.ok(SuspectNode(c.rid(), c.ts, node_id="n1", incarnation=inc, suspect=True, requeue=True))
    assert c.task("r1", "a").suspect_moves == 1
    c.ok(NodeDown(c.rid(), c.ts, node_id="n2", incarnation=c.st.members["n2"].incarnation))
    assert archive.flush()
    rows = archive.timeline("r1").rows
    ends = [(r.kind, r.task_id, r.attempt, r.node) for r in rows if r.kind in ("suspect_moved", "lost")]
    assert ends == [("suspect_moved", "a", 1, "n1"), ("lost", "b", 1, "n2")], kinds(rows)
