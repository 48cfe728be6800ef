"""The read view: its digest equals the state's, its copies do not move with later applies."""

from __future__ import annotations

import random
import threading

import pytest

from raftmesh.consensus.commands import (
    Assign,
    Assignment,
    CancelRun,
    Complete,
    Completion,
    Fail,
    Failure,
    KvOp,
    KvTxn,
    LockAcquire,
    Message,
    RegisterNode,
    SubmitRun,
    TaskSpec,
    Tick,
)
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.messages import Activation, Mailbox, Queued
from raftmesh.consensus.placement import plan_assignments
from raftmesh.consensus.state import TaskStatus
from raftmesh.node import convert
from raftmesh.node.reads import ReadView


class Lock:
    """Counts acquisitions, to show which reads take the apply lock and how often."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.acquired = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.acquired += 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_digest_equals_the_state_digest_after_every_command() -> None:
    rng = random.Random(7)
    sm = StateMachine()
    view = ReadView(Lock(), lambda: sm.state)
    now = 1000

    def apply(cmd: object) -> None:
        sm.apply(cmd)  # type: ignore[arg-type]
        assert view.digest() == (sm.state.revision, sm.state.digest())
        if rng.random() < 0.3:  # the snapshot shares the digest's cache, in either order
            assert view.snapshot() == sm.state.encode()

    for node in ("n1", "n2"):
        apply(
            RegisterNode(
                f"reg-{node}",
                now,
                node_id=node,
                grpc="g",
                raft=node,
                agents=("echo",),
                slots=3,
                incarnation="i",
            )
        )
    for n in range(1, 121):
        now += rng.randint(0, 50)
        roll = rng.random()
        if roll < 0.15:
            specs = tuple(
                TaskSpec(
                    f"t{i}",
                    "echo",
                    input={"i": i},
                    deps=(f"t{i - 1}",) if i and rng.random() < 0.5 else (),
                    retries=1,
                )
                for i in range(rng.randint(1, 6))
            )
            apply(SubmitRun(f"s{n}", now, run_id=f"r{n}", tasks=specs))
        elif roll < 0.45:
            plan = plan_assignments(sm.state, now, {})
            if plan:
                apply(Assign(f"a{n}", now, tuple(plan)))
        elif roll < 0.75:
            running = [
                (rid, t)
                for rid, r in sm.state.runs.items()
                for t in r.tasks.values()
                if t.status is TaskStatus.RUNNING
            ]
            if running:
                rid, t = rng.choice(running)
                if rng.random() < 0.7:
                    apply(
                        Complete(
                            f"c{n}", now, t.node, (Completion(rid, t.spec.id, t.attempt, t.token, {"ok": n}),)
                        )
                    )
                else:
                    apply(
                        Fail(
                            f"f{n}", now, t.node, (Failure(rid, t.spec.id, t.attempt, t.token, "boom", True),)
                        )
                    )
        elif roll < 0.85 and sm.state.runs:
            apply(CancelRun(f"x{n}", now, run_id=rng.choice(sorted(sm.state.runs)), reason="test"))
        elif roll < 0.9:
            apply(KvTxn(f"kv{n}", now, success=(KvOp("put", f"k{rng.randint(0, 3)}", {"n": n}),)))
        elif roll < 0.95:
            name = f"lock{rng.randint(0, 2)}"
            apply(
                LockAcquire(
                    f"l{n}", now, owner=f"o{n}", items=((name, "exclusive"),), ttl_ms=500, wait_ms=200
                )
            )
        else:
            apply(Tick(f"t{n}", now))
    assert len(sm.state.runs) > 5 and sm.state.locks.locks and sm.state.kv.history
    # After a restore the caches are dropped and the digest is still the state's.
    restored = StateMachine()
    restored.restore(sm.snapshot())
    sm.state = restored.state
    view.restored()
    assert view.snapshot() == sm.state.encode()
    assert view.digest() == (sm.state.revision, sm.state.digest())


def test_a_snapshot_encodes_an_unchanged_run_once_and_off_the_lock() -> None:
    """A finished run is encoded under the lock by the first snapshot only; later snapshots
    reuse its bytes, and a run that changed is encoded again."""
    sm = StateMachine()
    view = ReadView(Lock(), lambda: sm.state)
    sm.apply(
        RegisterNode("reg", 1, node_id="n1", grpc="g", raft="r", agents=("echo",), slots=8, incarnation="i")
    )
    sm.apply(SubmitRun("s1", 2, run_id="done", tasks=(TaskSpec("t", "echo"),)))
    sm.apply(CancelRun("c1", 3, run_id="done", reason="test"))
    sm.apply(SubmitRun("s2", 4, run_id="live", tasks=(TaskSpec("t", "echo"),)))
    first = view.snapshot()
    assert first == sm.state.encode()
    sm.apply(Assign("a1", 5, (Assignment("live", "t", "n1", 1),)))
    done = view._encoded["done"]
    second = view.snapshot()
    assert second == sm.state.encode() != first
    assert view._encoded["done"] is done  # the finished run's bytes were reused
    assert view._encoded["live"][0] == sm.state.runs["live"].revision


def test_the_digest_covers_the_messaging_state() -> None:
    """A mailbox, an activation: the node's digest must move with them as the state's does (it
    once left them out, so a live replica's digest never matched its journal's replay)."""
    sm = StateMachine()
    view = ReadView(Lock(), lambda: sm.state)
    store = sm.state.messages
    before = view.digest()
    store.activations["a/k"] = Activation("a/k", "n1", "i1", 3, 0, 6_000)
    box = store.mailboxes["a/k"] = Mailbox("a/k")
    box.queue[1] = Queued(1, Message("m1", "client:x", "a/k", durable=True), 0)
    store.seq = 1
    assert view.digest() == (sm.state.revision, sm.state.digest()) != before
    box.queue.pop(1)
    assert view.digest() == (sm.state.revision, sm.state.digest())


def test_run_is_a_copy_encoded_outside_the_lock_and_cached_by_revision() -> None:
    sm = StateMachine()
    lock = Lock()
    view = ReadView(lock, lambda: sm.state)
    sm.apply(
        RegisterNode("reg", 1, node_id="n1", grpc="g", raft="r", agents=("echo",), slots=8, incarnation="i")
    )
    sm.apply(SubmitRun("s1", 2, run_id="r1", tasks=tuple(TaskSpec(f"t{i}", "echo") for i in range(3))))
    first = view.run("r1")
    assert first is not None
    assert first.run == convert.run_to_pb(sm.state.runs["r1"]) and first.revision == sm.state.revision
    assert view.run("r1") is not None and view.run("r1").run is first.run  # type: ignore[union-attr]
    sm.apply(Assign("a1", 3, (Assignment("r1", "t0", "n1", 1),)))
    # The earlier answer is unchanged by the apply; a new read sees it.
    assert [t.status for t in first.run.tasks] == [convert.TASK_STATUS[TaskStatus.READY]] * 3
    second = view.run("r1")
    assert second is not None and second.run is not first.run
    assert second.run == convert.run_to_pb(sm.state.runs["r1"])
    assert view.run("nope") is None
    summary = view.run("r1", with_tasks=False)
    assert summary is not None and list(summary.run.tasks) == []


def test_a_large_run_is_encoded_off_the_event_loop_and_equals_the_state() -> None:
    import asyncio

    from raftmesh.node import reads as reads_mod

    sm = StateMachine()
    view = ReadView(Lock(), lambda: sm.state)
    n = reads_mod.ENCODE_IN_THREAD_TASKS
    sm.apply(
        RegisterNode("reg", 1, node_id="n1", grpc="g", raft="r", agents=("echo",), slots=8, incarnation="i")
    )
    for cmd in (
        SubmitRun("s1", 2, run_id="big", tasks=tuple(TaskSpec(f"t{i}", "echo") for i in range(n))),
        SubmitRun("s2", 2, run_id="small", tasks=(TaskSpec("t", "echo"),)),
    ):
        assert sm.apply(cmd)[0].ok

    async def read(run_id: str) -> tuple[object, bool]:
        loop_thread = threading.get_ident()
        seen: list[int] = []
        real = view._encode_run

        def encode(*args: object) -> object:
            seen.append(threading.get_ident())
            return real(*args)  # type: ignore[arg-type]

        view._encode_run = encode  # type: ignore[method-assign]
        try:
            got = await view.run_async(run_id)
        finally:
            del view._encode_run
        assert len(seen) == 1, seen
        return got, seen[0] != loop_thread

    (big, off_loop), (small, small_off_loop) = asyncio.run(read("big")), asyncio.run(read("small"))
    assert off_loop and not small_off_loop
    assert big is not None and big.run == convert.run_to_pb(sm.state.runs["big"])  # type: ignore[attr-defined]
    assert small is not None and small.run == convert.run_to_pb(sm.state.runs["small"])  # type: ignore[attr-defined]


class HeldLock(Lock):
    """Also says whether it is held now."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0

    def __enter__(self) -> None:
        super().__enter__()
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        super().__exit__(*exc)


