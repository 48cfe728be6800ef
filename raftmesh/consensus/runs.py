"""Run commands: submit, cancel, and the attempt lifecycle (assign, complete, fail).

Processors over an ``ApplyContext`` (see ``context.py``). A batched command (assign,
complete, fail) applies the items that are valid and reports the others in its
result; it is rejected only when no item applies. Completions and failures are fenced:
an item whose (attempt, token, node) is not the task's current attempt is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from . import budgets, limits, spawn, usage, values
from .codes import Code
from .commands import (
    Assign,
    CancelRun,
    Complete,
    Completion,
    Fail,
    Failure,
    StageRun,
    SubmitRun,
    TaskSpec,
    Usage,
)
from .context import ApplyContext
from .dag import DagError, check_id, validate
from .lock_commands import task_locks_free
from .locks import EXCLUSIVE
from .placement import unfit
from .results import (
    AssignResult,
    CancelRunResult,
    ChangedResult,
    ItemRejected,
    Rejected,
    ReportResult,
    Result,
    RunChanged,
    SubmitRunResult,
)
from .state import (
    SCHEDULABLE_RUN,
    TERMINAL_RUN,
    ClusterState,
    RunState,
    RunStatus,
    Stage,
    TaskKey,
    TaskState,
    TaskStatus,
)
from .tasks import activate, cascade, fail_attempt, finish_run, start, succeed

MAX_REJECTIONS_SHOWN = 5
"""Item rejections quoted in the message of a command rejected as a whole."""


def _quote(rejected: list[ItemRejected]) -> str:
    return str([[r.run_id, r.task_id, r.reason] for r in rejected[:MAX_REJECTIONS_SHOWN]])


def _check_header(cmd: SubmitRun) -> None:
    """The run-level fields of a submit (raises ``DagError``)."""
    check_id("run id", cmd.run_id)
    if cmd.idempotency_key and len(cmd.idempotency_key) > limits.MAX_ID_CHARS:
        raise DagError("limit", f"idempotency key is longer than {limits.MAX_ID_CHARS} characters")
    # The boundary checks these too; apply checks them so nothing a client sends bypasses them.
    why = limits.request_id_error("idempotency key", cmd.idempotency_key)
    if why:
        raise DagError("invalid", why)
    if len(cmd.name) > limits.MAX_RUN_NAME_CHARS:
        raise DagError("limit", f"name is longer than {limits.MAX_RUN_NAME_CHARS} characters")
    if not limits.printable(cmd.name):
        raise DagError("invalid", f"name {cmd.name[:40]!r} may not contain control characters")
    if abs(cmd.priority) > limits.MAX_PRIORITY:
        raise DagError("limit", f"run priority must be within +-{limits.MAX_PRIORITY}")
    why = limits.namespace_error(cmd.namespace)
    if why:
        raise DagError("invalid", why)


def _add_tasks(into: dict[str, TaskState], specs: Sequence[TaskSpec]) -> None:
    """PENDING tasks for ``specs``, appended to ``into``; each dependency (in ``into`` already or
    among ``specs``) learns its dependents in spec order."""
    for spec in specs:
        into[spec.id] = TaskState(
            spec=spec,
            status=TaskStatus.PENDING,
            deps_waiting=len(spec.deps),
            dependents=[],
            retries_left=spec.retries,
        )
    for spec in specs:
        for d in spec.deps:
            into[d].dependents.append(spec.id)


def _check_part(st: ClusterState, stage: Stage | None, tasks: Sequence[TaskSpec]) -> tuple[int, int]:
    """Validate one part of a staged run against what is staged before it (raises ``DagError``).

    A task may depend on a task of an earlier part or of its own part (``validate`` checks the
    part's own cycles), never on a later one, so the whole run is acyclic without looking at
    it whole. Returns the run's fixed task count and spec bytes with this part."""
    before = stage.tasks if stage is not None else {}
    size = validate(tasks, st.offered_capabilities(), outside=before)
    again = next((t.id for t in tasks if t.id in before), None)
    if again is not None:
        raise DagError("invalid", f"task id {again!r} is used twice; task ids must be unique in a run")
    fixed = (stage.fixed if stage is not None else 0) + budgets.fixed_tasks(tasks)
    if fixed > limits.MAX_TASKS_PER_RUN:
        raise DagError(
            "limit",
            f"a run has {fixed} tasks (replicas and judges included); the limit is {limits.MAX_TASKS_PER_RUN}",
        )
    spec_bytes = (stage.spec_bytes if stage is not None else 0) + size
    if spec_bytes > limits.MAX_RUN_SPEC_BYTES:
        raise DagError(
            "limit",
            f"the run's tasks are over {limits.MAX_RUN_SPEC_BYTES} bytes encoded; "
            "store large inputs elsewhere and pass references",
        )
    return fixed, spec_bytes


def _expired(run_id: str, seq: int) -> Rejected:
    return Rejected(
        Code.ABORTED,
        f"the staged submit of run {run_id!r} is gone before part {seq} (it expired after "
        f"{limits.STAGE_TTL_MS // 1000} s without a part, e.g. across a leader change): "
        "submit the run again (with the same idempotency key)",
    )


def stage(ctx: ApplyContext, cmd: StageRun) -> Result:
    """One part of a large run (``StageRun``): validated and built, invisible until its submit.

    A part continues the stage of its run id only when it carries the stage's idempotency key.
    A seq-0 part with a key is a new attempt of a submit: if the stage of its run id is another
    node's, the stage moves to this node (that attempt's later parts are refused from then on).
    A keyed run id names its request (``staging.keyed_run_id``), so a live stage of the same key
    under another run id is another request misusing the key: the new one is refused (first
    come, first served, as Temporal refuses a second start of a running workflow id) rather than
    dropping it, which let two such requests drop each other's stage without end. A stage of
    the key past its expiry (not yet dropped by a tick) is dropped instead."""
    st = ctx.state
    if cmd.idempotency_key:
        existing = st.idempotency.get(cmd.idempotency_key)
        if existing is not None:  # the key's run exists: the stage stops, the caller gets the run
            return SubmitRunResult(existing, created=False)
    current = st.stages.get(cmd.run_id)
    if current is None and cmd.seq != 0:
        return _expired(cmd.run_id, cmd.seq)
    if current is None and cmd.idempotency_key:
        rival = _live_stage_of_key(st, cmd.idempotency_key, ctx.now_ms)  # at most MAX_STAGES
        if rival is not None:
            return _key_in_use(cmd, rival, ctx.now_ms)
    rehome = False
    if current is not None:
        if current.idempotency_key != cmd.idempotency_key:
            return Rejected(
                Code.FAILED_PRECONDITION,
                f"run {cmd.run_id!r} is being staged under another idempotency key",
            )
        if current.node_id != cmd.node_id:
            if cmd.seq != 0 or not cmd.idempotency_key:
                return Rejected(
                    Code.FAILED_PRECONDITION,
                    f"the staged submit of run {cmd.run_id!r} goes on through node {current.node_id!r} "
                    f"now (a later attempt): this attempt stops",
                )
            rehome = True
        if cmd.seq < current.next_seq and not rehome:
            return ChangedResult(0)  # a part applied already (a retry, or an earlier attempt's)
    if current is not None and not rehome and cmd.seq != current.next_seq:
        return Rejected(
            Code.FAILED_PRECONDITION, f"part {cmd.seq} of run {cmd.run_id!r} before part {current.next_seq}"
        )
    try:
        if current is None:
            check_id("run id", cmd.run_id)
            if len(cmd.node_id) > limits.MAX_ID_CHARS:
                raise DagError("limit", f"node id is longer than {limits.MAX_ID_CHARS} characters")
            why = limits.request_id_error("idempotency key", cmd.idempotency_key)
            if why:
                raise DagError("invalid", why)
        if rehome and current is not None:
            if len(cmd.node_id) > limits.MAX_ID_CHARS:
                raise DagError("limit", f"node id is longer than {limits.MAX_ID_CHARS} characters")
            fixed, spec_bytes = current.fixed, current.spec_bytes  # the part is applied already
        else:
            fixed, spec_bytes = _check_part(st, current, cmd.tasks)
    except DagError as exc:
        return Rejected(Code.INVALID_ARGUMENT, str(exc))
    # The key's other stages (seq 0 only, so a request's own parts never evict each other): past
    # their expiry when this part opens a stage (a live one refused it above), or left from
    # before keyed run ids; dropped once this part is known to apply. At most MAX_STAGES.
    evict = (
        [
            rid
            for rid, s in st.stages.items()
            if s.idempotency_key == cmd.idempotency_key and rid != cmd.run_id
        ]
        if cmd.idempotency_key and cmd.seq == 0
        else []
    )
    others = [s for rid, s in st.stages.items() if rid not in evict and rid != cmd.run_id]
    if current is None or rehome:
        if current is None and cmd.run_id in st.runs:
            return Rejected(Code.ALREADY_EXISTS, f"run id {cmd.run_id!r} already exists")
        mine = sum(1 for s in others if s.node_id == cmd.node_id)
        if len(others) + 1 > limits.MAX_STAGES or mine >= limits.MAX_STAGES_PER_NODE:
            return Rejected(
                Code.RESOURCE_EXHAUSTED,
                f"{len(others)} large runs are being submitted ({mine} through node {cmd.node_id!r}; "
                f"limits {limits.MAX_STAGES} and {limits.MAX_STAGES_PER_NODE}): retry shortly",
            )
    held = sum(s.spec_bytes for s in others)  # at most MAX_STAGES stages
    held_here = sum(s.spec_bytes for s in others if s.node_id == cmd.node_id)
    if (
        held + spec_bytes > limits.MAX_STAGED_BYTES
        or held_here + spec_bytes > limits.MAX_STAGED_BYTES_PER_NODE
    ):
        return Rejected(
            Code.RESOURCE_EXHAUSTED,
            f"large runs being submitted hold {held} bytes of tasks ({held_here} through node "
            f"{cmd.node_id!r}); the limits are {limits.MAX_STAGED_BYTES} and "
            f"{limits.MAX_STAGED_BYTES_PER_NODE}: retry shortly",
        )
    ctx.advance()
    for rid in evict:
        del st.stages[rid]
    if current is None:
        current = Stage(cmd.run_id, cmd.node_id, cmd.idempotency_key, 0, 0, {}, [], 0, 0)
        st.stages[cmd.run_id] = current
    if rehome:
        current.node_id = cmd.node_id
        current.expires_ms = st.time_ms + limits.STAGE_TTL_MS
        return ChangedResult(len(current.tasks))
    _add_tasks(current.tasks, cmd.tasks)
    current.roots.extend(t.id for t in cmd.tasks if not t.deps)
    current.next_seq += 1
    current.expires_ms = st.time_ms + limits.STAGE_TTL_MS
    current.fixed, current.spec_bytes = fixed, spec_bytes
    return ChangedResult(len(current.tasks))


def _live_stage_of_key(st: ClusterState, key: str, now_ms: int) -> Stage | None:
    """The oldest stage of ``key`` not past its expiry under a keyed run id, or None. A stage of the
    key under a random id (from before keyed run ids) may be this very request's earlier attempt:
    it is dropped below, as before, rather than refusing its own retry for up to the expiry."""
    return next(
        (
            s
            for s in st.stages.values()
            if s.idempotency_key == key
            and s.expires_ms > now_ms
            and s.run_id.startswith(limits.KEYED_RUN_ID_PREFIX)
        ),
        None,
    )


def _key_in_use(cmd: StageRun, rival: Stage, now_ms: int) -> Rejected:
    return Rejected(
        Code.FAILED_PRECONDITION,
        f"idempotency key {cmd.idempotency_key!r} is in use by another request's staged submit "
        f"(run {rival.run_id!r}, other tasks or fields): it expires at state time "
        f"{rival.expires_ms} ms, in {(rival.expires_ms - now_ms + 999) // 1000} s unless its next "
        "part comes; once its run is created, a submit with this key answers that run. "
        "Use a new idempotency key for a different request",
    )


def expire_stages(ctx: ApplyContext, now: int) -> int:
    """Drop the stages whose next part is overdue (a tick); how many."""
    st = ctx.state
    gone = [rid for rid, s in st.stages.items() if s.expires_ms <= now]
    for rid in gone:
        del st.stages[rid]
    return len(gone)


def submit(ctx: ApplyContext, cmd: SubmitRun) -> Result:
    st = ctx.state
    if cmd.idempotency_key:
        existing = st.idempotency.get(cmd.idempotency_key)
        if existing is not None:
            return SubmitRunResult(existing, created=False)
    staged = st.stages.get(cmd.run_id) if cmd.staged else None
    if cmd.staged and staged is None:
        return _expired(cmd.run_id, -1)
    if staged is not None and staged.idempotency_key != cmd.idempotency_key:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"run {cmd.run_id!r} was staged under another idempotency key than its submit's",
        )
    if staged is not None and len(staged.tasks) != cmd.staged:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"run {cmd.run_id!r}: the submit follows {cmd.staged} staged tasks, the stage has {len(staged.tasks)}",
        )
    try:
        _check_header(cmd)
        if staged is not None:
            fixed, _ = _check_part(st, staged, cmd.tasks)
        else:
            validate(cmd.tasks, st.offered_capabilities())
            fixed = budgets.fixed_tasks(cmd.tasks)
        why = budgets.problem(cmd.budget, fixed) if cmd.budget is not None else ""
        if why:
            raise DagError("limit", why)
    except DagError as exc:
        return Rejected(Code.INVALID_ARGUMENT, str(exc))
    if cmd.run_id in st.runs:
        return Rejected(Code.ALREADY_EXISTS, f"run id {cmd.run_id!r} already exists")
    rev = ctx.advance()
    tasks: dict[str, TaskState] = {}
    roots: list[str] = []
    if staged is not None:  # the stage becomes the run: its parts were built as they came
        del st.stages[cmd.run_id]
        tasks, roots = staged.tasks, staged.roots
    _add_tasks(tasks, cmd.tasks)
    roots.extend(t.id for t in cmd.tasks if not t.deps)
    run = RunState(
        run_id=cmd.run_id,
        status=RunStatus.RUNNING,
        tasks=tasks,
        unfinished=len(tasks),
        priority=cmd.priority,
        idempotency_key=cmd.idempotency_key,
        name=cmd.name,
        submitter=cmd.submitter,
        created_ms=st.time_ms,
        revision=rev,
        budget=budgets.normal(cmd.budget),
        trace_id=cmd.origin.trace if cmd.origin is not None else "",
        namespace=cmd.namespace,
    )
    st.runs[cmd.run_id] = run
    budgets.track(st, run)
    if cmd.idempotency_key:
        st.idempotency[cmd.idempotency_key] = cmd.run_id
        if st.stages:  # other attempts' stages of the key can only stop now: free their room
            for rid in [rid for rid, s in st.stages.items() if s.idempotency_key == cmd.idempotency_key]:
                del st.stages[rid]
    ctx.emit(RunChanged(rev, cmd.run_id, RunStatus.RUNNING))
    ctx.prefer = cmd.prefer
    for task_id in roots:
        task = run.tasks[task_id]
        if activate(ctx, run, task, rev):
            cascade(ctx, run, task, rev)
    return SubmitRunResult(cmd.run_id, created=True)


