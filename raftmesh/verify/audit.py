"""Audit a committed log: replay it through a fresh state machine and record what happened.

Used by tests and the chaos checker: every task's committed results, the order
in which tasks started and finished, and whether any task started before all
of its dependencies had succeeded.

The fencing check does not trust the machine's own fencing: the audit keeps,
per task, the (attempt, node, token) of the latest start it saw, and every
result the machine accepted must come from exactly that attempt. It would catch
a state machine that let a stale completion through.

Locks get the same treatment (``LockAudit``): after every command the audit
compares each lock's holders with what it held before, which turns the log into
hold intervals in log order (granted by command i, ended by command j, and how:
released, expired by a tick, cancelled, the task's end). Releases and expiries
emit no event, so diffing the holders is the only way to see them. It also keeps
its own "highest token granted" per lock, from those holders, the acquire results
and the grant events, and compares every KV write fenced by a lock token that the
machine accepted with it: a write with an older token that went through would be
a stale holder's write the machine should have refused.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..consensus.codes import Code
from ..consensus.commands import (
    Command,
    Complete,
    Fail,
    KvTxn,
    LockAcquire,
    LockCancel,
    LockRelease,
    NodeDown,
    Preempt,
    RetryTask,
    SubmitRun,
    Tick,
    Undecodable,
    decode_batch,
)
from ..consensus.locks import EXCLUSIVE
from ..consensus.machine import StateMachine
from ..consensus.results import (
    Event,
    KvTxnResult,
    LockAcquireResult,
    LockChanged,
    PreemptResult,
    ReportResult,
    Result,
    RetryTaskResult,
    RunChanged,
    SubmitRunResult,
    TaskChanged,
)
from ..consensus.state import TaskState, TaskStatus
from .message_audit import MessageAudit
from .stage_audit import StageAudit

TaskKey = tuple[str, str]

# Transitions that a completion or failure can cause to its own task: a result (SUCCEEDED),
# a retry (READY) or the end of the task (FAILED). CANCELLED comes from the run ending.
_RESULT_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.READY, TaskStatus.FAILED})


@dataclass(frozen=True)
class Start:
    """One started attempt: the token is the revision of the assign that started it."""

    attempt: int
    node: str
    token: int


@dataclass(frozen=True)
class FencedResult:
    """A result the machine accepted from an attempt that was not the task's latest start."""

    run_id: str
    task_id: str
    command: str
    """``complete`` or ``fail``."""
    reported: Start
    """What the result carried: attempt, reporting node, token."""
    latest: Start | None
    """The latest start the audit saw for the task (None: it never started)."""


@dataclass
class LockHold:
    """One holder's hold of one lock, in log order: from command ``start`` to command ``end``.

    Indexes count the commands of the log (1 is the first), so a hold is the half-open
    interval [start, end): a release and the grant it lets through, in the same command,
    do not overlap. ``end`` is ``math.inf`` if the log ends with the lock still held.
    """

    lock: str
    owner: str
    mode: str
    token: int
    start: int
    start_revision: int
    start_ms: int
    """The state's clock (the leader's, from the commands) after the granting command."""
    end: float = math.inf
    end_revision: int = 0
    end_ms: int = 0
    end_reason: str = ""
    """``released``, ``expired`` (a tick), ``cancelled``, ``node down``, or the ending command's tag."""

    @property
    def exclusive(self) -> bool:
        return self.mode == EXCLUSIVE

    def describe(self) -> str:
        end = "still held" if self.end == math.inf else f"{self.end_reason} at #{self.end:.0f}"
        return f"{self.lock!r} {self.mode} by {self.owner} token {self.token}: #{self.start} - {end}"


@dataclass(frozen=True)
class FencedWrite:
    """A KV transaction fenced by a lock token, as the log applied it.

    ``latest_grant`` is the audit's own highest token of ``lock`` before this command
    (0: never granted). The write is stale if it was ``accepted`` with another token.
    """

    index: int
    revision: int
    lock: str
    token: int
    latest_grant: int
    accepted: bool
    """The machine applied it and it changed the state (not a dedup replay, not a no-op)."""
    code: str
    """The rejection code ("" if accepted): ABORTED is the machine's fencing at work."""
    puts: tuple[tuple[str, Any, Any], ...] = ()
    """(key, value before, value written) of each put an accepted write made."""

    @property
    def stale(self) -> bool:
        return self.accepted and self.token != self.latest_grant


