"""Run budgets in the pure state machine: cost, tokens, tasks and seconds stop a run."""

from __future__ import annotations

import math
from typing import Any

import pytest

from raftmesh.consensus import (
    Code,
    Complete,
    Completion,
    Fail,
    RunStatus,
    StateMachine,
    SubmitRun,
    TaskStatus,
    budgets,
    groups,
    limits,
)
from raftmesh.consensus.commands import Budget, Compensation, Failure, RetryTask, TaskSpec, Usage
from raftmesh.consensus.context import ApplyContext
from raftmesh.consensus.state import ClusterState
from raftmesh.errors import InvalidArgument
from raftmesh.node import convert
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from tests.test_machine import Cluster, check_indexes, spec, status


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1", agents=("echo", "undo"), slots=16))
    return cluster


def submit(c: Cluster, run_id: str, tasks: list[TaskSpec], budget: Budget) -> SubmitRun:
    return SubmitRun(c.rid(), c.ts, run_id, "", tuple(tasks), 0, run_id, "tester", budget)


def done(c: Cluster, run_id: str, task_id: str, usage: Usage, output: Any = "out") -> Completion:
    t = c.task(run_id, task_id)
    return Completion(run_id, task_id, t.attempt, t.token, output, usage)


@pytest.mark.parametrize(
    ("budget", "fix"),
    [
        (Budget(max_cost=-1.0), "max_cost must be a finite number between 0"),
        (Budget(max_cost=math.nan), "max_cost must be a finite number"),
        (Budget(max_seconds=math.inf), "max_seconds must be a finite number"),
        (Budget(max_seconds=366 * 24 * 3600.0), "max_seconds must be a finite number between 0"),
        (Budget(max_tokens=-5), "max_tokens must be"),
        (Budget(max_tasks=10**7), "max_tasks must be"),
        (Budget(max_tasks=1), "max_tasks is 1 but the run has 2 tasks"),
    ],
)
def test_a_bad_budget_is_refused_at_submit(c: Cluster, budget: Budget, fix: str) -> None:
    res = c.unchanged(submit(c, "r", [spec("a"), spec("b")], budget), Code.INVALID_ARGUMENT)
    assert fix in res.message


def test_a_completion_that_reaches_max_cost_ends_the_run(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a"), spec("b"), spec("c", "b"), spec("d")], Budget(max_cost=1.0)))
    c.ok(c.assign(("r", "a", "n1"), ("r", "b", "n1"), ("r", "d", "n1")))
    late = c.complete("r", "d")
    c.ok(Complete(c.rid(), c.ts, "n1", (done(c, "r", "a", Usage(cost=0.6)),)))
    assert c.st.runs["r"].status is RunStatus.RUNNING
    c.ok(Complete(c.rid(), c.ts, "n1", (done(c, "r", "b", Usage(cost=0.6), output={"b": 1}),)))
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "BUDGET_EXCEEDED"
    assert run.error == "BUDGET_EXCEEDED: cost 1.20 reached max_cost 1.00"
    # b's work is kept (a saga would compensate it), but nothing follows from it.
    assert c.task("r", "b").output == {"b": 1}
    assert status(c, "r") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.SUCCEEDED,
        "c": TaskStatus.CANCELLED,
        "d": TaskStatus.CANCELLED,  # the running attempt is cancelled
    }
    assert c.st.running.get("n1", {}) == {}
    c.unchanged(late, Code.ABORTED)  # its late report is fenced
    c.unchanged(c.assign(("r", "c", "n1"), attempt=1), Code.FAILED_PRECONDITION)
    # c counts b as ended (a run reopened later must find c ready, not waiting on b for ever),
    # and b's history says its attempt succeeded.
    assert c.task("r", "c").deps_waiting == 0
    assert [a.outcome for a in c.task("r", "b").history] == ["SUCCEEDED"]