def cancel(ctx: ApplyContext, cmd: CancelRun) -> Result:
    run = ctx.state.runs.get(cmd.run_id)
    if run is None:
        return Rejected(Code.NOT_FOUND, f"run {cmd.run_id!r} not found")
    if len(cmd.reason) > limits.MAX_CANCEL_REASON_CHARS:
        return Rejected(
            Code.INVALID_ARGUMENT, f"reason is longer than {limits.MAX_CANCEL_REASON_CHARS} characters"
        )
    if run.status in TERMINAL_RUN:
        return CancelRunResult(run.status, cancelled=False)
    rev = ctx.advance()
    finish_run(ctx, run, RunStatus.CANCELLED, rev, f"run cancelled: {cmd.reason or 'cancelled'}", "CANCELLED")
    return CancelRunResult(run.status, cancelled=True)


def assign(ctx: ApplyContext, cmd: Assign) -> Result:
    st = ctx.state
    now = ctx.now_ms
    accepted: list[tuple[RunState, TaskState, str]] = []
    rejected: list[ItemRejected] = []
    planned: dict[str, int] = {}
    planned_type: dict[tuple[str, str], int] = {}
    planned_locks: dict[str, str] = {}
    seen: set[TaskKey] = set()
    for a in cmd.items:
        run = st.runs.get(a.run_id)
        t = run.tasks.get(a.task_id) if run else None
        why = ""
        if run is None or t is None:
            why = "no such task"
        elif (a.run_id, a.task_id) in seen:
            why = "assigned twice in one command"
        elif run.status not in SCHEDULABLE_RUN:
            why = f"run is {run.status.value}"
        elif t.status is not TaskStatus.READY:
            why = f"task is {t.status.value}"
        elif a.attempt != t.attempt + 1:
            why = f"attempt {a.attempt} is not the next attempt ({t.attempt + 1})"
        elif t.not_before_ms > now:
            why = "retry backoff has not passed"
        else:
            na = (a.node_id, t.spec.agent)
            why = unfit(st, a.node_id, t.spec, now, planned.get(a.node_id, 0), planned_type.get(na, 0))
            why = why or task_locks_free(ctx, t, a.run_id, planned_locks)
        if why:
            rejected.append(ItemRejected(a.run_id, a.task_id, why))
            continue
        assert run is not None and t is not None
        seen.add((a.run_id, a.task_id))
        planned[a.node_id] = planned.get(a.node_id, 0) + 1
        planned_type[(a.node_id, t.spec.agent)] = planned_type.get((a.node_id, t.spec.agent), 0) + 1
        for name, mode in t.spec.locks:
            planned_locks[name] = mode if planned_locks.get(name) != EXCLUSIVE else EXCLUSIVE
        accepted.append((run, t, a.node_id))
    if not accepted:
        return Rejected(Code.FAILED_PRECONDITION, f"no assignment applies: {_quote(rejected)}")
    rev = ctx.advance()
    for run, t, node_id in accepted:
        start(ctx, run, t, node_id, rev)
    return AssignResult(token=rev, accepted=len(accepted), rejected=tuple(rejected))


