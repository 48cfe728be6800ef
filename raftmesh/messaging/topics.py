"""Client ``Subscribe`` streams on one node: a topic's retained durable publishes, then live ones.

Durable publishes reach a stream as ``TopicPublished`` events (the message is read from the
replica's topic log by its seq); fast ones as the publishing node's broadcast. A stream is
registered before it reads the retained log and drops durable seqs it has already yielded,
so nothing is missed or repeated between the two. Each stream's backlog is bounded
(``MAX_TOPIC_STREAM_BACKLOG``): a client that falls that far behind is ended with
RESOURCE_EXHAUSTED instead of losing publishes silently.

Fast publishes from another node are best effort: a broadcast is not sent while the link to
this node is full, is dropped when it cannot be delivered before its TTL (both counted in the
publishing router's ``broadcasts_dropped``), and a publishing node sends none until it has
heard that this node streams the topic (about a round trip after the stream opened). The
stream is not ended for those: use durable publishes for a stream that must see every one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable

from ..consensus import limits
from ..consensus.commands import Message
from ..consensus.state import ClusterState
from ..errors import OutOfRange, ResourceExhausted
from ..node.reads import ReadView

_OVERFLOW = object()


class TopicStreams:
    def __init__(self, reads: ReadView, changed: Callable[[], None] = lambda: None) -> None:
        self._reads = reads
        self._changed = changed
        """Called when a topic gains its first stream or loses its last (peers are told)."""
        self._streams: dict[str, set[asyncio.Queue[object]]] = {}
        self.count = 0

    def has(self, topic: str) -> bool:
        return topic in self._streams

    def topics(self) -> list[str]:
        return sorted(self._streams)

    def _put(self, topic: str, item: object) -> None:
        for q in self._streams.get(topic, ()):
            if q.qsize() >= limits.MAX_TOPIC_STREAM_BACKLOG:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(_OVERFLOW)
            else:
                q.put_nowait(item)

    def fast(self, msg: Message) -> None:
        """A fast publish (from this node or a peer's broadcast)."""
        self._put(msg.topic, msg)

    def durable(self, topic: str, seq: int) -> None:
        """A durable publish was applied (``TopicPublished``)."""
        self._put(topic, seq)

    async def subscribe(self, topic: str, from_start: bool) -> AsyncIterator[Message]:
        if self.count >= limits.MAX_TOPIC_STREAMS:
            raise ResourceExhausted(
                f"this node serves {limits.MAX_TOPIC_STREAMS} subscribe streams already; "
                "subscribe on another node or retry later"
            )
        q: asyncio.Queue[object] = asyncio.Queue()
        first = topic not in self._streams
        self._streams.setdefault(topic, set()).add(q)
        self.count += 1
        if first:
            self._changed()
        try:
            retained = self._reads.read(lambda st: _retained(st, topic))
            last = retained[-1][0] if retained else 0
            if from_start:
                for _, m in retained:
                    yield m
            while True:
                item = await q.get()
                if item is _OVERFLOW:
                    raise ResourceExhausted(
                        f"this subscriber fell {limits.MAX_TOPIC_STREAM_BACKLOG} publishes behind "
                        f"on topic {topic!r}; subscribe again (from_start for the retained ones)"
                    )
                if isinstance(item, Message):
                    yield item
                    continue
                assert isinstance(item, int)
                if item <= last:
                    continue
                found = self._reads.read(functools.partial(_published, topic=topic, seq=item))
                if found is None:
                    raise OutOfRange(
                        f"publish {item} of topic {topic!r} left the retained log "
                        f"({limits.MAX_TOPIC_RETAINED} kept) before this stream read it; subscribe again"
                    )
                last = item
                yield found
        finally:
            subs = self._streams.get(topic)
            if subs is not None:
                subs.discard(q)
                if not subs:
                    del self._streams[topic]
                    self._changed()
            self.count -= 1


def _retained(st: ClusterState, topic: str) -> list[tuple[int, Message]]:
    return [(p.seq, p.message) for p in st.messages.topics.get(topic, ())]


def _published(st: ClusterState, topic: str, seq: int) -> Message | None:
    for p in reversed(st.messages.topics.get(topic, ())):
        if p.seq == seq:
            return p.message
        if p.seq < seq:
            break
    return None
