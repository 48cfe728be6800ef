"""Approval gates: a task with an ``approval`` waits in WAITING_APPROVAL until someone decides.

``tasks.begin`` opens the gate when the task could start (``open_gate``): every gate gets
its own id, unique and increasing (from ``ClusterState.seq``), so a rerun of the task opens a
gate with a new id. The gate is
decided exactly once, by ``ApproveTask`` (``approve``) or by its timeout on a tick
(``expire_gates``, decided as ``on_timeout`` says, by "timeout"):

- approved: the task goes on through the rest of ``begin`` (READY, or its children start);
- rejected: the task FAILS for good (not retried) and fails its run (which compensates).

An ``ApproveTask`` names the gate it decides. The same decision of a decided gate again
(a client's retry under a new request id) answers with the first decision and changes
nothing; a conflicting one is refused naming who decided; a decision naming an older
gate (the task was rerun since) is refused naming the open one. Gates of one run are
independent: each is its own task's record.

Two derived indexes, rebuilt by ``ClusterState.rebuild_indexes``: ``open_gates`` (sorted by
gate id, for ``ListApprovals``) and ``gate_deadlines`` (a heap the tick reads).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from dataclasses import dataclass

from . import limits, tasks
from .codes import Code
from .commands import Approval, ApproveTask
from .context import ApplyContext
from .results import ApproveTaskResult, Rejected, Result, TaskChanged
from .state import ClusterState, Gate, RunState, TaskState, TaskStatus

APPROVED = "approved"
REJECTED = "rejected"
TIMEOUT_PRINCIPAL = "timeout"
"""``Gate.by`` of a gate its timeout decided (no client may decide under this name)."""
ON_TIMEOUT = ("reject", "approve")
APPROVAL_REJECTED = "APPROVAL_REJECTED"
"""``RunState.reason`` of a run failed by a rejected gate."""


def text_error(what: str, text: str, max_chars: int) -> str:
    """ "" if ``text`` is a usable prompt or comment (newlines and tabs are fine), else what is wrong."""
    if len(text) > max_chars:
        return f"{what} is {len(text)} characters long; the limit is {max_chars}"
    if not limits.printable(text.replace("\n", " ").replace("\t", " ")):
        return f"{what} {text[:40]!r} may not contain control characters (other than newlines and tabs)"
    return ""


def spec_error(task_id: str, a: Approval) -> str:
    """ "" if a task's ``approval`` is acceptable at submit, else what to fix."""
    why = text_error(f"task {task_id!r}: approval prompt", a.prompt, limits.MAX_APPROVAL_PROMPT_CHARS)
    if why:
        return why
    if not 0 <= a.timeout_ms <= limits.MAX_APPROVAL_TIMEOUT_MS:
        return (
            f"task {task_id!r}: approval timeout_ms must be between 0 (wait for ever) and "
            f"{limits.MAX_APPROVAL_TIMEOUT_MS}"
        )
    if a.on_timeout not in ON_TIMEOUT:
        return f"task {task_id!r}: approval on_timeout {a.on_timeout!r} must be reject or approve"
    return ""


def must_wait(t: TaskState) -> bool:
    """Whether ``t`` needs a (new) gate before it may start: it has an approval not yet approved."""
    return t.spec.approval is not None and (t.gate is None or t.gate.decision != APPROVED)


def open_gate(ctx: ApplyContext, run: RunState, t: TaskState, rev: int) -> None:
    """``t`` could start: it waits in WAITING_APPROVAL behind a new gate with a new id."""
    st = ctx.state
    assert t.spec.approval is not None
    timeout_ms = t.spec.approval.timeout_ms
    st.seq += 1
    t.gate = Gate(st.seq, st.time_ms, st.time_ms + timeout_ms if timeout_ms else 0)
    t.status = TaskStatus.WAITING_APPROVAL
    st.open_gates.append((st.seq, run.run_id, t.spec.id))  # the newest id: the end of the sorted list
    if t.gate.deadline_ms:
        heapq.heappush(st.gate_deadlines, (t.gate.deadline_ms, run.run_id, t.spec.id, st.seq))
    run.revision = rev
    ctx.emit(TaskChanged(rev, run.run_id, t.spec.id, t.status, t.attempt, ""))


