"""What the router and the actor host need of each other (kept narrow so each is testable)."""

from __future__ import annotations

from collections.abc import Callable
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


Done = Callable[[str, bool], None]
"""``done(error, retry)``: what became of a fast message the actor host took. ``("", False)``:
handled (its turn finished, its ack committed if it had effects, a request's reply sent);
``(reason, True)``: given back unhandled (its activation stopped: the sender resends it to
wherever the target is then); ``(reason, False)``: refused for good (expired in the inbox)."""


class Deliver(Protocol):
    """The node's actor host, as the router sees it (``raftmesh.agents._actors.ActorHost``)."""

    def accept(self, msg: Message, done: Done) -> Refused | None:
        """Take a fast-path message for an activation this node holds into its inbox (None),
        or say why not. Called on the event loop; never blocks. A message taken is
        acknowledged to its sender only when the host calls ``done`` (exactly once; on the
        loop), so until its handler took it the sending node keeps it and resends it."""
        ...