_END_REASONS: dict[type[Command], str] = {
    LockRelease: "released",
    Tick: "expired",
    LockCancel: "cancelled",
    NodeDown: "node down",
}


@dataclass
class LockAudit:
    """Lock holds and lock-fenced KV writes, from the holders' table after every command."""

    holds: list[LockHold] = field(default_factory=list)
    """Every hold, in the order the log granted them."""
    max_granted: dict[str, int] = field(default_factory=dict)
    """lock -> the highest token the log granted for it so far."""
    fenced_writes: list[FencedWrite] = field(default_factory=list)
    _open: dict[str, dict[str, LockHold]] = field(default_factory=dict)

    def before(self, cmd: Command, machine: StateMachine) -> tuple[int, dict[str, Any]] | None:
        """What a fenced write must be compared with, read before it applies."""
        if not isinstance(cmd, KvTxn) or cmd.fence is None or not cmd.fence.lock:
            return None
        kv = machine.state.kv
        prev: dict[str, Any] = {}
        for o in (*cmd.success, *cmd.failure):
            e = kv.get(o.key)
            prev.setdefault(o.key, e.value if e is not None else None)
        return self.max_granted.get(cmd.fence.lock, 0), prev

    def after(
        self,
        index: int,
        cmd: Command,
        res: Result,
        events: list[Event],
        machine: StateMachine,
        changed: bool,
        pre: tuple[int, dict[str, Any]] | None,
    ) -> None:
        st = machine.state
        if pre is not None and isinstance(cmd, KvTxn) and cmd.fence is not None:
            latest, prev = pre
            accepted = res.ok and changed
            puts: tuple[tuple[str, Any, Any], ...] = ()
            if accepted and isinstance(res, KvTxnResult):
                ops = cmd.success if res.succeeded else cmd.failure
                puts = tuple((o.key, prev.get(o.key), o.value) for o in ops if o.kind == "put")
            if accepted or res.code is Code.ABORTED:
                self.fenced_writes.append(
                    FencedWrite(
                        index,
                        st.revision,
                        cmd.fence.lock,
                        cmd.fence.token,
                        latest,
                        accepted,
                        "" if accepted else res.code,
                        puts,
                    )
                )
        if isinstance(cmd, LockAcquire) and isinstance(res, LockAcquireResult) and res.granted:
            for name, _ in cmd.items:
                self._granted(name, res.token)
        for ev in events:
            if isinstance(ev, LockChanged) and ev.granted:
                lt = st.locks
                for lock in lt.locks.values():
                    h = lock.holders.get(ev.owner)
                    if h is not None and h.request_id == ev.request_id:
                        self._granted(lock.name, ev.token)
        reason = _END_REASONS.get(type(cmd), cmd.TAG)
        locks = st.locks.locks
        for name in sorted(set(self._open) | set(locks)):
            current = locks.get(name)
            held = current.holders if current is not None else {}
            opened = self._open.setdefault(name, {})
            for owner, hold in list(opened.items()):
                h = held.get(owner)
                if h is None or h.token != hold.token or h.mode != hold.mode:
                    hold.end, hold.end_revision, hold.end_ms = index, st.revision, st.time_ms
                    hold.end_reason = reason
                    del opened[owner]
            for owner, h in held.items():
                if owner not in opened:
                    hold = LockHold(name, owner, h.mode, h.token, index, st.revision, st.time_ms)
                    opened[owner] = hold
                    self.holds.append(hold)
                    self._granted(name, h.token)

    def _granted(self, name: str, token: int) -> None:
        if token > self.max_granted.get(name, 0):
            self.max_granted[name] = token

    @property
    def stale_writes(self) -> list[FencedWrite]:
        """Accepted lock-fenced writes whose token was not the lock's latest grant (must be empty)."""
        return [w for w in self.fenced_writes if w.stale]


