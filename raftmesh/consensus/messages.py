"""Replicated state of agent messaging: activations, durable mailboxes, topics, dead letters.

An addressable agent (an actor) is ``TYPE/KEY``. Its activation is a lease granted by
``apply`` (``message_commands``): at most one per address, on one node, with an epoch
(the revision that granted it, so epochs only grow). Every write an activation makes
carries its epoch and is rejected once another activation holds the address: a node
that was cut off can still run a handler, but nothing it commits lands.

A durable message sits in its target's mailbox under a sequence number (one counter for
every mailbox, so a number is never reused) until the handler's ``AckMessage`` removes
it together with the handler's effects; one that outlives its TTL moves to the dead
letters instead. Publishes are kept per topic (the newest ``MAX_TOPIC_RETAINED``) for
subscribers that read from the start.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from . import limits, values
from .commands import Message, MessageDeadLetter


def split_address(address: str) -> tuple[str, str]:
    """(TYPE, KEY) of an actor address ``TYPE/KEY`` (the key may itself contain ``/``)."""
    kind, _, key = address.partition("/")
    return kind, key


@dataclass(slots=True)
class Activation:
    """The lease of one actor address on one node process."""

    address: str
    node: str
    incarnation: str
    epoch: int
    """The revision that granted it; every write of the activation carries it."""
    granted_ms: int
    deadline_ms: int
    """State time the lease ends unless renewed (``RenewActivations``)."""

    def encode(self) -> list[Any]:
        return [self.address, self.node, self.incarnation, self.epoch, self.granted_ms, self.deadline_ms]

    @classmethod
    def decode(cls, v: list[Any]) -> Activation:
        return cls(*v)


@dataclass(slots=True)
class Queued:
    """A durable message waiting in a mailbox."""

    seq: int
    message: Message
    enqueued_ms: int

    def encode(self) -> list[Any]:
        return [self.seq, self.message.encode(), self.enqueued_ms]

    @classmethod
    def decode(cls, v: list[Any]) -> Queued:
        return cls(v[0], Message.decode(v[1]), v[2])


@dataclass(slots=True)
class Mailbox:
    """The durable messages of one address not yet acknowledged, in sequence order."""

    address: str
    queue: OrderedDict[int, Queued] = field(default_factory=OrderedDict)
    acked: int = 0
    """Messages acknowledged since the mailbox was created (for status and tests)."""

    def encode(self) -> list[Any]:
        return [self.address, [q.encode() for q in self.queue.values()], self.acked]

    @classmethod
    def decode(cls, v: list[Any]) -> Mailbox:
        return cls(v[0], OrderedDict((q[0], Queued.decode(q)) for q in v[1]), v[2])


@dataclass(slots=True)
class Published:
    """A durable publish, as a topic's retained log keeps it."""

    seq: int
    message: Message
    published_ms: int

    def encode(self) -> list[Any]:
        return [self.seq, self.message.encode(), self.published_ms]

    @classmethod
    def decode(cls, v: list[Any]) -> Published:
        return cls(v[0], Message.decode(v[1]), v[2])


@dataclass(slots=True)
class DeadMessage:
    """A message that was not delivered (``reason``), in the order recorded."""

    seq: int
    recorded_ms: int
    letter: MessageDeadLetter
    node: str
    """The node that recorded it ("" for the state machine itself: a mailbox TTL)."""

    def encode(self) -> list[Any]:
        return [self.seq, self.recorded_ms, self.letter.encode(), self.node]

    @classmethod
    def decode(cls, v: list[Any]) -> DeadMessage:
        return cls(v[0], v[1], MessageDeadLetter(Message.decode(v[2][0]), v[2][1]), v[3])


