"""The pure state machine (``raftmesh.consensus.machine``), fed command by command.

No Raft, no threads, no clock: time enters only as ``ts_ms`` in the commands.
"""

from __future__ import annotations

import ast
import copy
import pickle
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest

import raftmesh.consensus as consensus
from raftmesh.consensus import (
    Assign,
    Assignment,
    Barrier,
    CancelRun,
    ClusterState,
    Code,
    Command,
    Complete,
    Completion,
    Fail,
    Failure,
    MemberChanged,
    RegisterNode,
    Result,
    RunChanged,
    RunStatus,
    StateMachine,
    SubmitRun,
    TaskChanged,
    TaskSpec,
    TaskStatus,
    Tick,
    decode_batch,
    encode_batch,
    limits,
)
from raftmesh.consensus.commands import NodeDown, RerunTask, Undecodable, decode_command, encode_command
from raftmesh.consensus.results import (
    AssignResult,
    BarrierResult,
    CancelRunResult,
    ItemRejected,
    MemberResult,
    ReportResult,
    SubmitRunResult,
    TickResult,
    expect,
)
from raftmesh.consensus.state import FinishedRuns, TaskState
from raftmesh.consensus.tasks import backoff_ms

T0 = 1_000_000


class Cluster:
    """A ``StateMachine`` with helpers that build commands with fresh request ids."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.ts = T0
        self._n = 0
        self.events: list[Any] = []

    @property
    def st(self) -> ClusterState:
        return self.sm.state

    def rid(self) -> str:
        self._n += 1
        return f"req-{self._n}"

    def apply(self, cmd: Command) -> Result:
        res, events = self.sm.apply(cmd)
        self.events.extend(events)
        check_indexes(self.sm)
        return res

    def ok(self, cmd: Command) -> Result:
        res = self.apply(cmd)
        assert res.ok, res
        return res

    def unchanged(self, cmd: Command, code: Code | None = None) -> Result:
        """Apply ``cmd`` and assert it changed nothing (digest, revision, indexes, events)."""
        before = (self.sm.digest(), self.st.revision, self.st.index_snapshot())
        res, events = self.sm.apply(cmd)
        assert (self.sm.digest(), self.st.revision, self.st.index_snapshot()) == before, res
        assert events == [], res
        if code is not None:
            assert res.code is code, res
        return res

    # -- command builders ------------------------------------------------------

    def register(
        self,
        node: str,
        agents: tuple[str, ...] = ("echo",),
        slots: int = 4,
        incarnation: str = "inc-1",
        ts: int | None = None,
    ) -> RegisterNode:
        return RegisterNode(
            self.rid(),
            self.ts if ts is None else ts,
            node,
            f"{node}:50051",
            f"{node}:4321",
            agents,
            slots,
            incarnation,
        )

    def submit(self, run_id: str, tasks: list[TaskSpec], key: str = "", rid: str | None = None) -> SubmitRun:
        return SubmitRun(rid or self.rid(), self.ts, run_id, key, tuple(tasks), 0, run_id, "tester")

    def task(self, run_id: str, task_id: str) -> TaskState:
        t = self.st.task(run_id, task_id)
        assert t is not None
        return t

    def assign(
        self, *items: tuple[str, str, str], ts: int | None = None, attempt: int | None = None
    ) -> Assign:
        return Assign(
            self.rid(),
            self.ts if ts is None else ts,
            tuple(
                Assignment(r, t, n, self.task(r, t).attempt + 1 if attempt is None else attempt)
                for r, t, n in items
            ),
        )

    def complete(
        self,
        run_id: str,
        task_id: str,
        output: Any = "out",
        node: str | None = None,
        attempt: int | None = None,
        token: int | None = None,
        rid: str | None = None,
    ) -> Complete:
        t = self.task(run_id, task_id)
        return Complete(
            rid or self.rid(),
            self.ts,
            t.node if node is None else node,
            (
                Completion(
                    run_id,
                    task_id,
                    t.attempt if attempt is None else attempt,
                    t.token if token is None else token,
                    output,
                ),
            ),
        )

    def fail(
        self,
        run_id: str,
        task_id: str,
        error: str = "boom",
        retryable: bool = True,
        node: str | None = None,
        attempt: int | None = None,
        token: int | None = None,
    ) -> Fail:
        t = self.task(run_id, task_id)
        return Fail(
            self.rid(),
            self.ts,
            t.node if node is None else node,
            (
                Failure(
                    run_id,
                    task_id,
                    t.attempt if attempt is None else attempt,
                    t.token if token is None else token,
                    error,
                    retryable,
                ),
            ),
        )

    def tick(self, ts: int) -> Tick:
        return Tick(self.rid(), ts)

    def rerun(self, run_id: str, task_id: str) -> RerunTask:
        return RerunTask(self.rid(), self.ts, run_id, task_id)

    def run_task(self, run_id: str, task_id: str, node: str = "n1", output: Any = "out") -> None:
        self.ok(self.assign((run_id, task_id, node)))
        self.ok(self.complete(run_id, task_id, output))


def check_indexes(sm: StateMachine) -> None:
    """The maintained indexes equal a fresh rebuild, and a decoded copy has the same digest."""
    copy = ClusterState.decode(sm.state.encode())
    assert copy.index_snapshot() == sm.state.index_snapshot()
    assert copy.digest() == sm.state.digest()


def status(c: Cluster, run_id: str) -> dict[str, TaskStatus]:
    return {tid: t.status for tid, t in c.st.runs[run_id].tasks.items()}


def spec(task_id: str, *deps: str, **kw: Any) -> TaskSpec:
    return TaskSpec(id=task_id, agent=kw.pop("agent", "echo"), deps=deps, **kw)


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1"))
    cluster.ok(cluster.register("n2", agents=("echo", "llm"), slots=1))
    return cluster


DIAMOND = [spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c")]


# ---- members -------------------------------------------------------------------


def test_register_node() -> None:
    c = Cluster()
    res = c.ok(c.register("n1", agents=("llm", "echo", "llm"), slots=3))
    assert res == MemberResult("n1")
    m = c.st.members["n1"]
    assert (m.agents, m.slots, m.up, m.incarnation, m.registered_ms) == (
        ("echo", "llm"),
        3,
        True,
        "inc-1",
        T0,
    )
    assert c.st.revision == 1 and c.st.time_ms == T0
    assert c.events == [MemberChanged(1, "n1", True)]
    assert c.st.known_agents() == {"echo", "llm"}


@pytest.mark.parametrize(
    "kw",
    [{"node": "bad id"}, {"node": ""}, {"node": "n\n"}, {"agents": ("ok", "no spaces")}, {"slots": -1}],
)
def test_register_rejects_bad_input(kw: dict[str, Any]) -> None:
    c = Cluster()
    c.unchanged(c.register(**{"node": "n1", **kw}), Code.INVALID_ARGUMENT)
    assert c.st.members == {}


NODE_IDS = ["n1", "node-2.a_b", "zone:a", "x" * limits.MAX_ID_CHARS, "x" * (limits.MAX_ID_CHARS + 1)]
NODE_IDS += ["", "bad id", "n\n", "-lead", "ü", "a/b"]


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_config_and_register_share_the_node_id_rule(node_id: str) -> None:
    from raftmesh.errors import InvalidArgument
    from raftmesh.node.config import build_config

    try:
        build_config(node_id, "127.0.0.1:1", "127.0.0.1:2", [], "data")
        config_accepts = True
    except InvalidArgument:
        config_accepts = False
    c = Cluster()
    assert c.apply(c.register(node_id)).ok is config_accepts


# ---- submit --------------------------------------------------------------------


def test_submit_creates_run_with_roots_ready(c: Cluster) -> None:
    rev = c.st.revision
    res = c.ok(c.submit("r1", [spec("b", "a"), spec("a"), spec("z")]))
    assert res == SubmitRunResult("r1", created=True)
    run = c.st.runs["r1"]
    assert run.status is RunStatus.RUNNING and run.unfinished == 3 and run.revision == rev + 1
    assert status(c, "r1") == {"b": TaskStatus.PENDING, "a": TaskStatus.READY, "z": TaskStatus.READY}
    assert c.task("r1", "a").dependents == ["b"]
    assert c.task("r1", "b").deps_waiting == 1
    assert c.st.index_snapshot()[0] == {0: [("r1", "a"), ("r1", "z")]}  # FIFO in spec order
    assert RunChanged(rev + 1, "r1", RunStatus.RUNNING) in c.events


def test_submit_rejections_change_nothing(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.unchanged(c.submit("r1", [spec("a")]), Code.ALREADY_EXISTS)
    res = c.unchanged(c.submit("r2", [spec("a", agent="nope")]), Code.INVALID_ARGUMENT)
    assert "echo, llm" in res.message
    res = c.unchanged(c.submit("r2", [spec("a", "b"), spec("b", "a")]), Code.INVALID_ARGUMENT)
    assert "a -> b -> a" in res.message
    c.unchanged(c.submit("bad run", [spec("a")]), Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r2", [spec("a")], key="k" * (limits.MAX_ID_CHARS + 1)), Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r2", []), Code.INVALID_ARGUMENT)
    assert set(c.st.runs) == {"r1"}


@pytest.mark.parametrize("priority", [limits.MAX_PRIORITY + 1, -limits.MAX_PRIORITY - 1])
def test_run_priority_is_limited(c: Cluster, priority: int) -> None:
    cmd = SubmitRun(c.rid(), c.ts, "r1", "", (spec("a"),), priority, "", "")
    res = c.unchanged(cmd, Code.INVALID_ARGUMENT)
    assert "priority" in res.message
    c.ok(SubmitRun(c.rid(), c.ts, "r1", "", (spec("a"),), limits.MAX_PRIORITY, "", ""))


def test_idempotency_key_returns_same_run_and_changes_nothing(c: Cluster) -> None:
    first = c.ok(c.submit("r1", [spec("a")], key="k1"))
    assert first == SubmitRunResult("r1", created=True)
    # A different request id (a new client call) with the same key, even for another run id.
    res = c.unchanged(c.submit("r2", [spec("x")], key="k1"), Code.OK)
    assert res == SubmitRunResult("r1", created=False)
    assert set(c.st.runs) == {"r1"}
    # Another key is a new run.
    assert c.ok(c.submit("r2", [spec("x")], key="k2")) == SubmitRunResult("r2", created=True)


def test_same_request_id_returns_first_result_and_changes_nothing(c: Cluster) -> None:
    first = c.ok(c.submit("r1", [spec("a")], rid="client-1"))
    again = c.unchanged(c.submit("r-other", [spec("a")], rid="client-1"))
    assert again == first
    assert set(c.st.runs) == {"r1"}

    c.ok(c.assign(("r1", "a", "n1")))
    cmd = c.complete("r1", "a", "v1")
    done = c.ok(cmd)
    assert c.unchanged(cmd) == done
    # The request id is remembered across a snapshot too.
    sm = StateMachine()
    sm.restore(c.sm.snapshot())
    before = sm.digest()
    res, events = sm.apply(cmd)
    assert (res, events, sm.digest()) == (done, [], before)


def test_barrier_changes_nothing(c: Cluster) -> None:
    res = c.unchanged(Barrier("b1", T0 + 10**9), Code.OK)
    assert res == BarrierResult(c.st.revision)
    c.unchanged(Barrier("b1", T0), Code.OK)  # barriers are never deduplicated, never recorded
    assert "b1" not in c.st.dedup


# ---- assign --------------------------------------------------------------------


def test_assign_sets_running_with_token_equal_to_revision(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", timeout_ms=500)]))
    c.ts += 7
    res = c.ok(c.assign(("r1", "a", "n1")))
    t = c.task("r1", "a")
    assert (t.status, t.attempt, t.node, t.token) == (TaskStatus.RUNNING, 1, "n1", c.st.revision)
    assert res == AssignResult(token=c.st.revision, accepted=1, rejected=())
    assert (t.started_ms, t.deadline_ms) == (c.ts, c.ts + 500)
    assert c.st.index_snapshot()[1] == {"n1": [("r1", "a")]}
    assert c.st.index_snapshot()[0] == {}
    assert TaskChanged(c.st.revision, "r1", "a", TaskStatus.RUNNING, 1, "n1") in c.events


def test_assign_respects_node_slots(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a"), spec("b"), spec("c")]))
    res = c.ok(c.assign(("r1", "a", "n2"), ("r1", "b", "n2")))  # n2 has one slot
    assert expect(res, AssignResult).accepted == 1
    assert expect(res, AssignResult).rejected == (ItemRejected("r1", "b", "node 'n2' has no free slot"),)
    assert c.task("r1", "b").status is TaskStatus.READY
    c.unchanged(c.assign(("r1", "c", "n2")), Code.FAILED_PRECONDITION)
    c.ok(c.complete("r1", "a"))
    c.ok(c.assign(("r1", "c", "n2")))  # the slot is free again


def test_assign_with_zero_slots_is_rejected() -> None:
    c = Cluster()
    c.ok(c.register("n0", slots=0))
    c.ok(c.submit("r1", [spec("a")]))
    c.unchanged(c.assign(("r1", "a", "n0")), Code.FAILED_PRECONDITION)


@pytest.mark.parametrize(
    ("item", "attempt", "why"),
    [
        (("r1", "a", "ghost"), 1, "not an up member"),
        (("r1", "l", "n1"), 1, "does not offer agent 'llm'"),
        (("r1", "b", "n1"), 1, "task is PENDING"),
        (("r1", "zz", "n1"), 1, "no such task"),
        (("r9", "a", "n1"), 1, "no such task"),
        (("r1", "a", "n1"), 0, "not the next attempt"),
        (("r1", "a", "n1"), 2, "not the next attempt"),
        (("r1", "a", "n1"), -1, "not the next attempt"),
    ],
)
def test_assign_rejections_change_nothing(
    c: Cluster, item: tuple[str, str, str], attempt: int, why: str
) -> None:
    c.ok(c.submit("r1", [spec("a"), spec("b", "a"), spec("l", agent="llm")]))
    res = c.unchanged(Assign(c.rid(), c.ts, (Assignment(*item, attempt),)), Code.FAILED_PRECONDITION)
    assert why in res.message


def test_assign_twice_in_one_command_and_running_task(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    res = c.ok(Assign(c.rid(), c.ts, (Assignment("r1", "a", "n1", 1), Assignment("r1", "a", "n2", 1))))
    assert expect(res, AssignResult).accepted == 1 and "twice" in expect(res, AssignResult).rejected[0].reason
    assert c.task("r1", "a").node == "n1"
    res = c.unchanged(Assign(c.rid(), c.ts, (Assignment("r1", "a", "n2", 2),)), Code.FAILED_PRECONDITION)
    assert "task is RUNNING" in res.message


def test_assign_in_finished_run_is_rejected(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a"), spec("b")]))
    c.ok(CancelRun(c.rid(), c.ts, "r1", "user"))
    c.unchanged(Assign(c.rid(), c.ts, (Assignment("r1", "a", "n1", 1),)), Code.FAILED_PRECONDITION)


def test_assign_waits_for_retry_backoff(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=3, retry_backoff_ms=1000)]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ts += 50
    c.ok(c.fail("r1", "a"))
    t = c.task("r1", "a")
    delay = backoff_ms(1000, 1, "r1", "a")
    assert 1000 <= delay <= 1250
    assert (t.status, t.not_before_ms) == (TaskStatus.READY, c.ts + delay)
    # Neither the command's ts nor the state time has reached not_before_ms.
    res = c.unchanged(c.assign(("r1", "a", "n1"), ts=t.not_before_ms - 1), Code.FAILED_PRECONDITION)
    assert "backoff" in res.message
    c.ok(c.assign(("r1", "a", "n1"), ts=t.not_before_ms))
    assert (t.status, t.attempt) == (TaskStatus.RUNNING, 2)


def test_assign_uses_state_time_when_command_ts_lags(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=1, retry_backoff_ms=100)]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.fail("r1", "a"))
    c.ok(c.tick(c.ts + 10_000))  # the cluster's time moves on
    c.ok(c.assign(("r1", "a", "n1"), ts=T0))  # a proposer with a lagging clock
    assert c.st.time_ms == T0 + 10_000


# ---- complete and fail -------------------------------------------------------


def test_complete_unblocks_dependents_only_when_all_deps_succeeded(c: Cluster) -> None:
    c.ok(c.submit("r1", DIAMOND))
    c.run_task("r1", "a", output={"n": 1})
    assert c.task("r1", "a").output == {"n": 1}
    assert status(c, "r1") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.READY,
        "c": TaskStatus.READY,
        "d": TaskStatus.PENDING,
    }
    c.run_task("r1", "b")
    assert c.task("r1", "d").status is TaskStatus.PENDING  # fan-in: still waiting for c
    assert c.task("r1", "d").deps_waiting == 1
    c.ok(c.assign(("r1", "c", "n1")))
    c.ok(c.complete("r1", "c"))
    assert c.task("r1", "d").status is TaskStatus.READY
    assert c.st.runs["r1"].status is RunStatus.RUNNING
    c.run_task("r1", "d", node="n2")
    run = c.st.runs["r1"]
    assert (run.status, run.unfinished, run.error) == (RunStatus.SUCCEEDED, 0, "")
    assert list(c.st.finished) == ["r1"]
    assert RunChanged(c.st.revision, "r1", RunStatus.SUCCEEDED) in c.events
    assert c.st.index_snapshot()[:3] == ({}, {}, [])


def test_complete_batch_of_results(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a"), spec("b"), spec("c", "a", "b")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "b", "n1")))
    tok = c.st.revision
    res = c.ok(
        Complete(
            c.rid(),
            c.ts,
            "n1",
            (
                Completion("r1", "a", 1, tok, 1),
                Completion("r1", "b", 1, tok - 1, 2),  # stale token: rejected, the rest applies
                Completion("r1", "a", 1, tok, 3),  # the same task twice
            ),
        )
    )
    assert expect(res, ReportResult).accepted == 1 and len(expect(res, ReportResult).rejected) == 2
    assert c.task("r1", "a").output == 1
    assert c.task("r1", "b").status is TaskStatus.RUNNING
    assert c.task("r1", "c").status is TaskStatus.PENDING


@pytest.mark.parametrize("kind", ["complete", "fail"])
@pytest.mark.parametrize(
    "wrong", [{"token": -1}, {"token": +1}, {"attempt": 0}, {"attempt": 2}, {"node": "n2"}, {"node": ""}]
)
def test_results_from_wrong_attempt_token_or_node_are_aborted(
    c: Cluster, kind: str, wrong: dict[str, int | str]
) -> None:
    c.ok(c.submit("r1", [spec("a", retries=2)]))
    c.ok(c.assign(("r1", "a", "n1")))
    t = c.task("r1", "a")
    kw: dict[str, Any] = dict(wrong)
    if "token" in kw:
        kw["token"] = t.token + int(kw["token"])
    cmd = c.complete("r1", "a", **kw) if kind == "complete" else c.fail("r1", "a", **kw)
    res = c.unchanged(cmd, Code.ABORTED)
    assert "fenced" in res.message
    assert (t.status, t.attempt, t.retries_left) == (TaskStatus.RUNNING, 1, 2)


def test_stale_attempt_after_retry_is_fenced(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=1)]))
    c.ok(c.assign(("r1", "a", "n1")))
    old = c.complete("r1", "a", "late")
    old_fail = c.fail("r1", "a")
    c.ok(c.fail("r1", "a"))
    c.unchanged(old, Code.ABORTED)  # the task is READY now
    c.ok(c.assign(("r1", "a", "n1")))  # same node, new attempt
    c.unchanged(old, Code.ABORTED)  # attempt 1 is not the current one
    c.unchanged(old_fail, Code.ABORTED)
    c.ok(c.complete("r1", "a", "fresh"))
    assert c.task("r1", "a").output == "fresh"
    c.unchanged(c.complete("r1", "a", "again"), Code.ABORTED)  # already SUCCEEDED


def test_fail_with_retries_goes_back_to_ready_with_exponential_backoff(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=3, retry_backoff_ms=1000)]))
    t = c.task("r1", "a")
    waits = []
    for attempt in (1, 2, 3):
        c.ok(c.assign(("r1", "a", "n1"), ts=max(c.ts, t.not_before_ms)))
        c.ts = c.st.time_ms
        c.ok(c.fail("r1", "a", error=f"e{attempt}"))
        assert (t.status, t.attempt, t.retries_left, t.error) == (
            TaskStatus.READY,
            attempt,
            3 - attempt,
            f"e{attempt}",
        )
        assert c.st.runs["r1"].status is RunStatus.RUNNING
        waits.append(t.not_before_ms - c.st.time_ms)
    base = [1000, 2000, 4000]
    assert all(b <= w <= b * 5 // 4 for b, w in zip(base, waits, strict=True)), waits
    assert waits == [backoff_ms(1000, n, "r1", "a") for n in (1, 2, 3)]
    # The retry count survives a snapshot and restore.
    sm = StateMachine()
    sm.restore(c.sm.snapshot())
    restored = sm.state.task("r1", "a")
    assert restored is not None and (restored.retries_left, restored.attempt) == (0, 3)
    # The fourth failure has no retry left.
    c.ok(c.assign(("r1", "a", "n1"), ts=t.not_before_ms))
    c.ok(c.fail("r1", "a", error="last"))
    assert t.status is TaskStatus.FAILED
    assert c.st.runs["r1"].status is RunStatus.FAILED
    assert "last" in c.st.runs["r1"].error


def test_backoff_is_capped_and_deterministic() -> None:
    assert backoff_ms(0, 5, "r", "t") == 0
    assert backoff_ms(limits.MAX_BACKOFF_MS, 100, "r", "t") <= limits.MAX_BACKOFF_MS * 5 // 4
    assert backoff_ms(1000, 3, "r", "t") == backoff_ms(1000, 3, "r", "t")


def test_fail_without_retries_fails_run_and_cancels_the_rest(c: Cluster) -> None:
    tasks = [spec("a"), spec("b"), spec("c"), spec("d", "a"), spec("e", "c")]
    c.ok(c.submit("r1", tasks))
    c.run_task("r1", "a")  # SUCCEEDED stays
    c.ok(c.assign(("r1", "b", "n1"), ("r1", "c", "n2")))
    c.ok(c.fail("r1", "c", error="bad input"))
    assert status(c, "r1") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.CANCELLED,  # was RUNNING
        "c": TaskStatus.FAILED,
        "d": TaskStatus.CANCELLED,  # was READY
        "e": TaskStatus.CANCELLED,  # was PENDING
    }
    run = c.st.runs["r1"]
    assert (run.status, run.unfinished) == (RunStatus.FAILED, 0)
    assert "'c'" in run.error and "bad input" in run.error
    assert c.st.index_snapshot()[:3] == ({}, {}, [])
    c.unchanged(c.complete("r1", "b"), Code.ABORTED)  # the cancelled attempt's late result


def test_non_retryable_failure_ignores_retries_left(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=5)]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.fail("r1", "a", retryable=False))
    assert c.task("r1", "a").status is TaskStatus.FAILED
    assert c.st.runs["r1"].status is RunStatus.FAILED


def test_error_message_is_truncated(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.fail("r1", "a", error="x" * (limits.MAX_ERROR_CHARS * 2)))
    assert len(c.task("r1", "a").error) == limits.MAX_ERROR_CHARS


def test_oversized_output_fails_the_attempt_without_retry(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=3), spec("b")]))
    c.ok(c.assign(("r1", "a", "n1")))
    res = c.ok(c.complete("r1", "a", output="x" * limits.MAX_TASK_OUTPUT_BYTES))
    assert expect(res, ReportResult).accepted == 1
    t = c.task("r1", "a")
    assert (t.status, t.output, t.retries_left) == (TaskStatus.FAILED, None, 3)
    assert str(limits.MAX_TASK_OUTPUT_BYTES) in t.error
    assert c.st.runs["r1"].status is RunStatus.FAILED
    assert c.task("r1", "b").status is TaskStatus.CANCELLED


def test_output_at_the_limit_is_accepted(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.complete("r1", "a", output="x" * (limits.MAX_TASK_OUTPUT_BYTES - 5)))  # str32 header: 5
    assert c.task("r1", "a").status is TaskStatus.SUCCEEDED


# ---- cancel --------------------------------------------------------------------


def test_cancel_run_cancels_unfinished_tasks(c: Cluster) -> None:
    c.ok(c.submit("r1", DIAMOND))
    c.run_task("r1", "a")
    c.ok(c.assign(("r1", "b", "n1")))
    res = c.ok(CancelRun(c.rid(), c.ts, "r1", "user asked"))
    assert res == CancelRunResult(RunStatus.CANCELLED, cancelled=True)
    assert status(c, "r1") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.CANCELLED,
        "c": TaskStatus.CANCELLED,
        "d": TaskStatus.CANCELLED,
    }
    run = c.st.runs["r1"]
    assert run.status is RunStatus.CANCELLED and "user asked" in run.error
    assert c.st.index_snapshot()[:3] == ({}, {}, [])
    c.unchanged(c.complete("r1", "b"), Code.ABORTED)


def test_cancelling_a_finished_run_changes_nothing(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.run_task("r1", "a")
    res = c.unchanged(CancelRun(c.rid(), c.ts + 5, "r1", ""), Code.OK)
    assert res == CancelRunResult(RunStatus.SUCCEEDED, cancelled=False)
    c.ok(c.submit("r2", [spec("a")]))
    c.ok(CancelRun(c.rid(), c.ts, "r2", ""))
    c.unchanged(CancelRun(c.rid(), c.ts, "r2", ""), Code.OK)
    c.unchanged(CancelRun(c.rid(), c.ts, "nope", ""), Code.NOT_FOUND)


def test_finished_runs_are_retained_up_to_the_limit(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "FINISHED_RUNS_RETAINED", 2)
    for i in range(3):
        c.ok(c.submit(f"r{i}", [spec("a")], key=f"k{i}"))
    c.ok(CancelRun(c.rid(), c.ts, "r1", ""))
    c.ok(CancelRun(c.rid(), c.ts, "r0", ""))
    c.ok(CancelRun(c.rid(), c.ts, "r2", ""))
    assert set(c.st.runs) == {"r0", "r2"}  # r1 finished first
    assert set(c.st.idempotency) == {"k0", "k2"}


def test_finished_runs_are_retained_by_size_too(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over FINISHED_TASKS_RETAINED tasks in finished runs, the oldest finished go first (with
    their keys); the run that just finished stays however large; a restored replica agrees."""
    monkeypatch.setattr(limits, "FINISHED_TASKS_RETAINED", 5)
    c.ok(c.submit("r0", [spec("a"), spec("b")], key="k0"))
    c.ok(c.submit("r1", [spec("a"), spec("b"), spec("c")], key="k1"))
    c.ok(c.submit("r2", [spec("a")], key="k2"))
    c.ok(c.submit("big", [spec(f"t{i}") for i in range(7)], key="kb"))
    for rid in ("r0", "r1"):
        c.ok(CancelRun(c.rid(), c.ts, rid, ""))
    assert list(c.st.finished.items()) == [("r0", 2), ("r1", 3)]  # 5 tasks: at the limit, kept
    c.ok(CancelRun(c.rid(), c.ts, "r2", ""))  # 6: the oldest finished goes
    assert list(c.st.finished.items()) == [("r1", 3), ("r2", 1)] and c.st.finished.tasks == 4
    assert set(c.st.runs) == {"r1", "r2", "big"} and "k0" not in c.st.idempotency
    c.ok(CancelRun(c.rid(), c.ts, "big", ""))  # 7 tasks alone: the others go, it stays
    assert set(c.st.runs) == {"big"} and list(c.st.finished.items()) == [("big", 7)]
    assert c.st.finished.tasks == 7 and set(c.st.idempotency) == {"kb"}


