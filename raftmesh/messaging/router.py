"""``MessageRouter``: every message that leaves or reaches this node goes through it.

Fast path (README "Messages"): the streams between nodes are ``streams``'; lanes, retries
and the order they keep are ``links``'; duplicates and order on the receiving side are
``intake``'s; client topic streams are ``topics``'. The router decides where each message
goes and what becomes of it (delivered, sent again, dead-lettered), and wakes requesters.
The log is touched only to ``Activate`` a target with no activation and to record fast-path
dead letters (``RecordDeadLetters``, batched); durable sends are one ``SendMessages``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ..clock import Clock
from ..consensus import activations, limits
from ..consensus.commands import Activate, Fence, Message, MessageDeadLetter, RecordDeadLetters, SendMessages
from ..consensus.messages import message_error, reply_error, reply_key, split_address
from ..consensus.results import (
    ActivationChanged,
    ActivationResult,
    Event,
    MemberChanged,
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
)
from ..node.access import Writer
from ..node.proposer import new_request_id
from ..node.reads import ReadView
from ..node.tls import Dial, plaintext
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from .api import Deliver, Sent
from .intake import Intake
from .links import BROADCAST, REPLY, TO_ACTOR, Lane, Link, Out
from .streams import PeerStreams
from .topics import TopicStreams
from .wire import message_from_pb, send_request_id

log = logging.getLogger(__name__)


MAINTAIN_INTERVAL_S = 0.1
RETRY_MIN_S = 0.005
RETRY_MAX_S = 1.0
"""Backoff of a lane after a refusal with ``retry`` (moved, not activated yet, inbox full)."""
ACTIVATE_TIMEOUT_S = 5.0
HOLD_PING_S = 1.0
"""While the actor host holds fast messages unhandled (unacked), an empty frame goes to every
peer this often, so a slow handler does not look like a dead stream (``ACK_SILENCE_S``)."""
NO_ROOM_RECHECK_S = (0.5, 4.0)
"""While the replica says no node can take an address, it is checked again on every membership or
activation change, and at least this often (doubling): no ``Activate`` goes to the log for it."""
PUBLIC_COUNTERS = (
    "sent",
    "delivered",
    "duplicates",
    "out_of_order",
    "late_replies",
    "stale_replies",
    "request_timeouts",
    "dead_lettered",
    "dead_letters_dropped",
    "broadcasts_dropped",
)
"""``stats`` counters shown to users: messages this node sent and delivered to its actors,
duplicates and out-of-order messages it dropped or refused, replies too late or from an older
activation, requests that timed out, dead letters (and those dropped unrecorded), and topic
broadcasts to other nodes' client streams that were dropped."""
_FINAL_ACTIVATE = ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND")
"""``Activate`` rejections that do not change by retrying, unless some member offers the type
(then no up node has room yet: the message waits, until its TTL, for one that does)."""


HANDLED_NO_REPLY = "handled, no reply kept"
"""How a receiving node's answer to a copy of a fast request it handled, but whose reply it no
longer keeps, begins (the requester fails the request at once instead of waiting out its deadline)."""


