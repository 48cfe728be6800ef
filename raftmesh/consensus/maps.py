"""``map: SOURCE``: one instance of a task per item of an upstream task's output list.

When a map task may run (``tasks.begin``), ``expand`` reads its source's output: a list
of N items becomes N children ``ID[0]`` ... ``ID[N-1]`` (``groups.add_child``, origin
"map", each with its ``item`` and ``index``) and the task waits in WAITING_CHILDREN.
Each instance is an ordinary task (placed, fenced, retried) with the map task's agent,
input, dependencies and policies; its agent reads the item as ``ctx.item``.

``max_parallel`` (0: no bound) starts the first instances only; every instance that ends
releases the next one in order. Instances are released in index order, one per instance
ended, so the next to release is always ``max_parallel + ended - 1``: no cursor is stored,
and nothing here needs a derived index.

When the last instance ends the map task SUCCEEDS with the list of its instances'
outputs in index order. An instance that fails for good fails the run (as any task).
An empty list succeeds at once with ``[]``. An output that is not a list, a list over
``limits.MAX_MAP_ITEMS``, one that would take the run over ``limits.MAX_TASKS_PER_RUN`` or
copy the spec over ``limits.MAX_MAP_SPEC_BYTES`` fails the map task, and so the run, with an
error that says which; one that would break the run's ``max_tasks`` budget fails the run with
reason BUDGET_EXCEEDED.
"""

from __future__ import annotations

from dataclasses import replace

from . import budgets, groups, limits, tasks
from .context import ApplyContext
from .results import TaskChanged
from .state import RunState, TaskState, TaskStatus

ORIGIN = "map"


def expand(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> bool:
    """``t`` (a map task) may run: start its instances. Returns whether it ended here
    (an empty list: SUCCEEDED, marked), as ``tasks.begin``. A map that fails here fails
    its run and returns False (nothing is left to cascade)."""
    source = run.tasks[t.spec.map]
    # A skipped source (trigger any_succeeded / all_done let the map run anyway) has no items; a
    # spawner waiting for its children (a map spawned with wait=True) has its final output.
    items = [] if source.status is TaskStatus.SKIPPED else source.output
    if not (source.status is TaskStatus.SKIPPED or tasks.output_is_final(source)):
        tasks.fail_task(
            ctx, run, t, f"map: {t.spec.map!r} is {source.status.value}; it has no output yet", rev
        )
        return False
    if not isinstance(items, list):
        kind = "null" if items is None else type(items).__name__
        tasks.fail_task(
            ctx,
            run,
            t,
            f"map: the output of {t.spec.map!r} is {kind}, not a list; a map needs a list to expand",
            rev,
        )
        return False
    if len(items) > limits.MAX_MAP_ITEMS:
        tasks.fail_task(
            ctx,
            run,
            t,
            f"map: the output of {t.spec.map!r} has {len(items)} items; "
            f"a map expands to at most {limits.MAX_MAP_ITEMS}",
            rev,
        )
        return False
    if len(run.tasks) + len(items) > limits.MAX_TASKS_PER_RUN:
        tasks.fail_task(
            ctx,
            run,
            t,
            f"map: the output of {t.spec.map!r} has {len(items)} items; the run has {len(run.tasks)} tasks "
            f"and may have at most {limits.MAX_TASKS_PER_RUN}",
            rev,
        )
        return False
    # Every instance keeps a copy of the spec: bound what the expansion adds to the state.
    spec_size = limits.encoded_size(t.spec.to_map()) if items else 0
    if len(items) * spec_size > limits.MAX_MAP_SPEC_BYTES:
        tasks.fail_task(
            ctx,
            run,
            t,
            f"map: {len(items)} instances of a {spec_size}-byte task spec would be {len(items) * spec_size} "
            f"bytes; the limit is {limits.MAX_MAP_SPEC_BYTES} (pass a reference, not a large input)",
            rev,
        )
        return False
    why = budgets.tasks_over(run, len(items))
    if why:
        t.error = f"map over {t.spec.map!r}: {why}"
        budgets.exceed(ctx, run, t.error, rev)
        return False
    if not items:
        t.output = []
        tasks.mark_ended(ctx, run, t, TaskStatus.SUCCEEDED, rev)
        return True
    t.status = TaskStatus.WAITING_CHILDREN
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, ""))
    # The instance keeps what it runs with; what shapes the group stays on the map task, and so
    # does its compensation (one for the map, as for replicas: ``sagas``).
    base = replace(t.spec, when=None, map="", max_parallel=0, approval=None, compensate=None)
    children = [
        groups.add_child(
            ctx,
            run,
            t,
            replace(base, id=groups.child_id(t.spec.id, ORIGIN, i)),
            ORIGIN,
            item=item,
            index=i,
        )
        for i, item in enumerate(items)
    ]
    first = len(children) if t.spec.max_parallel <= 0 else min(t.spec.max_parallel, len(children))
    for c in children[:first]:
        tasks.make_ready(ctx, run, c, rev, not_before_ms=0)
    return False


def _instance_ended(ctx: ApplyContext, run: RunState, parent: TaskState, child: TaskState, rev: int) -> bool:
    """The ON_CHILD_ENDED rule of map instances: release the next, or collect the outputs."""
    n = len(parent.children)
    ended = n - parent.children_waiting
    if parent.spec.max_parallel > 0:
        nxt = parent.spec.max_parallel + ended - 1
        if nxt < n:
            tasks.make_ready(ctx, run, run.tasks[parent.children[nxt]], rev, not_before_ms=0)
    if parent.children_waiting:
        return False
    parent.output = [
        c.output if c.status is TaskStatus.SUCCEEDED else None
        for c in (run.tasks[cid] for cid in parent.children)
    ]
    return True


groups.ON_CHILD_ENDED[ORIGIN] = _instance_ended