def close_gate(ctx: ApplyContext, run_id: str, t: TaskState) -> None:
    """Every way out of WAITING_APPROVAL goes through here (its deadline entry goes stale)."""
    if t.status is TaskStatus.WAITING_APPROVAL and t.gate is not None:
        gates = ctx.state.open_gates
        key = (t.gate.id, run_id, t.spec.id)
        i = bisect.bisect_left(gates, key)
        if i < len(gates) and gates[i] == key:
            del gates[i]


def task_id_error(task_id: str) -> str:
    # Child ids (``m[0]``, ``r#1``) are longer than submitted ones and use more characters.
    if not task_id:
        return "task id must not be empty"
    if len(task_id) > 2 * limits.MAX_ID_CHARS or not limits.printable(task_id):
        return f"task id {task_id[:40]!r} is not a task id"
    return ""


def _check(cmd: ApproveTask) -> str:
    why = limits.id_error("run id", cmd.run_id) or task_id_error(cmd.task_id)
    if why:
        return why
    if cmd.gate <= 0:
        return f"gate must be the id of the task's gate, >= 1 (got {cmd.gate}); read it with get or approvals"
    if not cmd.by:
        return "by must name who decides"
    if cmd.by == TIMEOUT_PRINCIPAL:
        return f"by {TIMEOUT_PRINCIPAL!r} is reserved for gates decided by their timeout"
    why = limits.name_error("by", cmd.by, limits.MAX_PRINCIPAL_CHARS)
    return why or text_error("comment", cmd.comment, limits.MAX_COMMENT_CHARS)


def _result(t: TaskState, gate: Gate, applied: bool) -> ApproveTaskResult:
    return ApproveTaskResult(
        applied=applied,
        gate=gate.id,
        decision=gate.decision,
        by=gate.by,
        comment=gate.comment,
        decided_ms=gate.decided_ms,
        status=t.status,
    )


def approve(ctx: ApplyContext, cmd: ApproveTask) -> Result:
    why = _check(cmd)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    run = ctx.state.runs.get(cmd.run_id)
    if run is None:
        return Rejected(Code.NOT_FOUND, f"run {cmd.run_id!r} not found (never submitted, or evicted)")
    t = run.tasks.get(cmd.task_id)
    if t is None:
        return Rejected(Code.NOT_FOUND, f"run {cmd.run_id!r} has no task {cmd.task_id!r}")
    gate = t.gate
    where = f"task {cmd.task_id!r} of run {cmd.run_id!r}"
    if t.spec.approval is None:
        return Rejected(Code.FAILED_PRECONDITION, f"{where} has no approval gate")
    if gate is None:
        return Rejected(
            Code.FAILED_PRECONDITION, f"{where} has no gate open yet (it is {t.status.value}); wait for it"
        )
    if cmd.gate != gate.id:
        if cmd.gate < gate.id:
            return Rejected(
                Code.FAILED_PRECONDITION,
                f"gate {cmd.gate} of {where} was superseded by gate {gate.id} (the task was run again); "
                f"decide gate {gate.id} if you mean it",
            )
        return Rejected(Code.FAILED_PRECONDITION, f"{where} has no gate {cmd.gate} (its gate is {gate.id})")
    wanted = APPROVED if cmd.approve else REJECTED
    if gate.decision:
        if gate.decision == wanted:
            return _result(t, gate, applied=False)  # a retry: the first decision stands
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"gate {gate.id} of {where} was already {gate.decision} by {gate.by!r}"
            + (f" ({gate.comment[:200]!r})" if gate.comment else ""),
        )
    if t.status is not TaskStatus.WAITING_APPROVAL:  # an open gate of a cancelled task
        return Rejected(Code.FAILED_PRECONDITION, f"{where} is {t.status.value}, not waiting for approval")
    rev = ctx.advance()
    decide(ctx, run, t, cmd.approve, cmd.by, cmd.comment, rev)
    return _result(t, gate, applied=True)


