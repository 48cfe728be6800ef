"""Pause, resume and rerun in the pure state machine, and the attempt history they leave."""

from __future__ import annotations

import pytest

from raftmesh.consensus import (
    CancelRun,
    Code,
    Complete,
    Completion,
    Fail,
    Failure,
    RunStatus,
    TaskStatus,
    limits,
)
from raftmesh.consensus.commands import PauseRun, ResumeRun, Usage
from raftmesh.consensus.placement import plan_assignments, waiting_reason
from raftmesh.consensus.results import RerunTaskResult, RunControlResult
from raftmesh.consensus.state import TaskState
from tests.test_machine import Cluster, check_indexes, spec, status
from tests.test_spawn import spawning


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1"))
    return cluster


def pause(c: Cluster, run_id: str, cancel_running: bool = False) -> PauseRun:
    return PauseRun(c.rid(), c.ts, run_id, cancel_running)


def resume(c: Cluster, run_id: str) -> ResumeRun:
    return ResumeRun(c.rid(), c.ts, run_id)


def queued(c: Cluster) -> list[tuple[str, str]]:
    return [k for q in c.st.ready.values() for k in q]


def outcomes(t: TaskState) -> list[tuple[int, str]]:
    return [(a.attempt, a.outcome) for a in t.history]


# ---- pause and resume -------------------------------------------------------------


