"""``client.messages``: send, request, publish and subscribe (README "Messages").

Every message gets its id here (unless given) and the sender ``client:<client id>``, so a
call retried on another node is the same message: a durable send commits once (the node
derives its request id from the sender and the id), a fast one is dropped as a duplicate
by the receiving node, a durable request finds the reply already committed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ..consensus import limits
from ..consensus.commands import Message
from ..errors import DeadlineExceeded, InvalidArgument
from ..messaging.api import Sent
from ..messaging.wire import message_from_pb
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ._client import Driver
from ._core import RETRYABLE, SKIP, Conn, Op, StreamPlan, SubClient, stream_error, sync_op

if TYPE_CHECKING:
    pass

REPLY_MARGIN_S = 5.0
"""How much longer than its own timeout a call waits for the node to answer."""
SEEN_IDS = 10_000
"""Message ids a subscription remembers, to drop what a reconnection delivers again."""


@dataclass(frozen=True)
class ActivationInfo:
    address: str
    node: str
    epoch: int
    granted_ms: int
    lease_deadline_ms: int
    queued: int

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "node": self.node,
            "epoch": self.epoch,
            "granted_ms": self.granted_ms,
            "lease_deadline_ms": self.lease_deadline_ms,
            "queued": self.queued,
        }


@dataclass(frozen=True)
class MessageDeadLetterInfo:
    message: Message
    reason: str
    node: str
    recorded_ms: int
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {
            "message": message_json(self.message),
            "reason": self.reason,
            "node": self.node,
            "recorded_ms": self.recorded_ms,
            "seq": self.seq,
        }


def message_json(m: Message) -> dict[str, Any]:
    """A message as ``--json`` prints it (a bytes payload as ``{"bytes_hex": ...}``)."""
    payload = {"bytes_hex": m.payload.hex()} if isinstance(m.payload, bytes) else m.payload
    return {
        "id": m.id,
        "sender": m.sender,
        "target": m.target,
        "topic": m.topic,
        "type": m.type,
        "payload": payload,
        "correlation_id": m.correlation_id,
        "trace_id": m.trace_id,
        "priority": m.priority,
        "ttl_ms": m.ttl_ms,
        "sent_ms": m.sent_ms,
        "durable": m.durable,
        "source": m.source,
        "epoch": m.epoch,
    }


def _message_pb(
    msg_id: str,
    sender: str,
    payload: Any,
    *,
    target: str = "",
    topic: str = "",
    type: str = "",
    durable: bool = False,
    ttl_ms: int = 0,
    priority: int = 0,
    source: str = "",
) -> pb.AgentMessage:
    if not 0 <= ttl_ms <= limits.MAX_MESSAGE_TTL_MS:
        raise InvalidArgument(f"ttl_ms {ttl_ms} is outside 0..{limits.MAX_MESSAGE_TTL_MS}")
    if not -limits.MAX_MESSAGE_PRIORITY <= priority <= limits.MAX_MESSAGE_PRIORITY:
        raise InvalidArgument(
            f"priority {priority} is outside -{limits.MAX_MESSAGE_PRIORITY}..{limits.MAX_MESSAGE_PRIORITY}"
        )
    m = pb.AgentMessage(
        id=msg_id,
        sender=sender,
        target=target,
        topic=topic,
        type=type,
        durable=durable,
        ttl_ms=ttl_ms,
        priority=priority,
        source=source,
    )
    if isinstance(payload, (bytes, bytearray, memoryview)):
        m.payload_bytes = bytes(payload)
    else:
        try:
            m.payload_json = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"payload is neither bytes nor JSON-serializable: {exc}") from None
    return m


def _call(c: Conn, method: str, request: Any, timeout_s: float, retry_deadline: bool) -> Op[Any]:
    """Durable calls fail over and retry UNAVAILABLE and DEADLINE_EXCEEDED (idempotent by
    message id); fast ones retry UNAVAILABLE only (at least once: the receiving node drops a
    duplicate id) and answer DEADLINE_EXCEEDED as final (the TTL or timeout passed)."""
    retryable = RETRYABLE if retry_deadline else frozenset({grpc.StatusCode.UNAVAILABLE})
    return (
        yield from c._failover(
            "Messages",
            method,
            request,
            timeout_s,
            retryable=retryable,
            deadline_s=max(c.retry_deadline_s, timeout_s),
        )
    )


def sender_of(c: Conn) -> str:
    return f"client:{c.client_id}"


def _send(c: Conn, m: pb.AgentMessage) -> Op[Sent]:
    if m.durable:
        timeout_s = c.timeout_s
    else:  # a fast send is answered once the target's handler took it, or when its TTL ran out
        timeout_s = (m.ttl_ms or limits.DEFAULT_MESSAGE_TTL_MS) / 1000 + REPLY_MARGIN_S
    resp: pb.SendMessageResponse = yield from _call(
        c, "Send", pb.SendMessageRequest(message=m), timeout_s, retry_deadline=m.durable
    )
    return Sent(resp.id, resp.seq, tuple(resp.targets))


class Messages:
    """The message operations (``client.messages``)."""

    @staticmethod
    def send(
        c: Conn,
        target: str,
        payload: Any,
        *,
        durable: bool = False,
        type: str = "",
        ttl_ms: int = 0,
        priority: int = 0,
        id: str | None = None,
    ) -> Op[Sent]:
        """Send ``payload`` (bytes or a JSON value) to the actor ``target`` (``TYPE/KEY``).

        Fast (default): returns once the target's handler took it (its turn done). ``durable``: once it is
        committed to the target's mailbox (``Sent.seq``); the same ``id`` sent again is the same
        message. Raises ``ResourceExhausted`` for a full mailbox, ``FailedPrecondition`` if no
        node ever offered the actor type, ``DeadlineExceeded`` if a fast message's TTL ran out
        (it is then in the dead letters)."""
        m = _message_pb(
            id or uuid.uuid4().hex,
            sender_of(c),
            payload,
            target=target,
            type=type,
            durable=durable,
            ttl_ms=ttl_ms,
            priority=priority,
        )
        return (yield from _send(c, m))

    @staticmethod
    def publish(
        c: Conn, topic: str, payload: Any, *, durable: bool = False, source: str = "", type: str = ""
    ) -> Op[Sent]:
        """Publish to every subscriber of ``topic`` (``Sent.targets``: the actors it reached;
        durable: also kept in the topic's retained log, ``Sent.seq``)."""
        m = _message_pb(
            uuid.uuid4().hex, sender_of(c), payload, topic=topic, type=type, durable=durable, source=source
        )
        return (yield from _send(c, m))

    @staticmethod
    def request(
        c: Conn, target: str, payload: Any, *, timeout_s: float = 30.0, durable: bool = False, type: str = ""
    ) -> Op[Message]:
        """Send a request and return the reply (a ``raftmesh.Message``: ``reply.payload``).

        Raises ``DeadlineExceeded`` if no reply came within ``timeout_s``."""
        if not 0 < timeout_s <= limits.MAX_REQUEST_TIMEOUT_MS / 1000:
            raise InvalidArgument(
                f"timeout_s {timeout_s:g} is outside (0, {limits.MAX_REQUEST_TIMEOUT_MS // 1000}]"
            )
        m = _message_pb(uuid.uuid4().hex, sender_of(c), payload, target=target, type=type, durable=durable)
        end = time.monotonic() + timeout_s

        def attempt() -> pb.MessageRequest:
            # Every attempt keeps the id: a durable one is the same command (its kept reply answers
            # it); a fast one is the same message, which the node that handled it answers with the
            # reply it kept instead of handling it again (a fresh id ran the handler once more).
            return pb.MessageRequest(message=m, timeout_s=max(0.001, end - time.monotonic()))

        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"no reply from {target} within {timeout_s:g} s")
            try:
                resp: pb.MessageReply = yield from _call(
                    c, "Request", attempt, left + REPLY_MARGIN_S, retry_deadline=False
                )
                return message_from_pb(resp.reply)
            except DeadlineExceeded:
                if not durable or time.monotonic() >= end:
                    raise
                # A durable request asked again (same id) finds its committed reply, if any.

    @staticmethod
    def dead_letters(c: Conn, limit: int = 100) -> Op[list[MessageDeadLetterInfo]]:
        """Messages that were not delivered (expired, undeliverable), newest first."""
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
        req = pb.MessageDeadLettersRequest(limit=limit)
        resp: pb.MessageDeadLettersResponse = yield from _call(c, "DeadLetters", req, c.timeout_s, True)
        return [
            MessageDeadLetterInfo(message_from_pb(d.message), d.reason, d.node, d.recorded_ms, d.seq)
            for d in resp.dead_letters
        ]

    @staticmethod
    def subscribe_actor(c: Conn, topic: str, subscriber: str, unsubscribe: bool = False) -> Op[bool]:
        """Subscribe an actor type (``TYPE``: a publish reaches ``TYPE/<source>``) or key
        (``TYPE/KEY``) to ``topic``; whether anything changed. Idempotent."""
        req = pb.SubscribeActorRequest(
            topic=topic, subscriber=subscriber, unsubscribe=unsubscribe, request_id=uuid.uuid4().hex
        )
        resp: pb.SubscribeActorResponse = yield from _call(c, "SubscribeActor", req, c.timeout_s, True)
        return resp.changed

    @staticmethod
    def activations(c: Conn, prefix: str = "", limit: int = 100) -> Op[list[ActivationInfo]]:
        """Current activations by address (which node hosts each actor key, its epoch)."""
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
        req = pb.ListActivationsRequest(prefix=prefix, limit=limit)
        resp: pb.ListActivationsResponse = yield from _call(c, "ListActivations", req, c.timeout_s, True)
        return [
            ActivationInfo(a.address, a.node, a.epoch, a.granted_ms, a.lease_deadline_ms, a.queued)
            for a in resp.activations
        ]


