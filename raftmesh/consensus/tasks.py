"""Task transitions shared by the run, member and tick processors.

READY (queued for a slot), RUNNING (an attempt on a node, holding its declared locks),
and the terminal SUCCEEDED/FAILED/CANCELLED; a run ends when its last task does, or
when one fails for good. Every function here is called after ``ctx.advance()`` with
the command's revision ``rev``, keeps the derived indexes in step and emits what changed.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Any

from . import approvals, conditions, fusion, groups, limits, maps, sagas
from .breakers import record_outcome
from .context import ApplyContext
from .lock_commands import grant_task_locks, release_task_locks
from .placement import plan_assignments
from .results import RunChanged, TaskChanged
from .state import (
    TERMINAL_RUN,
    TERMINAL_TASK,
    Attempt,
    RunState,
    RunStatus,
    TaskState,
    TaskStatus,
)


def backoff_ms(spec_backoff_ms: int, failures: int, run_id: str, task_id: str) -> int:
    """Exponential backoff with deterministic jitter (up to +25%, derived from the ids)."""
    if spec_backoff_ms <= 0:
        return 0
    base: int = min(spec_backoff_ms << max(0, failures - 1), limits.MAX_BACKOFF_MS)
    h = hashlib.blake2b(f"{run_id}/{task_id}/{failures}".encode(), digest_size=4).digest()
    jitter = int.from_bytes(h, "big") % (base // 4 + 1)
    return base + jitter


def make_ready(ctx: ApplyContext, run: RunState, t: TaskState, rev: int, not_before_ms: int) -> None:
    st = ctx.state
    st.seq += 1
    t.status = TaskStatus.READY
    t.ready_seq = st.seq
    t.not_before_ms = not_before_ms
    t.node = ""
    t.deadline_ms = 0
    if run.status is not RunStatus.PAUSED:  # a paused run's READY tasks wait outside the queue
        st.ready.setdefault(t.spec.priority, {})[(run.run_id, t.spec.id)] = None
        ctx.readied += 1
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, ""))


def unready(ctx: ApplyContext, run_id: str, t: TaskState) -> None:
    if t.status is TaskStatus.READY:
        q = ctx.state.ready.get(t.spec.priority)
        if q is not None:
            q.pop((run_id, t.spec.id), None)
            if not q:  # only priorities with waiting tasks: every plan sorts them
                del ctx.state.ready[t.spec.priority]


PLACE_SCAN_SLACK = 16
"""READY tasks ``place_queued`` may look at beyond what the command readied and freed."""


def place_queued(ctx: ApplyContext) -> int:
    """Start READY tasks on members with a free slot, in the apply of the command that made
    them READY or freed the slot: the ``Assign`` commit the leader's scheduler would need is
    saved. How many it started.

    The walk and the rule are the scheduler's (``placement.plan_assignments``: highest priority
    first, FIFO within one; slots, per-type concurrency, breakers, capabilities, locks, least
    loaded member), from the head of the READY queue, so no task is placed over an older one
    the scheduler would place first. Only members that take placements from apply
    (``Member.places``). It looks at no more READY tasks than the command readied and freed
    (plus ``PLACE_SCAN_SLACK``): O(the command), never O(the queue); what it leaves READY is
    the scheduler's, as before. For a node's report (``complete``, ``fail``) only the plan's
    choices of that node are started; the others are the scheduler's. Members flagged
    ``suspect`` (the leader lost their heartbeats) get nothing, unless it is their own report.
    """
    st = ctx.state
    budget = ctx.readied + ctx.freed + PLACE_SCAN_SLACK
    ctx.readied = ctx.freed = 0
    if not st.ready:
        return 0
    plan = plan_assignments(
        st,
        ctx.now_ms,
        {},
        max_items=budget,
        placing_only=True,
        max_scan=budget,
        prefer=ctx.reporter or ctx.prefer,
        alive=ctx.reporter,
        # A node's report starts work on that node only (it wins ties on load): it just proved
        # alive, while a member that died (a killed leader) stays up in the state until node-down
        # and looks idle. The plan's other choices are left to the scheduler, which avoids members
        # it has not heard from; they go to other nodes' slots, so nothing here jumps over them.
        only=ctx.reporter,
    )
    rev = st.revision
    for a in plan:
        run = st.runs[a.run_id]
        start(ctx, run, run.tasks[a.task_id], a.node_id, rev)
    return len(plan)


def unrun(ctx: ApplyContext, run_id: str, t: TaskState, outcome: str = "CANCELLED", error: str = "") -> None:
    """Every way out of RUNNING goes through here: it frees the attempt's locks and records the
    ended attempt in the task's history (``outcome``: SUCCEEDED, FAILED, CANCELLED, or why it
    was stopped early: lost, preempted, paused, rerun)."""
    if t.status is TaskStatus.RUNNING:
        st = ctx.state
        ctx.freed += 1
        ended = Attempt(t.attempt, t.node, t.started_ms, st.time_ms, outcome, error[: limits.MAX_ERROR_CHARS])
        t.history.append(ended)
        if len(t.history) > limits.MAX_ATTEMPT_HISTORY:
            del t.history[: -limits.MAX_ATTEMPT_HISTORY]
        release_task_locks(ctx, t, run_id)
        q = ctx.state.running.get(t.node)
        if q is not None and (run_id, t.spec.id) in q:
            del q[(run_id, t.spec.id)]
            na = (t.node, t.spec.agent)
            left = ctx.state.running_agent.get(na, 0) - 1
            if left > 0:
                ctx.state.running_agent[na] = left
            else:
                ctx.state.running_agent.pop(na, None)


def start(ctx: ApplyContext, run: RunState, t: TaskState, node_id: str, rev: int) -> None:
    """READY -> RUNNING on ``node_id``: a new attempt whose fencing token is ``rev``."""
    st = ctx.state
    unready(ctx, run.run_id, t)
    t.status = TaskStatus.RUNNING
    t.attempt += 1
    t.node = node_id
    t.token = rev
    t.started_ms = st.time_ms
    t.deadline_ms = st.time_ms + t.spec.timeout_ms if t.spec.timeout_ms else 0
    st.running.setdefault(node_id, {})[(run.run_id, t.spec.id)] = None
    st.running_agent[(node_id, t.spec.agent)] = st.running_agent.get((node_id, t.spec.agent), 0) + 1
    grant_task_locks(ctx, t, run.run_id, rev)
    if t.deadline_ms:
        heapq.heappush(st.timeouts, (t.deadline_ms, run.run_id, t.spec.id, t.attempt))
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, node_id))


def succeed(ctx: ApplyContext, run: RunState, t: TaskState, output: Any, rev: int) -> None:
    """The running attempt succeeded (a committed outcome: it closes the type's breaker there)."""
    attempt_succeeded(ctx, run, t, output)
    end_task(ctx, run, t, TaskStatus.SUCCEEDED, rev)


def attempt_succeeded(ctx: ApplyContext, run: RunState, t: TaskState, output: Any) -> None:
    """The running attempt's success, before the task's status moves on (a spawner that
    waits for its children keeps the output and ends later)."""
    record_outcome(ctx, t, ok=True)
    unrun(ctx, run.run_id, t, "SUCCEEDED")
    t.output = output
    t.error = ""
    t.deadline_ms = 0


def end_task(ctx: ApplyContext, run: RunState, t: TaskState, status: TaskStatus, rev: int) -> None:
    """``t`` ends SUCCEEDED or SKIPPED (not RUNNING any more): what waited on it moves on.

    Dependents whose dependencies have all ended are activated; a parent hears of its child
    (``groups.child_ended``); the run succeeds when nothing is left. One worklist, not
    recursion: a chain of 10,000 skipped tasks must not exhaust the stack.
    """
    mark_ended(ctx, run, t, status, rev)
    cascade(ctx, run, t, rev)


def cascade(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> None:
    """What follows from ``t`` having ended SUCCEEDED or SKIPPED (already marked)."""
    work = [t]
    while work:
        e = work.pop()
        if e.parent:
            done = groups.child_ended(ctx, run, e, rev)
            if done is not None:
                mark_ended(ctx, run, done, TaskStatus.SUCCEEDED, rev)
                work.append(done)
        skipped = e.status is TaskStatus.SKIPPED
        # A copy: a dependent activated here may add children that depend on ``e`` (a map's
        # instances on its source); they start with ``e`` counted as ended.
        for dep_id in list(e.dependents):
            d = run.tasks[dep_id]
            d.deps_waiting -= 1
            d.deps_skipped += skipped
            if d.deps_waiting == 0 and d.status is TaskStatus.PENDING and activate(ctx, run, d, rev):
                work.append(d)
    if run.unfinished == 0 and run.status in (RunStatus.RUNNING, RunStatus.PAUSED):
        finish_run(ctx, run, RunStatus.SUCCEEDED, rev, "")
    elif run.unfinished == 0 and run.status is RunStatus.COMPENSATING:
        sagas.conclude(ctx, run, rev)


def mark_ended(ctx: ApplyContext, run: RunState, t: TaskState, status: TaskStatus, rev: int) -> None:
    """Set a terminal-for-now status (SUCCEEDED, SKIPPED) and count the task as ended."""
    t.status = status
    t.finished_ms = ctx.state.time_ms
    run.unfinished -= 1
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))