def decide(
    ctx: ApplyContext, run: RunState, t: TaskState, approve: bool, by: str, comment: str, rev: int
) -> None:
    """Decide ``t``'s open gate: approved, the task goes on; rejected, it fails its run."""
    st = ctx.state
    gate = t.gate
    assert gate is not None and t.status is TaskStatus.WAITING_APPROVAL
    close_gate(ctx, run.run_id, t)
    gate.decision = APPROVED if approve else REJECTED
    gate.by = by
    gate.comment = comment
    gate.decided_ms = st.time_ms
    run.revision = rev
    if approve:
        t.status = TaskStatus.PENDING  # between the gate and what ``begin`` makes of it
        if tasks.begin(ctx, run, t, rev):
            tasks.cascade(ctx, run, t, rev)
        return
    error = f"approval rejected by {by!r}" + (f": {comment}" if comment else "")
    tasks.fail_task(ctx, run, t, error[: limits.MAX_ERROR_CHARS], rev, reason=APPROVAL_REJECTED)


def expire_gates(ctx: ApplyContext, now: int, rev: int) -> int:
    """Decide the open gates whose timeout ``now`` passed, as their ``on_timeout`` says; how many."""
    st = ctx.state
    decided = 0
    while True:
        st.next_gate_deadline_ms()  # drop stale heap entries
        if not st.gate_deadlines or st.gate_deadlines[0][0] > now:
            return decided
        _, run_id, task_id, _ = heapq.heappop(st.gate_deadlines)
        run = st.runs[run_id]
        t = run.tasks[task_id]
        a = t.spec.approval
        assert a is not None
        comment = f"no decision within {a.timeout_ms} ms (on_timeout: {a.on_timeout})"
        decide(ctx, run, t, a.on_timeout == "approve", TIMEOUT_PRINCIPAL, comment, rev)
        decided += 1


@dataclass(frozen=True, slots=True)
class ApprovalView:
    """An open gate as ``ListApprovals`` shows it (copied out of the state)."""

    run_id: str
    task_id: str
    gate: int
    agent: str
    prompt: str
    opened_ms: int
    deadline_ms: int
    on_timeout: str


def _view(st: ClusterState, gate_id: int, run_id: str, task_id: str) -> ApprovalView | None:
    t = st.task(run_id, task_id)
    if t is None or t.gate is None or t.spec.approval is None:  # the index is kept exact; a guard
        return None
    a = t.spec.approval
    return ApprovalView(
        run_id, task_id, gate_id, t.spec.agent, a.prompt, t.gate.opened_ms, t.gate.deadline_ms, a.on_timeout
    )


def list_approvals(
    st: ClusterState,
    run_id: str = "",
    limit: int = 100,
    after: tuple[int, str, str] | None = None,
    visible: Callable[[str], bool] | None = None,
) -> list[ApprovalView]:
    """Open gates, oldest first, after the cursor ``after`` (gate id, run id, task id).

    Cluster-wide: O(log n + limit) from the sorted index; for one run: O(its tasks).
    ``visible(run_id)`` False skips a gate (a caller limited to namespaces): O(1) per skip.
    """
    out: list[ApprovalView] = []
    if run_id:
        run = st.runs.get(run_id)
        keys = sorted(
            (t.gate.id, run_id, t.spec.id)
            for t in (run.tasks.values() if run else ())
            if t.status is TaskStatus.WAITING_APPROVAL and t.gate is not None
        )
        start = bisect.bisect_right(keys, after) if after else 0
    else:
        keys = st.open_gates
        start = bisect.bisect_right(keys, after) if after else 0
    for key in keys[start:]:
        if len(out) >= limit:
            break
        if visible is not None and not visible(key[1]):
            continue
        v = _view(st, *key)
        if v is not None:
            out.append(v)
    return out