def check_topic(topic: str) -> None:
    if len(topic) > limits.MAX_TOPIC_CHARS or not topic:
        raise InvalidArgument(f"topic must be 1..{limits.MAX_TOPIC_CHARS} characters")


class TopicStream(StreamPlan):
    """A subscription's reconnect plan: another node when its node fails; ids seen before a
    reconnection are dropped (a ``from_start`` one reads the retained log again)."""

    service = "Messages"
    method = "Subscribe"

    def __init__(self, c: Conn, topic: str, from_start: bool) -> None:
        super().__init__(c, None)
        self.topic = topic
        self.from_start = from_start
        self._seen: OrderedDict[str, None] = OrderedDict()

    def request(self) -> pb.SubscribeRequest:
        return pb.SubscribeRequest(topic=self.topic, from_start=self.from_start)

    def parse(self, m: pb.AgentMessage) -> Any:
        if not m.id or m.id in self._seen:
            return SKIP  # a heartbeat, or delivered before a reconnection
        self._seen[m.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return message_from_pb(m)

    def check(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> None:
        # Not DEADLINE_EXCEEDED: a subscription has no deadline of its own to outlive.
        if code != grpc.StatusCode.UNAVAILABLE and not (code == grpc.StatusCode.CANCELLED and silent):
            raise stream_error(code, exc)


class MessagesBase(SubClient):
    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.sender = sender_of(client)


class SubscriptionBase:
    """An open ``subscribe`` (its driver's iteration aside); ``close()`` ends it."""

    def __init__(self, messages: Any, topic: str, from_start: bool) -> None:
        self._m = messages
        self.topic = topic
        self._plan = TopicStream(messages._c, topic, from_start)

    def close(self) -> None:
        self._plan.close()


class MessagesClient(MessagesBase, Driver):
    """``client.messages``. Durable calls fail over and retry UNAVAILABLE and DEADLINE_EXCEEDED
    (idempotent by message id); fast ones retry UNAVAILABLE (at least once: the receiving node
    drops a duplicate id) and answer DEADLINE_EXCEEDED as final (the TTL or timeout passed)."""

    send = sync_op(Messages.send)
    publish = sync_op(Messages.publish)
    request = sync_op(Messages.request)
    dead_letters = sync_op(Messages.dead_letters)
    subscribe_actor = sync_op(Messages.subscribe_actor)
    activations = sync_op(Messages.activations)

    def subscribe(self, topic: str, *, from_start: bool = False) -> Subscription:
        """The topic's publishes as they come (``from_start``: its retained durable ones first).

        Iterate it; ``close()`` (or ``with``) ends it. Reconnects to another node if its node
        fails; what was published while it reconnected may be missed (fast publishes) unless
        ``from_start`` (durable ones are read again from the retained log, duplicates dropped)."""
        check_topic(topic)
        return Subscription(self, topic, from_start)


class Subscription(SubscriptionBase):
    """An open ``subscribe``: iterate for messages; ``close()`` ends it (from any thread)."""

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        return self._m._stream(self._plan)
