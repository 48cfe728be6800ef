"""The leader's periodic ``tick``: the only way time passes in the state machine.

It carries the leader's clock; applying it ends what that time has passed: lock
leases and waits, KV leases (deleting their keys), task attempts' timeouts, runs'
``max_seconds`` budgets, approval gates' timeouts (decided as their ``on_timeout`` says),
messaging's: queued messages' TTLs, activation leases, old replies (``message_commands.expire``),
and abandoned stages of large submits (``runs.expire_stages``).
"""

from __future__ import annotations

from . import approvals, budgets, kv_commands, lock_commands, message_commands, runs
from .commands import Tick
from .context import ApplyContext
from .results import Result, TickResult
from .tasks import expire_timeouts


def tick(ctx: ApplyContext, cmd: Tick) -> Result:
    now = ctx.now_ms
    rev = ctx.advance()
    expired = lock_commands.expire(ctx, now) + kv_commands.expire(ctx, now)
    expired += expire_timeouts(ctx, now, rev)
    expired += budgets.expire(ctx, now, rev)
    expired += approvals.expire_gates(ctx, now, rev)
    expired += message_commands.expire(ctx, now, rev)
    expired += runs.expire_stages(ctx, now)
    return TickResult(expired, ctx.state.time_ms)
