"""``send`` / ``request`` / ``publish`` as an agent sees them (actor turns and task attempts).

A ``Messenger`` builds the ``Message`` (id, sender, sent time, default TTL, the trace id of
what is being handled), checks it with the state machine's own rule (``message_error``)
and hands it to the node's ``MessageRouter``. Durable sends of an actor turn are buffered
(``buffer``) and committed with the turn's ``AckMessage``; everything else goes at once,
fenced by the sender's epoch or attempt token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from ..clock import Clock
from ..consensus import limits
from ..consensus.commands import Fence, Message
from ..consensus.messages import message_error
from ..errors import DeadlineExceeded, InvalidArgument, RaftmeshError, StaleToken
from ..messaging.api import Sent

log = logging.getLogger(__name__)

ERROR_REPLY_TYPE = "raftmesh.error"
"""The ``type`` of a reply telling the requester that the handler raised (payload
``{"error": "Type: message"}``); ``request`` raises ``HandlerError`` for it."""


class HandlerError(RaftmeshError):
    """The actor that handled a request raised instead of answering (its error is the message)."""


class Router(Protocol):
    """What agents need of the node's ``raftmesh.messaging.MessageRouter``."""

    async def send(self, msg: Message, fence: Fence | None = None) -> Sent: ...

    async def request(self, msg: Message, timeout_s: float, fence: Fence | None = None) -> Message: ...

    def reply(self, reply: Message) -> None: ...

    def dead_letter(self, msg: Message, reason: str) -> None: ...


def new_message_id() -> str:
    return uuid.uuid4().hex


def derived_message_id(*parts: object) -> str:
    """A message id that is the same whenever ``parts`` are: what a retried or redelivered turn
    sends again carries the id its first try sent, so the receiver's dedup (fast) and the kept
    reply (durable request) make it count once."""
    h = hashlib.sha256("\x00".join(str(p) for p in parts).encode())
    return h.hexdigest()[:32]


def error_payload(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}"[: limits.MAX_ERROR_CHARS]}


def reply_payload(reply: Message) -> Any:
    """A reply's payload, or ``HandlerError`` if the handler raised."""
    if reply.type == ERROR_REPLY_TYPE:
        err = reply.payload.get("error") if isinstance(reply.payload, dict) else None
        raise HandlerError(f"{reply.sender or 'the handler'} failed: {err or reply.payload!r}")
    return reply.payload


def _not_sent(f: asyncio.Future[Sent]) -> None:
    if not f.cancelled() and f.exception() is not None:
        log.warning("a fast message an actor sent itself was not delivered: %s", f.exception())