def test_the_second_completion_of_one_batch_starts_nothing(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a"), spec("b"), spec("a2", "a"), spec("b2", "b")], Budget(max_cost=1.0)))
    c.ok(c.assign(("r", "a", "n1"), ("r", "b", "n1")))
    c.ok(
        Complete(
            c.rid(), c.ts, "n1", (done(c, "r", "a", Usage(cost=1.5)), done(c, "r", "b", Usage(cost=0.1)))
        )
    )
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.error == "BUDGET_EXCEEDED: cost 1.50 reached max_cost 1.00"
    # a reached the budget; b (the same batch, after it) was cancelled by then: it did not
    # succeed and released nothing downstream. Its usage is still debited.
    assert status(c, "r") == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.CANCELLED,
        "a2": TaskStatus.CANCELLED,
        "b2": TaskStatus.CANCELLED,
    }
    assert run.usage.cost == pytest.approx(1.6)


def test_a_failure_that_reaches_max_tokens_ends_the_run_and_its_retry(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a", retries=3)], Budget(max_tokens=100)))
    c.ok(c.assign(("r", "a", "n1")))
    t = c.task("r", "a")
    usage = Usage(tokens_in=60, tokens_out=40)
    c.ok(Fail(c.rid(), c.ts, "n1", (Failure("r", "a", t.attempt, t.token, "rate limited", True, usage),)))
    run = c.st.runs["r"]
    assert (
        run.status is RunStatus.FAILED and run.error == "BUDGET_EXCEEDED: tokens 100 reached max_tokens 100"
    )
    assert status(c, "r") == {"a": TaskStatus.CANCELLED}  # its retry never starts


def test_usage_below_the_limit_lets_the_run_succeed(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a")], Budget(max_cost=1.0, max_tokens=100, max_tasks=1, max_seconds=60)))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(Complete(c.rid(), c.ts, "n1", (done(c, "r", "a", Usage(10, 20, 0.99)),)))
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_max_seconds_ends_the_run_through_the_tick(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a"), spec("b", "a")], Budget(max_seconds=2.5)))
    c.ok(c.assign(("r", "a", "n1")))
    late = c.complete("r", "a")
    deadline = c.st.runs["r"].created_ms + 2500
    assert c.st.next_deadline_ms() == deadline  # the leader knows a tick is due then
    c.ok(c.tick(deadline - 1))
    assert c.st.runs["r"].status is RunStatus.RUNNING
    # A replica restored now tracks the same deadline (check_indexes compares the heaps).
    restored = StateMachine(ClusterState.decode(c.sm.snapshot()))
    assert restored.state.next_budget_deadline_ms() == deadline
    tick = c.tick(deadline)
    c.ok(tick)
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "BUDGET_EXCEEDED"
    assert run.error == "BUDGET_EXCEEDED: ran 2.5 s, reached max_seconds 2.5"
    assert status(c, "r") == {"a": TaskStatus.CANCELLED, "b": TaskStatus.CANCELLED}
    c.unchanged(late, Code.ABORTED)
    assert c.st.next_budget_deadline_ms() is None
    restored.apply(tick)
    check_indexes(restored)
    assert restored.digest() == c.sm.digest()  # the restored replica ends the run the same way


def test_a_finished_run_leaves_no_live_deadline(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a")], Budget(max_seconds=10)))
    c.run_task("r", "a")
    assert c.st.next_budget_deadline_ms() is None
    c.ok(c.tick(c.ts + 20_000))
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_a_budget_exceeded_saga_compensates(c: Cluster) -> None:
    undo = Compensation("undo", None)
    tasks = [spec("a", compensate=undo), spec("b", "a")]
    c.ok(submit(c, "r", tasks, Budget(max_cost=1.0)))
    c.run_task("r", "a")
    c.ok(c.assign(("r", "b", "n1")))
    c.ok(Complete(c.rid(), c.ts, "n1", (done(c, "r", "b", Usage(cost=2.0)),)))
    run = c.st.runs["r"]
    assert run.status is RunStatus.COMPENSATING and run.reason == "BUDGET_EXCEEDED"
    # b's completion reached the budget: it succeeded, but it has no compensate step.
    assert status(c, "r")["a~compensate"] is TaskStatus.READY
    c.run_task("r", "a~compensate")
    assert run.status is RunStatus.COMPENSATED and run.reason == "BUDGET_EXCEEDED"


def test_a_dead_letter_of_a_run_whose_budget_is_spent_is_not_requeued(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a"), spec("b")], Budget(max_cost=1.0, max_seconds=60)))
    c.ok(c.assign(("r", "a", "n1"), ("r", "b", "n1")))
    t = c.task("r", "a")
    # A refused output fails the run (TASK_FAILED) with the report's usage over the budget.
    big = "x" * (limits.MAX_TASK_OUTPUT_BYTES + 1)
    c.ok(Complete(c.rid(), c.ts, "n1", (Completion("r", "a", t.attempt, t.token, big, Usage(cost=2.0)),)))
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "TASK_FAILED"
    res = c.unchanged(RetryTask(c.rid(), c.ts, run_id="r", task_id="a", attempt=1), Code.FAILED_PRECONDITION)
    assert "cannot run again: BUDGET_EXCEEDED: cost 2.00 reached max_cost 1.00" in res.message
    # max_seconds: a retry after the deadline is refused as well.
    c.ok(submit(c, "s", [spec("a")], Budget(max_seconds=1)))
    c.ok(c.assign(("s", "a", "n1")))
    c.ok(c.fail("s", "a", retryable=False))
    late = RetryTask(c.rid(), c.st.runs["s"].created_ms + 1000, run_id="s", task_id="a", attempt=1)
    assert "its max_seconds 1 ran out" in c.unchanged(late, Code.FAILED_PRECONDITION).message
    ok = RetryTask(c.rid(), c.ts, run_id="s", task_id="a", attempt=1)
    c.ok(ok)  # within it: requeued, and its deadline tracked again (check_indexes compares)
    assert c.st.next_budget_deadline_ms() == c.st.runs["s"].created_ms + 1000


def test_max_tasks_counts_children(c: Cluster) -> None:
    c.ok(submit(c, "r", [spec("a"), spec("b")], Budget(max_tasks=3)))
    run = c.st.runs["r"]
    assert budgets.tasks_over(run, 1) == ""
    groups.add_child(ApplyContext(c.st, c.ts), run, run.tasks["a"], spec("a#0"), "replica")
    why = budgets.tasks_over(run, 1)
    assert why == "BUDGET_EXCEEDED: max_tasks is 3; the run has 3 tasks and would add 1"


def test_stale_budget_deadlines_are_compacted(c: Cluster) -> None:
    for i in range(40):
        c.ok(submit(c, f"r{i}", [spec("a")], Budget(max_seconds=3600)))
        c.run_task(f"r{i}", "a")  # ended: its deadline entry is stale from now on
    c.ok(submit(c, "live", [spec("a")], Budget(max_seconds=3600)))
    for _ in range(2 * len(c.st.runs) + 64):
        budgets.track(c.st, c.st.runs["r0"])  # pushes a stale entry each time
    # Uncompacted it would hold 41 + 146 entries, none of them at the top yet.
    assert len(c.st.budget_deadlines) <= 2 * len(c.st.runs) + 64
    assert c.st.next_budget_deadline_ms() == c.st.runs["live"].budget_deadline_ms()


def test_max_tasks_at_submit_counts_replicas_and_judges(c: Cluster) -> None:
    """A run whose fixed children alone break max_tasks could never succeed: refused at once."""
    replicated = [spec("v", replicas=3, fusion="vote"), spec("b", replicas=2, fusion="best", judge="echo")]
    res = c.unchanged(submit(c, "r", replicated, Budget(max_tasks=7)), Code.INVALID_ARGUMENT)
    assert "max_tasks is 7 but the run has 8 tasks (replicas and judges included)" in res.message
    c.ok(submit(c, "r", replicated, Budget(max_tasks=8)))
    req = pb.SubmitRunRequest(
        tasks=[pb.TaskSpec(id="v", agent="echo", replicas=3, fusion="vote")], budget=pb.Budget(max_tasks=3)
    )
    with pytest.raises(InvalidArgument, match="max_tasks is 3 but the run has 4 tasks"):
        convert.budget_from_pb(req)