def test_finished_runs_keep_their_task_sum_through_every_mapping_operation_and_copy(c: Cluster) -> None:
    """``FinishedRuns.tasks`` is the sum of its counts after any operation and copy: it once
    subclassed ``OrderedDict``, whose ``clear`` skipped it and whose ``copy.deepcopy``/pickle
    restored the sum and then re-added every entry (twice the sum)."""

    def consistent(f: FinishedRuns) -> list[tuple[str, int]]:
        assert f.tasks == sum(f.values()), f
        return list(f.items())

    f = FinishedRuns([("r0", 2), ("r1", 3)])
    for twin in (copy.deepcopy(f), copy.copy(f), f.copy(), pickle.loads(pickle.dumps(f))):
        assert consistent(twin) == [("r0", 2), ("r1", 3)] and twin == f
        twin["r2"] = 4  # a copy is its own: the original does not move
        assert consistent(f) == [("r0", 2), ("r1", 3)] and twin != f
    f.update({"r2": 1, "r0": 5})  # an update keeps r0's place (retention order)
    assert consistent(f) == [("r0", 5), ("r1", 3), ("r2", 1)]
    assert f.setdefault("r3", 7) == 7 and f.setdefault("r3", 9) == 7
    del f["r1"]
    assert f.pop("r9", None) is None and f.pop("r2") == 1
    assert f.popitem(last=False) == ("r0", 5) and consistent(f) == [("r3", 7)]
    assert f != FinishedRuns([("r3", 6)])
    assert FinishedRuns([("a", 1), ("b", 1)]) != FinishedRuns([("b", 1), ("a", 1)])  # order is state
    f.clear()
    assert consistent(f) == [] and not f
    # A whole state copied keeps the index it would rebuild (the machine tests' check).
    c.ok(c.submit("r1", [spec("a"), spec("b")]))
    c.ok(CancelRun(c.rid(), c.ts, "r1", ""))
    twin = copy.deepcopy(c.st)
    assert twin.finished.tasks == 2 and twin.index_snapshot() == c.st.index_snapshot()
    twin.rebuild_indexes()
    assert twin.index_snapshot() == c.st.index_snapshot() and twin.encode() == c.st.encode()