def test_a_large_run_is_copied_off_the_lock_unless_an_apply_changed_it_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raftmesh.node import reads as reads_mod

    sm = StateMachine()
    lock = HeldLock()
    view = ReadView(lock, lambda: sm.state)
    n = reads_mod.COPY_OFF_LOCK_TASKS
    sm.apply(
        RegisterNode("reg", 1, node_id="n1", grpc="g", raft="r", agents=("echo",), slots=8, incarnation="i")
    )
    sm.apply(SubmitRun("s1", 2, run_id="big", tasks=tuple(TaskSpec(f"t{i}", "echo") for i in range(n))))
    held: list[int] = []
    real = reads_mod.take_run

    def take(run: object, with_tasks: bool = True) -> object:
        held.append(lock.depth)
        return real(run, with_tasks)  # type: ignore[arg-type]

    monkeypatch.setattr(reads_mod, "take_run", take)
    got = view.run("big")
    assert got is not None and got.run == convert.run_to_pb(sm.state.runs["big"])
    assert held == [0]  # copied with the lock free
    # An apply between the copy and the check: the copy is discarded and taken again, locked.
    assert sm.apply(Assign("a0", 3, (Assignment("big", "t1", "n1", 1),)))[0].ok  # not cached now
    held.clear()

    def take_then_apply(run: object, with_tasks: bool = True) -> object:
        held.append(lock.depth)
        out = real(run, with_tasks)  # type: ignore[arg-type]
        if len(held) == 1:
            assert sm.apply(Assign("a1", 3, (Assignment("big", "t0", "n1", 1),)))[0].ok
        return out

    monkeypatch.setattr(reads_mod, "take_run", take_then_apply)
    got = view.run("big")
    assert held == [0, 1]
    assert got is not None and got.run == convert.run_to_pb(sm.state.runs["big"])
    assert got.revision == sm.state.revision
    assert got.run.tasks[0].status == convert.TASK_STATUS[TaskStatus.RUNNING]


