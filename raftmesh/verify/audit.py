"""Audit a committed log: replay it through a fresh state machine and record what happened.

Used by tests and the chaos checker: every task's committed results, the order
in which tasks started and finished, and whether any task started before all
of its dependencies had succeeded.

The fencing check does not trust the machine's own fencing: the audit keeps,
per task, the (attempt, node, token) of the latest start it saw, and every
result the machine accepted must come from exactly that attempt. It would catch
a state machine that let a stale completion through.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..consensus.commands import Command, Complete, Fail, SubmitRun, Undecodable, decode_batch
from ..consensus.machine import Event, Result, RunChanged, StateMachine, TaskChanged
from ..consensus.state import TaskStatus

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
class Audit:
    machine: StateMachine = field(default_factory=StateMachine)
    results: Counter[TaskKey] = field(default_factory=Counter)
    """(run, task) -> number of committed results (SUCCEEDED transitions)."""
    starts: Counter[TaskKey] = field(default_factory=Counter)
    """(run, task) -> attempts started (RUNNING transitions)."""
    early_starts: list[TaskKey] = field(default_factory=list)
    """Tasks that started while a dependency had not SUCCEEDED (must stay empty)."""
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

    def feed(self, payload: bytes) -> None:
        for cmd in decode_batch(payload):
            if isinstance(cmd, Undecodable):
                continue
            self.commands += 1
            res, events = self.machine.apply(cmd)
            self._check_fencing(cmd, res, events)
            self._check(events)
            if isinstance(cmd, SubmitRun) and res.ok and events and cmd.idempotency_key:
                self.runs_by_key.setdefault(cmd.idempotency_key, []).append(str(res.value["run_id"]))

    def _check_fencing(self, cmd: Command, res: Result, events: list[Event]) -> None:
        # Compared with the starts seen *before* this command: a result cannot start its own attempt.
        if not isinstance(cmd, (Complete, Fail)):
            return
        if not res.ok:
            self.stale_rejected += len(cmd.items) if res.code == "ABORTED" else 0
            return
        rejected = {(r[0], r[1]) for r in (res.value or {}).get("rejected", [])}
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
            elif ev.status is TaskStatus.RUNNING:
                self.starts[key] += 1
                self.latest_start[key] = Start(ev.attempt, ev.node, ev.revision)
                run = st.runs.get(ev.run_id)
                if run is not None:
                    t = run.tasks[ev.task_id]
                    if any(run.tasks[d].status is not TaskStatus.SUCCEEDED for d in t.spec.deps):
                        self.early_starts.append(key)

    @property
    def duplicated(self) -> list[TaskKey]:
        return sorted(k for k, n in self.results.items() if n > 1)

    @property
    def duplicated_runs(self) -> dict[str, list[str]]:
        """Idempotency keys under which the log created more than one run."""
        return {k: v for k, v in sorted(self.runs_by_key.items()) if len(v) > 1}


def audit_payloads(payloads: list[bytes]) -> Audit:
    a = Audit()
    for p in payloads:
        a.feed(p)
    return a