def _fenced(
    ctx: ApplyContext, node_id: str, run_id: str, task_id: str, attempt: int, token: int
) -> tuple[str, tuple[RunState, TaskState] | None]:
    """Why a result from this attempt must be rejected, or "" and the (run, task) if it is current."""
    run = ctx.state.runs.get(run_id)
    t = run.tasks.get(task_id) if run else None
    if run is None or t is None:
        return "no such task", None
    if t.status is not TaskStatus.RUNNING:
        return f"task is {t.status.value}", None
    if t.attempt != attempt or t.token != token:
        return f"stale attempt {attempt} (token {token}); current is {t.attempt} (token {t.token})", None
    if t.node != node_id:
        return f"attempt runs on {t.node!r}, not {node_id!r}", None
    return "", (run, t)


Report = TypeVar("Report", Completion, Failure)


def _current(
    ctx: ApplyContext, node_id: str, items: Sequence[Report], verb: str
) -> tuple[list[tuple[Report, RunState, TaskState]], list[ItemRejected]]:
    """The items that report on a current attempt (once each), and the rejected rest."""
    current: list[tuple[Report, RunState, TaskState]] = []
    rejected: list[ItemRejected] = []
    seen: set[TaskKey] = set()
    for item in items:
        why, hit = _fenced(ctx, node_id, item.run_id, item.task_id, item.attempt, item.token)
        if not why and (item.run_id, item.task_id) in seen:
            why = f"{verb} twice in one command"
        if why or hit is None:
            rejected.append(ItemRejected(item.run_id, item.task_id, why))
            continue
        seen.add((item.run_id, item.task_id))
        current.append((item, hit[0], hit[1]))
    return current, rejected