def test_a_snapshot_encodes_runs_off_the_lock_and_again_under_it_if_one_changed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raftmesh.consensus.state import RunState

    sm = StateMachine()
    lock = HeldLock()
    view = ReadView(lock, lambda: sm.state)
    sm.apply(
        RegisterNode("reg", 1, node_id="n1", grpc="g", raft="r", agents=("echo",), slots=8, incarnation="i")
    )
    for rid in ("a", "b"):
        sm.apply(SubmitRun(f"s-{rid}", 2, run_id=rid, tasks=(TaskSpec("t", "echo"), TaskSpec("u", "echo"))))
    held: list[tuple[str, int]] = []
    real = RunState.encode

    def encode(run: RunState) -> list[object]:
        held.append((run.run_id, lock.depth))
        if len(held) == 1:  # an apply lands while "a" is being encoded off the lock
            assert sm.apply(Assign("x", 3, (Assignment("a", "t", "n1", 1),)))[0].ok
        return real(run)

    monkeypatch.setattr(RunState, "encode", encode)
    assert view.snapshot() == sm.state.encode()
    # Both off the lock first; "a" changed meanwhile, so it alone was encoded again under it.
    assert [h for h in held if h[1] == 0][:2] == [("a", 0), ("b", 0)]
    assert ("a", 1) in held and ("b", 1) not in held


def test_a_copy_keeps_the_lists_apply_changes_in_place() -> None:
    """A task's history, children, dependents and gate are changed in place by apply: the copy
    taken under the lock must not see a later apply (an encoding made from it happens later,
    off the lock or in a worker thread)."""
    from raftmesh.node import reads as reads_mod

    sm = StateMachine()
    sm.apply(
        RegisterNode("reg", 1, node_id="n1", grpc="g", raft="r", agents=("echo",), slots=8, incarnation="i")
    )
    sm.apply(
        SubmitRun("s1", 2, run_id="r", tasks=(TaskSpec("a", "echo"), TaskSpec("b", "echo", deps=("a",))))
    )
    assert sm.apply(Assign("a0", 3, (Assignment("r", "a", "n1", 1),)))[0].ok
    a = sm.state.runs["r"].tasks["a"]
    assert a.status is TaskStatus.RUNNING
    fields = reads_mod.take_run(sm.state.runs["r"])
    done = Complete("c1", 4, node_id="n1", items=(Completion("r", "a", a.attempt, a.token, 1),))
    assert sm.apply(done)[0].ok
    assert len(sm.state.runs["r"].tasks["a"].history) == 1  # the attempt's end, appended in place
    copy = reads_mod.build_run(fields)
    assert copy.tasks["a"].status is TaskStatus.RUNNING and copy.tasks["a"].history == []
    assert copy.tasks["a"].history is not sm.state.runs["r"].tasks["a"].history
    assert copy.tasks["a"].dependents is not sm.state.runs["r"].tasks["a"].dependents
    assert copy.tasks["b"].children is not sm.state.runs["r"].tasks["b"].children