# ---- time ----------------------------------------------------------------------


def test_only_a_tick_expires_attempts(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", timeout_ms=100, retries=1), spec("b")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "b", "n1")))
    t = c.task("r1", "a")
    deadline = c.ts + 100
    assert (t.deadline_ms, c.st.next_deadline_ms()) == (deadline, deadline)
    # Other commands carrying a later time move the state's clock but expire nothing.
    c.ok(c.register("n3", ts=deadline + 10_000))
    c.ok(c.submit("r2", [spec("x")]))
    c.ok(c.complete("r1", "b"))
    assert t.status is TaskStatus.RUNNING
    # A tick expires against the state's time, even if its own ts lags (the clock never goes back).
    assert c.ok(c.tick(deadline - 1)) == TickResult(expired=1, time_ms=deadline + 10_000)
    assert (t.status, t.retries_left) == (TaskStatus.READY, 0)
    assert "timed out" in t.error


def test_tick_with_earlier_time_does_not_expire() -> None:
    c = Cluster()
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a", timeout_ms=100, retries=1)]))
    c.ok(c.assign(("r1", "a", "n1")))
    t = c.task("r1", "a")
    for ts in (T0 - 500, T0, T0 + 50, T0 + 99):
        res = c.ok(c.tick(ts))
        assert res == TickResult(expired=0, time_ms=max(T0, ts))
        assert t.status is TaskStatus.RUNNING
    res = c.ok(c.tick(T0 + 100))
    assert res == TickResult(expired=1, time_ms=T0 + 100)
    assert (t.status, t.attempt, t.retries_left, t.node) == (TaskStatus.READY, 1, 0, "")
    assert c.st.next_deadline_ms() is None
    c.unchanged(c.complete("r1", "a", node="n1"), Code.ABORTED)  # the timed-out attempt's result
    # Attempt 2 times out too, with no retry left: the run fails.
    c.ok(c.assign(("r1", "a", "n1"), ts=T0 + 200))
    assert t.deadline_ms == T0 + 300
    assert expect(c.ok(c.tick(T0 + 299)), TickResult).expired == 0
    assert expect(c.ok(c.tick(T0 + 1000)), TickResult).expired == 1
    assert c.st.runs["r1"].status is RunStatus.FAILED


def test_tasks_without_timeout_never_expire() -> None:
    c = Cluster()
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    assert expect(c.ok(c.tick(T0 + limits.MAX_TIMEOUT_MS * 10)), TickResult).expired == 0
    assert c.task("r1", "a").status is TaskStatus.RUNNING


def test_finished_task_does_not_time_out() -> None:
    c = Cluster()
    c.ok(c.register("n1"))
    c.ok(c.submit("r1", [spec("a", timeout_ms=10), spec("b", "a", timeout_ms=10)]))
    c.run_task("r1", "a")
    assert expect(c.ok(c.tick(T0 + 1000)), TickResult).expired == 0
    assert c.task("r1", "a").status is TaskStatus.SUCCEEDED


# ---- node restarts ---------------------------------------------------------------


def test_reregister_with_new_incarnation_requeues_without_consuming_retries(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=1, timeout_ms=1000), spec("b"), spec("l", agent="llm")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "b", "n1"), ("r1", "l", "n2")))
    a, b, lt = c.task("r1", "a"), c.task("r1", "b"), c.task("r1", "l")
    old_a = c.complete("r1", "a")
    c.ok(c.register("n1", incarnation="inc-2"))
    assert (a.status, a.attempt, a.retries_left, a.node) == (TaskStatus.READY, 1, 1, "")
    assert b.status is TaskStatus.READY and "restarted" in b.error
    assert lt.status is TaskStatus.RUNNING  # n2's task is untouched
    assert c.st.index_snapshot()[1] == {"n2": [("r1", "l")]}
    assert c.st.next_deadline_ms() is None
    c.unchanged(old_a, Code.ABORTED)
    c.ok(c.assign(("r1", "a", "n1")))
    assert (a.attempt, a.token) == (2, c.st.revision)
    c.unchanged(old_a, Code.ABORTED)
    c.ok(c.complete("r1", "a"))
    assert a.status is TaskStatus.SUCCEEDED