def test_pause_starts_nothing_running_attempts_finish_resume_goes_on(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("b"), spec("c", "a")]))
    c.ok(c.submit("other", [spec("x")]))
    c.ok(c.assign(("r", "a", "n1")))
    res = c.ok(pause(c, "r"))
    assert res == RunControlResult(RunStatus.PAUSED, changed=True, stopped=0)
    assert c.st.runs["r"].status is RunStatus.PAUSED
    # b stays READY but out of the queue: placement and assign leave it alone
    assert status(c, "r")["b"] is TaskStatus.READY and queued(c) == [("other", "x")]
    assert {(a.run_id, a.task_id) for a in plan_assignments(c.st, c.ts, {}, 10)} == {("other", "x")}
    res = c.unchanged(c.assign(("r", "b", "n1")), Code.FAILED_PRECONDITION)
    assert "run is PAUSED" in res.message
    assert waiting_reason(c.st, "r", c.task("r", "b"), c.ts) == "its run is paused (raftmesh resume)"
    # the running attempt finishes; its dependent becomes READY, still held back
    c.ok(c.complete("r", "a"))
    assert status(c, "r")["c"] is TaskStatus.READY and ("r", "c") not in queued(c)
    # pausing again changes nothing
    assert c.unchanged(pause(c, "r")) == RunControlResult(RunStatus.PAUSED, changed=False)
    c.ok(resume(c, "r"))
    assert c.st.runs["r"].status is RunStatus.RUNNING
    assert queued(c) == [("other", "x"), ("r", "b"), ("r", "c")]  # back of the queue
    assert c.unchanged(resume(c, "r")) == RunControlResult(RunStatus.RUNNING, changed=False)
    c.run_task("r", "b")
    c.run_task("r", "c")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_pause_cancel_running_requeues_without_using_retries(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a", retries=0), spec("b", retries=0, locks=(("L", "exclusive"),))]))
    c.ok(c.assign(("r", "a", "n1"), ("r", "b", "n1")))
    old_token = c.task("r", "a").token
    res = c.ok(pause(c, "r", cancel_running=True))
    assert res == RunControlResult(RunStatus.PAUSED, changed=True, stopped=2)
    a = c.task("r", "a")
    assert a.status is TaskStatus.READY and a.retries_left == 0 and "run paused" in a.error
    assert outcomes(a) == [(1, "paused")] and c.st.running.get("n1", {}) == {}
    assert c.st.locks.can_grant("someone", (("L", "exclusive"),), ahead_of=None)  # freed with the attempt
    # the stopped attempt's late report is fenced
    c.unchanged(c.complete("r", "a", node="n1", attempt=1, token=old_token), Code.ABORTED)
    c.ok(resume(c, "r"))
    c.run_task("r", "a")
    c.run_task("r", "b")
    assert c.task("r", "a").attempt == 2 and c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_pause_cancel_running_on_a_paused_run_stops_what_still_runs(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a")]))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(pause(c, "r"))
    res = c.ok(pause(c, "r", cancel_running=True))
    assert res == RunControlResult(RunStatus.PAUSED, changed=True, stopped=1)
    assert c.unchanged(pause(c, "r", cancel_running=True)) == RunControlResult(RunStatus.PAUSED, False)


def test_a_paused_run_whose_last_task_finishes_succeeds(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a")]))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(pause(c, "r"))
    c.ok(c.complete("r", "a"))
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_pause_and_resume_refusals(c: Cluster) -> None:
    c.unchanged(pause(c, "nope"), Code.NOT_FOUND)
    c.unchanged(resume(c, "nope"), Code.NOT_FOUND)
    c.unchanged(pause(c, "bad id!"), Code.INVALID_ARGUMENT)
    c.ok(c.submit("r", [spec("a")]))
    c.ok(CancelRun(c.rid(), c.ts, "r", "x"))
    res = c.unchanged(pause(c, "r"), Code.FAILED_PRECONDITION)
    assert "is CANCELLED: only a RUNNING run can be paused" in res.message
    c.unchanged(resume(c, "r"), Code.FAILED_PRECONDITION)
    c.ok(c.submit("s", [spec("a")]))
    c.st.runs["s"].status = RunStatus.COMPENSATING  # the saga's status; set directly here
    c.unchanged(pause(c, "s"), Code.FAILED_PRECONDITION)


def test_paused_retry_and_lost_node_requeue_stay_out_of_the_queue(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a", retries=2)]))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(pause(c, "r"))
    c.ok(c.fail("r", "a"))
    assert c.task("r", "a").status is TaskStatus.READY and queued(c) == []
    assert outcomes(c.task("r", "a")) == [(1, "FAILED")]


def test_same_request_id_pause_is_applied_once(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a")]))
    c.ok(c.assign(("r", "a", "n1")))
    cmd = pause(c, "r", cancel_running=True)
    first = c.ok(cmd)
    c.ok(resume(c, "r"))
    c.ok(c.assign(("r", "a", "n1")))
    assert c.unchanged(cmd) == first  # the retry does not pause (or stop attempt 2) again
    assert c.st.runs["r"].status is RunStatus.RUNNING and c.task("r", "a").status is TaskStatus.RUNNING


# ---- rerun ------------------------------------------------------------------------


def test_rerun_resets_the_task_and_downstream_keeps_upstream(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("up"), spec("t", "up"), spec("d1", "t"), spec("d2", "d1"), spec("side", "up")]))
    c.run_task("r", "up", output="U")
    c.run_task("r", "t", output="T1")
    c.run_task("r", "d1", output="D1")
    c.ok(c.assign(("r", "d2", "n1")))
    d2_token = c.task("r", "d2").token
    res = c.ok(c.rerun("r", "t"))
    assert res == RerunTaskResult(3, 0, False, TaskStatus.READY, RunStatus.RUNNING)
    st = status(c, "r")
    assert st["up"] is TaskStatus.SUCCEEDED and c.task("r", "up").output == "U"
    assert st["t"] is TaskStatus.READY and st["d1"] is st["d2"] is TaskStatus.PENDING
    assert st["side"] is TaskStatus.READY  # not downstream: untouched
    assert c.task("r", "d1").deps_waiting == 1 and c.task("r", "d2").deps_waiting == 1
    # the superseded output stays readable in the history; the stopped attempt is fenced
    t = c.task("r", "t")
    assert t.output is None and [(a.attempt, a.outcome, a.output) for a in t.history] == [
        (1, "SUCCEEDED", "T1")
    ]
    assert outcomes(c.task("r", "d2")) == [(1, "rerun")]
    c.unchanged(c.complete("r", "d2", node="n1", attempt=1, token=d2_token), Code.ABORTED)
    c.run_task("r", "t", output="T2")
    assert c.task("r", "t").attempt == 2 and status(c, "r")["d1"] is TaskStatus.READY
    c.run_task("r", "d1")
    c.run_task("r", "d2")
    c.run_task("r", "side")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED and c.task("r", "t").output == "T2"


def test_rerun_reopens_a_finished_run(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("b", "a")]))
    c.run_task("r", "a")
    c.run_task("r", "b")
    assert "r" in c.st.finished
    res = c.ok(c.rerun("r", "b"))
    assert isinstance(res, RerunTaskResult) and res.reopened and res.reset == 1
    run = c.st.runs["r"]
    assert run.status is RunStatus.RUNNING and run.finished_ms == 0 and "r" not in c.st.finished
    assert run.unfinished == 1
    c.run_task("r", "b")
    assert run.status is RunStatus.SUCCEEDED and "r" in c.st.finished


def test_rerun_of_the_failed_task_reopens_a_failed_run_with_its_cancelled_tasks(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("f", "a"), spec("g", "f"), spec("p")]))
    c.run_task("r", "a")
    c.ok(c.assign(("r", "f", "n1"), ("r", "p", "n1")))
    c.ok(c.fail("r", "f", retryable=False))
    assert c.st.runs["r"].status is RunStatus.FAILED and status(c, "r")["p"] is TaskStatus.CANCELLED
    assert outcomes(c.task("r", "p")) == [(1, "CANCELLED")]
    # rerunning a task that is not upstream of the failure is refused clearly
    res = c.unchanged(c.rerun("r", "p"), Code.FAILED_PRECONDITION)
    assert "failed at task 'f'" in res.message
    c.ok(c.rerun("r", "a"))  # a is upstream of f
    st = status(c, "r")
    assert (
        st["a"] is TaskStatus.READY
        and st["f"] is st["g"] is TaskStatus.PENDING
        and st["p"] is TaskStatus.READY
    )
    assert c.st.dead_letters == [] and c.st.runs["r"].unfinished == 4
    c.run_task("r", "a")
    c.run_task("r", "f")
    c.run_task("r", "g")
    c.run_task("r", "p")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert outcomes(c.task("r", "f")) == [(1, "FAILED"), (2, "SUCCEEDED")]


