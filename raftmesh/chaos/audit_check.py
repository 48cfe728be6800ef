"""The chaos run's audit-timeline check: every run the workload submitted and saw finish has a
complete, coherent ``GetAudit`` timeline on some node.

Coherent: it starts with ``submitted`` and its last change is ``run_finished`` (only refused, fenced
reports may follow); revisions never go down;
every attempt that completed was placed before (an attempt with a number: a map or group parent
ends through its children, never placed); nothing is placed or completed after the run's end
unless a rerun or retry reopened it first. Where the committed log was audited too
(``raftmesh.verify.audit``), each task that succeeded there has a ``completed`` row for its final
attempt (``AuditCheck.cross_check``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..client import Client
from ..client._audit import AuditEventInfo
from ..errors import RaftmeshError

AUDIT_LIMIT = 10_000
EXAMPLES = 5
REOPENERS = frozenset({"rerun", "retried", "reopened"})


@dataclass
class AuditCheck:
    checked: int = 0
    complete: int = 0
    truncated: int = 0
    """Runs with more than ``AUDIT_LIMIT`` events: the end is not checked."""
    problems: list[str] = field(default_factory=list)
    cross_checked: int | None = None
    """Succeeded tasks compared with the log audit (None: no log audit to compare with)."""
    completed: dict[str, set[tuple[str, int]]] = field(default_factory=dict, repr=False)
    """Run -> (task, attempt) of its ``completed`` rows, for runs with a whole, complete timeline."""

    def cross_check(self, succeeded: Mapping[tuple[str, str], int]) -> None:
        """Each task the log audit saw succeed, in a run checked here: its final attempt has a
        ``completed`` row (``succeeded``: (run, task) -> that attempt)."""
        self.cross_checked = 0
        for (run_id, task_id), attempt in sorted(succeeded.items()):
            rows = self.completed.get(run_id)
            if rows is None:
                continue
            self.cross_checked += 1
            if (task_id, attempt) not in rows:
                self.problems.append(
                    f"{run_id}: {task_id}#{attempt} succeeded in the log but its timeline has no completed row"
                )

    @property
    def violations(self) -> int:
        return len(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "runs_checked": self.checked,
            "complete": self.complete,
            "truncated": self.truncated,
            "cross_checked": self.cross_checked,
            "violations": self.violations,
            "examples": self.problems[:EXAMPLES],
        }

    def lines(self) -> list[str]:
        head = (
            f"audit timelines: {self.checked} finished runs, {self.complete} complete on some node,"
            f" {self.violations} problems"
        )
        return [head, *(f"  {p}" for p in self.problems[:EXAMPLES])]


def timeline_problems(events: list[AuditEventInfo], truncated: bool = False) -> list[str]:
    """What is wrong with one run's timeline ([] if coherent)."""
    if not events:
        return ["empty timeline"]
    out: list[str] = []
    if events[0].kind != "submitted":
        out.append(f"first event is {events[0].kind}, not submitted")
    # A stale report arriving after the end is refused (fenced) and changes nothing: it may follow.
    changes = [e for e in events if e.kind != "fenced"]
    if not truncated and changes and changes[-1].kind != "run_finished":
        out.append(f"last change is {changes[-1].kind}, not run_finished")
    placed: set[tuple[str, int]] = set()
    ended = False
    last_rev = 0
    for e in events:
        if e.revision < last_rev:
            out.append(f"revision {e.revision} ({e.kind}) after revision {last_rev}")
        last_rev = max(last_rev, e.revision)
        if e.kind == "placed":
            placed.add((e.task_id, e.attempt))
        if e.kind in REOPENERS:
            ended = False
        elif ended and e.kind in ("placed", "completed"):
            out.append(f"{e.kind} {e.task_id}#{e.attempt} at revision {e.revision} after the run's end")
        if e.kind == "completed" and e.attempt > 0 and (e.task_id, e.attempt) not in placed:
            out.append(f"{e.task_id}#{e.attempt} completed at revision {e.revision} but was never placed")
        if e.kind == "run_finished":
            ended = True
    return out


def check_audit(client: Client, run_ids: Iterable[str]) -> AuditCheck:
    """``GetAudit`` of each run (the SDK asks node after node for a complete timeline)."""
    res = AuditCheck()
    for run_id in sorted(run_ids):
        res.checked += 1
        try:
            trail = client.audit(run_id, limit=AUDIT_LIMIT)
        except RaftmeshError as exc:
            res.problems.append(f"{run_id}: GetAudit failed on every node: {exc}")
            continue
        if not trail.complete:
            res.problems.append(f"{run_id}: no node holds a complete timeline (longest: {len(trail)} events)")
            continue
        res.complete += 1
        truncated = len(trail) >= AUDIT_LIMIT
        res.truncated += truncated
        res.problems += [f"{run_id}: {p}" for p in timeline_problems(trail.events, truncated)]
        if not truncated:
            res.completed[run_id] = {(e.task_id, e.attempt) for e in trail.events if e.kind == "completed"}
    return res