@dataclass(eq=False)
class _Waiter:
    target: str
    sender: str
    durable: bool
    future: asyncio.Future[Message]
    epoch: int = 0
    """The epoch of the activation the request was delivered to (a reply from an older one is stale)."""


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def _reason(text: str) -> str:
    """A dead letter's reason as the state machine takes it: printable, bounded (a peer's
    refusal text is a stranger's)."""
    text = "".join(c if limits.printable(c) else "?" for c in text[: limits.MAX_DEAD_LETTER_REASON_CHARS])
    return text or "undeliverable"


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
      host), returning once the target's handler took it (its turn finished, its effects
      committed: the receiving node acks only then). Retries with backoff while the target
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
        dial: Dial = plaintext,
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
                "requests_answered_again",
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
        self._held: dict[tuple[str, str], list[Callable[[str, bool], None]]] = {}
        """(message id, target) -> the answers owed for a message the actor host holds
        unhandled (one per copy received while it is held)."""
        self._kept: OrderedDict[tuple[str, str], tuple[Message, int]] = OrderedDict()
        """(request id, target) -> (the reply a handler here gave that fast request, its size):
        a copy of the request (its requester asked again, through any node) is answered with
        it, never handled again by this node (``KEPT_FAST_REPLIES``, each until its TTL)."""
        self._kept_bytes = 0
        self._askers: OrderedDict[tuple[str, str], dict[str, None]] = OrderedDict()
        """(request id, target) -> the nodes that sent copies of a fast request held unhandled
        here: its reply goes to each of them."""
        self._topics = TopicStreams(reads, self._topics_changed)
        self._waiting: dict[str, _Waiter] = {}
        self._activating: dict[str, asyncio.Task[None]] = {}
        self._room: dict[str, asyncio.Event] = {}
        """actor type -> set (and replaced) when a member or an activation changes: the addresses
        of that type waiting for room look at the placement again (one event per type)."""
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._dead: deque[MessageDeadLetter] = deque()
        self._dead_wake = asyncio.Event()
        self._dead_idle = asyncio.Event()
        """Set while no dead letter waits to be recorded (``drain`` waits for it)."""
        self._dead_idle.set()
        self._tags = itertools.count(1)
        self._submitted = 0
        """Fast messages ever queued: a new lane starts numbering above it (see ``_lane``)."""
        self._streams = PeerStreams(
            node_id,
            incarnation,
            reads,
            grpc_of,
            lambda link: link.take(self._expiry_check()),
            self._on_frame,
            self.stats,
            self._topics.topics,
            dial,
        )
        self._stalled: dict[Lane, None] = {}
        """Lanes with no activation to go to yet, or in a backoff (``_expire`` looks at them)."""
        self._running = False

    def attach(self, deliver: Deliver) -> None:
        self._deliver = deliver

    @property
    def peer_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata on the Peer.Exchange streams this node dials (its node credential when tokens are on)."""
        return self._streams.metadata

    @peer_metadata.setter
    def peer_metadata(self, value: tuple[tuple[str, str], ...]) -> None:
        self._streams.metadata = value

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
            tasks = [*self._pumps.values(), *self._activating.values()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._pumps.clear()
            await self._streams.stop()

    async def drain(self, timeout_s: float) -> None:
        """The node is stopping (its actor host already stopped): every message still waiting to
        be sent or acknowledged is dead-lettered, and the dead letters are recorded, within
        ``timeout_s``. Called while ``run`` and the proposer still run, before they stop."""
        for lane in list(self._lanes.values()):
            lane.held = False  # its backoff timer finds it empty
            for o in list(lane.entries):
                self._give_up(o, self._stopped_reason(o))
        for link in list(self._links.values()):
            for o in list(link.unordered):
                link.unordered.remove(o)
                self._give_up(o, self._stopped_reason(o))
        if not self._running:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._dead_idle.wait()
        except TimeoutError:
            log.warning("node stopping: %d dead letters not recorded", len(self._dead))

    def _stopped_reason(self, o: Out) -> str:
        if o.transmitted and o.link is not None and not o.link.local:
            return (
                f"undeliverable: the sending node {self.node_id} stopped with it unacknowledged; "
                f"node {o.link.peer} may have taken it"
            )
        return f"undeliverable: the sending node {self.node_id} stopped before it was sent"

    async def _maintain(self) -> None:
        """Dials every member with a larger id, drops stuck streams, expires waiting messages."""
        loop = asyncio.get_running_loop()
        last_ping = 0.0
        while True:
            members = self._reads.read(lambda st: [m for m in st.members if m != self.node_id])
            for peer in members:
                if peer > self.node_id:
                    self._link(peer)
            now = loop.time()
            if self._held and now - last_ping >= HOLD_PING_S:
                # Messages held unhandled are not acked yet: tell their senders this node lives
                # (a sender hearing nothing for ACK_SILENCE_S drops the stream and resends).
                last_ping = now
                for link in self._links.values():
                    if link.session:
                        link.ping = True
                        link.kick()
            self._streams.check_silence(list(self._links.values()), now)
            self._expire(self._clock.now_ms())
            await asyncio.sleep(MAINTAIN_INTERVAL_S)

    def _expire(self, now_ms: int) -> None:
        """Dead-letters waiting messages whose TTL passed where nothing is being sent: lanes with
        no activation yet or in a backoff, and everything for a peer with no stream. (A message
        about to be transmitted is checked then; one transmitted is the receiver's to judge.)"""
        lanes = [ln for ln in self._stalled if ln.link is None or ln.held]
        self._stalled = dict.fromkeys(lanes)
        for link in self._links.values():
            if not link.connected:
                lanes.extend(link.lanes)
                for o in [o for o in link.unordered if now_ms >= o.msg.expires_ms]:
                    link.unordered.remove(o)
                    self._expired(o, now_ms)
        for lane in lanes:
            for o in [o for o in lane.entries if o.waiting and now_ms >= o.msg.expires_ms]:
                self._expired(o, now_ms)

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

    def _offered(self, address: str) -> bool:
        kind = split_address(address)[0]
        return self._reads.read(lambda st: kind in activations.offered_types(st))

    def _route(self, lane: Lane) -> None:
        where = self._where(lane.key[1])
        if where is not None:
            self._move(lane, *where)
        else:
            self._stalled[lane] = None
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
            # Outlives the send that asked for it: the node's own work, under no client's call.
            self._activating[address] = asyncio.get_running_loop().create_task(
                self._activation(address), name=f"activate {address}", context=contextvars.Context()
            )

    async def _activation(self, address: str) -> None:
        """Until the address has an activation (or cannot have one), then routes its lanes there."""
        delay = 0.01
        no_room = NO_ROOM_RECHECK_S[0]
        try:
            while self._by_target.get(address):
                where = self._where(address)
                if where is None and not self._placeable(address):
                    # The replica's own placement says no node can take it: asking the log would
                    # only add an entry (per address, per retry) that is rejected or waits.
                    await self._room_for(address, no_room)
                    no_room = min(no_room * 2, NO_ROOM_RECHECK_S[1])
                    continue
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
                    elif (
                        isinstance(res, Rejected)
                        and res.code in _FINAL_ACTIVATE
                        and not self._offered(address)
                    ):
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

    def _placeable(self, address: str) -> bool:
        """Whether an ``Activate`` of ``address`` can be granted now, by the state machine's own
        placement on this replica (a type no member offers is left for the log to refuse)."""
        kind = split_address(address)[0]

        def check(st: ClusterState) -> bool:
            return kind not in activations.offered_types(st) or activations.place(st, address) is not None

        return self._reads.read(check)

    async def _room_for(self, address: str, timeout_s: float) -> None:
        kind = split_address(address)[0]
        room = self._room.get(kind)
        if room is None:
            room = self._room[kind] = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await room.wait()
        except TimeoutError:
            pass

    async def _publish(self, msg: Message) -> Sent:
        subs, nodes = self._reads.read(lambda st: _fanout(st, msg.topic, msg.source))
        futs = [self._submit(dataclasses.replace(msg, target=a)) for a in subs]
        self._topics.fast(msg)
        for node in nodes:
            if node == self.node_id:
                continue
            link = self._link(node)
            if msg.topic not in link.peer_topics:
                continue  # no client stream there wants it
            if not link.room.is_set():
                self.stats["broadcasts_dropped"] += 1
                continue
            o = Out(msg, BROADCAST, next(self._tags), None, 0, None)
            link.queue(o)
        done = await asyncio.gather(*futs, return_exceptions=True)
        # Only the subscribers whose node took it (the others' copies are dead letters).
        return Sent(
            msg.id, 0, tuple(a for a, d in zip(subs, done, strict=True) if not isinstance(d, BaseException))
        )

    async def _send_durable(self, msg: Message, fence: Fence | None, request_id: str) -> Sent:
        rid = request_id or send_request_id(msg.sender, msg.id)
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
        w = _Waiter(msg.target, msg.sender, msg.durable, fut)
        self._waiting[msg.id] = w
        try:
            async with asyncio.timeout(timeout_s):
                if msg.durable:
                    done = self._reads.read(lambda st: _reply_of(st, msg.sender, msg.id))
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
        """Send a handler's answer to a fast request back to the requesting node: ``reply_to`` is
        the request's (that node), ``correlation_id`` the request's id, ``epoch`` the handler's
        activation's. Sent (and resent) like a message; one that cannot be delivered before
        its TTL is dead-lettered (and counted: ``replies_undelivered``)."""
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
        dedup = (reply.correlation_id, reply.sender)
        self._keep_reply(dedup, reply)
        self._send_reply(reply)
        for asker in self._askers.pop(dedup, {}):
            if asker != node:
                self._send_reply(dataclasses.replace(reply, reply_to=asker))

    def _send_reply(self, reply: Message) -> None:
        if reply.reply_to == self.node_id:
            self._on_reply(reply)
            return
        o = Out(reply, REPLY, next(self._tags), None, 0, None)
        self._link(reply.reply_to).queue(o)

    def _keep_reply(self, dedup: tuple[str, str], reply: Message) -> None:
        """Keep a fast request's reply until its TTL (the newest ``KEPT_FAST_REPLIES``, bytes bounded)."""
        old = self._kept.pop(dedup, None)
        if old is not None:
            self._kept_bytes -= old[1]
        size = limits.encoded_size(reply.payload) + len(reply.id) + len(reply.correlation_id)
        self._kept[dedup] = (reply, size)
        self._kept_bytes += size
        now_ms = self._clock.now_ms()
        kept = self._kept
        while kept and (
            len(kept) > limits.KEPT_FAST_REPLIES
            or self._kept_bytes > limits.KEPT_FAST_REPLY_BYTES
            or next(iter(kept.values()))[0].expires_ms <= now_ms
        ):
            self._kept_bytes -= kept.popitem(last=False)[1][1]

    def _answer_again(self, dedup: tuple[str, str], node: str, pending: bool) -> bool:
        """A copy of a fast request handled (or held) here: its requester asked again, maybe
        through another node. Answered with the kept reply while the activation that gave it
        still lives here (a requester drops a reply of an older epoch); one held unhandled
        answers every node that asked once its handler replies. False: neither (no reply to give)."""
        kept = self._kept.get(dedup)
        if (
            kept is not None
            and kept[0].expires_ms > self._clock.now_ms()
            # An epoch of 0 is unknown, as the requester's stale check treats it (``_on_reply``).
            and (not kept[0].epoch or self._where(dedup[1]) == (self.node_id, kept[0].epoch))
        ):
            self.stats["requests_answered_again"] += 1
            self._send_reply(dataclasses.replace(kept[0], reply_to=node))
            return True
        if pending:
            self._askers.setdefault(dedup, {})[node] = None
            self._askers.move_to_end(dedup)
            if len(self._askers) > limits.MAX_PENDING_REQUESTS:
                self._askers.popitem(last=False)
            return True
        return False

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
        if error.startswith(HANDLED_NO_REPLY):
            # Delivered and handled once (no dead letter), but no reply will come: fail the waiter.
            self._done(o)
            w = self._waiting.get(o.msg.id)
            if w is not None and not w.future.done():
                w.future.set_exception(FailedPrecondition(_reason(error)))
            return
        if not error:
            self._done(o)
        elif not retry:
            expired = error.startswith("expired")  # the receiver found its TTL passed
            self._give_up(
                o, error, DeadlineExceeded(f"message {o.msg.id!r}: {_reason(error)}") if expired else None
            )
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
        self._stalled[lane] = None
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
            self._stalled[lane] = None
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
        head = f"expired: its TTL ({o.msg.ttl_ms} ms) passed on node {self.node_id}"
        if o.link is None:
            why = f"{head} before its target had an activation"
        elif o.transmitted:  # its stream broke before the answer came: it may have been handled
            why = f"{head} with it unacknowledged; node {o.link.peer} may have taken it"
        else:
            why = f"{head} before it was sent to node {o.link.peer}"
        self._give_up(
            o,
            why,
            DeadlineExceeded(
                f"message {o.msg.id!r} to {o.msg.target or o.msg.topic} expired "
                + ("unacknowledged (it may have been delivered)" if o.transmitted else "undelivered")
            ),
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
            self.dead_letter(o.msg, reason)
        elif o.kind == BROADCAST:
            self.stats["broadcasts_dropped"] += 1
        else:
            self.dead_letter(o.msg, reason)
        if o.future is not None and not o.future.done():
            o.future.set_exception(exc if exc is not None else FailedPrecondition(_reason(reason)))

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Record a fast-path message this node gave up on (batched into ``RecordDeadLetters``);
        the actor host calls it too, for one whose handler failed for good."""
        self.stats["dead_lettered"] += 1
        if len(self._dead) >= limits.MAX_PENDING_DEAD_LETTERS:
            self._dead.popleft()
            self.stats["dead_letters_dropped"] += 1
        self._dead.append(MessageDeadLetter(msg, _reason(reason)))
        self._dead_idle.clear()
        self._dead_wake.set()

    async def _flush_dead_letters(self) -> None:
        while True:
            if not self._dead:
                self._dead_idle.set()
            await self._dead_wake.wait()
            self._dead_wake.clear()
            while self._dead:
                n = min(len(self._dead), limits.MAX_DEAD_LETTERS_PER_RECORD)
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
        self,
        node: str,
        incarnation: str,
        msg: Message,
        kind: int,
        seq: int,
        base: int,
        answer: Callable[[str, bool], None],
    ) -> tuple[str, bool] | None:
        """(error, retry) for one message from ``node`` ("" : handled, or a duplicate of one
        handled); None: the actor host holds it (or a copy) unhandled, ``answer`` is called
        once its handler took it or the host gave it back (an ack means handled)."""
        intake = self._intake
        if kind == REPLY:
            key = ("reply", msg.correlation_id)
            w = self._waiting.get(msg.correlation_id)
            # A reply seen before still answers a request of that id waiting now (asked again).
            if intake.check(None, 0, 0, key).deliver or (w is not None and not w.future.done()):
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
            # Its requester asked again: answer, never handle again. Handled here but its reply
            # gone (evicted, or from an activation that has since ended): fail the request at
            # once rather than leave it to its deadline.
            if msg.reply_to and not v.retry and not self._answer_again(dedup, msg.reply_to, v.pending):
                self.stats["duplicates"] += 1
                return (
                    f"{HANDLED_NO_REPLY}: request {msg.id!r} was handled by {msg.target} on node "
                    f"{self.node_id}, but its reply is no longer kept there (replies are kept until "
                    "their TTL, for the activation that answered, and at most "
                    f"{limits.KEPT_FAST_REPLIES}); its effects committed once"
                ), False
            if v.pending:
                self._held[dedup].append(answer)
                return None
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
        answers = [answer]

        def done(error: str, retry: bool) -> None:
            if self._held.pop(dedup, None) is not answers:
                return  # settled already
            if error:  # given back: every copy's sender is refused and resends it
                self._askers.pop(dedup, None)
            if dedup in intake.pending:
                if error:
                    intake.refused(lane, seq, dedup, retry)
                else:
                    intake.handled(dedup)
            elif not error:  # settled within accept
                intake.taken(lane, seq, dedup)
            elif not retry:
                intake.moved_past(lane, seq)
            for a in answers:
                a(error, retry)

        self._held[dedup] = answers
        try:
            refused = deliver.accept(msg, done)
        except Exception as exc:
            log.exception("actor host failed to take %s", msg.id)
            self._held.pop(dedup, None)
            intake.moved_past(lane, seq)
            return f"undeliverable: the actor host on node {self.node_id} failed: {exc}", False
        if refused is None:
            self.stats["delivered"] += 1
            if self._held.get(dedup) is answers:  # not settled within accept
                intake.delivered(lane, seq, dedup)
            return None
        self._held.pop(dedup, None)
        if not refused.retry:
            intake.moved_past(lane, seq)
        return refused.reason, refused.retry

    def _take_remote(
        self, link: Link, m: pb.AgentMessage, kind: int, seq: int, base: int, tag: int
    ) -> tuple[str, bool] | None:
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
        return self._receive(
            link.peer, link.peer_incarnation, msg, kind, seq, base, _later(link, msg.id, tag)
        )

    def _on_frame(self, link: Link, f: pb.PeerFrame) -> None:
        if f.node_id != link.peer:
            raise InvalidArgument(
                f"a frame on the stream of node {link.peer!r} says it is from {f.node_id!r}"
            )
        if f.topics_sent:
            if len(f.topics) > limits.MAX_TOPIC_STREAMS:
                raise InvalidArgument(f"a node names at most {limits.MAX_TOPIC_STREAMS} topics it streams")
            link.peer_topics = frozenset(f.topics)
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
                tag = f.tags[i]
                out = self._take_remote(link, m, f.kinds[i], f.lane_seqs[i], f.lane_bases[i], tag)
                if out is not None:  # else answered once its handler took it (``_later``)
                    acks.append(pb.PeerAck(id=m.id, error=out[0], retry=out[1], tag=tag))
            if len(acks) >= limits.MAX_PENDING_ACKS:
                link.acks_room.clear()
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
                self._pumps[peer] = loop.create_task(
                    self._pump_local(link), name="local messages", context=contextvars.Context()
                )
        else:
            self._streams.dial(link)

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
                out = self._receive(
                    self.node_id,
                    self.incarnation,
                    o.msg,
                    o.kind,
                    o.seq,
                    base,
                    self._local_answer(link, o.tag),
                )
                if out is not None:
                    self._on_ack(link, o.tag, *out)

    def _local_answer(self, link: Link, tag: int) -> Callable[[str, bool], None]:
        return lambda error, retry: self._on_ack(link, tag, error, retry)

    def _topics_changed(self) -> None:
        topics = self._topics.topics()
        for link in self._links.values():
            if not link.local:
                link.topics_out = topics
                link.kick()

    def serve_exchange(
        self, request_iterator: AsyncIterator[pb.PeerFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PeerFrame]:
        """The ``Peer.Exchange`` stream another node dialled (``streams.PeerStreams.serve``)."""
        return self._streams.serve(request_iterator, self._link)

    # ---- events, streams, status -----------------------------------------------------

    def applied(self, events: list[Event]) -> None:
        """Called on the loop after every applied batch (replies, publishes, activations moved)."""
        if self._room and (
            not events  # a snapshot was installed
            or any(
                isinstance(ev, MemberChanged) or (isinstance(ev, ActivationChanged) and not ev.active)
                for ev in events
            )
        ):
            for room in self._room.values():
                room.set()
            self._room.clear()
        for ev in events:
            if isinstance(ev, ReplyCommitted):
                # Not only reply_to: a request retried through this node (the SDK's failover)
                # waits here on the same id while the committed copy names the first node.
                self._durable_reply(ev.correlation_id)
            elif isinstance(ev, TopicPublished):
                if self._topics.has(ev.topic):
                    self._topics.durable(ev.topic, ev.seq)
            elif isinstance(ev, ActivationChanged):
                for lane in list(self._by_target.get(ev.address, ())):
                    if ev.active:  # granted (or granted again): the lane goes there, with its epoch
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
        reply = self._reads.read(lambda st: _reply_of(st, w.sender, correlation_id))
        if reply is not None:
            w.future.set_result(reply)

    def subscribe(self, topic: str, from_start: bool) -> AsyncIterator[Message]:
        why = limits.name_error("topic", topic, limits.MAX_TOPIC_CHARS)
        if why:
            raise InvalidArgument(why)
        return self._topics.subscribe(topic, from_start)

    def counters(self) -> dict[str, int]:
        """The counters a user sees (``raftmesh status --json`` ``messaging``)."""
        return {k: self.stats[k] for k in PUBLIC_COUNTERS}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        out.update(
            links={
                p: {
                    "connected": ln.connected,
                    "outstanding": ln.outstanding,
                    "peer_topics": len(ln.peer_topics),
                }
                for p, ln in self._links.items()
            },
            lanes=len(self._lanes),
            pending_requests=len(self._waiting),
            pending_dead_letters=len(self._dead),
            topic_streams=self._topics.count,
        )
        return out


def _later(link: Link, message_id: str, tag: int) -> Callable[[str, bool], None]:
    """The ack of a message the actor host holds, sent in the link's next frame once settled."""

    def answer(error: str, retry: bool) -> None:
        link.acks.append(pb.PeerAck(id=message_id, error=error, retry=retry, tag=tag))
        if len(link.acks) >= limits.MAX_PENDING_ACKS:
            link.acks_room.clear()
        link.kick()

    return answer


def _fanout(st: ClusterState, topic: str, source: str) -> tuple[list[str], list[str]]:
    """(subscriber addresses of a publish, up members to broadcast it to)."""
    subs: dict[str, None] = {}
    for s in st.messages.subscriptions.get(topic, ()):
        subs[s if "/" in s else f"{s}/{source or 'default'}"] = None
    return list(subs), [n for n, m in st.members.items() if m.up]


def _reply_of(st: ClusterState, requester: str, correlation_id: str) -> Message | None:
    kept = st.messages.replies.get(reply_key(requester, correlation_id))
    return kept[1] if kept is not None else None