def test_rerun_refusals(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("b", "a"), spec("x")]))
    c.unchanged(c.rerun("nope", "a"), Code.NOT_FOUND)
    c.unchanged(c.rerun("r", "nope"), Code.NOT_FOUND)
    c.unchanged(c.rerun("r", ""), Code.INVALID_ARGUMENT)
    res = c.unchanged(c.rerun("r", "a"), Code.FAILED_PRECONDITION)
    assert "is READY: only a task that has ended" in res.message
    c.run_task("r", "a")
    c.ok(c.assign(("r", "x", "n1")))
    c.ok(c.fail("r", "x", retryable=False))
    res = c.unchanged(c.rerun("r", "a"), Code.FAILED_PRECONDITION)
    assert "failed at task 'x'" in res.message and "rerun 'x'" in res.message
    c.ok(c.submit("s", [spec("a")]))
    c.run_task("s", "a")
    c.st.runs["s"].status = RunStatus.COMPENSATED  # the saga's status; set directly here
    res = c.unchanged(c.rerun("s", "a"), Code.FAILED_PRECONDITION)
    assert "compensated" in res.message


def test_rerun_of_a_skipped_task_evaluates_its_condition_again(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("b", "a", when={"path": "a", "op": "==", "value": "go"})]))
    c.run_task("r", "a", output="stop")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    c.ok(c.rerun("r", "a"))
    c.run_task("r", "a", output="go")
    assert status(c, "r")["b"] is TaskStatus.READY