@dataclass(slots=True)
class MessageStore:
    """Everything messaging keeps in the replicated state (one element of the snapshot)."""

    seq: int = 0
    """Last sequence number given to a mailbox message, publish or dead letter."""
    activations: dict[str, Activation] = field(default_factory=dict)
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    """Only addresses with queued messages have one."""
    subscriptions: dict[str, dict[str, None]] = field(default_factory=dict)
    """topic -> subscribers (``TYPE`` or ``TYPE/KEY``)."""
    topics: dict[str, deque[Published]] = field(default_factory=dict)
    """topic -> its newest durable publishes (``limits.MAX_TOPIC_RETAINED``)."""
    dead_letters: deque[DeadMessage] = field(default_factory=deque)
    """The newest ``limits.MAX_MESSAGE_DEAD_LETTERS``, oldest first."""
    dead_letters_total: int = 0
    """Every dead letter ever recorded (those evicted from the list included)."""
    replies: OrderedDict[str, tuple[int, Message]] = field(default_factory=OrderedDict)
    """``reply_key(requester, correlation id)`` -> (ms kept, reply) of durable requests, oldest
    first. Ids are per sender: another sender's request with the same id is not answered by it."""

    # Derived indexes: not encoded, rebuilt by ``rebuild_indexes``.
    by_node: dict[str, dict[str, None]] = field(default_factory=dict)
    """node id -> addresses activated there."""
    lease_deadlines: list[tuple[int, str, int]] = field(default_factory=list)
    """Heap of (deadline_ms, address, epoch); entries go stale lazily."""
    expiries: list[tuple[int, str, int]] = field(default_factory=list)
    """Heap of (expires_ms, address, seq) of queued messages; entries go stale lazily."""
    unplaced: dict[str, None] = field(default_factory=dict)
    """Addresses with queued messages and no activation: no up node offering the type has room
    (``activations.fill`` places them as soon as one has)."""
    unplaced_by_type: dict[str, dict[str, None]] = field(default_factory=dict)
    """actor type -> its unplaced addresses (placed when a node offering it gains room)."""
    type_load: dict[str, dict[str, int]] = field(default_factory=dict)
    """node id -> actor type -> activations of that type there (``max_activations``)."""
    queued: int = 0
    """Messages in all mailboxes (``MAX_QUEUED_MESSAGES``)."""
    subscription_count: int = 0
    """(topic, subscriber) pairs (``MAX_SUBSCRIPTIONS``)."""
    topic_order: list[tuple[int, str]] = field(default_factory=list)
    """Heap of (seq of the topic's newest publish, topic): the oldest-written retained log is
    dropped first. Entries go stale lazily."""

    def encode(self) -> list[Any]:
        return [
            self.seq,
            [self.activations[a].encode() for a in sorted(self.activations)],
            [self.mailboxes[a].encode() for a in sorted(self.mailboxes)],
            [[t, sorted(subs)] for t, subs in sorted(self.subscriptions.items())],
            [[t, [p.encode() for p in log]] for t, log in sorted(self.topics.items())],
            [d.encode() for d in self.dead_letters],
            self.dead_letters_total,
            [[cid, ms, m.encode()] for cid, (ms, m) in self.replies.items()],
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> MessageStore:
        store = cls(
            seq=v[0],
            activations={a[0]: Activation.decode(a) for a in v[1]},
            mailboxes={m[0]: Mailbox.decode(m) for m in v[2]},
            subscriptions={t: dict.fromkeys(subs) for t, subs in v[3]},
            topics={t: deque(Published.decode(p) for p in log) for t, log in v[4]},
            dead_letters=deque(DeadMessage.decode(d) for d in v[5]),
            dead_letters_total=v[6],
            replies=OrderedDict((cid, (ms, Message.decode(m))) for cid, ms, m in v[7]),
        )
        store.rebuild_indexes()
        return store

    def rebuild_indexes(self) -> None:
        self.by_node = {}
        self.lease_deadlines = []
        self.expiries = []
        self.unplaced = {}
        self.unplaced_by_type = {}
        self.type_load = {}
        self.queued = 0
        for a in self.activations.values():
            self.by_node.setdefault(a.node, {})[a.address] = None
            self.lease_deadlines.append((a.deadline_ms, a.address, a.epoch))
            load = self.type_load.setdefault(a.node, {})
            kind = split_address(a.address)[0]
            load[kind] = load.get(kind, 0) + 1
        for box in self.mailboxes.values():
            self.queued += len(box.queue)
            for q in box.queue.values():
                self.expiries.append((q.message.expires_ms, box.address, q.seq))
            if box.queue and box.address not in self.activations:
                self.unplaced[box.address] = None
                self.unplaced_by_type.setdefault(split_address(box.address)[0], {})[box.address] = None
        self.subscription_count = sum(len(s) for s in self.subscriptions.values())
        self.topic_order = [(log[-1].seq, t) for t, log in self.topics.items() if log]
        heapq.heapify(self.lease_deadlines)
        heapq.heapify(self.expiries)
        heapq.heapify(self.topic_order)

    def lease_live(self, entry: tuple[int, str, int]) -> bool:
        a = self.activations.get(entry[1])
        return a is not None and a.epoch == entry[2] and a.deadline_ms == entry[0]

    def expiry_live(self, entry: tuple[int, str, int]) -> bool:
        box = self.mailboxes.get(entry[1])
        return box is not None and entry[2] in box.queue

    def topic_live(self, entry: tuple[int, str]) -> bool:
        log = self.topics.get(entry[1])
        return log is not None and bool(log) and log[-1].seq == entry[0]

    def index_snapshot(self) -> tuple[Any, ...]:
        """The derived indexes in a comparable form (tests check maintained == rebuilt)."""
        return (
            {n: sorted(a) for n, a in self.by_node.items() if a},
            sorted({e for e in self.lease_deadlines if self.lease_live(e)}),
            sorted({e for e in self.expiries if self.expiry_live(e)}),
            sorted(self.unplaced),
            {k: sorted(a) for k, a in self.unplaced_by_type.items() if a},
            {
                n: {k: c for k, c in sorted(load.items()) if c}
                for n, load in self.type_load.items()
                if any(load.values())
            },
            self.queued,
            self.subscription_count,
            sorted({e for e in self.topic_order if self.topic_live(e)}),
        )

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones (amortized O(1) per entry).

        Renewals, acks and publishes leave stale entries behind live ones, where the lazy pops
        at the top never reach them; without this a follower's heaps would grow with every
        renewal. Only live entries decide anything, so replicas that compact at different
        moments still agree."""
        if len(self.lease_deadlines) > 2 * len(self.activations) + 64:
            self.lease_deadlines = [e for e in self.lease_deadlines if self.lease_live(e)]
            heapq.heapify(self.lease_deadlines)
        if len(self.expiries) > 2 * self.queued + 64:
            self.expiries = [e for e in self.expiries if self.expiry_live(e)]
            heapq.heapify(self.expiries)
        if len(self.topic_order) > 2 * len(self.topics) + 64:
            self.topic_order = [e for e in self.topic_order if self.topic_live(e)]
            heapq.heapify(self.topic_order)

    # ---- maintained together with the indexes (``message_commands`` and ``activations``) ----

    def set_unplaced(self, address: str, waiting: bool) -> None:
        kind = split_address(address)[0]
        if waiting:
            self.unplaced[address] = None
            self.unplaced_by_type.setdefault(kind, {})[address] = None
            return
        self.unplaced.pop(address, None)
        by_type = self.unplaced_by_type.get(kind)
        if by_type is not None:
            by_type.pop(address, None)
            if not by_type:
                del self.unplaced_by_type[kind]

    def load_of(self, node: str) -> int:
        return len(self.by_node.get(node, ()))

    def type_load_of(self, node: str, kind: str) -> int:
        return self.type_load.get(node, {}).get(kind, 0)

    def next_deadline_ms(self) -> int | None:
        """The earliest lease end or message expiry (a tick is due then)."""
        while self.lease_deadlines and not self.lease_live(self.lease_deadlines[0]):
            heapq.heappop(self.lease_deadlines)
        while self.expiries and not self.expiry_live(self.expiries[0]):
            heapq.heappop(self.expiries)
        ds = [h[0][0] for h in (self.lease_deadlines, self.expiries) if h]
        return min(ds) if ds else None


def subscriber_address(subscriber: str, source: str) -> str:
    """Where a publish goes for one subscriber: ``TYPE/KEY`` as is, a type ``TYPE`` to
    ``TYPE/<source>`` (``TYPE/default`` for a publish without a source). Both paths use this."""
    return subscriber if "/" in subscriber else f"{subscriber}/{source or 'default'}"


def publish_targets(store: MessageStore, topic: str, source: str) -> list[str]:
    """The addresses a publish to ``topic`` reaches, each once, in sorted subscriber order."""
    out: dict[str, None] = {}
    for sub in sorted(store.subscriptions.get(topic, ())):
        out[subscriber_address(sub, source)] = None
    return list(out)


def in_delivery_order(box: Mailbox) -> list[Queued]:
    """A mailbox's messages in the order a handler takes them: the highest priority first, in
    sequence (commit) order within a priority, so FIFO per sender holds within a priority."""
    return sorted(box.queue.values(), key=lambda q: (-q.message.priority, q.seq))


def fence_error(store: MessageStore, address: str, epoch: int) -> str:
    """ "" if ``epoch`` is ``address``'s current activation, else why its write is fenced out."""
    a = store.activations.get(address)
    if a is None:
        return f"fenced: actor {address!r} has no activation (epoch {epoch} ended)"
    if a.epoch != epoch:
        return f"fenced: actor {address!r} is activated with epoch {a.epoch}, not {epoch}"
    return ""


def _token_error(what: str, value: str, max_chars: int) -> str:
    """ "" for an empty or well-formed id-like field (printable, no spaces, bounded)."""
    return limits.name_error(what, value, max_chars) if value else ""


def message_error(m: Message) -> str:
    """ "" if ``m`` may be sent (both paths, checked at the API and again in ``apply``), else why.

    A send names a ``target`` (``TYPE/KEY``) or a ``topic``, not both. Bounds: ids and types
    are printable names, the payload is bytes or a storable JSON value within
    ``MAX_MESSAGE_PAYLOAD_BYTES``, priority and TTL within their limits. O(size of the message).
    """
    why = _fields_error(m)
    if why:
        return why
    if bool(m.target) == bool(m.topic):
        return "a message names either a target (TYPE/KEY) or a topic (to publish), not both and not neither"
    if m.target:
        return limits.address_error("target", m.target)
    return limits.name_error("topic", m.topic, limits.MAX_TOPIC_CHARS)


def reply_error(m: Message) -> str:
    """ "" if ``m`` may be kept as a reply (``AckMessage.reply``): it answers a request
    (``correlation_id``) and is bounded like any message; it needs no target."""
    if not m.correlation_id:
        return "a reply names the request it answers (correlation_id)"
    return _fields_error(m) or (limits.address_error("target", m.target) if m.target else "")


def dead_letter_error(m: Message) -> str:
    """ "" if ``m`` may be recorded as a dead letter: any well-formed message, request, publish
    leg (target and topic both set: the subscriber it was for) or reply."""
    why = _fields_error(m)
    if why:
        return why
    if not (m.target or m.topic or m.correlation_id):
        return "a dead letter names its target, topic or the request it answers"
    if m.target:
        why = limits.address_error("target", m.target)
    return why or (limits.name_error("topic", m.topic, limits.MAX_TOPIC_CHARS) if m.topic else "")


def _fields_error(m: Message) -> str:
    """What ``message_error`` and ``reply_error`` check alike: ids, bounds, the payload."""
    why = (
        limits.name_error("message id", m.id, limits.MAX_MESSAGE_ID_CHARS)
        or _token_error("sender", m.sender, limits.MAX_ADDRESS_CHARS)
        or _token_error("message type", m.type, limits.MAX_MESSAGE_TYPE_CHARS)
        or _token_error("correlation id", m.correlation_id, limits.MAX_MESSAGE_ID_CHARS)
        or _token_error("trace id", m.trace_id, limits.MAX_MESSAGE_ID_CHARS)
        or _token_error("reply_to", m.reply_to, limits.MAX_ID_CHARS)
        or _token_error("source", m.source, limits.MAX_ADDRESS_CHARS)
    )
    if why:
        return why
    if not -limits.MAX_MESSAGE_PRIORITY <= m.priority <= limits.MAX_MESSAGE_PRIORITY:
        return (
            f"priority {m.priority} is outside -{limits.MAX_MESSAGE_PRIORITY}..{limits.MAX_MESSAGE_PRIORITY}"
        )
    if not 0 <= m.ttl_ms <= limits.MAX_MESSAGE_TTL_MS:
        return f"ttl_ms {m.ttl_ms} is outside 0..{limits.MAX_MESSAGE_TTL_MS}"
    if m.sent_ms < 0 or m.epoch < 0:
        return "sent_ms and epoch must not be negative"
    if not isinstance(m.payload, bytes):
        why = values.problem(m.payload)
        if why:
            return f"payload: {why}"
    size = limits.encoded_size(m.payload)
    if size > limits.MAX_MESSAGE_PAYLOAD_BYTES:
        return f"payload is {size} bytes encoded; the limit is {limits.MAX_MESSAGE_PAYLOAD_BYTES}"
    return ""


def reply_key(requester: str, correlation_id: str) -> str:
    """Where the reply to ``requester``'s request ``correlation_id`` is kept in ``replies``."""
    return f"{requester}\n{correlation_id}"
