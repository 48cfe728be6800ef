"""``MessageRouter``: every message that leaves or reaches this node goes through it.

Fast path (README "Messages"): one ``Peer.Exchange`` stream per pair of nodes, dialled by
the node with the smaller id (the other waits for it), carrying frames of messages and
acks both ways. A frame holds everything queued when the writer comes round (no timer:
a lone message goes at once, a burst shares frames). Lanes, retries and the order they
keep are ``links``'; duplicates and order on the receiving side are ``intake``'s;
client topic streams are ``topics``'. The log is touched only to ``Activate`` a target
with no activation and to record fast-path dead letters (``RecordDeadLetters``, batched).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ..clock import Clock
from ..consensus import limits
from ..consensus.commands import Activate, Fence, Message, MessageDeadLetter, RecordDeadLetters, SendMessages
from ..consensus.messages import message_error
from ..consensus.results import (
    ActivationChanged,
    ActivationResult,
    Event,
    MessagesSent,
    Rejected,
    ReplyCommitted,
    TopicPublished,
)
from ..consensus.state import ClusterState
from ..errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    RaftmeshError,
    ResourceExhausted,
    Unavailable,
)
from ..node.access import Writer
from ..node.proposer import new_request_id
from ..node.reads import ReadView
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from .api import Deliver, Sent
from .intake import Intake
from .links import BROADCAST, REPLY, TO_ACTOR, Lane, Link, Out
from .topics import TopicStreams
from .wire import message_from_pb

log = logging.getLogger(__name__)

_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009 (missing from grpc's type stubs)

ACK_SILENCE_S = 3.0
"""A stream with messages unanswered and nothing heard from the peer for this long is dropped
and dialled again (the peer's loop or the network is stuck; HTTP/2 alone may not notice)."""
MAINTAIN_INTERVAL_S = 0.1
RETRY_MIN_S = 0.005
RETRY_MAX_S = 1.0
"""Backoff of a lane after a refusal with ``retry`` (moved, not activated yet, inbox full)."""
DIAL_MIN_S = 0.05
DIAL_MAX_S = 1.0
ACTIVATE_TIMEOUT_S = 5.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
_FINAL_ACTIVATE = ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND")
"""``Activate`` rejections that will not change by retrying (no member ever offered the type)."""


@dataclass(eq=False)
class _Waiter:
    target: str
    durable: bool
    future: asyncio.Future[Message]
    epoch: int = 0
    """The epoch of the activation the request was delivered to (a reply from an older one is stale)."""


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def reply_error(m: Message) -> str:
    """ "" if ``m`` may travel as a reply (a message's bounds; its target may be any sender)."""
    if not m.correlation_id:
        return "a reply names the request's id in correlation_id"
    return message_error(dataclasses.replace(m, target="", topic="reply"))


def delivery_error(m: Message) -> str:
    """ "" if ``m`` may go to its target actor: a message's bounds; a publish's copy for one
    subscriber keeps its topic (the handler may dispatch on it)."""
    if not m.target:
        return "a message to an actor names its target"
    if not m.topic:
        return message_error(m)
    return message_error(dataclasses.replace(m, topic="")) or limits.name_error(
        "topic", m.topic, limits.MAX_TOPIC_CHARS
    )


class MessageRouter:
    """Routes messages for one node.

    - ``send``: durable -> one ``SendMessages`` command (committed when it returns); fast ->
      resolve the target's activation from the local replica (``Activate`` through the log if
      it has none), then over the peer stream to that node (or straight to the local actor
      host), returning once that node accepted it. Retries with backoff while the target
      moves or its inbox is full; past the TTL the message is dead-lettered
      (``RecordDeadLetters``) and ``send`` raises ``DeadlineExceeded``.
    - ``request``: ``send`` with ``reply_to`` this node, then wait for the reply (fast: from the
      peer stream; durable: the reply committed with the handler's ack).
    - ``reply``: a handler's answer to a fast request, to the requesting node.
    - ``subscribe``: a topic's publishes for a client stream (retained durable ones first if
      ``from_start``, then live durable and fast ones).
    - ``serve_exchange``: the ``Peer.Exchange`` stream from another node.
    """

    def __init__(
        self,
        node_id: str,
        incarnation: str,
        reads: ReadView,
        writer: Writer,
        clock: Clock,
        grpc_of: Callable[[str], str | None],
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._reads = reads
        self._writer = writer
        self._clock = clock
        self._grpc_of = grpc_of
        """node id -> its gRPC address (from the replicated members), None if unknown."""
        self._deliver: Deliver | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "sent",
                "accepted",
                "delivered",
                "refused_retry",
                "dead_lettered",
                "duplicates",
                "out_of_order",
                "expired_received",
                "late_replies",
                "stale_replies",
                "request_timeouts",
                "replies_undelivered",
                "broadcasts_dropped",
                "sessions_opened",
                "dead_letters_dropped",
                "dead_letters_unrecorded",
            ),
            0,
        )
        self._links: dict[str, Link] = {}
        self._lanes: dict[tuple[str, str, int], Lane] = {}
        self._by_target: dict[str, dict[Lane, None]] = {}
        self._intake = Intake()
        self._topics = TopicStreams(reads)
        self._waiting: dict[str, _Waiter] = {}
        self._activating: dict[str, asyncio.Task[None]] = {}
        self._dials: dict[str, asyncio.Task[None]] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._dead: deque[MessageDeadLetter] = deque()
        self._dead_wake = asyncio.Event()
        self._tags = itertools.count(1)
        self._sessions = itertools.count(1)
        self._submitted = 0
        """Fast messages ever queued: a new lane starts numbering above it (see ``_lane``)."""
        self._expiries: list[tuple[int, int, Out]] = []
        self._running = False

    def attach(self, deliver: Deliver) -> None:
        self._deliver = deliver

    # ---- running ------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        self._link(self.node_id)
        for peer in list(self._links):
            self._ensure_dial(peer)
        try:
            await asyncio.gather(self._maintain(), self._flush_dead_letters())
        finally:
            self._running = False
            tasks = [*self._dials.values(), *self._pumps.values(), *self._activating.values()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._dials.clear()
            self._pumps.clear()

    async def _maintain(self) -> None:
        """Dials every member with a larger id, drops stuck streams, expires waiting messages."""
        loop = asyncio.get_running_loop()
        while True:
            members = self._reads.read(lambda st: [m for m in st.members if m != self.node_id])
            for peer in members:
                if peer > self.node_id:
                    self._link(peer)
            now = loop.time()
            for link in list(self._links.values()):
                if (
                    link.session
                    and link.waiting_since is not None
                    and now - link.waiting_since > ACK_SILENCE_S
                ):
                    log.info(
                        "peer stream to %s: nothing heard for %.1fs; reconnecting", link.peer, ACK_SILENCE_S
                    )
                    link.reset()
            self._expire(self._clock.now_ms())
            await asyncio.sleep(MAINTAIN_INTERVAL_S)

    def _expire(self, now_ms: int) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now_ms:
            _, _, o = heapq.heappop(heap)
            if o.future is not None and o.future.done():
                continue
            if o.link is None and o.lane is None:
                continue  # answered
            if o.waiting:
                self._expired(o, now_ms)
            else:  # transmitted: the receiver decides; look again if its stream breaks
                heapq.heappush(heap, (now_ms + 1000, o.tag, o))

    def _track(self, o: Out) -> None:
        heapq.heappush(self._expiries, (o.msg.expires_ms, o.tag, o))

    # ---- sending ------------------------------------------------------------------

    async def send(self, msg: Message, fence: Fence | None = None, request_id: str = "") -> Sent:
        why = message_error(msg)
        if why:
            raise InvalidArgument(f"message: {why}")
        if msg.durable:
            return await self._send_durable(msg, fence, request_id)
        if msg.topic:
            return await self._publish(msg)
        await self._send_fast(msg)
        return Sent(msg.id, 0, (msg.target,))

    async def _send_fast(self, msg: Message) -> int:
        lane = self._lanes.get((msg.sender, msg.target, msg.priority))
        if lane is not None and lane.link is not None and not lane.link.room.is_set():
            await lane.link.room.wait()
        return await self._submit(msg)

    def _submit(self, msg: Message) -> asyncio.Future[int]:
        key = (msg.sender, msg.target, msg.priority)
        lane = self._lanes.get(key)
        if lane is None:
            # Numbered above every message this router sent before: a lane forgotten and
            # made again never reuses a number the receiver already took.
            lane = Lane(key, next_seq=self._submitted + 1)
            self._lanes[key] = lane
            self._by_target.setdefault(msg.target, {})[lane] = None
        self._submitted += 1
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        o = Out(msg, TO_ACTOR, next(self._tags), lane, lane.next_seq, fut)
        lane.next_seq += 1
        lane.entries.append(o)
        self._track(o)
        self.stats["sent"] += 1
        if lane.link is not None:
            lane.link.queue(o)
            self._kicked(lane.link)
        else:
            o.link = None
            self._route(lane)
        return fut

    def _where(self, address: str) -> tuple[str, int] | None:
        def find(st: ClusterState) -> tuple[str, int] | None:
            a = st.messages.activations.get(address)
            return (a.node, a.epoch) if a is not None else None

        return self._reads.read(find)

    def _route(self, lane: Lane) -> None:
        where = self._where(lane.key[1])
        if where is not None:
            self._move(lane, *where)
        else:
            self._activate(lane.key[1])

    def _move(self, lane: Lane, node: str, epoch: int) -> None:
        if lane.link is not None:
            if lane.node == node:
                lane.epoch = epoch
                return
            lane.link.drop_lane(lane)
        lane.node, lane.epoch = node, epoch
        link = self._link(node)
        for o in lane.entries:
            o.link = link
        link.add_lane(lane)
        self._kicked(link)

    def _activate(self, address: str) -> None:
        if address not in self._activating:
            self._activating[address] = asyncio.get_running_loop().create_task(
                self._activation(address), name=f"activate {address}"
            )

    async def _activation(self, address: str) -> None:
        """Until the address has an activation (or cannot have one), then routes its lanes there."""
        delay = 0.01
        try:
            while self._by_target.get(address):
                where = self._where(address)
                if where is None:
                    try:
                        res = await self._writer.propose(
                            Activate(new_request_id("act-"), self._clock.now_ms(), address),
                            timeout_s=ACTIVATE_TIMEOUT_S,
                        )
                    except RaftmeshError as exc:
                        log.debug("activate %s: %s", address, exc)
                        res = None
                    if isinstance(res, ActivationResult) and res.node:
                        where = (res.node, res.epoch)
                    elif isinstance(res, Rejected) and res.code in _FINAL_ACTIVATE:
                        for lane in list(self._by_target.get(address, ())):
                            for o in list(lane.entries):
                                self._give_up(o, f"undeliverable: {res.message}", res.error())
                        return
                if where is not None:
                    for lane in list(self._by_target.get(address, ())):
                        self._move(lane, *where)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        finally:
            self._activating.pop(address, None)

    async def _publish(self, msg: Message) -> Sent:
        subs, nodes = self._reads.read(lambda st: _fanout(st, msg.topic, msg.source))
        futs = [self._submit(dataclasses.replace(msg, target=a)) for a in subs]
        self._topics.fast(msg)
        for node in nodes:
            if node == self.node_id:
                continue
            link = self._link(node)
            if not link.room.is_set():
                self.stats["broadcasts_dropped"] += 1
                continue
            o = Out(msg, BROADCAST, next(self._tags), None, 0, None)
            self._track(o)
            link.queue(o)
        if futs:
            await asyncio.gather(*futs, return_exceptions=True)
        return Sent(msg.id, 0, tuple(subs))

    async def _send_durable(self, msg: Message, fence: Fence | None, request_id: str) -> Sent:
        rid = request_id or f"msg-{msg.id}"
        res = await self._writer.propose(SendMessages(rid, self._clock.now_ms(), (msg,), fence))
        if isinstance(res, MessagesSent):
            return Sent(msg.id, res.seqs[0] if res.seqs else 0, res.targets[0] if res.targets else ())
        if isinstance(res, Rejected):
            raise res.error()
        raise Internal(f"SendMessages answered {type(res).__name__}")

    # ---- requests and replies ----------------------------------------------------

    async def request(self, msg: Message, timeout_s: float, fence: Fence | None = None) -> Message:
        msg = dataclasses.replace(msg, reply_to=self.node_id)
        why = message_error(msg)
        if why:
            raise InvalidArgument(f"message: {why}")
        if not msg.target:
            raise InvalidArgument("a request names a target (TYPE/KEY), not a topic")
        if msg.id in self._waiting:
            raise AlreadyExists(f"a request with id {msg.id!r} is already waiting on this node")
        if len(self._waiting) >= limits.MAX_PENDING_REQUESTS:
            raise ResourceExhausted(
                f"this node waits on {limits.MAX_PENDING_REQUESTS} requests already; retry with backoff"
            )
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        w = _Waiter(msg.target, msg.durable, fut)
        self._waiting[msg.id] = w
        try:
            async with asyncio.timeout(timeout_s):
                if msg.durable:
                    done = self._reads.read(lambda st: _reply_of(st, msg.id))
                    if done is not None:
                        return done
                    await self._send_durable(msg, fence, "")
                else:
                    w.epoch = await self._send_fast(msg)
                return await fut
        except TimeoutError:
            self.stats["request_timeouts"] += 1
            raise DeadlineExceeded(
                f"no reply to request {msg.id!r} from {msg.target} within {timeout_s:g}s"
            ) from None
        finally:
            self._waiting.pop(msg.id, None)

    def reply(self, reply: Message) -> None:
        """Send a handler's answer to a fast request to ``reply.reply_to`` (the requesting node)."""
        node = reply.reply_to
        if not node:
            raise InvalidArgument("a reply names the requesting node in reply_to")
        reply = dataclasses.replace(
            reply,
            sent_ms=reply.sent_ms or self._clock.now_ms(),
            ttl_ms=reply.ttl_ms or limits.DEFAULT_MESSAGE_TTL_MS,
        )
        why = reply_error(reply)
        if why:
            raise InvalidArgument(f"reply: {why}")
        if node == self.node_id:
            self._on_reply(reply)
            return
        o = Out(reply, REPLY, next(self._tags), None, 0, None)
        self._track(o)
        self._link(node).queue(o)

    def _on_reply(self, msg: Message) -> None:
        w = self._waiting.get(msg.correlation_id)
        if w is None or w.durable or w.future.done():
            self.stats["late_replies"] += 1
            return
        where = self._where(w.target)
        known = max(w.epoch, where[1] if where is not None else 0)
        if msg.epoch and msg.epoch < known:
            self.stats["stale_replies"] += 1
            return
        w.future.set_result(msg)

    # ---- answers to what this node sent -----------------------------------------

    def _on_ack(self, link: Link, tag: int, error: str, retry: bool) -> None:
        o = link.inflight.get(tag)
        if o is None:
            return  # an answer for a lane that moved elsewhere (sent there again)
        o.inflight -= 1
        if o.inflight <= 0:
            link.inflight.pop(tag, None)
        if not error:
            self._done(o)
        elif not retry:
            self._give_up(o, error)
        elif o.inflight > 0 or o.waiting:
            pass  # a later transmission of it will be answered
        else:
            self.stats["refused_retry"] += 1
            lane = o.lane
            if lane is None:
                o.waiting = True
                asyncio.get_running_loop().call_later(RETRY_MIN_S * 10, self._requeue, link, o)
            else:
                lane.rewind_to(o)
                self._hold(lane)

    def _requeue(self, link: Link, o: Out) -> None:
        if o.link is link and o.waiting:
            link.unordered.append(o)
            self._kicked(link)

    def _hold(self, lane: Lane) -> None:
        link = lane.link
        if link is not None:
            link.ready.pop(lane, None)
        lane.held = True
        lane.backoff_s = min(max(lane.backoff_s * 2, RETRY_MIN_S), RETRY_MAX_S)
        asyncio.get_running_loop().call_later(lane.backoff_s, self._release, lane)

    def _release(self, lane: Lane) -> None:
        """A held lane's backoff is over: resend from where the receiver refused, to wherever the
        target lives now."""
        lane.held = False
        if not lane.entries:
            self._forget_if_empty(lane)
            return
        where = self._where(lane.key[1])
        if where is None:
            if lane.link is not None:
                lane.link.drop_lane(lane)
            lane.node = ""
            self._activate(lane.key[1])
        elif lane.link is None or where[0] != lane.node:
            self._move(lane, *where)
        else:
            lane.epoch = where[1]
            if lane.cursor < len(lane.entries):
                lane.link.ready[lane] = None
                self._kicked(lane.link)

    def _done(self, o: Out) -> None:
        lane = o.lane
        if o.link is not None:
            o.link.answered(o)
        if lane is not None:
            lane.remove(o)
            lane.backoff_s = 0.0
            self._forget_if_empty(lane)
        o.lane = None
        self.stats["accepted"] += 1
        if o.future is not None and not o.future.done():
            o.future.set_result(lane.epoch if lane is not None else 0)

    def _forget_if_empty(self, lane: Lane) -> None:
        if lane.entries or lane.held:
            return
        if self._lanes.get(lane.key) is lane:
            del self._lanes[lane.key]
        lanes = self._by_target.get(lane.key[1])
        if lanes is not None:
            lanes.pop(lane, None)
            if not lanes:
                del self._by_target[lane.key[1]]
        if lane.link is not None:
            lane.link.lanes.pop(lane, None)
            lane.link.ready.pop(lane, None)
            lane.link = None

    def _expired(self, o: Out, now_ms: int) -> None:
        self._give_up(
            o,
            f"expired: its TTL ({o.msg.ttl_ms} ms) passed on node {self.node_id} before "
            + (f"node {o.link.peer} took it" if o.link is not None else "its target had an activation"),
            DeadlineExceeded(f"message {o.msg.id!r} to {o.msg.target or o.msg.topic} expired undelivered"),
        )

    def _give_up(self, o: Out, reason: str, exc: RaftmeshError | None = None) -> None:
        lane = o.lane
        if o.link is not None:
            o.link.answered(o)
        if lane is not None:
            lane.remove(o)
            self._forget_if_empty(lane)
        o.lane = None
        if o.kind == REPLY:
            self.stats["replies_undelivered"] += 1
            log.info("reply %s to node %s not delivered: %s", o.msg.correlation_id, o.msg.reply_to, reason)
        elif o.kind == BROADCAST:
            self.stats["broadcasts_dropped"] += 1
        else:
            self.dead_letter(o.msg, reason)
        if o.future is not None and not o.future.done():
            o.future.set_exception(exc if exc is not None else FailedPrecondition(reason))

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Record a fast-path message this node gave up on (batched into ``RecordDeadLetters``);
        the actor host calls it too, for one that expired in an inbox."""
        self.stats["dead_lettered"] += 1
        if len(self._dead) >= limits.MAX_PENDING_DEAD_LETTERS:
            self._dead.popleft()
            self.stats["dead_letters_dropped"] += 1
        self._dead.append(MessageDeadLetter(msg, reason[:1000]))
        self._dead_wake.set()

    async def _flush_dead_letters(self) -> None:
        while True:
            await self._dead_wake.wait()
            self._dead_wake.clear()
            while self._dead:
                n = min(len(self._dead), limits.MAX_MESSAGES_PER_SEND)
                items = tuple(self._dead.popleft() for _ in range(n))
                cmd = RecordDeadLetters(new_request_id("dl-"), self._clock.now_ms(), self.node_id, items)
                delay = 0.05
                while True:
                    try:
                        res = await self._writer.propose(cmd)
                    except RaftmeshError as exc:  # no leader / outcome unknown: same request id again
                        log.debug("recording dead letters: %s", exc)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                        continue
                    if not res.ok:
                        self.stats["dead_letters_unrecorded"] += len(items)
                        log.warning("dead letters not recorded: %s", res)
                    break

    # ---- receiving ------------------------------------------------------------------

    def _receive(
        self, node: str, incarnation: str, msg: Message, kind: int, seq: int, base: int
    ) -> tuple[str, bool]:
        """(error, retry) for one message from ``node`` ("" : taken, or a duplicate of one taken)."""
        intake = self._intake
        if kind == REPLY:
            key = ("reply", msg.correlation_id)
            if intake.check(None, 0, 0, key).deliver:
                intake.taken(None, 0, key)
                self._on_reply(msg)
            return "", False
        if kind == BROADCAST:
            key = (msg.id, "#" + msg.topic)
            if intake.check(None, 0, 0, key).deliver:
                intake.taken(None, 0, key)
                self._topics.fast(msg)
            return "", False
        lane = (node, incarnation, msg.sender, msg.target, msg.priority)
        dedup = (msg.id, msg.target)
        v = intake.check(lane, seq, base, dedup)
        if not v.deliver:
            if v.retry:
                self.stats["out_of_order"] += 1
            else:
                self.stats["duplicates"] += 1
            return v.error, v.retry
        if self._clock.now_ms() >= msg.expires_ms:
            intake.moved_past(lane, seq)
            self.stats["expired_received"] += 1
            return f"expired: its TTL ({msg.ttl_ms} ms) passed before node {self.node_id} took it", False
        deliver = self._deliver
        if deliver is None:
            return f"node {self.node_id} has no actor host yet", True
        try:
            refused = deliver.accept(msg)
        except Exception as exc:
            log.exception("actor host failed to take %s", msg.id)
            intake.moved_past(lane, seq)
            return f"undeliverable: the actor host on node {self.node_id} failed: {exc}", False
        if refused is None:
            intake.taken(lane, seq, dedup)
            self.stats["delivered"] += 1
            return "", False
        if not refused.retry:
            intake.moved_past(lane, seq)
        return refused.reason, refused.retry

    def _take_remote(
        self, link: Link, m: pb.AgentMessage, kind: int, seq: int, base: int
    ) -> tuple[str, bool]:
        try:
            msg = message_from_pb(m)
        except InvalidArgument as exc:
            return f"invalid message: {exc.message}", False
        if kind == REPLY:
            why = reply_error(msg)
        elif kind == BROADCAST:
            why = message_error(msg) or ("" if msg.topic else "a broadcast names a topic")
        elif kind == TO_ACTOR:
            why = delivery_error(msg)
        else:
            why = f"unknown message kind {kind}"
        if why:
            return f"invalid message: {why}", False
        return self._receive(link.peer, link.peer_incarnation, msg, kind, seq, base)

    def _on_frame(self, link: Link, f: pb.PeerFrame) -> None:
        if f.node_id != link.peer:
            raise InvalidArgument(
                f"a frame on the stream of node {link.peer!r} says it is from {f.node_id!r}"
            )
        for a in f.acks:
            self._on_ack(link, a.tag, a.error, a.retry)
        n = len(f.messages)
        if n:
            if n > limits.MAX_PEER_FRAME_MESSAGES:
                raise InvalidArgument(f"a frame holds at most {limits.MAX_PEER_FRAME_MESSAGES} messages")
            if not len(f.tags) == len(f.lane_seqs) == len(f.lane_bases) == len(f.kinds) == n:
                raise InvalidArgument("a frame has one tag, lane_seq, lane_base and kind per message")
            acks = link.acks
            for i in range(n):
                m = f.messages[i]
                error, retry = self._take_remote(link, m, f.kinds[i], f.lane_seqs[i], f.lane_bases[i])
                acks.append(pb.PeerAck(id=m.id, error=error, retry=retry, tag=f.tags[i]))
            link.kick()
        link.waiting_since = asyncio.get_running_loop().time() if link.inflight else None

    # ---- links and streams --------------------------------------------------------

    def _link(self, peer: str) -> Link:
        link = self._links.get(peer)
        if link is None:
            link = Link(peer, local=peer == self.node_id)
            self._links[peer] = link
            if self._running:
                self._ensure_dial(peer)
        return link

    def _ensure_dial(self, peer: str) -> None:
        link = self._links[peer]
        loop = asyncio.get_running_loop()
        if link.local:
            if peer not in self._pumps:
                self._pumps[peer] = loop.create_task(self._pump_local(link), name="local messages")
        elif self.node_id < peer and peer not in self._dials:
            self._dials[peer] = loop.create_task(self._dial_loop(link), name=f"peer stream {peer}")

    def _kicked(self, link: Link) -> None:
        link.kick()

    def _expiry_check(self) -> Callable[[Out], bool]:
        now_ms = self._clock.now_ms()

        def expired(o: Out) -> bool:
            if now_ms >= o.msg.expires_ms:
                self._expired(o, now_ms)
                return True
            return False

        return expired

    async def _pump_local(self, link: Link) -> None:
        """Messages to activations on this node: the same lanes and intake, no stream."""
        while True:
            await link.wake.wait()
            link.wake.clear()
            outs, _ = link.take(self._expiry_check())
            for o in outs:
                base = o.lane.base() if o.lane is not None else 0
                error, retry = self._receive(self.node_id, self.incarnation, o.msg, o.kind, o.seq, base)
                self._on_ack(link, o.tag, error, retry)

    def _open(self, link: Link, peer_incarnation: str) -> int:
        if link.session:
            link.reset()
        link.session = next(self._sessions)
        link.peer_incarnation = peer_incarnation
        self.stats["sessions_opened"] += 1
        link.kick()
        return link.session

    def _close(self, link: Link, session: int) -> None:
        if link.session == session:
            link.reset()

    async def _next_frame(self, link: Link, session: int) -> pb.PeerFrame | None:
        while link.session == session:
            outs, acks = link.take(self._expiry_check())
            if outs or acks:
                if outs and link.waiting_since is None:
                    link.waiting_since = asyncio.get_running_loop().time()
                return link.frame(self.node_id, self.incarnation, outs, acks)
            link.wake.clear()
            await link.wake.wait()
        return None

    async def _dial_loop(self, link: Link) -> None:
        backoff = DIAL_MIN_S
        channel: grpc.aio.Channel | None = None
        address = None
        try:
            while True:
                target = self._grpc_of(link.peer)
                if target is not None:
                    if target != address:
                        if channel is not None:
                            await channel.close(None)
                        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
                        address = target
                    assert channel is not None
                    try:
                        if await self._dial_once(link, channel):
                            backoff = DIAL_MIN_S
                    except grpc.aio.AioRpcError as exc:
                        log.debug("peer stream to %s: %s %s", link.peer, exc.code(), exc.details())
                    except RaftmeshError as exc:
                        log.info("peer stream to %s: %s", link.peer, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DIAL_MAX_S)
        finally:
            if channel is not None:
                await channel.close(None)

    async def _dial_once(self, link: Link, channel: grpc.aio.Channel) -> bool:
        """One stream to ``link.peer``; True if it opened."""
        call = pb_grpc.PeerStub(channel).Exchange()
        try:
            await call.write(pb.PeerFrame(node_id=self.node_id, incarnation=self.incarnation))
            hello = await call.read()
            if hello is _EOF:
                return False
            assert isinstance(hello, pb.PeerFrame)
            if hello.node_id != link.peer:
                raise Unavailable(f"the node at {link.peer}'s address says it is {hello.node_id!r}")
            session = self._open(link, hello.incarnation)

            async def read() -> None:
                while True:
                    f = await call.read()
                    if f is _EOF or link.session != session:
                        return
                    assert isinstance(f, pb.PeerFrame)
                    self._on_frame(link, f)

            reader = asyncio.ensure_future(read())
            reader.add_done_callback(lambda _: self._close(link, session))
            try:
                while True:
                    frame = await self._next_frame(link, session)
                    if frame is None:
                        break
                    await call.write(frame)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                self._close(link, session)
            return True
        finally:
            call.cancel()

    async def serve_exchange(
        self, request_iterator: AsyncIterator[pb.PeerFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PeerFrame]:
        frames = request_iterator.__aiter__()
        try:
            first = await frames.__anext__()
        except StopAsyncIteration:
            return
        peer = first.node_id
        why = limits.id_error("node_id", peer) or limits.id_error("incarnation", first.incarnation)
        if why:
            raise InvalidArgument(f"peer stream: {why}")
        known, current = self._reads.read(lambda st: _member(st, peer, first.incarnation))
        if not current:
            raise FailedPrecondition(
                f"node {peer!r} is not a member here in incarnation {first.incarnation!r}"
                + ("" if known else " (not a member yet: register first)")
            )
        if peer >= self.node_id:
            raise FailedPrecondition(
                f"node {peer!r} dialled node {self.node_id!r}: between two nodes, the one with the "
                "smaller id dials (one stream per pair)"
            )
        link = self._link(peer)
        session = self._open(link, first.incarnation)
        failed: list[BaseException] = []

        async def read() -> None:
            try:
                async for f in frames:
                    if link.session != session:
                        return
                    self._on_frame(link, f)
            except RaftmeshError as exc:
                failed.append(exc)

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(lambda _: self._close(link, session))
        try:
            yield pb.PeerFrame(node_id=self.node_id, incarnation=self.incarnation)
            while True:
                frame = await self._next_frame(link, session)
                if frame is None:
                    break
                yield frame
            if failed:
                raise failed[0]
        finally:
            reader.cancel()
            self._close(link, session)

    # ---- events, streams, status -----------------------------------------------------

    def applied(self, events: list[Event]) -> None:
        """Called on the loop after every applied batch (replies, publishes, activations moved)."""
        for ev in events:
            if isinstance(ev, ReplyCommitted):
                if ev.reply_to == self.node_id:
                    self._durable_reply(ev.correlation_id)
            elif isinstance(ev, TopicPublished):
                if self._topics.has(ev.topic):
                    self._topics.durable(ev.topic, ev.seq)
            elif isinstance(ev, ActivationChanged):
                for lane in list(self._by_target.get(ev.address, ())):
                    if ev.active and ev.node != lane.node:
                        self._move(lane, ev.node, ev.epoch)
                    elif not ev.active and ev.node == lane.node and not lane.held:
                        if lane.link is not None:
                            lane.link.drop_lane(lane)
                        lane.node = ""
                        self._route(lane)
        if not events:  # a snapshot was installed: replies may have landed unseen
            for cid, w in list(self._waiting.items()):
                if w.durable:
                    self._durable_reply(cid)

    def _durable_reply(self, correlation_id: str) -> None:
        w = self._waiting.get(correlation_id)
        if w is None or not w.durable or w.future.done():
            return
        reply = self._reads.read(lambda st: _reply_of(st, correlation_id))
        if reply is not None:
            w.future.set_result(reply)

    def subscribe(self, topic: str, from_start: bool) -> AsyncIterator[Message]:
        why = limits.name_error("topic", topic, limits.MAX_TOPIC_CHARS)
        if why:
            raise InvalidArgument(why)
        return self._topics.subscribe(topic, from_start)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        out.update(
            links={
                p: {"connected": ln.connected, "outstanding": ln.outstanding} for p, ln in self._links.items()
            },
            lanes=len(self._lanes),
            pending_requests=len(self._waiting),
            pending_dead_letters=len(self._dead),
            topic_streams=self._topics.count,
        )
        return out


def _member(st: ClusterState, node: str, incarnation: str) -> tuple[bool, bool]:
    m = st.members.get(node)
    return m is not None, m is not None and m.incarnation == incarnation


def _fanout(st: ClusterState, topic: str, source: str) -> tuple[list[str], list[str]]:
    """(subscriber addresses of a publish, up members to broadcast it to)."""
    subs: dict[str, None] = {}
    for s in st.messages.subscriptions.get(topic, ()):
        subs[s if "/" in s else f"{s}/{source or 'default'}"] = None
    return list(subs), [n for n, m in st.members.items() if m.up]


def _reply_of(st: ClusterState, correlation_id: str) -> Message | None:
    kept = st.messages.replies.get(correlation_id)
    return kept[1] if kept is not None else None
