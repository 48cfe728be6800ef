"""Tasks an attempt adds to its own run (``ctx.spawn``), applied with its completion.

A ``Completion`` may carry ``spawn`` (task specs) and ``spawn_wait``. ``runs.complete``
asks ``check`` about every spawning item before the command changes anything; an invalid
fragment fails that attempt (not retried) with the reason, a fragment over the run's
``max_tasks`` budget ends the run (``budgets.exceed``), and a valid one is added by
``add`` in the same revision as the completion. A fenced completion is refused whole, and
a retried command (same request id) is answered from the dedup table: neither spawns.

Spawned tasks are children of the spawner (``groups.add_child``, origin ``spawn``), one
spawn level deeper (``TaskState.depth``). They may depend on each other, on the spawner
(they read its output) and on tasks of the run that already SUCCEEDED. With ``wait`` the
spawner keeps its output and waits in WAITING_CHILDREN until every task it spawned has
ended; then it SUCCEEDS (the ``spawn`` rule in ``groups``) and its dependents run. They
receive the spawner's own output as its upstream: a spawned task's output is read by the
tasks that depend on it. Without ``wait`` the spawner SUCCEEDS at once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from . import budgets, limits
from .commands import TaskSpec
from .context import ApplyContext
from .dag import DagError, validate
from .groups import add_child
from .results import TaskChanged
from .state import ClusterState, RunState, RunStatus, TaskState, TaskStatus
from .tasks import activate, attempt_succeeded, cascade, fail_attempt, succeed

GROWING_RUN = (RunStatus.RUNNING, RunStatus.PAUSED)
"""Run statuses in which an attempt may add tasks (not while compensating or ended)."""


@dataclass
class Claims:
    """What earlier items of the same command spawn in one run (they are not applied yet)."""

    ids: set[str] = field(default_factory=set)
    size: int = 0
    """Encoded bytes of their specs."""
    offered: Mapping[str, Collection[tuple[str, ...]]] | None = None
    """``ClusterState.offered_capabilities``, computed once per command (O(members x types))."""

    @property
    def count(self) -> int:
        return len(self.ids)


class _Outside:
    """The ids a spawned task may depend on besides its fragment's: the spawner, SUCCEEDED tasks."""

    def __init__(self, run: RunState, spawner_id: str) -> None:
        self._run = run
        self._spawner_id = spawner_id

    def __contains__(self, task_id: object) -> bool:
        if task_id == self._spawner_id:
            return True
        t = self._run.tasks.get(task_id) if isinstance(task_id, str) else None
        return t is not None and t.status is TaskStatus.SUCCEEDED


def check(
    st: ClusterState, run: RunState, spawner: TaskState, specs: Sequence[TaskSpec], claims: Claims
) -> str:
    """Why the spawner's running attempt may not add ``specs`` to the run ("" if it may).

    O(size of the fragment + the cluster's agent offers); the budget is ``budgets.tasks_over``'s.
    """
    sid = spawner.spec.id
    if run.status not in GROWING_RUN:
        return f"run {run.run_id!r} is {run.status.value}; only a running run takes spawned tasks"
    if len(specs) > limits.MAX_SPAWN_TASKS:
        return f"{len(specs)} tasks spawned at once; the limit is {limits.MAX_SPAWN_TASKS}"
    if spawner.depth + 1 > limits.MAX_SPAWN_DEPTH:
        return (
            f"task {sid!r} is itself at spawn depth {spawner.depth}; spawned tasks may nest at most "
            f"{limits.MAX_SPAWN_DEPTH} levels deep"
        )
    total = len(run.tasks) + claims.count + budgets.fixed_tasks(specs)
    if total > limits.MAX_TASKS_PER_RUN:
        return f"the run would have {total} tasks; the limit is {limits.MAX_TASKS_PER_RUN}"
    ids = {t.id for t in specs}
    outside = _Outside(run, sid)
    for t in specs:
        if t.id in run.tasks or t.id in claims.ids:
            return f"task id {t.id[:40]!r} is already a task of run {run.run_id!r}; spawned ids must be new"
        for d in t.deps:
            if d not in ids and d not in outside:
                return (
                    f"task {t.id[:40]!r} depends on {d[:40]!r}, which is neither a spawned task, the "
                    f"spawner {sid!r} nor a task of the run that has succeeded"
                )
    if claims.offered is None:
        claims.offered = st.offered_capabilities()
    try:
        validate(specs, claims.offered, outside)
    except DagError as exc:
        return str(exc)
    size = spec_bytes(specs)
    if run.spawned_bytes + claims.size + size > limits.MAX_SPAWNED_BYTES_PER_RUN:
        return (
            f"the run's spawned tasks would be {run.spawned_bytes + claims.size + size} bytes encoded; "
            f"the limit is {limits.MAX_SPAWNED_BYTES_PER_RUN} (store large inputs elsewhere and pass references)"
        )
    return ""


