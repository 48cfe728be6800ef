"""Validation of a submitted DAG. Pure; errors name what to fix.

The same checks run twice: at the API (so a bad submit never reaches the log) and
in ``apply`` (so the state machine never trusts its input).
"""

from __future__ import annotations

from collections.abc import Collection, Container, Mapping, Sequence

from . import approvals, budgets, conditions, fusion, limits, values
from .commands import TaskSpec


class DagError(ValueError):
    """``kind`` is one of: invalid, cycle, unknown_agent, unserved, unknown_dep, limit."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_id(what: str, value: str) -> None:
    """Raise ``DagError`` unless ``value`` is a valid id (the rule is ``limits.id_error``)."""
    why = limits.id_error(what, value)
    if why:
        raise DagError("limit" if len(value) > limits.MAX_ID_CHARS else "invalid", why)


def validate(
    tasks: Sequence[TaskSpec],
    known_agents: Collection[str] | Mapping[str, Collection[tuple[str, ...]]],
    outside: Container[str] = (),
) -> int:
    """Raise ``DagError`` if the DAG cannot be accepted; else return the encoded size of its
    task specs (as the run limit counts them: a replica's spec once per replica).

    ``known_agents``: the agent types any member (up or down) has offered; as a map
    (``ClusterState.offered_capabilities``) also the capability sets each was offered with,
    so a task whose ``requires`` no member ever offered is refused too.

    ``outside``: ids a task may depend on besides those of ``tasks`` (tasks ``ctx.spawn``
    adds may depend on their spawner and on tasks of the run that already succeeded).
    """
    if not tasks:
        raise DagError("invalid", "a run needs at least one task")
    n_tasks = budgets.fixed_tasks(tasks)
    if n_tasks > limits.MAX_TASKS_PER_RUN:
        raise DagError(
            "limit",
            f"a run has {n_tasks} tasks (replicas and judges included); the limit is {limits.MAX_TASKS_PER_RUN}",
        )
    ids: dict[str, TaskSpec] = {}
    for t in tasks:
        check_id("task id", t.id)
        if t.id in ids:
            raise DagError("invalid", f"task id {t.id!r} is used twice; task ids must be unique in a run")
        ids[t.id] = t
    unknown_agents = sorted(
        {t.agent for t in tasks if t.agent not in known_agents}
        | {t.compensate.agent for t in tasks if t.compensate and t.compensate.agent not in known_agents}
    )
    if unknown_agents:
        offered = ", ".join(sorted(known_agents)) or "none yet"
        raise DagError(
            "unknown_agent",
            f"unknown agent type(s) {', '.join(map(repr, unknown_agents))}; the cluster offers: {offered}",
        )
    run_bytes = 0
    # Checked for the whole run in a few C-level encodings; a run that fails them is checked
    # task by task below, so which error is reported (and where) does not change.
    known_size = _sizes_within(tasks)
    sized = known_size >= 0
    for t in tasks:
        if t.requires:
            _check_requires(t)
            if isinstance(known_agents, Mapping):
                _check_served(t, known_agents[t.agent])
        if len(t.deps) > limits.MAX_DEPS_PER_TASK:
            raise DagError(
                "limit", f"task {t.id!r} has {len(t.deps)} deps; the limit is {limits.MAX_DEPS_PER_TASK}"
            )
        if len(set(t.deps)) != len(t.deps):
            raise DagError("invalid", f"task {t.id!r} lists a dependency twice")
        for d in t.deps:
            if d not in ids and d not in outside:
                raise DagError(
                    "unknown_dep", f"task {t.id!r} depends on {d!r}, which is not a task of this run"
                )
            if d == t.id:
                raise DagError("cycle", f"task {t.id!r} depends on itself (cycle: {t.id} -> {t.id})")
        if not 0 <= t.retries <= limits.MAX_RETRIES:
            raise DagError("limit", f"task {t.id!r}: retries must be between 0 and {limits.MAX_RETRIES}")
        if abs(t.priority) > limits.MAX_PRIORITY:
            raise DagError("limit", f"task {t.id!r}: priority must be within +-{limits.MAX_PRIORITY}")
        if not 0 <= t.timeout_ms <= limits.MAX_TIMEOUT_MS:
            raise DagError(
                "limit", f"task {t.id!r}: timeout_ms must be between 0 and {limits.MAX_TIMEOUT_MS}"
            )
        if not 0 <= t.retry_backoff_ms <= limits.MAX_BACKOFF_MS:
            raise DagError(
                "limit", f"task {t.id!r}: retry_backoff_ms must be between 0 and {limits.MAX_BACKOFF_MS}"
            )
        if t.locks:
            _check_task_locks(t)
        _check_flow(t)
        # fusion.problem of a task with none of the replica keys is None: skipped in O(1).
        bad = fusion.problem(t, known_agents) if _replica_keys(t) else None
        if bad:
            raise DagError(*bad)
        if sized:
            continue
        if t.compensate is not None:
            _check_input(t, "compensate input", t.compensate.input)
        _check_input(t, "input", t.input)
        # Summed as we go, so an oversized run is refused after encoding at most the limit. Each
        # replica keeps a copy of its task's spec.
        run_bytes += limits.encoded_size(t.to_map()) * (1 + t.replicas)
        if run_bytes > limits.MAX_RUN_SPEC_BYTES:
            raise DagError(
                "limit",
                f"the run's tasks are over {limits.MAX_RUN_SPEC_BYTES} bytes encoded (at task {t.id!r}); "
                "store large inputs elsewhere and pass references",
            )
    cycle = find_cycle(tasks)
    if cycle:
        raise DagError("cycle", "the DAG has a cycle: " + describe_cycle(cycle))
    return known_size if sized else run_bytes


def _replica_keys(t: TaskSpec) -> bool:
    return bool(t.replicas or t.fusion or t.quorum or t.weights or t.agents or t.judge)


CYCLE_SHOWN = 8
"""Tasks of a cycle named in an error; the rest are counted (a message must fit a status trailer)."""


def describe_cycle(cycle: Sequence[str]) -> str:
    """``a -> b -> a``; a long cycle shows its first tasks and counts the others."""
    names = [c if len(c) <= 40 else c[:40] + "…" for c in cycle]
    if len(names) <= CYCLE_SHOWN + 1:
        return " -> ".join(names)
    hidden = len(names) - 1 - CYCLE_SHOWN
    return " -> ".join(names[:CYCLE_SHOWN]) + f" -> …({hidden} more) -> " + names[-1]


OFFERS_SHOWN = 4
"""Capability sets quoted when a task's requirement is unserved (a message must fit a trailer)."""


def _check_requires(t: TaskSpec) -> None:
    if len(t.requires) > limits.MAX_CAPABILITIES:
        raise DagError(
            "limit",
            f"task {t.id!r} requires {len(t.requires)} capabilities; the limit is {limits.MAX_CAPABILITIES}",
        )
    for c in t.requires:
        why = limits.id_error(f"task {t.id!r}: capability", c)
        if why:
            raise DagError("invalid", why)
    if len(set(t.requires)) != len(t.requires):
        raise DagError("invalid", f"task {t.id!r} requires a capability twice")


def _check_served(t: TaskSpec, offered: Collection[tuple[str, ...]]) -> None:
    need = set(t.requires)
    if any(need.issubset(caps) for caps in offered):
        return
    shown = sorted(offered)[:OFFERS_SHOWN]
    sets = "; ".join("[" + ", ".join(c[:8]) + (", …" if len(c) > 8 else "") + "]" for c in shown)
    more = f" and {len(offered) - len(shown)} more" if len(offered) > len(shown) else ""
    raise DagError(
        "unserved",
        f"task {t.id!r} requires capabilities [{', '.join(sorted(need))}] of agent {t.agent!r}, "
        f"but no member has ever offered {t.agent!r} with all of them (offered with: {sets}{more}); "
        "drop the missing capabilities from requires, or start a node whose agent offers them",
    )


TRIGGERS = ("all_succeeded", "any_succeeded", "all_done")


def _check_flow(t: TaskSpec) -> None:
    """The workflow keys of one task: ``when``, ``trigger``, ``map`` and ``max_parallel``."""
    _check_map(t)
    if t.trigger and t.trigger not in TRIGGERS:
        raise DagError(
            "invalid", f"task {t.id!r}: trigger {t.trigger!r} must be one of {', '.join(TRIGGERS)}"
        )
    if t.trigger and not t.deps:
        raise DagError("invalid", f"task {t.id!r}: trigger needs deps (it says which of them must succeed)")
    if t.approval is not None:
        why = approvals.spec_error(t.id, t.approval)
        if why:
            raise DagError("invalid", why)
    if t.when is not None:
        why = values.problem(t.when)
        if why:
            raise DagError("invalid", f"task {t.id!r}: when {why}")
        size = limits.encoded_size(t.when)
        if size > limits.MAX_CONDITION_BYTES:
            raise DagError(
                "limit",
                f"task {t.id!r}: when is {size} bytes encoded; the limit is {limits.MAX_CONDITION_BYTES} "
                "(compare against fewer or shorter values)",
            )
        try:
            conditions.check(t.when, t.deps, f"task {t.id!r}: when")
        except conditions.ConditionError as exc:
            raise DagError("invalid", str(exc)) from None


def _sizes_within(tasks: Sequence[TaskSpec]) -> int:
    """The encoded size of the run's specs if every input (and compensate input) is storable and
    within the input limit, and the specs within the run limit: the per-task input and size
    checks would all pass. -1 if not (or not known here).

    The values in one list nest one level deeper and encode with one list header more than
    each alone, so a pass here implies a pass for each; a run with replicas (whose specs count
    once per replica), a large input or an input nested to the limit is left to the per-task
    checks.
    """
    if any(t.replicas for t in tasks):
        return -1
    inputs = [t.input for t in tasks]
    inputs += [t.compensate.input for t in tasks if t.compensate is not None]
    if values.problem(inputs):
        return -1
    try:
        if limits.encoded_size(inputs) > limits.MAX_TASK_INPUT_BYTES:
            return -1
        # The specs' other fields are not validated yet: one that cannot be encoded (an integer
        # out of range, a lone surrogate) is left to the per-task checks, which name it.
        size = limits.encoded_size([t.to_map() for t in tasks])
    except (ValueError, TypeError, OverflowError, RecursionError):
        return -1
    return size if size <= limits.MAX_RUN_SPEC_BYTES else -1


def _check_input(t: TaskSpec, what: str, value: object) -> None:
    """A task's ``input`` (or its ``compensate`` input): storable JSON within the input limit."""
    why = values.problem(value)
    if why:
        raise DagError("invalid", f"task {t.id!r}: {what} {why}")
    size = limits.encoded_size(value)
    if size > limits.MAX_TASK_INPUT_BYTES:
        raise DagError(
            "limit",
            f"task {t.id!r}: {what} is {size} bytes encoded; the limit is {limits.MAX_TASK_INPUT_BYTES} "
            "(store large data elsewhere and pass a reference)",
        )


def _check_map(t: TaskSpec) -> None:
    if t.max_parallel and not t.map:
        raise DagError("invalid", f"task {t.id!r}: max_parallel needs map (it bounds the map's instances)")
    if not t.map:
        return
    if t.map not in t.deps:
        raise DagError(
            "invalid",
            f"task {t.id!r}: map {t.map[:40]!r} must be one of its deps (add it to deps; "
            "the SDK and the YAML/JSON loader add it for you)",
        )
    if not 0 <= t.max_parallel <= limits.MAX_MAP_ITEMS:
        raise DagError(
            "limit", f"task {t.id!r}: max_parallel must be between 0 (no bound) and {limits.MAX_MAP_ITEMS}"
        )


def _check_task_locks(t: TaskSpec) -> None:
    if len(t.locks) > limits.MAX_LOCKS_PER_REQUEST:
        raise DagError(
            "limit",
            f"task {t.id!r} declares {len(t.locks)} locks; the limit is {limits.MAX_LOCKS_PER_REQUEST}",
        )
    names = [n for n, _ in t.locks]
    if len(set(names)) != len(names):
        raise DagError("invalid", f"task {t.id!r} declares a lock twice")
    for name, mode in t.locks:
        if mode not in ("exclusive", "shared"):
            raise DagError("invalid", f"task {t.id!r}: lock mode {mode!r} must be exclusive or shared")
        why = limits.name_error("lock name", name, limits.MAX_LOCK_NAME_CHARS)
        if why:
            raise DagError("invalid", f"task {t.id!r}: {why}")


def find_cycle(tasks: Sequence[TaskSpec]) -> list[str] | None:
    """A cycle as a closed path ``[a, b, ..., a]``, or None. Deterministic (spec order)."""
    deps = {t.id: t.deps for t in tasks}
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in deps:
        if color[root] != white:
            continue
        # Iterative DFS over "depends on" edges, keeping the grey path to report the cycle.
        path: list[str] = [root]
        iters = [iter(deps[root])]
        color[root] = grey
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = black
                iters.pop()
                continue
            if nxt not in color:
                continue
            if color[nxt] == grey:
                start = path.index(nxt)
                cycle = [*path[start:], nxt]
                cycle.reverse()  # report in execution order: a -> b means b depends on a
                return cycle
            if color[nxt] == white:
                color[nxt] = grey
                path.append(nxt)
                iters.append(iter(deps[nxt]))
    return None


def dependency_order(tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """``tasks`` with every task after the tasks it depends on: spec order where it already is
    (the SDK's and the loaders' order), else a depth-first order over deps in spec order.
    Deps on unknown ids, and cycles, are left for ``validate`` to refuse."""
    seen: set[str] = set()
    for t in tasks:
        if not all(d in seen for d in t.deps):
            break
        seen.add(t.id)
    else:
        return list(tasks)
    by_id = {t.id: t for t in tasks}
    out: list[TaskSpec] = []
    state: dict[str, bool] = {}  # id -> done (False: on the current path)
    for t in tasks:
        if t.id in state:
            continue
        state[t.id] = False
        stack = [(t, iter(t.deps))]
        while stack:
            node, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                stack.pop()
                state[node.id] = True
                out.append(node)
            elif nxt in by_id and nxt not in state:
                state[nxt] = False
                stack.append((by_id[nxt], iter(by_id[nxt].deps)))
    return out


def stage_parts(tasks: Sequence[TaskSpec], sizes: Mapping[str, int] | None = None) -> list[list[TaskSpec]]:
    """A large run's tasks cut into the parts of a staged submit (``StageRun``), in dependency
    order; one part when the run fits one entry. A part holds at most ``STAGE_PART_TASKS``
    tasks and ends before the task that would take its specs over ``STAGE_PART_BYTES`` encoded
    (counted per replica, as apply counts them), so skewed inputs cannot put several MiB in
    one part; a task larger than that alone is a part of its own. ``sizes``: each task's
    encoded spec (``limits.encoded_size(t.to_map())``) by id, when the caller has them."""
    if sizes is None:
        sizes = {t.id: limits.encoded_size(t.to_map()) for t in tasks}
    cost = [sizes[t.id] * (1 + t.replicas) for t in tasks]
    if len(tasks) <= limits.STAGE_PART_TASKS and sum(cost) <= limits.STAGE_PART_BYTES:
        return [list(tasks)]
    parts: list[list[TaskSpec]] = [[]]
    held = 5  # the part's list header, at most (apply sizes the part as one list)
    for t in dependency_order(tasks):
        size = sizes[t.id] * (1 + t.replicas)
        if parts[-1] and (len(parts[-1]) >= limits.STAGE_PART_TASKS or held + size > limits.STAGE_PART_BYTES):
            parts.append([])
            held = 5
        parts[-1].append(t)
        held += size
    return parts
