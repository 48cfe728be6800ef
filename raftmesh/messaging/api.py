"""What the router and the actor host need of each other (kept narrow so each is testable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..consensus.commands import Message


@dataclass(frozen=True)
class Sent:
    """What a send did: the message id, its sequence number in the log (durable only), and the
    addresses it went to (a publish: every subscriber's; a fast send: its target)."""

    id: str
    seq: int = 0
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    """Why a node did not take a fast-path message: ``retry`` (moved, not activated here yet,
    inbox full) or final (expired, no such actor type here): the sender dead-letters it."""

    reason: str
    retry: bool


class Deliver(Protocol):
    """The node's actor host, as the router sees it (``raftmesh.agents._actors.ActorHost``)."""

    def accept(self, msg: Message) -> Refused | None:
        """Take a fast-path message for an activation this node holds into its inbox (None),
        or say why not. Called on the event loop; never blocks."""
        ...
