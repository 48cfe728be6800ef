"""The ``raftmesh.v1.Messages`` gRPC service: clients send, request, publish and subscribe.

A client's message is checked here with the state machine's own rule
(``messages.message_error``) before anything is sent; the node fills in what only it
may set (``sent_ms``, ``reply_to``, ``epoch``) and the defaults (id, TTL, sender).
Fast messages and requests go through the node's ``MessageRouter``; a durable send is
one ``SendMessages`` command proposed here under a request id derived from the sender
and the message id, so a client that retries a durable send (same id) commits it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from .. import calls
from ..consensus import limits
from ..consensus.commands import Fence, Message, SendMessages, SubscribeTopic
from ..consensus.messages import DeadMessage, MessageStore, message_error
from ..consensus.results import ChangedResult, MessagesSent, expect
from ..consensus.state import ClusterState
from ..errors import InvalidArgument, PermissionDenied
from ..messaging.api import Sent
from ..messaging.wire import message_from_pb, message_to_pb, send_request_id
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ..security import ownership
from . import rpc
from .access import NodeAccess
from .proposer import new_request_id
from .service import STREAM_HEARTBEAT_S

DEFAULT_REQUEST_TIMEOUT_S = 30.0
SUBSCRIBE_BUFFER = 1_000
"""Messages a Subscribe stream holds for a slow client before it stops reading the router."""


class Router(Protocol):
    """What this service needs of ``raftmesh.messaging.MessageRouter``."""

    async def send(self, msg: Message, fence: Fence | None = None) -> Sent: ...

    async def request(self, msg: Message, timeout_s: float, fence: Fence | None = None) -> Message: ...

    def subscribe(self, topic: str, from_start: bool) -> AsyncIterator[Message]: ...


TOKEN_PREFIX = "token:"
"""A bearer token's principal (``token:SUBJECT``): its messages' sender is ``client:SUBJECT``."""


def client_sender(peer: str) -> str:
    """``client:HOST`` for a caller that names no sender: the peer's address without its port, so
    a client that retries over a new connection is the same sender (and its retry the same send)."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer
    name = "client:" + "".join(c for c in host if c.isprintable() and not c.isspace())
    return name[: limits.MAX_ADDRESS_CHARS] if host else "client:unknown"


def request_message_id(sender: str, message_id: str) -> str:
    """The id a client's request travels under: a node keys its waiting requests, and the state
    machine a durable request's kept reply, by id alone; made the client's own here, one client
    can neither collide with another's request nor be answered with its reply."""
    return "rq-" + hashlib.sha256(f"{sender}\n{message_id}".encode()).hexdigest()[:40]


def _bad(why: str) -> None:
    if why:
        raise InvalidArgument(why)


def _call_trace() -> str:
    call = calls.current()
    return call.trace_id if call is not None else ""