def activate(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> bool:
    """A PENDING task whose dependencies have all ended (or that has none) decides what it does.

    SKIPPED when its trigger or its ``when`` says so; otherwise it goes on to ``begin``.
    Returns whether ``t`` ended here (skipped, or a group with nothing to wait for), already
    marked with ``mark_ended``: the caller then ``cascade``s from it.
    """
    if run.status in TERMINAL_RUN:
        return False  # an earlier activation ended the run (its budget): nothing more starts
    why = skip_reason(run, t)
    if why:
        t.error = why
        mark_ended(ctx, run, t, TaskStatus.SKIPPED, rev)
        return True
    return begin(ctx, run, t, rev)


def begin(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> bool:
    """The task may run (its conditions held, its gate, if any, was approved): READY, or its
    children start (map instances, replicas). Returns whether it ended here (marked), as
    ``activate``.

    A task with an ``approval`` whose gate is not approved opens a gate and waits in
    WAITING_APPROVAL instead; ``approvals.decide`` calls ``begin`` again once it is approved.
    """
    if approvals.must_wait(t):
        approvals.open_gate(ctx, run, t, rev)
        return False
    if t.spec.replicas:
        return fusion.expand(ctx, run, t, rev)
    if t.spec.map:
        return maps.expand(ctx, run, t, rev)
    make_ready(ctx, run, t, rev, not_before_ms=0)
    return False


def skip_reason(run: RunState, t: TaskState) -> str:
    """Why a task whose dependencies have all ended is skipped ("" if it is not)."""
    spec = t.spec
    trigger = spec.trigger or "all_succeeded"
    if spec.deps and t.deps_skipped:
        if trigger == "all_succeeded":
            return "skipped: a dependency was skipped (set trigger: any_succeeded or all_done to run anyway)"
        if trigger == "any_succeeded" and t.deps_skipped == len(spec.deps):
            return "skipped: no dependency succeeded (trigger: any_succeeded)"
    if spec.when is not None and not conditions.evaluate(spec.when, spec.deps, lambda d: _output_of(run, d)):
        return "skipped: its when condition is false"
    return ""


def output_is_final(t: TaskState) -> bool:
    """Whether ``t.output`` is what its dependents read: it SUCCEEDED, or it is a spawner waiting
    for what it spawned (its attempt ran: attempt > 0; a map or replica group has no output yet)."""
    return t.status is TaskStatus.SUCCEEDED or (t.status is TaskStatus.WAITING_CHILDREN and t.attempt > 0)


def _output_of(run: RunState, task_id: str) -> Any:
    d = run.tasks.get(task_id)
    return d.output if d is not None and output_is_final(d) else conditions.MISSING


def fail_attempt(
    ctx: ApplyContext, run: RunState, t: TaskState, error: str, retryable: bool, rev: int
) -> None:
    """The running attempt failed: retry after the backoff while retries last, else fail the run.

    Only for outcomes of the attempt itself (its failure, its timeout, its refused output):
    each counts toward the type's breaker on its node. A lost or fenced attempt is not one.
    """
    st = ctx.state
    record_outcome(ctx, t, ok=False)
    unrun(ctx, run.run_id, t, "FAILED", error)
    t.error = error
    t.deadline_ms = 0
    if retryable and t.retries_left > 0:
        t.retries_left -= 1
        failures = t.spec.retries - t.retries_left
        delay = backoff_ms(t.spec.retry_backoff_ms, failures, run.run_id, t.spec.id)
        make_ready(ctx, run, t, rev, not_before_ms=st.time_ms + delay if delay else 0)
        return
    if t.origin == "replica":  # one replica's failure fails the run only if its quorum is lost
        fusion.replica_failed(ctx, run, t, rev)
        return
    fail_task(ctx, run, t, error, rev)


def fail_task(
    ctx: ApplyContext, run: RunState, t: TaskState, error: str, rev: int, reason: str = "TASK_FAILED"
) -> None:
    """``t`` (not RUNNING any more) FAILS for good, a dead letter, and fails its run."""
    st = ctx.state
    error = error[: limits.MAX_ERROR_CHARS]
    t.status = TaskStatus.FAILED
    t.error = error
    t.finished_ms = st.time_ms
    st.add_dead_letter((t.finished_ms, run.run_id, t.spec.id))
    run.unfinished -= 1
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))
    if t.origin == sagas.ORIGIN:  # a failed compensation is recorded; the others go on (all_done)
        cascade(ctx, run, t, rev)
        return
    finish_run(ctx, run, RunStatus.FAILED, rev, f"task {t.spec.id!r} failed: {error}", reason=reason)


