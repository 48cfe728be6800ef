"""Run control: pause and resume a run, rerun a task and what is downstream of it.

``PauseRun``: nothing new of the run starts. The run's READY tasks leave the READY queue
(``ClusterState.ready`` holds only tasks that may be placed, so the scheduler, placement
and preemption skip a paused run with no check of their own; ``assign`` refuses it too);
running attempts finish, or with ``cancel_running`` are stopped and requeued without
using a retry, the reason recorded on the task and in its history. ``ResumeRun`` puts the
READY tasks back at the end of the queue. Both are idempotent.

``RerunTask``: the task and everything downstream of it go back to be run with new
attempts (attempt numbers keep growing, so the old attempts stay fenced); the task starts
again through ``tasks.activate`` (READY, or a new approval gate), the others wait PENDING
with their dependency counts recomputed; running downstream attempts are stopped;
children of reset tasks (map instances, replicas, spawned tasks) are dropped from the run;
upstream outputs are kept, superseded outputs move to the tasks' histories. A finished
run reopens, as ``dead_letters.retry`` does: its cancelled tasks come back as they were
(``dead_letters.revive``: spawned tasks too; a spawner or a map waits for its children again).
"""

from __future__ import annotations

from . import approvals, budgets, dead_letters, limits, usage
from .codes import Code
from .commands import PauseRun, RerunTask, ResumeRun
from .context import ApplyContext
from .results import Rejected, RerunTaskResult, Result, RunChanged, RunControlResult, TaskChanged
from .state import (
    TERMINAL_RUN,
    TERMINAL_TASK,
    Attempt,
    ClusterState,
    RunState,
    RunStatus,
    TaskState,
    TaskStatus,
)
from .tasks import activate, cascade, make_ready, unready, unrun

COMPENSATION_RUN = frozenset({RunStatus.COMPENSATING, RunStatus.COMPENSATED, RunStatus.COMPENSATION_FAILED})


def _run(ctx: ApplyContext, run_id: str) -> RunState | Rejected:
    why = limits.id_error("run id", run_id)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    run = ctx.state.runs.get(run_id)
    if run is None:
        return Rejected(Code.NOT_FOUND, f"run {run_id!r} not found (never submitted, or evicted)")
    return run


def pause(ctx: ApplyContext, cmd: PauseRun) -> Result:
    run = _run(ctx, cmd.run_id)
    if isinstance(run, Rejected):
        return run
    if run.status in TERMINAL_RUN or run.status is RunStatus.COMPENSATING:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"run {cmd.run_id!r} is {run.status.value}: only a RUNNING run can be paused",
        )
    running = [t for t in run.tasks.values() if t.status is TaskStatus.RUNNING] if cmd.cancel_running else []
    if run.status is RunStatus.PAUSED and not running:
        return RunControlResult(run.status, changed=False)
    rev = ctx.advance()
    if run.status is not RunStatus.PAUSED:
        for t in run.tasks.values():
            unready(ctx, run.run_id, t)  # out of the queue; the task stays READY
        run.status = RunStatus.PAUSED
        ctx.emit(RunChanged(rev, run.run_id, run.status))
    for t in running:
        why = "run paused with cancel_running"
        unrun(ctx, run.run_id, t, "paused", why)
        t.error = f"attempt {t.attempt} stopped: {why} (no retry used)"
        make_ready(ctx, run, t, rev, not_before_ms=0)  # READY outside the queue while paused
    run.revision = rev
    return RunControlResult(run.status, changed=True, stopped=len(running))


def resume(ctx: ApplyContext, cmd: ResumeRun) -> Result:
    run = _run(ctx, cmd.run_id)
    if isinstance(run, Rejected):
        return run
    if run.status in TERMINAL_RUN:
        return Rejected(
            Code.FAILED_PRECONDITION, f"run {cmd.run_id!r} is {run.status.value}: nothing to resume"
        )
    if run.status is not RunStatus.PAUSED:
        return RunControlResult(run.status, changed=False)
    rev = ctx.advance()
    st = ctx.state
    run.status = RunStatus.RUNNING
    for t in run.tasks.values():
        if t.status is TaskStatus.READY:
            # Back of the FIFO, with a new position (the rebuilt index orders by ready_seq).
            st.seq += 1
            t.ready_seq = st.seq
            st.ready.setdefault(t.spec.priority, {})[(run.run_id, t.spec.id)] = None
    run.revision = rev
    ctx.emit(RunChanged(rev, run.run_id, run.status))
    return RunControlResult(run.status, changed=True)