class MessagesService(pb_grpc.MessagesServicer):
    def __init__(self, node: NodeAccess, router: Router) -> None:
        self.node = node
        self._router = router

    def _message(self, m: pb.AgentMessage, context: grpc.aio.ServicerContext) -> Message:
        """The client's message with the node's fields set and the defaults filled in, checked."""
        msg = message_from_pb(m)
        sender = msg.sender or client_sender(context.peer() or "")
        call = calls.current()
        if call is not None and call.principal.startswith(TOKEN_PREFIX):
            # With tokens on, a client speaks as its token's subject: a claimed client:NAME
            # (the SDK's random client id, or another's name) would let it pose as another.
            sender = ("client:" + call.principal[len(TOKEN_PREFIX) :])[: limits.MAX_ADDRESS_CHARS]
        # Clients speak as clients: an actor address or task:... sender would let any caller
        # pose as an agent (and receive the replies meant for it).
        if not sender.startswith("client:"):
            raise InvalidArgument(
                f"sender {sender[:40]!r}: a client's sender is client:NAME (or empty: client:<its address>)"
            )
        msg = dataclasses.replace(
            msg,
            id=msg.id or new_request_id("m-"),
            sender=sender,
            ttl_ms=msg.ttl_ms or limits.DEFAULT_MESSAGE_TTL_MS,
            sent_ms=self.node.clock.now_ms(),
            reply_to="",
            epoch=0,
            # The client's trace (its traceparent) unless the message names one itself.
            trace_id=msg.trace_id or _call_trace(),
        )
        _bad(message_error(msg))
        return msg

    @rpc.unary
    async def Send(
        self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendMessageResponse:
        _bad(limits.request_id_error("request_id", request.request_id))
        msg = self._message(request.message, context)
        if msg.correlation_id and not msg.target:
            raise InvalidArgument("a publish has no correlation_id (only a message to a target may)")
        if not msg.durable:
            sent = await self._router.send(msg)
            return pb.SendMessageResponse(id=sent.id, seq=sent.seq, targets=list(sent.targets))
        cmd = SendMessages(
            request.request_id or send_request_id(msg.sender, msg.id),
            self.node.clock.now_ms(),
            messages=(msg,),
        )
        out = expect(await self.node.propose(cmd, context), MessagesSent)
        return pb.SendMessageResponse(
            id=msg.id, seq=out.seqs[0] if out.seqs else 0, targets=list(out.targets[0] if out.targets else ())
        )

    @rpc.unary
    async def Request(self, request: pb.MessageRequest, context: grpc.aio.ServicerContext) -> pb.MessageReply:
        timeout_s = request.timeout_s or DEFAULT_REQUEST_TIMEOUT_S
        if not 0 < timeout_s <= limits.MAX_REQUEST_TIMEOUT_MS / 1000:
            raise InvalidArgument(
                f"timeout_s {timeout_s:g} is outside (0, {limits.MAX_REQUEST_TIMEOUT_MS / 1000:g}]"
            )
        msg = self._message(request.message, context)
        if not msg.target:
            raise InvalidArgument("a request names a target (TYPE/KEY): a topic has no one reply")
        msg = dataclasses.replace(msg, id=request_message_id(msg.sender, msg.id))
        remaining = context.time_remaining()
        if remaining is not None:  # answer DEADLINE_EXCEEDED ourselves, before the caller gives up
            timeout_s = max(0.05, min(timeout_s, float(remaining) - 0.05))
        reply = await self._router.request(msg, timeout_s)
        return pb.MessageReply(reply=message_to_pb(reply))

    @rpc.stream
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AgentMessage]:
        _bad(limits.name_error("topic", request.topic, limits.MAX_TOPIC_CHARS))
        if request.from_start:  # the retained publishes as of now, at least
            await self.node.barrier(context)
        q: asyncio.Queue[Message | BaseException | None] = asyncio.Queue(SUBSCRIBE_BUFFER)

        async def pump() -> None:
            try:
                async for msg in self._router.subscribe(request.topic, request.from_start):
                    await q.put(msg)
                await q.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # ends the stream with the error's status
                await q.put(exc)

        task = asyncio.create_task(pump(), name=f"subscribe-{request.topic[:40]}")
        try:
            while True:
                try:
                    async with asyncio.timeout(STREAM_HEARTBEAT_S):
                        item = await q.get()
                except TimeoutError:
                    yield pb.AgentMessage()  # heartbeat: no id
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield message_to_pb(item)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    @rpc.unary
    async def DeadLetters(
        self, request: pb.MessageDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.MessageDeadLettersResponse:
        limit = request.limit or 100
        if limit > limits.MAX_MESSAGE_DEAD_LETTERS_LISTED:
            raise InvalidArgument(f"limit must be at most {limits.MAX_MESSAGE_DEAD_LETTERS_LISTED}")
        if ownership.restricted():
            # Messages carry no namespace: their dead letters are every sender's payloads.
            raise PermissionDenied(
                "message dead letters are not namespace-scoped: a token limited to namespaces may "
                "not list them (use one with namespaces ['*'])"
            )
        await self.node.barrier(context)
        dead, total = self.node.reads.read(functools.partial(_newest_dead, limit=limit))
        return pb.MessageDeadLettersResponse(
            dead_letters=[
                pb.MessageDeadLetter(
                    message=message_to_pb(d.letter.message),
                    reason=d.letter.reason,
                    node=d.node,
                    recorded_ms=d.recorded_ms,
                    seq=d.seq,
                )
                for d in dead
            ],
            total=total,
        )

    @rpc.unary
    async def SubscribeActor(
        self, request: pb.SubscribeActorRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubscribeActorResponse:
        _bad(
            limits.name_error("topic", request.topic, limits.MAX_TOPIC_CHARS)
            or subscriber_error(request.subscriber)
            or limits.request_id_error("request_id", request.request_id)
        )
        cmd = SubscribeTopic(
            request.request_id or new_request_id("st-"),
            self.node.clock.now_ms(),
            topic=request.topic,
            subscriber=request.subscriber,
            subscribe=not request.unsubscribe,
        )
        out = expect(await self.node.propose(cmd, context), ChangedResult)
        return pb.SubscribeActorResponse(changed=out.count > 0)

    @rpc.unary
    async def ListActivations(
        self, request: pb.ListActivationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListActivationsResponse:
        limit = request.limit or 100
        if limit > limits.MAX_ACTIVATIONS_LISTED:
            raise InvalidArgument(f"limit must be at most {limits.MAX_ACTIVATIONS_LISTED}")
        if len(request.prefix) > limits.MAX_ADDRESS_CHARS:
            raise InvalidArgument(f"prefix is longer than {limits.MAX_ADDRESS_CHARS} characters")
        await self.node.barrier(context)
        found = self.node.reads.read(functools.partial(_activations, prefix=request.prefix, limit=limit))
        return pb.ListActivationsResponse(activations=found)


def subscriber_error(subscriber: str) -> str:
    """ "" for an actor type (``TYPE``) or key (``TYPE/KEY``), else what is wrong."""
    if "/" in subscriber:
        return limits.address_error("subscriber", subscriber)
    return limits.id_error("subscriber (an actor TYPE or TYPE/KEY)", subscriber)


def _newest_dead(st: ClusterState, limit: int) -> tuple[list[DeadMessage], int]:
    """O(limit): the list is kept oldest first, so the newest are at its right end."""
    store: MessageStore = st.messages
    n = len(store.dead_letters)
    return [store.dead_letters[i] for i in range(n - 1, max(-1, n - 1 - limit), -1)], store.dead_letters_total


def _activations(st: ClusterState, prefix: str, limit: int) -> list[pb.ActivationInfo]:
    """By address; O(activations) to filter and sort (bounded by ``limits.MAX_ACTIVATIONS``),
    encoding only the page."""
    store: MessageStore = st.messages
    names = sorted(a for a in store.activations if a.startswith(prefix))[:limit]
    out = []
    for address in names:
        a = store.activations[address]
        box = store.mailboxes.get(address)
        out.append(
            pb.ActivationInfo(
                address=address,
                node=a.node,
                epoch=a.epoch,
                granted_ms=a.granted_ms,
                lease_deadline_ms=a.deadline_ms,
                queued=len(box.queue) if box else 0,
            )
        )
    return out
