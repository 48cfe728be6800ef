"""Run budgets: hard limits on what a run may spend (``Budget`` on ``SubmitRun``).

``max_tasks`` counts every task the run has, map instances, replicas and spawned tasks
included: whatever adds tasks asks ``tasks_over`` first. ``max_cost``/``max_tokens`` are
checked where accepted usage is debited (``runs.complete``/``runs.fail``, right after
``usage.charge``), so a run is stopped by the report that reaches the limit (usage >=
limit: nothing more may start at the ceiling) and by no later one. ``max_seconds`` runs
from submission, in state time: ``ClusterState.budget_deadlines`` (a derived heap) tells
the leader when a tick is due, and the tick ends the run (``expire``).

A run that reaches a limit ends FAILED with reason BUDGET_EXCEEDED and the figures
(``exceed``): nothing more of it starts, its running attempts are cancelled (their late
reports are fenced). Only a RUNNING or PAUSED run is bound: the compensations of a saga
(COMPENSATING) run whatever they cost, since stopping them would leave the saga half undone.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any, Protocol

from . import limits, tasks
from .breakers import record_outcome
from .commands import Budget
from .context import ApplyContext
from .state import BUDGET_BOUND, ClusterState, RunState, RunStatus, TaskState, TaskStatus

BUDGET_EXCEEDED = "BUDGET_EXCEEDED"

BOUND = BUDGET_BOUND
"""Runs whose budget is enforced (RUNNING, PAUSED)."""


class _Fixed(Protocol):
    """A submitted task (``TaskSpec`` or its protobuf): what it adds to the run for sure."""

    @property
    def replicas(self) -> int: ...

    @property
    def judge(self) -> str: ...


def fixed_tasks(specs: Iterable[_Fixed]) -> int:
    """Tasks a run will have whatever its outputs: each task, its replicas and its judge (map
    instances and spawned tasks depend on outputs, so only ``tasks_over`` can count them)."""
    return sum(1 + t.replicas + (1 if t.judge else 0) for t in specs)


def problem(b: Budget, n_tasks: int) -> str:
    """What is wrong with a submitted budget for a run that has ``n_tasks`` tasks for sure
    (``fixed_tasks``) ("" if nothing): a max_tasks below it could never succeed."""
    figures: list[tuple[str, Any, float]] = [
        ("max_tasks", b.max_tasks, limits.MAX_BUDGET_TASKS),
        ("max_seconds", b.max_seconds, limits.MAX_BUDGET_SECONDS),
        ("max_cost", b.max_cost, limits.MAX_BUDGET_COST),
        ("max_tokens", b.max_tokens, limits.MAX_BUDGET_TOKENS),
    ]
    for name, v, most in figures:
        if not ((isinstance(v, int) or math.isfinite(v)) and 0 <= v <= most):
            return f"budget {name} must be a finite number between 0 (no limit) and {most:g}; got {v!r}"
    if b.max_tasks and n_tasks > b.max_tasks:
        return (
            f"budget max_tasks is {b.max_tasks} but the run has {n_tasks} tasks (replicas and judges "
            "included); raise max_tasks"
        )
    return ""


def normal(b: Budget | None) -> Budget | None:
    """The budget as the state keeps it: None for no limit, seconds and cost as floats (a
    command built in process may carry ints; its decoded copy on a replica carries floats)."""
    if not b:
        return None
    return Budget(b.max_tasks, float(b.max_seconds), float(b.max_cost), b.max_tokens)


def tasks_over(run: RunState, n: int) -> str:
    """Why adding ``n`` tasks to the run breaks its ``max_tasks`` ("" if it does not)."""
    b = run.budget
    if b is None or not b.max_tasks or len(run.tasks) + n <= b.max_tasks:
        return ""
    return (
        f"{BUDGET_EXCEEDED}: max_tasks is {b.max_tasks}; the run has {len(run.tasks)} tasks and would add {n}"
    )


def usage_over(run: RunState) -> str:
    """Why the run's usage has reached its ``max_cost``/``max_tokens`` ("" if it has not, or is not bound)."""
    return spent(run) if run.status in BOUND else ""