def complete(ctx: ApplyContext, cmd: Complete) -> Result:
    accepted: list[tuple[RunState, TaskState, Completion]] = []
    refused: list[tuple[RunState, TaskState, str, Usage]] = []
    over_budget: list[tuple[RunState, TaskState, str, Completion]] = []
    claims: dict[str, spawn.Claims] = {}  # what earlier items spawn, per run
    offered = None  # the agent types and capabilities members offered, looked up once
    ctx.reporter = cmd.node_id
    current, rejected = _current(ctx, cmd.node_id, cmd.items, "completed")
    for c, run, t in current:
        # An output no reader could encode, or too big, fails the attempt (not retried).
        why = values.problem(c.output)
        size = 0 if why else limits.encoded_size(c.output)
        if why:
            refused.append((run, t, f"output is not storable: {why}", c.usage))
        elif size > limits.MAX_TASK_OUTPUT_BYTES:
            msg = f"output is {size} bytes encoded; the limit is {limits.MAX_TASK_OUTPUT_BYTES}"
            refused.append((run, t, msg, c.usage))
        elif c.spawn:
            claimed = claims.setdefault(run.run_id, spawn.Claims(offered=offered))
            bad = spawn.check(ctx.state, run, t, c.spawn, claimed)
            offered = claimed.offered
            over = "" if bad else budgets.tasks_over(run, claimed.count + len(c.spawn))
            if bad:
                refused.append((run, t, f"spawn refused: {bad}"[: limits.MAX_ERROR_CHARS], c.usage))
            elif over:
                over_budget.append((run, t, over, c))
            else:
                spawn.claim(claimed, c.spawn)
                accepted.append((run, t, c))
        else:
            accepted.append((run, t, c))
    if not accepted and not refused and not over_budget:
        return Rejected(Code.ABORTED, f"every result was fenced: {_quote(rejected)}")
    rev = ctx.advance()
    # Every current attempt reported: each is charged whatever its outcome, in item order, and
    # the budget is checked after each charge, so the report that reaches it stops the run and
    # a later item of the same run (cancelled by then) starts nothing.
    for run, t, c in accepted:
        usage.charge(run, t, c.usage)
        if t.status is not TaskStatus.RUNNING:  # an earlier item ended it (its run, a replica's quorum)
            continue
        over = budgets.usage_over(run)
        if over:  # its work is kept, but nothing follows from it: it spawns nothing either
            budgets.succeed_over(ctx, run, t, c.output, over, rev)
        elif c.spawn:
            spawn.add(ctx, run, t, c.output, c.spawn, c.spawn_wait, rev)
        else:
            succeed(ctx, run, t, c.output, rev)
    for run, t, why, c in over_budget:  # a spawn over max_tasks ends the run
        usage.charge(run, t, c.usage)
        if run.status in budgets.BOUND and t.status is TaskStatus.RUNNING:
            # Its work is kept (a saga compensates it), as a completion over max_cost: it spawns nothing.
            budgets.succeed_over(ctx, run, t, c.output, why, rev)
        elif run.status in budgets.BOUND:
            budgets.exceed(ctx, run, why, rev)
    for run, t, msg, u in refused:
        usage.charge(run, t, u)
        if t.status is TaskStatus.RUNNING:  # an earlier item may have failed the run
            fail_attempt(ctx, run, t, msg, retryable=False, rev=rev)
        _check_usage(ctx, run, rev)
    return ReportResult(accepted=len(accepted) + len(refused) + len(over_budget), rejected=tuple(rejected))


def _check_usage(ctx: ApplyContext, run: RunState, rev: int) -> None:
    """After a failure's charge: a bound run whose usage reached its budget ends (a retry it
    was about to make, now READY, is cancelled with the rest)."""
    over = budgets.usage_over(run)
    if over:
        budgets.exceed(ctx, run, over, rev)


def fail(ctx: ApplyContext, cmd: Fail) -> Result:
    ctx.reporter = cmd.node_id
    current, rejected = _current(ctx, cmd.node_id, cmd.items, "failed")
    accepted = [(run, t, f.error[: limits.MAX_ERROR_CHARS], f.retryable) for f, run, t in current]
    if not accepted:
        return Rejected(Code.ABORTED, f"every result was fenced: {_quote(rejected)}")
    rev = ctx.advance()
    for (f, run, t), (_, _, error, retryable) in zip(current, accepted, strict=True):
        usage.charge(run, t, f.usage)
        if t.status is TaskStatus.RUNNING:  # an earlier item may have failed the run
            fail_attempt(ctx, run, t, error, retryable, rev)
        _check_usage(ctx, run, rev)
    return ReportResult(accepted=len(accepted), rejected=tuple(rejected))
