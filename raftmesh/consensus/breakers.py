"""Circuit breakers per (agent type, node), derived only from committed attempt outcomes.

An attempt that ends with a result its node reported (a completion, a failure, a
timeout) is an outcome of that node's agent; an attempt lost with its node, cancelled
with its run or fenced as stale is not, so it never moves a breaker. The policy is the
offering node's own (``AgentOffer.breaker_failures`` and ``breaker_cooldown_ms``):

- closed: ``breaker_failures`` consecutive failures open it until ``now + cool-down``;
- open: placement avoids the node for the type until ``open_until_ms``;
- half-open (after it): placement allows one attempt at a time (the probe);
  a success closes the breaker, a failure opens it again for another cool-down.

A success always closes it and clears the streak. The half-open state is a function
of the state time, so no command is needed to leave "open". Pure, O(1) per outcome.
"""

from __future__ import annotations

from enum import StrEnum

from .context import ApplyContext
from .state import Breaker, TaskState

MAX_STREAK = 2**31
"""The failure streak is capped (it only ever needs to reach the threshold)."""


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def state_of(b: Breaker | None, now_ms: int) -> BreakerState:
    if b is None or not b.open_until_ms:
        return BreakerState.CLOSED
    return BreakerState.OPEN if now_ms < b.open_until_ms else BreakerState.HALF_OPEN


def record_outcome(ctx: ApplyContext, t: TaskState, ok: bool) -> None:
    """The running attempt of ``t`` (on ``t.node``) ended with a committed outcome."""
    m = ctx.state.members.get(t.node)
    agent = t.spec.agent
    offer = m.offers.get(agent) if m is not None else None
    if m is None or offer is None:  # the node re-registered without this type
        return
    if ok:
        m.breakers.pop(agent, None)
        return
    if offer.breaker_failures <= 0:  # this node runs the type without a breaker
        return
    now = ctx.state.time_ms
    b = m.breakers.setdefault(agent, Breaker())
    b.failures = min(b.failures + 1, MAX_STREAK)
    state = state_of(b, now)
    # 0 means closed, so an open-until of 0 (cool-down 0 at time 0) is stored as 1.
    if state is BreakerState.HALF_OPEN or (
        state is BreakerState.CLOSED and b.failures >= offer.breaker_failures
    ):
        b.open_until_ms = max(1, now + offer.breaker_cooldown_ms)
