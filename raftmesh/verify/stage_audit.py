"""Staged submits in a committed log: what became of each stage (``Audit.stages``).

A large run goes to the log as ``StageRun`` parts, then a ``SubmitRun`` with ``staged`` set
that adopts the stage (``consensus.runs.stage``). Only those two commands and a ``Tick``
(expiry) change ``ClusterState.stages``, so the audit diffs the stages around each of them:
every stage ends adopted by its run (once, with every staged task), expired by a tick, or
dropped (its key's run was made, or a later request under the key found it expired); a part
never makes its run visible (no event, no run) before the final entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..consensus.commands import Command, StageRun, SubmitRun, Tick
from ..consensus.machine import StateMachine
from ..consensus.results import Event, Result, SubmitRunResult

ADOPTED, EXPIRED, DROPPED = "adopted", "expired", "dropped"


@dataclass
class StagedRun:
    """One run id's stage as the log built it."""

    run_id: str
    key: str
    parts: int = 0
    """Parts applied (the stage's next part advanced)."""
    resumed: int = 0
    """Parts answered as applied already, or that moved the stage to the retrying node."""
    answered: int = 0
    """Parts answered with the key's existing run (the stage stops there)."""
    refused: int = 0
    ended: str = ""
    """``ADOPTED``, ``EXPIRED`` or ``DROPPED`` ("" while staged); the latest, if staged again."""
    tasks: int = 0
    """The tasks of its run when adopted."""


@dataclass
class StageAudit:
    runs: dict[str, StagedRun] = field(default_factory=dict)
    """Run id -> its stage, for every run id a ``StageRun`` named."""
    visible: list[str] = field(default_factory=list)
    """Parts after which their run was visible (an event, or the run in the state): must stay empty."""
    miscounted: list[str] = field(default_factory=list)
    """Adopted runs whose task count is not the staged tasks plus the last part's: must stay empty."""
    adoptions: dict[str, int] = field(default_factory=dict)
    """Run id -> times a ``SubmitRun`` adopted a stage into it (more than one is a duplicate)."""

    def before(self, cmd: Command, machine: StateMachine) -> dict[str, int] | None:
        """Each stage's next part before ``cmd``, when ``cmd`` may change the stages (else None)."""
        stages = machine.state.stages
        if isinstance(cmd, StageRun) or (stages and isinstance(cmd, SubmitRun | Tick)):
            return {rid: s.next_seq for rid, s in stages.items()}
        return None

    def after(
        self,
        cmd: Command,
        res: Result,
        events: list[Event],
        machine: StateMachine,
        pre: dict[str, int] | None,
    ) -> None:
        if pre is None:
            return
        st = machine.state
        if isinstance(cmd, StageRun):
            rec = self.runs.setdefault(cmd.run_id, StagedRun(cmd.run_id, cmd.idempotency_key))
            now = st.stages.get(cmd.run_id)
            applied = now is not None and now.next_seq > pre.get(cmd.run_id, 0)
            if applied:
                rec.parts += 1
                rec.ended = ""
            elif isinstance(res, SubmitRunResult):
                rec.answered += 1
            elif res.ok:
                rec.resumed += 1
            else:
                rec.refused += 1
            if events or (applied and cmd.run_id in st.runs):
                self.visible.append(f"{cmd.run_id}: part {cmd.seq} ({len(events)} events)")
        for rid in pre:
            if rid in st.stages:
                continue
            rec = self.runs.setdefault(rid, StagedRun(rid, ""))
            if isinstance(cmd, SubmitRun) and cmd.run_id == rid and cmd.staged and rid in st.runs:
                rec.ended, rec.tasks = ADOPTED, len(st.runs[rid].tasks)
                self.adoptions[rid] = self.adoptions.get(rid, 0) + 1
                if rec.tasks != cmd.staged + len(cmd.tasks):
                    self.miscounted.append(
                        f"{rid}: {rec.tasks} tasks, staged {cmd.staged} + {len(cmd.tasks)}"
                    )
            else:
                rec.ended = EXPIRED if isinstance(cmd, Tick) else DROPPED