def overlapping_holds(holds: list[LockHold]) -> list[tuple[LockHold, LockHold]]:
    """Pairs of holds of one lock that overlap in log order while one of them is exclusive.

    A sweep per lock over the holds sorted by start: a hold overlaps every earlier one
    still open when it starts. Shared holds may overlap each other, nothing else may.
    """
    by_lock: dict[str, list[LockHold]] = {}
    for h in holds:
        by_lock.setdefault(h.lock, []).append(h)
    out: list[tuple[LockHold, LockHold]] = []
    for hs in by_lock.values():
        active: list[LockHold] = []
        for h in sorted(hs, key=lambda x: (x.start, x.token)):
            active = [a for a in active if a.end > h.start]
            out.extend((a, h) for a in active if a.exclusive or h.exclusive)
            active.append(h)
    return out


def token_regressions(holds: list[LockHold]) -> list[tuple[LockHold, LockHold]]:
    """Consecutive grants of one lock (log order) whose token did not grow.

    Holds started by the same command may share a token (shared holders granted at
    once); any later grant must carry a strictly greater one.
    """
    by_lock: dict[str, list[LockHold]] = {}
    for h in holds:
        by_lock.setdefault(h.lock, []).append(h)
    out: list[tuple[LockHold, LockHold]] = []
    for hs in by_lock.values():
        ordered = sorted(hs, key=lambda x: x.start)
        for a, b in itertools.pairwise(ordered):
            if b.token < a.token or (b.token == a.token and b.start != a.start):
                out.append((a, b))
    return out


