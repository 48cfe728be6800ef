"""What a gRPC service may do with its node: propose, barrier, read. Nothing else.

Services get a ``NodeAccess`` (and, where they need one, a narrow collaborator such
as the watch hub or the lock waits), never the ``NodeRuntime``: a service cannot
reach into the Raft member, the scheduler or the agent host, and a test can build
one from its parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from ..clock import Clock
from ..consensus.commands import Command
from ..consensus.results import Result
from ..errors import NoLeader
from .reads import ReadView

BARRIER_TIMEOUT_S = 5.0


class Writer(Protocol):
    """The proposer, as services see it."""

    async def propose(
        self, cmd: Command, timeout_s: float | None = None, *, leader_only: bool = False
    ) -> Result: ...

    async def barrier(self, timeout_s: float | None = None) -> None: ...

    def gather_this_turn(self) -> None: ...


def call_timeout(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """The caller's remaining deadline (less a margin to answer in), capped at ``default_s``."""
    remaining = context.time_remaining()
    if remaining is None:
        return default_s
    return max(0.05, min(default_s, float(remaining) - 0.05))


@dataclass(frozen=True)
class NodeAccess:
    writer: Writer
    reads: ReadView
    clock: Clock
    has_leader: Callable[[], bool]
    propose_timeout_s: float

    async def propose(self, cmd: Command, context: grpc.aio.ServicerContext) -> Result:
        """Apply ``cmd`` through the log within the caller's deadline."""
        return await self.writer.propose(cmd, timeout_s=call_timeout(context, self.propose_timeout_s))

    async def barrier(self, context: grpc.aio.ServicerContext) -> None:
        """Make the local replica reflect every write committed before the call (linearizable reads)."""
        if not self.has_leader():
            raise NoLeader(
                "this node knows no Raft leader (an election is on, or it is cut off); retry shortly or on another node, or read with stale_ok"
            )
        await self.writer.barrier(timeout_s=call_timeout(context, BARRIER_TIMEOUT_S))
