"""Dead letters: tasks that failed for good while their run is retained, and their requeue.

A task is a dead letter when it is FAILED: it exhausted its retries, or failed
non-retryably, and so failed its run. ``ClusterState.dead_letters`` is a derived
index of them sorted by (finished_ms, run id, task id), maintained where tasks fail
(``tasks.fail_attempt``), are requeued (here) and where runs are evicted
(``tasks.finish_run``), and rebuilt from the tasks on restore. A listing reads it
from the end: newest first in O(limit), with no walk of the retained runs.

``RetryTask`` names the attempt it expects dead. Applied once it requeues; applied
again (a repeated command, or the same request re-proposed under a new id) the task
is no longer dead at that attempt and it answers "already requeued", changing nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from . import approvals, budgets, limits
from .codes import Code
from .commands import RetryTask
from .context import ApplyContext
from .fusion import SUPERSEDED
from .results import Rejected, Result, RetryTaskResult, RunChanged, TaskChanged
from .state import TERMINAL_TASK, ClusterState, RunState, RunStatus, TaskState, TaskStatus
from .tasks import make_ready


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    """One dead letter as a listing shows it (copied out of the state)."""

    run_id: str
    task_id: str
    agent: str
    attempt: int
    error: str
    finished_ms: int


def list_dead_letters(
    st: ClusterState, limit: int, visible: Callable[[str], bool] | None = None
) -> list[DeadLetterView]:
    """The newest ``limit`` dead letters, newest first: O(limit), or O(dead letters skipped)
    with ``visible`` (run namespace -> may the caller see it), filtered while paging."""
    out: list[DeadLetterView] = []
    for finished_ms, run_id, task_id in reversed(st.dead_letters):
        if len(out) >= limit:
            break
        if visible is not None:
            run = st.runs.get(run_id)
            if run is None or not visible(run.namespace):
                continue
        t = st.task(run_id, task_id)
        if t is None or t.status is not TaskStatus.FAILED:  # the index is kept exact; this is a guard
            continue
        out.append(DeadLetterView(run_id, task_id, t.spec.agent, t.attempt, t.error, finished_ms))
    return out


def retry(ctx: ApplyContext, cmd: RetryTask) -> Result:
    st = ctx.state
    why = limits.id_error("run id", cmd.run_id) or limits.task_ref_error("task id", cmd.task_id)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    run = st.runs.get(cmd.run_id)
    if run is None:
        return Rejected(Code.NOT_FOUND, f"run {cmd.run_id!r} not found (never submitted, or evicted)")
    t = run.tasks.get(cmd.task_id)
    if t is None:
        return Rejected(Code.NOT_FOUND, f"run {cmd.run_id!r} has no task {cmd.task_id!r}")
    if t.spec.replicas and t.status is TaskStatus.FAILED:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"task {cmd.task_id!r} of run {cmd.run_id!r} failed because its replicas' quorum was lost; "
            "their failures are final, so it cannot be requeued: submit the run again",
        )
    if t.status is TaskStatus.FAILED and t.spec.map and not t.children:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"task {cmd.task_id!r} of run {cmd.run_id!r} failed to expand its map ({t.error[:200]}); "
            "retrying it would read the same output: rerun its source instead",
        )
    if cmd.attempt <= 0:
        return Rejected(Code.INVALID_ARGUMENT, f"attempt must be >= 1 (got {cmd.attempt})")
    if t.status is TaskStatus.FAILED and not is_dead_letter(st, t.finished_ms, run.run_id, t.spec.id):
        # A replica that failed without failing its run (its group decides): nothing to requeue.
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"task {cmd.task_id!r} of run {cmd.run_id!r} failed without failing its run, so it is not "
            f"a dead letter; its parent {t.parent!r} decides what its failure means",
        )
    if t.status is not TaskStatus.FAILED or t.attempt != cmd.attempt:
        if 0 < cmd.attempt <= t.requeued_attempt:
            return RetryTaskResult(requeued=False, attempt=cmd.attempt, status=t.status)
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"task {cmd.task_id!r} of run {cmd.run_id!r} is not a dead letter at attempt {cmd.attempt}: "
            f"it is {t.status.value} at attempt {t.attempt}",
        )
    if run.status in (RunStatus.COMPENSATING, RunStatus.COMPENSATED, RunStatus.COMPENSATION_FAILED):
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"run {cmd.run_id!r} is {run.status.value}: its compensations ran, so its tasks cannot be "
            "requeued; submit a new run",
        )
    why = budgets.spent(run, ctx.now_ms)
    if why:  # revived, it would start what its budget no longer allows
        return Rejected(Code.FAILED_PRECONDITION, f"run {cmd.run_id!r} cannot run again: {why}")
    rev = ctx.advance()
    st.drop_dead_letters(t.finished_ms, run.run_id)
    # The run is live again: out of the finished list (so it is not evicted while it runs).
    st.finished.pop(run.run_id, None)
    run.status = RunStatus.RUNNING
    run.finished_ms = 0
    run.error = ""
    run.reason = ""
    t.retries_left = t.spec.retries
    t.requeued_attempt = t.attempt
    t.finished_ms = 0
    t.status = TaskStatus.PENDING  # made READY below with the tasks its failure cancelled
    revive(ctx, run, rev, t)
    run.revision = rev
    budgets.track(st, run)
    ctx.emit(RunChanged(rev, run.run_id, RunStatus.RUNNING))
    return RetryTaskResult(requeued=True, attempt=cmd.attempt, status=t.status)


def revive(ctx: ApplyContext, run: RunState, rev: int, requeued: TaskState | None = None) -> None:
    """A finished run reopens (``retry``, ``control.rerun``): the tasks its end cancelled come
    back, and ``requeued`` (already PENDING) with them; ``run.unfinished`` is recounted.

    O(tasks of the run): the run's end cancelled every unfinished task; each goes back to
    PENDING, or READY if its dependencies have succeeded (deps_waiting stayed exact).
    A replica superseded by its quorum stays cancelled; a replicated task waits for its
    replicas again (they follow it in the run's order); so does a spawner whose attempt had
    succeeded and that waited for its children (its output kept: it neither runs nor spawns
    twice). A map instance is READY again only if its map had released it (``_released``).
    """
    unfinished = 0
    waiting: list[TaskState] = []
    gated: list[TaskState] = []
    for other in run.tasks.values():
        if (other.status is TaskStatus.CANCELLED and other.error != SUPERSEDED) or other is requeued:
            if other is not requeued:
                other.error = ""
                other.finished_ms = 0
                other.status = TaskStatus.PENDING
            if (other.spec.replicas and other.children) or (other is not requeued and other.children_waiting):
                other.status = TaskStatus.WAITING_CHILDREN
                waiting.append(other)
            if other is not requeued:
                ctx.emit(TaskChanged(rev, run.run_id, other.spec.id, other.status, other.attempt, ""))
            if other.status is TaskStatus.PENDING and other.deps_waiting == 0 and _released(run, other):
                if approvals.must_wait(other):  # its gate was open or rejected: a new gate
                    gated.append(other)
                else:
                    make_ready(ctx, run, other, rev, not_before_ms=0)
        if other.status not in TERMINAL_TASK:
            unfinished += 1
    for p in waiting:
        p.children_waiting = sum(1 for c in p.children if run.tasks[c].status not in TERMINAL_TASK)
    run.unfinished = unfinished
    for other in gated:
        approvals.open_gate(ctx, run, other, rev)


def is_dead_letter(st: ClusterState, finished_ms: int, run_id: str, task_id: str) -> bool:
    """Whether that FAILED task failed its run (a replica may fail without): O(log n)."""
    i = bisect.bisect_left(st.dead_letters, (finished_ms, run_id, task_id))
    return i < len(st.dead_letters) and st.dead_letters[i] == (finished_ms, run_id, task_id)


def _released(run: RunState, t: TaskState) -> bool:
    """Whether ``t`` may be READY again: a map instance only if its map had released it
    (instances are released in order, one per instance ended: ``maps``)."""
    parent = run.tasks.get(t.parent) if t.origin == "map" else None
    if parent is None or parent.spec.max_parallel <= 0:
        return True
    return t.index < parent.spec.max_parallel + len(parent.children) - parent.children_waiting