def spent(run: RunState, now_ms: int = 0) -> str:
    """Why the run's budget is used up, whatever its status ("" if it is not): its usage reached
    ``max_cost``/``max_tokens``, or (given ``now_ms``) its ``max_seconds`` passed."""
    b = run.budget
    if b is None:
        return ""
    deadline = run.budget_deadline_ms()
    if now_ms and deadline and now_ms >= deadline:
        return f"{BUDGET_EXCEEDED}: its max_seconds {b.max_seconds:g} ran out"
    if b.max_cost and run.usage.cost >= b.max_cost:
        return f"{BUDGET_EXCEEDED}: cost {run.usage.cost:.2f} reached max_cost {b.max_cost:.2f}"
    tokens = run.usage.tokens_in + run.usage.tokens_out
    if b.max_tokens and tokens >= b.max_tokens:
        return f"{BUDGET_EXCEEDED}: tokens {tokens} reached max_tokens {b.max_tokens}"
    return ""


def exceed(ctx: ApplyContext, run: RunState, why: str, rev: int) -> None:
    """End the run FAILED for its budget (``why`` gives the figures)."""
    ctx.note("budget_exceeded", run.run_id, "", why)
    tasks.finish_run(ctx, run, RunStatus.FAILED, rev, why, reason=BUDGET_EXCEEDED)


def succeed_over(ctx: ApplyContext, run: RunState, t: TaskState, output: Any, why: str, rev: int) -> None:
    """``t``'s completion reached the budget: its work is kept (SUCCEEDED with its output, so a
    saga compensates it) but nothing follows from it (no dependent starts); the run ends.

    Its dependents still count it as ended (``deps_waiting``), so that a run reopened later
    (``RerunTask``, ``RetryTask``) finds their counts exact."""
    record_outcome(ctx, t, ok=True)
    tasks.unrun(ctx, run.run_id, t, "SUCCEEDED")
    t.output = output
    t.error = ""
    t.deadline_ms = 0
    tasks.mark_ended(ctx, run, t, TaskStatus.SUCCEEDED, rev)
    for dep_id in t.dependents:
        run.tasks[dep_id].deps_waiting -= 1
    exceed(ctx, run, why, rev)


def track(st: ClusterState, run: RunState) -> None:
    """Index the run's ``max_seconds`` deadline (a run that becomes RUNNING calls this)."""
    d = run.budget_deadline_ms()
    if d:
        heapq.heappush(st.budget_deadlines, (d, run.run_id))
    # Entries of ended runs go stale and leave only from the top: drop them once they are most
    # of the heap (amortized O(1) per push), so a year-long max_seconds cannot pile them up.
    if len(st.budget_deadlines) > 2 * len(st.runs) + 64:
        st.budget_deadlines = [e for e in st.budget_deadlines if st.budget_live(e)]
        heapq.heapify(st.budget_deadlines)


def expire(ctx: ApplyContext, now: int, rev: int) -> int:
    """End the bound runs whose ``max_seconds`` ``now`` has reached; how many."""
    st = ctx.state
    ended = 0
    while True:
        st.next_budget_deadline_ms()  # drop stale heap entries
        if not st.budget_deadlines or st.budget_deadlines[0][0] > now:
            return ended
        _, run_id = heapq.heappop(st.budget_deadlines)
        run = st.runs[run_id]
        b = run.budget
        assert b is not None  # a live entry has a budget
        ran_s = (now - run.created_ms) / 1000
        exceed(ctx, run, f"{BUDGET_EXCEEDED}: ran {ran_s:.1f} s, reached max_seconds {b.max_seconds:g}", rev)
        ended += 1