def rerun(ctx: ApplyContext, cmd: RerunTask) -> Result:
    run = _run(ctx, cmd.run_id)
    if isinstance(run, Rejected):
        return run
    why = approvals.task_id_error(cmd.task_id)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    t = run.tasks.get(cmd.task_id)
    if t is None:
        return Rejected(Code.NOT_FOUND, f"run {cmd.run_id!r} has no task {cmd.task_id!r}")
    plan = _plan(ctx.state, run, t)
    if isinstance(plan, Rejected):
        return plan
    reset, dropped = plan
    why = budgets.spent(run, ctx.now_ms)
    if why:  # run again, it would start what its budget no longer allows
        return Rejected(Code.FAILED_PRECONDITION, f"run {cmd.run_id!r} cannot run again: {why}")
    rev = ctx.advance()
    st = ctx.state
    reopened = run.status in TERMINAL_RUN
    if reopened:
        st.finished.pop(run.run_id, None)  # live again: not evicted while it runs
        run.status = RunStatus.RUNNING
        run.finished_ms = 0
        run.error = ""
        run.reason = ""
        budgets.track(st, run)
        ctx.emit(RunChanged(rev, run.run_id, run.status))
    why = f"task {t.spec.id!r} is rerun"
    # What a dropped child spent stays spent: its usage moves to the reset task it hung from
    # (the run's sum is unchanged and still its tasks' sum; a budget is never refunded).
    gone = set(dropped)
    heirs: dict[str, str] = {}
    for cid in dropped:
        heir = run.tasks[cid].parent
        while heir in gone:
            heir = run.tasks[heir].parent
        heirs[cid] = heir
    for cid in dropped:
        c = run.tasks[cid]
        heir_t = run.tasks[heirs[cid]]
        heir_t.usage = usage.add(heir_t.usage, c.usage)
        _drop(ctx, run, c, why, rev)
    for rid in reset:
        _reset(ctx, run, run.tasks[rid], why, rev)
    if reopened:
        # What the run's end cancelled comes back as it was, as a retry brings it back (not
        # reset: a spawner whose attempt succeeded waits for its children again, its spawned
        # tasks run, a map keeps its finished instances).
        dead_letters.revive(ctx, run, rev)
    for rid in reset:
        r = run.tasks[rid]
        r.deps_waiting = sum(
            1 for d in r.spec.deps if run.tasks[d].status not in (TaskStatus.SUCCEEDED, TaskStatus.SKIPPED)
        )
        r.deps_skipped = sum(1 for d in r.spec.deps if run.tasks[d].status is TaskStatus.SKIPPED)
    for rid in reset:
        r = run.tasks[rid]
        # An earlier activation's cascade may have moved it already.
        if r.status is TaskStatus.PENDING and r.deps_waiting == 0 and activate(ctx, run, r, rev):
            cascade(ctx, run, r, rev)
    run.revision = rev
    return RerunTaskResult(len(reset), len(dropped), reopened, t.status, run.status)