def spec_bytes(specs: Sequence[TaskSpec]) -> int:
    return sum(limits.encoded_size(t.to_map()) for t in specs)


def claim(claims: Claims, specs: Sequence[TaskSpec]) -> None:
    claims.ids.update(t.id for t in specs)
    claims.size += spec_bytes(specs)


def add(
    ctx: ApplyContext,
    run: RunState,
    spawner: TaskState,
    output: object,
    specs: Sequence[TaskSpec],
    wait: bool,
    rev: int,
) -> None:
    """The spawner's running attempt succeeded with ``output`` and adds ``specs`` (``check``ed).

    ``check`` ran before the command applied anything: an earlier item of the same command may
    have grown the run since (a map expanded, replicas started). Over the run's task limit the
    attempt fails (not retried); over ``max_tasks`` the spawner succeeds without spawning and the run
    ends, as ``check`` would have said.
    """
    n = budgets.fixed_tasks(specs)
    if len(run.tasks) + n > limits.MAX_TASKS_PER_RUN:
        why = f"spawn refused: the run would have {len(run.tasks) + n} tasks; the limit is {limits.MAX_TASKS_PER_RUN}"
        fail_attempt(ctx, run, spawner, why, retryable=False, rev=rev)
        return
    over = budgets.tasks_over(run, n)
    if over:  # as runs.complete's own check: the work is kept (a saga compensates it), nothing spawns
        budgets.succeed_over(ctx, run, spawner, output, over, rev)
        return
    run.spawned_bytes += spec_bytes(specs)
    sid = spawner.spec.id
    if wait:
        attempt_succeeded(ctx, run, spawner, output)
        spawner.status = TaskStatus.WAITING_CHILDREN
        run.revision = rev
        ctx.emit(TaskChanged(rev, run.run_id, sid, spawner.status, spawner.attempt, spawner.node))
    children = [
        add_child(ctx, run, spawner, spec, "spawn", waited=wait) for spec in _in_dependency_order(specs)
    ]
    if wait:
        # The spawner's output is final already: a child that reads it does not wait for it
        # (the spawner waits for the child: counting it would deadlock both).
        reading = {c.spec.id for c in children if sid in c.spec.deps}
        for child in children:
            if child.spec.id in reading:
                child.deps_waiting -= 1
        if reading:
            spawner.dependents = [d for d in spawner.dependents if d not in reading]
    else:
        succeed(ctx, run, spawner, output, rev)  # its dependents, and children reading it, move on
    for child in children:
        if child.status is TaskStatus.PENDING and child.deps_waiting == 0 and activate(ctx, run, child, rev):
            cascade(ctx, run, child, rev)


def _in_dependency_order(specs: Sequence[TaskSpec]) -> list[TaskSpec]:
    """``specs`` with every task after its dependencies among them (stable; ``check`` ruled out cycles)."""
    by_id = {t.id: t for t in specs}
    placed: set[str] = set()
    out: list[TaskSpec] = []
    for root in specs:
        stack = [(root, iter(root.deps))]
        while stack:
            t, deps = stack[-1]
            if t.id in placed:
                stack.pop()
                continue
            d = next(deps, None)
            if d is None:
                placed.add(t.id)
                out.append(t)
                stack.pop()
            elif d in by_id and d not in placed:
                stack.append((by_id[d], iter(by_id[d].deps)))
    return out