class Messenger:
    """Sends for one sender: an actor address (``TYPE/KEY``) or a task (``task:RUN/TASK``)."""

    def __init__(
        self,
        router: Router,
        clock: Clock,
        node_id: str,
        sender: str,
        fence: Fence | None,
        trace_id: str = "",
        buffer: list[Message] | None = None,
        id_seed: str = "",
        lease_problem: Callable[[], str] | None = None,
    ) -> None:
        self._router = router
        self._clock = clock
        self.node_id = node_id
        self.sender = sender
        self.fence = fence
        self.trace_id = trace_id
        self.buffer = buffer
        """Durable sends and publishes wait here for the turn's ack (None: committed at once)."""
        self.id_seed = id_seed
        """Set: the n-th message gets an id derived from (seed, n, target, topic), so a turn run
        again for the same message sends the same ids (else each message gets a random one)."""
        self._sent = 0
        self.lease_problem = lease_problem
        """Why the sender may no longer act ("" while it may): checked before anything leaves
        at once. The state machine fences only what goes through the log."""

    def _check_lease(self) -> None:
        why = self.lease_problem() if self.lease_problem is not None else ""
        if why:
            raise StaleToken(why)

    def message(
        self,
        *,
        target: str = "",
        topic: str = "",
        payload: Any = None,
        durable: bool = False,
        type: str = "",
        ttl_ms: int = 0,
        priority: int = 0,
        source: str = "",
        reply_to: str = "",
    ) -> Message:
        n, self._sent = self._sent, self._sent + 1
        msg = Message(
            id=derived_message_id(self.id_seed, n, target, topic) if self.id_seed else new_message_id(),
            sender=self.sender,
            target=target,
            topic=topic,
            type=type,
            payload=payload,
            trace_id=self.trace_id,
            priority=priority,
            ttl_ms=ttl_ms or limits.DEFAULT_MESSAGE_TTL_MS,
            sent_ms=self._clock.now_ms(),
            durable=durable,
            reply_to=reply_to,
            source=source,
        )
        why = message_error(msg)
        if why:
            raise InvalidArgument(why)
        return msg

    async def _out(self, msg: Message) -> Sent:
        if msg.durable and self.buffer is not None:
            if len(self.buffer) >= limits.MAX_MESSAGES_PER_SEND:
                raise InvalidArgument(
                    f"a turn sends at most {limits.MAX_MESSAGES_PER_SEND} durable messages (its ack carries them)"
                )
            self.buffer.append(msg)
            return Sent(msg.id)
        self._check_lease()
        if not msg.durable and self.fence is not None and msg.target == self.fence.actor:
            # To the sending activation itself: a fast send returns once handled, and this one
            # is handled after the turn that sends it, so it is not waited for (the router
            # keeps it in its lane; it dead-letters it if it cannot be delivered).
            sending = asyncio.ensure_future(self._router.send(msg, self.fence))
            sending.add_done_callback(_not_sent)
            return Sent(msg.id, 0, (msg.target,))
        return await self._router.send(msg, self.fence)

    async def send(
        self,
        target: str,
        payload: Any,
        *,
        durable: bool = False,
        type: str = "",
        ttl_ms: int = 0,
        priority: int = 0,
    ) -> Sent:
        """Send to actor ``target`` (``TYPE/KEY``); a durable one of an actor turn commits with its ack."""
        return await self._out(
            self.message(
                target=target, payload=payload, durable=durable, type=type, ttl_ms=ttl_ms, priority=priority
            )
        )

    async def publish(
        self, topic: str, payload: Any, *, durable: bool = False, source: str = "", type: str = ""
    ) -> Sent:
        """Publish to every subscriber of ``topic`` (a type subscriber gets it at ``TYPE/<source>``)."""
        return await self._out(
            self.message(topic=topic, payload=payload, durable=durable, source=source, type=type)
        )

    async def request(
        self, target: str, payload: Any, *, timeout_s: float = 30.0, durable: bool = False, type: str = ""
    ) -> Any:
        """The reply's payload; ``DeadlineExceeded`` after ``timeout_s``, ``HandlerError`` if the
        handler raised. A durable request is committed at once (not with the turn's ack: the
        turn waits for its answer)."""
        if not 0 < timeout_s <= limits.MAX_MESSAGE_TTL_MS / 1000:
            raise InvalidArgument(f"timeout_s must be in (0, {limits.MAX_MESSAGE_TTL_MS // 1000}]")
        msg = self.message(
            target=target,
            payload=payload,
            durable=durable,
            type=type,
            ttl_ms=max(1, int(timeout_s * 1000)),
            reply_to=self.node_id,
        )
        self._check_lease()
        if not durable:
            # A fast request asked again must reach the handler again: the receiver would drop a
            # repeated id as a duplicate and the retried turn would wait for no answer. A durable
            # one keeps its derived id: asked again, it finds the reply the log kept.
            msg = dataclasses.replace(msg, id=new_message_id())
        try:
            # The router has its own deadline; this one guards against a router that never answers.
            async with asyncio.timeout(timeout_s + 5.0):
                reply = await self._router.request(msg, timeout_s, self.fence)
        except TimeoutError:
            raise DeadlineExceeded(f"no reply from {target} within {timeout_s:g} s") from None
        return reply_payload(reply)