def test_rerun_drops_children_of_reset_tasks(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), spec("m", "a")]))
    c.run_task("r", "a")
    run = c.st.runs["r"]
    m = c.task("r", "m")
    c.ok(c.assign(("r", "m", "n1")))
    c.ok(spawning(c, "r", "m", [spec("s0"), spec("s1")], wait=True))
    assert m.status is TaskStatus.WAITING_CHILDREN and m.children == ["s0", "s1"]
    c.ok(c.assign(("r", "s0", "n1"), ("r", "s1", "n1")))
    token = c.task("r", "s0").token
    s1 = c.task("r", "s1")
    spent = Failure("r", "s1", s1.attempt, s1.token, "boom", True, Usage(5, 1, 0.5))
    c.ok(Fail(c.rid(), c.ts, "n1", (spent,)))  # its report's usage is charged
    res = c.ok(c.rerun("r", "a"))
    assert isinstance(res, RerunTaskResult) and res.reset == 2 and res.dropped == 2
    assert list(run.tasks) == ["a", "m"] and run.unfinished == 2 and m.children == []
    assert m.status is TaskStatus.PENDING and m.children_waiting == 0
    assert [(h.attempt, h.outcome, h.output) for h in m.history] == [(1, "SUCCEEDED", "plan")]
    assert c.st.running.get("n1", {}) == {}
    # the dropped child's running attempt is fenced
    late = Complete(c.rid(), c.ts, "n1", (Completion("r", "s0", 1, token, "late"),))
    res = c.unchanged(late, Code.ABORTED)
    assert "no such task" in res.message
    # what the dropped children spent stays spent: it moves to the reset task they hung from
    assert m.usage == Usage(5, 1, 0.5) and run.usage == Usage(5, 1, 0.5)
    # the spawner runs and spawns again; a child cannot be rerun alone
    c.run_task("r", "a")
    c.ok(c.assign(("r", "m", "n1")))
    c.ok(spawning(c, "r", "m", [spec("s0")], wait=False))
    c.run_task("r", "s0")
    assert run.status is RunStatus.SUCCEEDED
    res = c.unchanged(c.rerun("r", "s0"), Code.FAILED_PRECONDITION)
    assert "is a spawn task of 'm'; rerun 'm' instead" in res.message


def test_a_superseded_replica_is_cancelled_with_what_it_spawned(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("q", replicas=3, fusion="first", quorum=1)]))
    c.ok(c.assign(("r", "q#0", "n1"), ("r", "q#1", "n1")))
    c.ok(spawning(c, "r", "q#0", [spec("sub", "q#0")], wait=True))
    c.ok(c.assign(("r", "sub", "n1")))
    c.ok(c.complete("r", "q#1", "answer"))  # the quorum: q is decided, the rest are superseded
    st = status(c, "r")
    assert st["q"] is TaskStatus.SUCCEEDED and c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert st["q#0"] is st["sub"] is st["q#2"] is TaskStatus.CANCELLED
    assert c.task("r", "sub").error == "superseded: quorum reached" and c.st.running.get("n1", {}) == {}


