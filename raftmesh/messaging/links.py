"""The sending side of the fast path: lanes of unacknowledged messages and one link per peer node.

Every message waits in its LANE ``(sender, target, priority)`` until the receiving node
acknowledges it; a lane is numbered from 1 and routed to one node (the target's
activation) at a time. A LINK is everything this node sends to one peer: the lanes
routed there, replies and topic broadcasts (unordered), the acks it owes the peer, and
the messages transmitted on the current stream (by tag) awaiting an answer.

Invariant of a lane: ``entries[:cursor]`` were transmitted on the current stream,
``entries[cursor:]`` wait to be (in order). A refusal with ``retry`` rewinds the lane to
the refused message (the receiver refuses everything after it as out of order, so the
lane is resent from there after a backoff); a new stream rewinds every lane of the link.
An answer to an older transmission of a message that was sent again is ignored unless it
says "delivered" (``Out.inflight`` counts the transmissions not yet answered).

No I/O here: the router moves frames (``raftmesh.messaging.router``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..consensus import limits
from ..consensus.commands import Message
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from .wire import message_to_pb

TO_ACTOR = 0
REPLY = 1
BROADCAST = 2

LaneKey = tuple[str, str, int]
"""(sender, target (a broadcast: ``#topic``), priority)."""


@dataclass(eq=False, slots=True)
class Out:
    """One message this node sends and keeps until its receiver answers."""

    msg: Message
    kind: int
    tag: int
    lane: Lane | None
    seq: int
    future: asyncio.Future[int] | None
    """Resolves to the epoch of the activation it was routed to once accepted (fast sends)."""
    inflight: int = 0
    waiting: bool = True
    link: Link | None = None
    encoded: pb.AgentMessage | None = None
    transmitted: bool = False
    """Sent on some stream at least once (its receiver may have taken it, unacknowledged)."""

    def to_pb(self) -> pb.AgentMessage:
        if self.encoded is None:
            self.encoded = message_to_pb(self.msg)
        return self.encoded


@dataclass(eq=False, slots=True)
class Lane:
    key: LaneKey
    entries: deque[Out] = field(default_factory=deque)
    cursor: int = 0
    next_seq: int = 1
    node: str = ""
    """Where the lane goes ("" while unresolved: the target has no activation known yet)."""
    epoch: int = 0
    link: Link | None = None
    backoff_s: float = 0.0
    held: bool = False
    """Waiting out a backoff after a refusal (not transmitted until the timer fires)."""

    @property
    def priority(self) -> int:
        return self.key[2]

    def base(self) -> int:
        return self.entries[0].seq if self.entries else self.next_seq

    def rewind_to(self, out: Out) -> None:
        """Everything from ``out`` on is sent again (the receiver refused it)."""
        i = self.entries.index(out)
        if i >= self.cursor:
            return
        for j in range(i, self.cursor):
            self.entries[j].waiting = True
        self.cursor = i

    def rewind_all(self) -> None:
        for j in range(self.cursor):
            e = self.entries[j]
            e.waiting = True
            e.inflight = 0
        self.cursor = 0

    def remove(self, out: Out) -> None:
        if self.entries and self.entries[0] is out:
            self.entries.popleft()
            if self.cursor > 0:
                self.cursor -= 1
            return
        i = self.entries.index(out)
        del self.entries[i]
        if i < self.cursor:
            self.cursor -= 1


class Link:
    """What this node sends to one peer (``local``: this node itself, no stream)."""

    def __init__(self, peer: str, local: bool) -> None:
        self.peer = peer
        self.local = local
        self.lanes: dict[Lane, None] = {}
        self.ready: dict[Lane, None] = {}
        self.unordered: deque[Out] = deque()
        self.inflight: dict[int, Out] = {}
        self.acks: list[pb.PeerAck] = []
        self.acks_room = asyncio.Event()
        """Clear while ``MAX_PENDING_ACKS`` acks wait to be sent: the stream's reader waits."""
        self.acks_room.set()
        self.wake = asyncio.Event()
        self.session = 0
        """Generation of the current stream (0: none open); a frame of an older one is ignored."""
        self.peer_incarnation = ""
        self.waiting_since: float | None = None
        """Loop time since which transmitted messages wait with nothing heard from the peer."""
        self.outstanding = 0
        """Messages routed here and not yet answered (backpressure: ``MAX_UNACKED_PER_PEER``)."""
        self.room = asyncio.Event()
        self.room.set()
        self.topics_out: list[str] | None = None
        """This node's client stream topics, to tell the peer in the next frame (None: told)."""
        self.peer_topics: frozenset[str] = frozenset()
        """The topics the peer has client streams for (its fast publishes' broadcasts go there)."""
        self.ping = False
        """Send a frame even if empty (this node holds the peer's messages unhandled: unacked)."""

    @property
    def connected(self) -> bool:
        return self.local or self.session > 0

    def kick(self) -> None:
        self.wake.set()

    def add_lane(self, lane: Lane) -> None:
        lane.link = self
        self.lanes[lane] = None
        self.outstanding += len(lane.entries)
        if lane.cursor < len(lane.entries) and not lane.held:
            self.ready[lane] = None
            self.wake.set()

    def drop_lane(self, lane: Lane) -> None:
        """The lane goes elsewhere: its transmissions here are forgotten."""
        self.lanes.pop(lane, None)
        self.ready.pop(lane, None)
        for e in lane.entries:
            if self.inflight.pop(e.tag, None) is not None:
                e.inflight = 0
            e.link = None
        self.outstanding -= len(lane.entries)
        self._room()
        lane.rewind_all()
        lane.link = None

    def queue(self, out: Out) -> None:
        """A new message for this peer (its lane, if any, is routed here)."""
        out.link = self
        self.outstanding += 1
        if self.outstanding >= limits.MAX_UNACKED_PER_PEER:
            self.room.clear()
        lane = out.lane
        if lane is None:
            self.unordered.append(out)
            self.wake.set()
        elif not lane.held:
            self.ready[lane] = None
            self.wake.set()

    def answered(self, out: Out) -> None:
        """``out`` is done with (delivered, or given up): it no longer counts here."""
        self.inflight.pop(out.tag, None)
        out.link = None
        self.outstanding -= 1
        self._room()

    def _room(self) -> None:
        if self.outstanding < limits.MAX_UNACKED_PER_PEER:
            self.room.set()

    def reset(self) -> None:
        """The stream ended: everything transmitted on it is sent again on the next one."""
        self.session = 0
        again = [o for o in self.inflight.values() if o.lane is None]
        self.inflight.clear()
        for o in again:
            o.inflight = 0
            o.waiting = True
        self.unordered.extendleft(reversed(again))
        for lane in self.lanes:
            lane.rewind_all()
            if lane.entries and not lane.held:
                self.ready[lane] = None
        self.acks.clear()  # the peer resends what it did not hear answered
        self.acks_room.set()
        self.waiting_since = None
        self.wake.set()

    def take(
        self, expired: Callable[[Out], bool], max_bytes: int = limits.MAX_PEER_FRAME_BYTES
    ) -> tuple[list[Out], list[pb.PeerAck]]:
        """The next frame's messages and acks (higher priority lanes first)."""
        acks = self.acks
        self.acks = []
        self.acks_room.set()
        outs: list[Out] = []
        size = 0
        cap = limits.MAX_PEER_FRAME_MESSAGES
        local = self.local
        while self.unordered and len(outs) < cap and size < max_bytes:
            o = self.unordered.popleft()
            if expired(o):
                continue
            self._sent(o)
            outs.append(o)
            if not local:
                size += o.to_pb().ByteSize()
        if self.ready and len(outs) < cap and size < max_bytes:
            lanes = list(self.ready)
            if len(lanes) > 1:
                lanes.sort(key=lambda ln: -ln.priority)
            for lane in lanes:
                entries = lane.entries
                while lane.cursor < len(entries) and len(outs) < cap and size < max_bytes:
                    o = entries[lane.cursor]
                    if expired(o):  # removed from the lane by the callback
                        continue
                    lane.cursor += 1
                    self._sent(o)
                    outs.append(o)
                    if not local:
                        size += o.to_pb().ByteSize()
                if lane.cursor >= len(entries):
                    self.ready.pop(lane, None)
                if len(outs) >= cap or size >= max_bytes:
                    break
        if self.ready or self.unordered:
            self.wake.set()  # more than one frame's worth: the writer comes round again
        return outs, acks

    def _sent(self, o: Out) -> None:
        o.inflight += 1
        o.waiting = False
        o.transmitted = True
        self.inflight[o.tag] = o

    def frame(self, node_id: str, incarnation: str, outs: list[Out], acks: list[pb.PeerAck]) -> pb.PeerFrame:
        f = pb.PeerFrame(node_id=node_id, incarnation=incarnation, acks=acks)
        self.ping = False
        if self.topics_out is not None:
            f.topics.extend(self.topics_out)
            f.topics_sent = True
            self.topics_out = None
        if outs:
            f.messages.extend([o.to_pb() for o in outs])
            f.tags.extend([o.tag for o in outs])
            f.lane_seqs.extend([o.seq for o in outs])
            f.lane_bases.extend([o.lane.base() if o.lane is not None else 0 for o in outs])
            f.kinds.extend([o.kind for o in outs])
        return f
