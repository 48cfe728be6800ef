"""Sagas: undoing what a failed or cancelled run did, through its tasks' ``compensate`` steps.

When a run fails (a task failed for good, a rejected approval, its budget) or is cancelled,
``tasks.finish_run`` cancels what is unfinished and asks ``start``. If some task that did
work (``compensable``: it SUCCEEDED, its own attempt succeeded though the run's end cancelled
it, or some of its map instances or replicas SUCCEEDED) declares ``compensate: {agent,
input}``, the run goes COMPENSATING instead of ending: each such task ``X`` gets one compensation task ``X~compensate`` (a child of ``X``
with origin "compensation"; ``~`` cannot appear in a submitted id) that is placed, fenced,
retried and timed out like any task, with ``X``'s retries, backoff, timeout and priority.

Order: the compensation of ``X`` depends on the compensations of the nearest compensable
tasks that ran after ``X`` (its dependents, their dependents, ... through tasks without
``compensate``; the children of a task and the dependents of a child's parent count as
after it), so compensations run in reverse dependency order. Their trigger is
``all_done``: a compensation that fails for good is recorded (FAILED, a dead letter) and
the others go on. When the last one ends (``conclude``) the run ends COMPENSATED if
every compensation succeeded, else COMPENSATION_FAILED, keeping the error and reason it
failed with. Cancelling a COMPENSATING run stops the compensations left (CANCELLED) and
ends it COMPENSATION_FAILED. Budgets do not bind a COMPENSATING run (``budgets.BOUND``).

What a compensating agent receives: ``ctx.input`` is ``{"task": X, "input": X's input,
"compensate": the compensate step's input}``; ``ctx.upstream[X]`` is X's output (X is the
compensation's first dependency), next to the outputs of the compensations it waited for.
"""

from __future__ import annotations

from collections.abc import Iterator

from . import groups, tasks
from .commands import TaskSpec
from .context import ApplyContext
from .results import RunChanged
from .state import ClusterState, RunState, RunStatus, TaskState, TaskStatus

ORIGIN = "compensation"
SUFFIX = "~compensate"

TRIGGERS = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})
"""Run ends that compensate."""
ENDS = frozenset({RunStatus.COMPENSATED, RunStatus.COMPENSATION_FAILED})


def compensation_id(task_id: str) -> str:
    return task_id + SUFFIX


GROUP_ORIGINS = frozenset({"map", "replica"})
"""Children that do a task's own work (its map instances, its replicas), so the task undoes them."""


def compensable(run: RunState, t: TaskState) -> bool:
    """Whether ``t`` did work its ``compensate`` step must undo: it SUCCEEDED; or its own attempt
    succeeded (it has an output) though the run's end cancelled it, as a spawner waiting for its
    children; or it is a map or a replicated task one of whose instances or replicas SUCCEEDED."""
    if t.spec.compensate is None or t.origin == ORIGIN:
        return False
    if t.status is TaskStatus.SUCCEEDED or t.output is not None:
        return True
    return any(
        (c := run.tasks.get(cid)) is not None
        and c.origin in GROUP_ORIGINS
        and c.status is TaskStatus.SUCCEEDED
        for cid in t.children
    )