def test_reregister_with_same_incarnation_keeps_tasks(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    c.ok(c.register("n1", slots=8))
    assert c.task("r1", "a").status is TaskStatus.RUNNING
    assert c.st.members["n1"].slots == 8


def test_requeue_order_is_the_same_on_a_restored_replica(c: Cluster) -> None:
    # Tasks assigned in an order that differs from run-id order: a restored replica
    # rebuilds its indexes in another order and must still requeue identically.
    c.ok(c.submit("zz", [spec("a"), spec("b")]))
    c.ok(c.submit("aa", [spec("a"), spec("b")]))
    c.ok(c.assign(("zz", "b", "n1")))
    c.ok(c.assign(("aa", "a", "n1"), ("zz", "a", "n1")))
    c.ok(c.assign(("aa", "b", "n1")))
    replica = StateMachine()
    replica.restore(c.sm.snapshot())
    cmd = c.register("n1", incarnation="inc-2")
    c.ok(cmd)
    replica.apply(cmd)
    assert replica.digest() == c.sm.digest()
    assert replica.state.index_snapshot() == c.st.index_snapshot()


def test_node_down_requeues_its_attempts_and_blocks_assignment(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a", retries=0), spec("l", agent="llm")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "l", "n2")))
    a = c.task("r1", "a")
    old_a = c.complete("r1", "a")
    rev = c.st.revision
    c.ok(NodeDown(c.rid(), c.ts, "n1", "inc-1", "no heartbeat"))
    assert c.st.members["n1"].up is False
    assert (a.status, a.attempt, a.retries_left, a.node) == (TaskStatus.READY, 1, 0, "")
    assert "no heartbeat" in a.error
    assert c.task("r1", "l").status is TaskStatus.RUNNING
    assert MemberChanged(rev + 1, "n1", False) in c.events
    c.unchanged(old_a, Code.ABORTED)
    res = c.unchanged(c.assign(("r1", "a", "n1")), Code.FAILED_PRECONDITION)
    assert "not an up member" in res.message
    # A second node_down for the same incarnation, or for a node that is not a member.
    c.unchanged(NodeDown(c.rid(), c.ts, "n1", "inc-1", ""), Code.FAILED_PRECONDITION)
    c.unchanged(NodeDown(c.rid(), c.ts, "ghost", "inc-1", ""), Code.NOT_FOUND)
    # The node comes back (same process after a partition): up again, and it can run a.
    c.ok(c.register("n1"))
    c.ok(c.assign(("r1", "a", "n1")))
    assert (a.attempt, a.token) == (2, c.st.revision)


def test_late_node_down_does_not_knock_out_a_new_incarnation(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.register("n1", incarnation="inc-2"))
    c.ok(c.assign(("r1", "a", "n1")))
    c.unchanged(NodeDown(c.rid(), c.ts, "n1", "inc-1", "stale view"), Code.FAILED_PRECONDITION)
    assert c.st.members["n1"].up and c.task("r1", "a").status is TaskStatus.RUNNING


# ---- the wire ------------------------------------------------------------------


def all_commands() -> list[Command]:
    return [
        RegisterNode("r1", 1, "n1", "h:1", "h:2", ("echo", "llm"), 4, "inc"),
        SubmitRun(
            "r2",
            2,
            "run",
            "key",
            (spec("a", input={"x": [1, 2.5, None, True]}), spec("b", "a")),
            3,
            "name",
            "me",
        ),
        Tick("r3", 3),
        Assign("r4", 4, (Assignment("run", "a", "n1", 1),)),
        Complete("r5", 5, "n1", (Completion("run", "a", 1, 7, {"ok": "yes"}),)),
        Fail("r6", 6, "n1", (Failure("run", "a", 1, 7, "err", False),)),
        CancelRun("r7", 7, "run", "why"),
        NodeDown("r8", 8, "n1", "inc", "gone"),
        Barrier("r9", 9),
    ]


@pytest.mark.parametrize("cmd", all_commands(), ids=lambda cmd: type(cmd).__name__)
def test_command_roundtrip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd
    assert decode_batch(encode_batch([cmd, cmd])) == [cmd, cmd]


def test_apply_batch_applies_in_order() -> None:
    sm = StateMachine()
    payload = encode_batch(
        [
            RegisterNode("q1", T0, "n1", "", "", ("echo",), 2, "i"),
            SubmitRun("q2", T0, "r1", "", (spec("a"), spec("b", "a")), 0, "", ""),
            Assign("q3", T0 + 1, (Assignment("r1", "a", "n1", 1),)),
            Complete("q4", T0 + 2, "n1", (Completion("r1", "a", 1, 3, "x"),)),
            Complete("q5", T0 + 2, "n1", (Completion("r1", "a", 1, 3, "x"),)),  # new rid, stale now
        ]
    )
    results, events = sm.apply_batch(payload)
    assert [r.code for r in results] == [Code.OK, Code.OK, Code.OK, Code.OK, Code.ABORTED]
    assert sm.state.revision == 4
    assert TaskChanged(4, "r1", "b", TaskStatus.READY, 0, "") in events
    again, events = sm.apply_batch(payload)  # a replayed entry: deduplicated, the stale one still stale
    assert again == results and events == []


def msgpack_of(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


GOOD = RegisterNode("g1", T0, "n1", "", "", ("echo",), 1, "i").to_map()

GARBAGE: list[bytes] = [
    b"",
    b"\xc1",
    b"not msgpack at all",
    b"\x93\x01",  # truncated array
    msgpack_of(7),
    msgpack_of({"t": "tick"}),
    msgpack_of([1, "x", None, [], {}]),
    msgpack_of([{**GOOD, "v": 2}]),
    msgpack_of([{**GOOD, "t": "drop_tables"}]),
    msgpack_of([{**GOOD, "slots": "4"}]),
    msgpack_of([{**GOOD, "slots": True}]),
    msgpack_of([{**GOOD, "agents": [1]}]),
    msgpack_of([{k: v for k, v in GOOD.items() if k != "rid"}]),
    msgpack_of([{"t": "assign", "v": 1, "rid": "x", "ts": 1, "items": [["r", "t", "n"]]}]),
    msgpack_of([{"t": "assign", "v": 1, "rid": "x", "ts": 1, "items": [["r", "t", "n", "1"]]}]),
    msgpack_of([{"t": "complete", "v": 1, "rid": "x", "ts": 1, "node_id": "n", "items": [[1, 2, 3, 4, 5]]}]),
    msgpack_of(
        [{"t": "fail", "v": 1, "rid": "x", "ts": 1, "node_id": "n", "items": [["r", "t", 1, 1, "e", 1]]}]
    ),
    msgpack_of(
        [
            {
                "t": "submit_run",
                "v": 1,
                "rid": "x",
                "ts": 1,
                "run_id": "r",
                "key": "",
                "priority": 0,
                "name": "",
                "submitter": "",
                "tasks": [{"id": "a"}],
            }
        ]
    ),
    msgpack_of([{1: 2, "t": "tick", "v": 1, "rid": 5, "ts": 1.5}]),
]


@pytest.mark.parametrize("payload", GARBAGE)
def test_apply_batch_never_raises_on_garbage(payload: bytes) -> None:
    c = Cluster()
    c.ok(c.register("n1"))
    before = c.sm.digest()
    results, events = c.sm.apply_batch(payload)
    assert results and all(r.code is Code.INVALID_ARGUMENT for r in results), results
    assert events == [] and c.sm.digest() == before


def test_apply_batch_fuzz_never_raises() -> None:
    rng = random.Random(1234)
    valid = encode_batch(all_commands())
    c = Cluster()
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        payload = bytes(data) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 64))
        results, _ = c.sm.apply_batch(payload)
        assert results and all(isinstance(r, Result) for r in results)
    check_indexes(c.sm)


def test_apply_never_raises_on_unencodable_values(c: Cluster) -> None:
    c.unchanged(c.submit("r1", [spec("a", input={1, 2})]))
    c.ok(c.submit("r1", [spec("a")]))
    c.ok(c.assign(("r1", "a", "n1")))
    # An output that is not JSON fails the attempt (like an oversized one): no reader could encode it.
    c.ok(c.complete("r1", "a", output=object()))
    t = c.task("r1", "a")
    assert (t.status, t.output) == (TaskStatus.FAILED, None)
    assert "not a JSON value" in t.error
    res, _ = c.sm.apply(Undecodable("bad"))  # type: ignore[arg-type]
    assert res.code is Code.INVALID_ARGUMENT


def test_a_request_id_reused_by_another_kind_of_command_is_refused(c: Cluster) -> None:
    c.ok(c.submit("r1", [spec("a")], rid="same"))
    # A cancel that reuses the submit's id must not be handed the submit's result.
    res = c.unchanged(CancelRun("same", c.ts, "r1", "why"), Code.INVALID_ARGUMENT)
    assert "already used by a submit_run command" in res.message
    assert expect(c.apply(c.submit("r1", [spec("a")], rid="same")), SubmitRunResult).created is True


def test_dedup_forgets_request_ids_after_retention(c: Cluster) -> None:
    cmd = c.submit("r1", [spec("a")], rid="old")
    c.ok(cmd)
    c.ok(c.tick(c.ts + limits.DEDUP_RETENTION_MS - 1))
    assert "old" in c.st.dedup
    c.ok(c.tick(c.ts + limits.DEDUP_RETENTION_MS + 1))
    assert "old" not in c.st.dedup


# ---- snapshot and indexes -------------------------------------------------------


def test_indexes_equal_a_rebuild_through_a_whole_scenario() -> None:
    c = Cluster()  # every Cluster.apply runs check_indexes; this scenario touches every transition
    c.ok(c.register("n1", slots=2))
    c.ok(c.register("n2", agents=("echo", "llm")))
    c.ok(
        c.submit(
            "r1",
            [
                spec("a", priority=5, timeout_ms=50, retries=2),
                spec("b", priority=-1),
                spec("c", "a", "b"),
                spec("d", agent="llm", timeout_ms=10),
            ],
        )
    )
    c.ok(c.submit("r2", [spec("x", retries=1, retry_backoff_ms=10), spec("y", "x")]))
    c.ok(c.assign(("r1", "a", "n1"), ("r2", "x", "n1"), ("r1", "d", "n2")))
    c.ok(c.fail("r2", "x"))
    c.ok(c.tick(T0 + 20))  # d times out with no retry left: r1 fails, a is cancelled
    assert c.st.runs["r1"].status is RunStatus.FAILED
    c.ok(c.assign(("r2", "x", "n2")))
    c.ok(c.register("n2", agents=("echo", "llm"), incarnation="inc-2"))
    c.ok(c.assign(("r2", "x", "n1")))
    c.ok(c.complete("r2", "x"))
    c.ok(c.submit("r3", [spec("p"), spec("q")]))
    c.ok(CancelRun(c.rid(), c.ts, "r3", ""))
    state = ClusterState.decode(c.st.encode())
    assert state.encode() == c.st.encode()
    assert state.index_snapshot() == c.st.index_snapshot()
    state.rebuild_indexes()
    assert state.index_snapshot() == c.st.index_snapshot()


def test_restored_replica_continues_identically() -> None:
    a, b = Cluster(), Cluster()
    log: list[Command] = [
        a.register("n1"),
        a.submit("r1", [spec("x", timeout_ms=100, retries=1), spec("y", "x")]),
    ]
    for cmd in log:
        a.ok(cmd)
    b.sm.restore(a.sm.snapshot())
    more: list[Command] = [a.assign(("r1", "x", "n1")), a.tick(T0 + 500)]
    for cmd in more:
        a.ok(cmd)
        b.ok(cmd)
    assert a.sm.digest() == b.sm.digest()


def test_snapshot_format_is_checked() -> None:
    data = msgpack_of([99])
    with pytest.raises(ValueError, match="snapshot format 99"):
        ClusterState.decode(data)


# ---- purity ------------------------------------------------------------------------

CONSENSUS_DIR = Path(consensus.__file__).parent
PURE_MODULES = sorted(p.name for p in CONSENSUS_DIR.glob("*.py"))
"""Every module of raftmesh.consensus but the ``raft`` package (the one that drives pysyncobj)."""
FORBIDDEN = {"time", "random", "datetime", "os", "threading", "asyncio", "grpc", "pysyncobj", "lmdb"}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by ``path``; a relative import of ``.raft`` counts as ``raft``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            modules = [node.module] if node.module else [alias.name for alias in node.names]
            names.update("raft" for m in modules if m.split(".")[0] == "raft")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.add("__import__")
    return names


def test_every_pure_module_is_guarded() -> None:
    # The processors and data layers split out of the state machine are all here, and new
    # modules join automatically (the glob): nothing in the package escapes the check.
    expected = {"machine.py", "results.py", "context.py", "locks.py", "kv.py", "placement.py"}
    assert expected <= set(PURE_MODULES), PURE_MODULES
    assert {"runs.py", "members.py", "ticks.py", "lock_commands.py", "kv_commands.py"} <= set(PURE_MODULES)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_state_machine_modules_are_pure(module: str) -> None:
    roots = {name.split(".")[0] for name in imported_modules(CONSENSUS_DIR / module)}
    bad = roots & (FORBIDDEN | {"__import__", "importlib", "raft"})
    assert not bad, f"{module} imports {bad}"


def test_purity_check_catches_forbidden_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os.path\nfrom time import monotonic\nfrom . import limits\nfrom .raft import RaftMember\n"
    )
    assert {n.split(".")[0] for n in imported_modules(bad)} == {"os", "time", "raft"}
    also = tmp_path / "also.py"
    also.write_text("from . import raft, limits\n")
    assert imported_modules(also) == {"raft"}


def test_apply_checks_run_names_idempotency_keys_and_cancel_reasons_itself(c: Cluster) -> None:
    """What the boundary refuses, apply refuses too: a raw command cannot bypass the API."""
    bad_name = SubmitRun(c.rid(), c.ts, "r1", "", (spec("a"),), 0, "run\x1b[2J", "tester")
    c.unchanged(bad_name, Code.INVALID_ARGUMENT)
    long_name = SubmitRun(
        c.rid(), c.ts, "r1", "", (spec("a"),), 0, "n" * (limits.MAX_RUN_NAME_CHARS + 1), "t"
    )
    c.unchanged(long_name, Code.INVALID_ARGUMENT)
    c.unchanged(c.submit("r1", [spec("a")], key="key\nwith newline"), Code.INVALID_ARGUMENT)
    c.ok(c.submit("r1", [spec("a")]))
    reason = "x" * (limits.MAX_CANCEL_REASON_CHARS + 1)
    c.unchanged(CancelRun(c.rid(), c.ts, "r1", reason), Code.INVALID_ARGUMENT)