def test_history_is_bounded_and_records_every_way_an_attempt_ends(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a", retries=limits.MAX_ATTEMPT_HISTORY + 5)]))
    for _ in range(limits.MAX_ATTEMPT_HISTORY + 3):
        c.ts += 3600 * 1000  # past the breaker's cooldown
        c.ok(c.assign(("r", "a", "n1")))
        c.ok(c.fail("r", "a"))
    a = c.task("r", "a")
    assert len(a.history) == limits.MAX_ATTEMPT_HISTORY
    assert a.history[-1].attempt == a.attempt and a.history[0].attempt == 4
    assert all(h.outcome == "FAILED" and h.error == "boom" and h.node == "n1" for h in a.history)


def test_rerun_with_a_retried_request_id_applies_once(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a")]))
    c.run_task("r", "a")
    cmd = c.rerun("r", "a")
    first = c.ok(cmd)
    c.run_task("r", "a")
    assert c.unchanged(cmd) == first
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED and c.task("r", "a").attempt == 2


def test_snapshot_restore_of_paused_and_rerun_runs(c: Cluster) -> None:
    c.ok(c.submit("p", [spec("a"), spec("b")]))
    c.ok(c.assign(("p", "a", "n1")))
    c.ok(pause(c, "p"))
    c.ok(c.submit("q", [spec("a"), spec("b", "a")]))
    c.run_task("q", "a", output={"v": 1})
    c.run_task("q", "b")
    c.ok(c.rerun("q", "a"))
    check_indexes(c.sm)
    c.sm.restore(c.st.encode())
    assert queued(c) == [("q", "a")]
    c.ok(resume(c, "p"))
    assert queued(c) == [("q", "a"), ("p", "b")]
    assert c.task("q", "a").history[0].output == {"v": 1}


def test_a_paused_runs_task_preempts_nothing(c: Cluster) -> None:
    from raftmesh.consensus.commands import Preempt, Preemption

    c.ok(c.submit("low", [spec("v", priority=-5)]))
    c.ok(c.assign(("low", "v", "n1")))
    c.ok(c.submit("hi", [spec("w", priority=5)]))
    c.ok(pause(c, "hi"))
    v = c.task("low", "v")
    res = c.unchanged(
        Preempt(c.rid(), c.ts, (Preemption("low", "v", v.attempt, v.token, "hi", "w"),)),
        Code.FAILED_PRECONDITION,
    )
    assert "run hi is PAUSED" in res.message


@pytest.mark.parametrize("wait", [False, True])
def test_rerun_that_reopens_a_run_brings_spawned_work_back_as_it_was(c: Cluster, wait: bool) -> None:
    """What the run's end cancelled comes back as a retry brings it back: the spawned task runs
    (it is not lost for having a parent) and the spawner, whose attempt succeeded, is not run again."""
    c.ok(c.submit("r", [spec("a"), spec("z")]))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(spawning(c, "r", "a", [spec("s")], wait=wait, output="a-out"))
    c.ok(c.assign(("r", "z", "n1")))
    c.ok(c.fail("r", "z", retryable=False))
    assert status(c, "r")["s"] is TaskStatus.CANCELLED
    res = c.ok(c.rerun("r", "z"))
    assert isinstance(res, RerunTaskResult) and res.reopened and (res.reset, res.dropped) == (1, 0)
    st = status(c, "r")
    a_now = TaskStatus.WAITING_CHILDREN if wait else TaskStatus.SUCCEEDED
    assert (st["a"], st["s"], st["z"]) == (a_now, TaskStatus.READY, TaskStatus.READY)
    assert c.task("r", "a").output == "a-out" and c.task("r", "a").attempt == 1
    assert c.st.runs["r"].unfinished == 2 + wait
    check_indexes(c.sm)
    c.run_task("r", "z")
    assert c.st.runs["r"].status is RunStatus.RUNNING  # s has not run yet
    c.run_task("r", "s")
    run = c.st.runs["r"]
    assert run.status is RunStatus.SUCCEEDED
    assert c.task("r", "a").attempt == 1 and c.task("r", "a").output == "a-out"
    assert status(c, "r") == {"a": TaskStatus.SUCCEEDED, "z": TaskStatus.SUCCEEDED, "s": TaskStatus.SUCCEEDED}


def test_rerun_of_the_task_that_failed_the_run_ignores_a_replica_that_failed_without(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("v", replicas=3, fusion="vote"), spec("z", "v"), spec("y")]))
    c.ok(c.assign(("r", "v#0", "n1")))
    c.ok(c.fail("r", "v#0", retryable=False))  # the quorum is still reachable: v goes on
    c.run_task("r", "v#1", output="A")
    c.run_task("r", "v#2", output="A")
    assert status(c, "r")["v"] is TaskStatus.SUCCEEDED
    c.ok(c.assign(("r", "z", "n1")))
    c.ok(c.fail("r", "z", retryable=False))
    assert c.st.runs["r"].status is RunStatus.FAILED
    res = c.unchanged(c.rerun("r", "y"), Code.FAILED_PRECONDITION)  # still refused, naming z
    assert "failed at task 'z'" in res.message
    res = c.ok(c.rerun("r", "z"))
    assert isinstance(res, RerunTaskResult) and res.reopened
    assert status(c, "r")["v#0"] is TaskStatus.FAILED and status(c, "r")["v"] is TaskStatus.SUCCEEDED
    check_indexes(c.sm)
    c.run_task("r", "z")
    c.run_task("r", "y")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