def finish_run(
    ctx: ApplyContext, run: RunState, status: RunStatus, rev: int, error: str, reason: str = ""
) -> None:
    """End a run; its unfinished tasks are cancelled (hosts stop running attempts).

    ``reason`` is the code of why it ended (``RunState.reason``), "" for a success. A run that
    fails or is cancelled with succeeded compensable tasks goes COMPENSATING instead
    (``sagas.start``); one cancelled while COMPENSATING ends COMPENSATION_FAILED.
    """
    st = ctx.state
    # Only a run with unfinished tasks is walked: the last completion of a large run stays O(1).
    for t in run.tasks.values() if run.unfinished else ():
        if t.status in TERMINAL_TASK:
            continue
        unready(ctx, run.run_id, t)
        unrun(ctx, run.run_id, t, "CANCELLED", error)
        approvals.close_gate(ctx, run.run_id, t)
        t.status = TaskStatus.CANCELLED
        t.finished_ms = st.time_ms
        if not t.error:
            t.error = error
        ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, t.node))
    run.unfinished = 0
    if run.status is RunStatus.COMPENSATING and status not in sagas.ENDS:
        # Cancelled while compensating: the compensations left were cancelled above; the run
        # keeps the error and reason it failed with.
        status, error, reason = RunStatus.COMPENSATION_FAILED, run.error, run.reason
    elif status in sagas.TRIGGERS and sagas.start(ctx, run, rev, error, reason):
        return
    run.status = status
    run.finished_ms = st.time_ms
    run.error = "" if status is RunStatus.SUCCEEDED else error
    run.reason = reason
    run.revision = rev
    ctx.emit(RunChanged(rev, run.run_id, status))
    st.finished[run.run_id] = len(run.tasks)
    # By count and by size (tasks); the run that just finished stays, however large.
    while len(st.finished) > limits.FINISHED_RUNS_RETAINED or (
        st.finished.tasks > limits.FINISHED_TASKS_RETAINED and len(st.finished) > 1
    ):
        old_id, _ = st.finished.popitem(last=False)
        old = st.runs.pop(old_id, None)
        if old is not None and old.idempotency_key:
            st.idempotency.pop(old.idempotency_key, None)
        if old is not None and old.status is RunStatus.FAILED:
            # Its failed task ended the run, at the run's finished_ms: O(log n), not a walk of its tasks.
            st.drop_dead_letters(old.finished_ms, old_id)
        elif old is not None and old.status in sagas.ENDS:
            sagas.drop_dead_letters(st, old)


