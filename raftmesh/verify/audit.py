"""Audit a committed log: replay it through a fresh state machine and record what happened.

Used by tests and the chaos checker: every task's committed results, the order
in which tasks started and finished, and whether any task started before all
of its dependencies had succeeded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..consensus.commands import Undecodable, decode_batch
from ..consensus.machine import Event, StateMachine, TaskChanged
from ..consensus.state import TaskStatus


@dataclass
class Audit:
    machine: StateMachine = field(default_factory=StateMachine)
    results: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(run, task) -> number of committed results (SUCCEEDED transitions)."""
    starts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(run, task) -> attempts started (RUNNING transitions)."""
    early_starts: list[tuple[str, str]] = field(default_factory=list)
    """Tasks that started while a dependency had not SUCCEEDED (must stay empty)."""

    def feed(self, payload: bytes) -> None:
        for cmd in decode_batch(payload):
            if not isinstance(cmd, Undecodable):
                self._check(self.machine.apply(cmd)[1])

    def _check(self, events: list[Event]) -> None:
        # Checked after each command: an assign cannot also complete a dependency.
        st = self.machine.state
        for ev in events:
            if not isinstance(ev, TaskChanged):
                continue
            key = (ev.run_id, ev.task_id)
            if ev.status is TaskStatus.SUCCEEDED:
                self.results[key] += 1
            elif ev.status is TaskStatus.RUNNING:
                self.starts[key] += 1
                run = st.runs.get(ev.run_id)
                if run is not None:
                    t = run.tasks[ev.task_id]
                    if any(run.tasks[d].status is not TaskStatus.SUCCEEDED for d in t.spec.deps):
                        self.early_starts.append(key)

    @property
    def duplicated(self) -> list[tuple[str, str]]:
        return sorted(k for k, n in self.results.items() if n > 1)


def audit_payloads(payloads: list[bytes]) -> Audit:
    a = Audit()
    for p in payloads:
        a.feed(p)
    return a
