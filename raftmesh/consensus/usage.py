"""Usage sums: what accepted attempts reported, per task and per run.

Only a report on the task's current attempt is charged (``runs.complete``/``runs.fail``
call ``charge`` after fencing); a fenced or rejected report adds nothing. The run keeps
a running sum, so a report costs O(1) however many tasks the run has. Sums saturate at
``limits.MAX_USAGE_TOKENS``/``MAX_USAGE_COST``: a state that could not be encoded (an
integer past msgpack's range, an infinite float) would stop every replica's snapshots.
"""

from __future__ import annotations

from . import limits
from .commands import Usage
from .state import RunState, TaskState


def add(a: Usage, b: Usage) -> Usage:
    return Usage(
        min(a.tokens_in + b.tokens_in, limits.MAX_USAGE_TOKENS),
        min(a.tokens_out + b.tokens_out, limits.MAX_USAGE_TOKENS),
        min(a.cost + b.cost, limits.MAX_USAGE_COST),
    )


def charge(run: RunState, t: TaskState, u: Usage) -> None:
    """Add an accepted attempt's usage to its task and run (replacing the frozen values)."""
    if u:
        t.usage = add(t.usage, u)
        run.usage = add(run.usage, u)
