"""Tasks that become several: map instances, replicas, and what an attempt spawned.

A *parent* task waits in WAITING_CHILDREN while its *children* run. A child is an
ordinary ``TaskState`` of the same run (placed, fenced, retried like any task) with
``parent`` set and ``origin`` naming how it came to be; the parent lists it in
``children`` and counts it in ``children_waiting`` while it is one the parent waits for.

When a child ends SUCCEEDED or SKIPPED, ``tasks.cascade`` calls ``child_ended``. The rule
for the child's origin (``ON_CHILD_ENDED``) decides what follows: by default (spawned
tasks) the parent succeeds, keeping its own output, once no child is left to wait for;
a map collects its instances' outputs; replicas fuse. A rule returns the parent when
the parent is now done (``cascade`` marks it SUCCEEDED and carries on from it).

Child ids use characters a submitted id cannot contain, so they never clash with one:
``ID[i]`` for map instances, ``ID#i`` for replicas (``child_id``).
"""

from __future__ import annotations

from collections.abc import Callable

from .commands import TaskSpec
from .context import ApplyContext
from .state import RunState, TaskState, TaskStatus

ChildRule = Callable[[ApplyContext, RunState, TaskState, TaskState, int], bool]
"""(ctx, run, parent, child, rev) -> whether the parent is now done (it succeeds)."""


def _parent_done_when_all_ended(
    ctx: ApplyContext, run: RunState, parent: TaskState, child: TaskState, rev: int
) -> bool:
    return parent.children_waiting == 0 and parent.status is TaskStatus.WAITING_CHILDREN


ON_CHILD_ENDED: dict[str, ChildRule] = {"spawn": _parent_done_when_all_ended}
"""origin -> the rule run when a child of that origin ends SUCCEEDED or SKIPPED."""


def child_ended(ctx: ApplyContext, run: RunState, child: TaskState, rev: int) -> TaskState | None:
    """``child`` ended SUCCEEDED or SKIPPED: the parent, if that completes it, else None."""
    parent = run.tasks.get(child.parent)
    if parent is None or parent.status is not TaskStatus.WAITING_CHILDREN:
        return None  # a spawner that did not wait, or a parent already decided (a fused quorum)
    if parent.children_waiting > 0:
        parent.children_waiting -= 1
    rule = ON_CHILD_ENDED.get(child.origin, _parent_done_when_all_ended)
    return parent if rule(ctx, run, parent, child, rev) else None


def child_id(parent_id: str, origin: str, index: int) -> str:
    """The id of a parent's ``index``-th child of ``origin`` (map: ``ID[i]``, replica: ``ID#i``)."""
    return f"{parent_id}[{index}]" if origin == "map" else f"{parent_id}#{index}"


def add_child(
    ctx: ApplyContext,
    run: RunState,
    parent: TaskState,
    spec: TaskSpec,
    origin: str,
    *,
    waited: bool = True,
    item: object = None,
    index: int = 0,
) -> TaskState:
    """Add a PENDING child to the run (the caller activates it when its dependencies allow).

    Its dependencies must already be tasks of the run: add children in dependency order.

    ``waited``: the parent counts it in ``children_waiting`` (it ends only after the child).
    """
    deps_waiting = sum(
        1
        for d in spec.deps
        if (dt := run.tasks.get(d)) is None or dt.status not in (TaskStatus.SUCCEEDED, TaskStatus.SKIPPED)
    )
    deps_skipped = sum(
        1 for d in spec.deps if (dt := run.tasks.get(d)) is not None and dt.status is TaskStatus.SKIPPED
    )
    child = TaskState(
        spec=spec,
        status=TaskStatus.PENDING,
        deps_waiting=deps_waiting,
        dependents=[],
        retries_left=spec.retries,
        deps_skipped=deps_skipped,
        parent=parent.spec.id,
        origin=origin,
        item=item,
        index=index,
        depth=parent.depth + (origin == "spawn"),
    )
    run.tasks[spec.id] = child
    # Every dependency lists the child, ended or not: a rerun of an ended one resets the child
    # with it (``control``), as it resets a submitted dependent.
    for d in spec.deps:
        dt = run.tasks.get(d)
        if dt is not None:
            dt.dependents.append(spec.id)
    parent.children.append(spec.id)
    if waited:
        parent.children_waiting += 1
    run.unfinished += 1
    ctx.note("child", run.run_id, spec.id, f"{origin}:{parent.spec.id}")
    return child
