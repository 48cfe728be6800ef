"""``ApplyContext``: what a command processor gets besides its command.

A processor (``runs``, ``members``, ``lock_commands``, ``kv_commands``, ``ticks``) is a
function ``(ctx, cmd) -> Result``. It validates the command completely, and only then
calls ``ctx.advance()`` and mutates ``ctx.state``; what changed it reports with
``ctx.emit``. The context lives for one command: its events and the locks it freed
are never part of the replicated state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .results import Event
from .state import ClusterState


@dataclass(slots=True)
class ApplyContext:
    state: ClusterState
    ts_ms: int
    """The command's timestamp (stamped by its proposer)."""
    events: list[Event] = field(default_factory=list)
    released: set[str] = field(default_factory=set)
    """Locks freed by this command; their waiters are granted before it returns."""
    notes: list[tuple[str, str, str, str]] = field(default_factory=list)
    """Audit-only facts no event carries (``(kind, run_id, task_id, detail)``): a task spawned, a
    budget exceeded. Like events they are never part of the state; the node's audit archive reads them."""
    readied: int = 0
    """Tasks this command put in the READY queue."""
    freed: int = 0
    """Attempts this command ended (slots it freed). With ``readied``, what bounds the walk of
    the READY queue that places work before the command returns (``tasks.place_queued``)."""
    reporter: str = ""
    """The node whose report (``complete``, ``fail``) this command is: it proved alive by
    proposing it, so what the command frees or readies is placed on it alone ("" any member)."""
    prefer: str = ""
    """The member that wins a tie on load for what this command readies (``SubmitRun.prefer``)."""
    entry_term: int | None = None
    """The Raft term of the log entry this command came in (``StateMachine.entry_term``), the same
    on every replica; None when unknown (a replay of bare payloads)."""
    start_revision: int = field(init=False)

    def __post_init__(self) -> None:
        self.start_revision = self.state.revision

    @property
    def now_ms(self) -> int:
        """State time as of this command: ``max(state time, ts_ms)``, before or after ``advance``."""
        return max(self.state.time_ms, self.ts_ms)

    @property
    def changed(self) -> bool:
        """Whether the command changed the state (it called ``advance``)."""
        return self.start_revision != self.state.revision

    def advance(self) -> int:
        """Call once the command is known to change the state: raises time and revision."""
        st = self.state
        st.time_ms = self.now_ms
        st.revision += 1
        return st.revision

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def note(self, kind: str, run_id: str, task_id: str = "", detail: str = "") -> None:
        self.notes.append((kind, run_id, task_id, detail))