def start(ctx: ApplyContext, run: RunState, rev: int, error: str, reason: str) -> bool:
    """The run failed or was cancelled (its unfinished tasks are cancelled): make it COMPENSATING
    with its compensation tasks, the first ones READY. False (nothing done) if none is due.

    Once per run: a walk of its tasks and dependency edges, each edge carrying the nearest
    compensable tasks after it (O(tasks + edges) when few tasks compensate).
    """
    ids = {t.spec.id: None for t in run.tasks.values() if compensable(run, t)}
    if not ids:
        return False
    order, after = _reverse_order(run, ids)
    run.status = RunStatus.COMPENSATING
    run.error = error
    run.reason = reason
    run.revision = rev
    ctx.emit(RunChanged(rev, run.run_id, RunStatus.COMPENSATING))
    added: list[TaskState] = []
    for tid in order:  # the most downstream first: a compensation's dependencies exist before it
        x = run.tasks[tid]
        step = x.spec.compensate
        assert step is not None
        spec = TaskSpec(
            id=compensation_id(tid),
            agent=step.agent,
            input={"task": tid, "input": x.spec.input, "compensate": step.input},
            deps=(tid, *(compensation_id(y) for y in after[tid])),
            retries=x.spec.retries,
            priority=x.spec.priority,
            timeout_ms=x.spec.timeout_ms,
            retry_backoff_ms=x.spec.retry_backoff_ms,
            trigger="all_done",
        )
        c = groups.add_child(ctx, run, x, spec, ORIGIN, waited=False)
        if x.status is not TaskStatus.SUCCEEDED:  # cancelled or failed: ended, it is not waited for
            c.deps_waiting -= 1
            x.dependents.remove(c.spec.id)
        added.append(c)
    for c in added:
        if c.deps_waiting == 0 and c.status is TaskStatus.PENDING and tasks.activate(ctx, run, c, rev):
            tasks.cascade(ctx, run, c, rev)
    return True


def conclude(ctx: ApplyContext, run: RunState, rev: int) -> None:
    """Every compensation of a COMPENSATING run has ended: the run ends."""
    ok = all(t.status is TaskStatus.SUCCEEDED for t in steps(run))
    end = RunStatus.COMPENSATED if ok else RunStatus.COMPENSATION_FAILED
    tasks.finish_run(ctx, run, end, rev, run.error, run.reason)


def steps(run: RunState) -> Iterator[TaskState]:
    """The run's compensation tasks, in the order they were created (most downstream first)."""
    return (t for t in run.tasks.values() if t.origin == ORIGIN)


def drop_dead_letters(st: ClusterState, run: RunState) -> None:
    """Forget an evicted compensated run's dead letters: its failed task and failed compensations
    ended at different times (O(its tasks), once, at eviction)."""
    for t in run.tasks.values():
        if t.status is TaskStatus.FAILED:
            st.drop_dead_letters(t.finished_ms, run.run_id)


def _successors(run: RunState, t: TaskState) -> list[str]:
    """Tasks that ran after ``t``: its dependents, its children, and what waited on its parent.

    Not ``t`` itself nor its siblings: a child spawned with ``wait=False`` may depend on its
    spawner, so it and its siblings are among the parent's dependents, yet they did not run
    after one another for that (each would wait on the other's compensation for ever)."""
    out = [*t.dependents, *t.children]
    parent = run.tasks.get(t.parent) if t.parent else None
    if parent is not None:
        out.extend(s for s in parent.dependents if s != t.spec.id and s not in parent.children)
    return [s for s in out if s in run.tasks and run.tasks[s].origin != ORIGIN]


def _reverse_order(run: RunState, ids: dict[str, None]) -> tuple[list[str], dict[str, list[str]]]:
    """(the compensable ``ids`` with every task after its successors, and for each the nearest
    compensable tasks after it). An iterative post-order walk: deterministic (spec order)."""
    near: dict[str, dict[str, None]] = {}
    post: list[str] = []
    for root in ids:
        if root in near:
            continue
        walking = {root}
        stack = [(root, iter(_successors(run, run.tasks[root])))]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                acc: dict[str, None] = {}
                for s in _successors(run, run.tasks[node]):
                    if s not in near:  # still being walked: a cycle; never a compensation waiting on itself
                        continue
                    if s in ids:
                        acc[s] = None
                    else:
                        acc.update(near.get(s, {}))
                near[node] = acc
                post.append(node)
                continue
            if nxt in near or nxt in walking:
                continue
            walking.add(nxt)
            stack.append((nxt, iter(_successors(run, run.tasks[nxt]))))
    order = [tid for tid in post if tid in ids]
    return order, {tid: list(near[tid]) for tid in order}