def _plan(st: ClusterState, run: RunState, t: TaskState) -> tuple[list[str], list[str]] | Rejected:
    """The tasks a rerun of ``t`` sends back and the children it drops (run order), or why not."""
    where = f"task {t.spec.id!r} of run {run.run_id!r}"
    if run.status in COMPENSATION_RUN:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"run {run.run_id!r} is {run.status.value}: its succeeded steps are compensated (undone); "
            "submit a new run instead",
        )
    if t.status not in TERMINAL_TASK:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"{where} is {t.status.value}: only a task that has ended "
            "(SUCCEEDED, FAILED, CANCELLED or SKIPPED) can be rerun",
        )
    if t.parent:
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"{where} is a {t.origin or 'child'} task of {t.parent!r}; rerun {t.parent!r} instead",
        )
    back = {t.spec.id}
    stack = [t.spec.id]
    while stack:
        for d in run.tasks[stack.pop()].dependents:
            if d not in back and d in run.tasks:
                back.add(d)
                stack.append(d)
    # Walked in run order, never in set order: the message of a refusal is part of the result.
    drop: set[str] = set()
    stack = [c for k in run.tasks if k in back for c in run.tasks[k].children]
    while stack:
        c = stack.pop()
        if c not in drop and c in run.tasks:
            drop.add(c)
            stack.extend(run.tasks[c].children)
    back -= drop
    reset = [k for k in run.tasks if k in back]
    dropped = [k for k in run.tasks if k in drop]
    for b in reset:
        o = run.tasks[b]
        if o.parent and o.parent not in back:
            return Rejected(
                Code.FAILED_PRECONDITION,
                f"rerunning {t.spec.id!r} would reach {b!r}, a child of {o.parent!r}; rerun {o.parent!r}",
            )
    for c in dropped:
        for d in run.tasks[c].dependents:
            if d not in drop and d not in back:
                return Rejected(
                    Code.FAILED_PRECONDITION,
                    f"task {d!r} depends on {c!r}, which rerunning {t.spec.id!r} would drop; rerun "
                    f"{run.tasks[d].parent or d!r} with it",
                )
    if run.status is RunStatus.FAILED:
        for o in run.tasks.values():
            # The task that failed the run, not a replica that failed without failing it.
            if (
                o.status is TaskStatus.FAILED
                and o.spec.id not in back
                and o.spec.id not in drop
                and dead_letters.is_dead_letter(st, o.finished_ms, run.run_id, o.spec.id)
            ):
                return Rejected(
                    Code.FAILED_PRECONDITION,
                    f"run {run.run_id!r} failed at task {o.spec.id!r}, which is not downstream of "
                    f"{t.spec.id!r}: rerun {o.spec.id!r} (or a task upstream of it) to reopen the run",
                )
    return reset, dropped


def _stop(ctx: ApplyContext, run: RunState, t: TaskState, why: str) -> bool:
    """Take ``t`` out of whatever it is doing; whether it was unfinished."""
    unready(ctx, run.run_id, t)
    unrun(ctx, run.run_id, t, "rerun", why)
    approvals.close_gate(ctx, run.run_id, t)
    if t.status is TaskStatus.FAILED:
        ctx.state.drop_dead_letter((t.finished_ms, run.run_id, t.spec.id))
    return t.status not in TERMINAL_TASK


def _drop(ctx: ApplyContext, run: RunState, c: TaskState, why: str, rev: int) -> None:
    """Remove a child of a reset task from the run (a running attempt of it is fenced)."""
    if _stop(ctx, run, c, why):
        run.unfinished -= 1
    for d in c.spec.deps:
        dt = run.tasks.get(d)
        if dt is not None and c.spec.id in dt.dependents:
            dt.dependents.remove(c.spec.id)
    del run.tasks[c.spec.id]
    ctx.emit(TaskChanged(rev, run.run_id, c.spec.id, TaskStatus.CANCELLED, c.attempt, c.node))


def _reset(ctx: ApplyContext, run: RunState, r: TaskState, why: str, rev: int) -> None:
    """``r`` goes back to PENDING, with its output kept in its history."""
    if not _stop(ctx, run, r, why):
        run.unfinished += 1
    if r.output is not None:  # SUCCEEDED, or a spawner waiting for its children with its output
        last = r.history[-1] if r.history else None
        if (
            last is not None
            and last.attempt == r.attempt
            and last.outcome == "SUCCEEDED"
            and last.output is None
        ):
            last.output = r.output
        else:  # a task that succeeded through its children (a map, replicas) has no attempt of its own
            r.history.append(
                Attempt(r.attempt, r.node, r.started_ms, r.finished_ms, "SUCCEEDED", "", r.output)
            )
            del r.history[: -limits.MAX_ATTEMPT_HISTORY]
    r.status = TaskStatus.PENDING
    r.output = None
    r.error = ""
    r.node = ""
    r.finished_ms = 0
    r.deadline_ms = 0
    r.not_before_ms = 0
    r.retries_left = r.spec.retries
    r.gate = None
    r.children = []
    r.children_waiting = 0
    ctx.emit(TaskChanged(rev, run.run_id, r.spec.id, r.status, r.attempt, ""))