def requeue_node_tasks(ctx: ApplyContext, node_id: str, rev: int, why: str) -> None:
    """Attempts on a lost node go back to READY; this does not consume retries."""
    st = ctx.state
    # Sorted: the index's insertion order differs on a replica that rebuilt it from a snapshot,
    # and the order decides each task's ready_seq (part of the state).
    for run_id, task_id in sorted(st.running.get(node_id, {})):
        run = st.runs[run_id]
        t = run.tasks[task_id]
        unrun(ctx, run_id, t, "lost", why)
        t.error = f"attempt {t.attempt} lost: {why}"
        make_ready(ctx, run, t, rev, not_before_ms=0)


def expire_timeouts(ctx: ApplyContext, now: int, rev: int) -> int:
    """Fail the attempts whose timeout ``now`` passed (retryable); how many."""
    st = ctx.state
    expired = 0
    while True:
        st.next_task_deadline_ms()  # drop stale heap entries
        if not st.timeouts or st.timeouts[0][0] > now:
            return expired
        _, run_id, task_id, attempt = heapq.heappop(st.timeouts)
        run = st.runs[run_id]
        t = run.tasks[task_id]
        fail_attempt(ctx, run, t, f"attempt {attempt} timed out after {t.spec.timeout_ms} ms", True, rev)
        expired += 1
