"""Run budgets: hard limits on what a run may spend (``Budget`` on ``SubmitRun``).

``max_tasks`` counts every task the run has, map instances, replicas and spawned tasks
included: whatever adds tasks asks ``tasks_over`` first. A run that reaches a limit
ends FAILED with reason BUDGET_EXCEEDED and the figures (``exceed``): nothing more of it
starts, and its running attempts are cancelled (their late reports are fenced).
"""

from __future__ import annotations

from . import tasks
from .context import ApplyContext
from .state import RunState, RunStatus

BUDGET_EXCEEDED = "BUDGET_EXCEEDED"


def tasks_over(run: RunState, n: int) -> str:
    """Why adding ``n`` tasks to the run breaks its ``max_tasks`` ("" if it does not)."""
    b = run.budget
    if b is None or not b.max_tasks or len(run.tasks) + n <= b.max_tasks:
        return ""
    return (
        f"{BUDGET_EXCEEDED}: max_tasks is {b.max_tasks}; the run has {len(run.tasks)} tasks and would add {n}"
    )


def exceed(ctx: ApplyContext, run: RunState, why: str, rev: int) -> None:
    """End the run FAILED for its budget (``why`` gives the figures)."""
    tasks.finish_run(ctx, run, RunStatus.FAILED, rev, why, reason=BUDGET_EXCEEDED)