@dataclass
class Audit:
    machine: StateMachine = field(default_factory=StateMachine)
    results: Counter[TaskKey] = field(default_factory=Counter)
    """(run, task) -> number of committed results (SUCCEEDED transitions)."""
    succeeded: dict[TaskKey, int] = field(default_factory=dict)
    """(run, task) -> the attempt of its latest SUCCEEDED transition (the audit timeline check
    finds a ``completed`` row for it)."""
    starts: Counter[TaskKey] = field(default_factory=Counter)
    """(run, task) -> attempts started (RUNNING transitions)."""
    early_starts: list[TaskKey] = field(default_factory=list)
    """Tasks that started while a dependency had not SUCCEEDED (or been SKIPPED, for a task whose
    trigger allows it) (must stay empty)."""
    latest_start: dict[TaskKey, Start] = field(default_factory=dict)
    fenced: list[FencedResult] = field(default_factory=list)
    """Accepted results from fenced attempts (must stay empty)."""
    runs_by_key: dict[str, list[str]] = field(default_factory=dict)
    """Idempotency key -> runs created under it, from the log (more than one is a duplicate)."""
    run_status: dict[str, str] = field(default_factory=dict)
    """Run -> its latest status in the log (kept after the state evicts finished runs)."""
    commands: int = 0
    stale_rejected: int = 0
    """Results the machine rejected as fenced (shows the fencing path was exercised)."""
    locks: LockAudit = field(default_factory=LockAudit)
    requeues: Counter[TaskKey] = field(default_factory=Counter)
    """(run, task) -> times a ``retry_task`` requeued it from the dead letters."""
    preemptions: int = 0
    """Attempts preempted by ``preempt`` commands."""
    messages: MessageAudit = field(default_factory=MessageAudit)
    stages: StageAudit = field(default_factory=StageAudit)

    def feed(self, payload: bytes, term: int | None = None) -> None:
        """Apply one log entry; ``term``: its Raft term, when the source has it (a journal does, and
        an archive that recorded it; without it a leader's decision logged in another term applies
        unchecked)."""
        self.machine.entry_term = term
        for cmd in decode_batch(payload):
            if isinstance(cmd, Undecodable):
                continue
            self.commands += 1
            pre = self.locks.before(cmd, self.machine)
            pre_messages = self.messages.before(cmd, self.machine)
            pre_stages = self.stages.before(cmd, self.machine)
            revision = self.machine.state.revision
            res, events = self.machine.apply(cmd)
            changed = self.machine.state.revision != revision
            self.locks.after(self.commands, cmd, res, events, self.machine, changed, pre)
            self.messages.after(self.commands, cmd, res, self.machine, pre_messages)
            self.stages.after(cmd, res, events, self.machine, pre_stages)
            self._check_fencing(cmd, res, events)
            self._check(events)
            if changed and isinstance(cmd, RetryTask) and isinstance(res, RetryTaskResult) and res.requeued:
                self.requeues[(cmd.run_id, cmd.task_id)] += 1
            if changed and isinstance(cmd, Preempt) and isinstance(res, PreemptResult):
                self.preemptions += res.accepted
            if (
                isinstance(cmd, SubmitRun)
                and isinstance(res, SubmitRunResult)
                and events
                and cmd.idempotency_key
            ):
                self.runs_by_key.setdefault(cmd.idempotency_key, []).append(res.run_id)

    def _check_fencing(self, cmd: Command, res: Result, events: list[Event]) -> None:
        # Compared with the starts seen *before* this command: a result cannot start its own attempt.
        if not isinstance(cmd, (Complete, Fail)):
            return
        if not isinstance(res, ReportResult):
            self.stale_rejected += len(cmd.items) if res.code is Code.ABORTED else 0
            return
        rejected = {(r.run_id, r.task_id) for r in res.rejected}
        self.stale_rejected += len(rejected)
        changed = {
            (e.run_id, e.task_id)
            for e in events
            if isinstance(e, TaskChanged) and e.status in _RESULT_STATUSES
        }
        for item in cmd.items:
            key = (item.run_id, item.task_id)
            if key in rejected or key not in changed:
                continue
            reported = Start(item.attempt, cmd.node_id, item.token)
            latest = self.latest_start.get(key)
            if reported != latest:
                self.fenced.append(FencedResult(item.run_id, item.task_id, cmd.TAG, reported, latest))

    def _check(self, events: list[Event]) -> None:
        # Checked after each command: an assign cannot also complete a dependency.
        st = self.machine.state
        for ev in events:
            if isinstance(ev, RunChanged):
                self.run_status[ev.run_id] = ev.status.value
                continue
            if not isinstance(ev, TaskChanged):
                continue
            key = (ev.run_id, ev.task_id)
            if ev.status is TaskStatus.SUCCEEDED:
                self.results[key] += 1
                self.succeeded[key] = ev.attempt
            elif ev.status is TaskStatus.RUNNING:
                self.starts[key] += 1
                self.latest_start[key] = Start(ev.attempt, ev.node, ev.revision)
                run = st.runs.get(ev.run_id)
                if run is not None:
                    t = run.tasks[ev.task_id]
                    if any(not _dependency_met(t, run.tasks[d]) for d in t.spec.deps):
                        self.early_starts.append(key)

    @property
    def duplicated(self) -> list[TaskKey]:
        return sorted(k for k, n in self.results.items() if n > 1)

    @property
    def duplicated_runs(self) -> dict[str, list[str]]:
        """Idempotency keys under which the log created more than one run."""
        return {k: v for k, v in sorted(self.runs_by_key.items()) if len(v) > 1}


def _dependency_met(t: TaskState, d: TaskState) -> bool:
    """``d`` SUCCEEDED (or SKIPPED, if ``t``'s trigger lets it run anyway), or ``d`` spawned ``t``
    and waits for its children: a spawned task may read its spawner's output, final once the
    spawner's attempt succeeded (``tasks._output_of``)."""
    if d.status is TaskStatus.SUCCEEDED:
        return True
    if d.status is TaskStatus.SKIPPED:  # lets a task start only when its trigger says so
        return bool(t.spec.trigger)
    return d.status is TaskStatus.WAITING_CHILDREN and d.attempt > 0 and t.parent == d.spec.id


def audit_payloads(payloads: list[bytes]) -> Audit:
    a = Audit()
    for p in payloads:
        a.feed(p)
    return a
