"""``Peer.Exchange`` streams: one per pair of nodes, dialled by the node with the smaller id.

Both ends greet with a frame naming the node and its incarnation; then each end's writer
sends, whenever its link has anything, one frame of everything queued (no timer: a lone
message goes at once, a burst shares frames), and its reader hands every frame it gets to
the router. A new stream with a peer replaces the old one (whose unanswered messages are
sent again on it); a dialled stream on which nothing is heard for ``ACK_SILENCE_S`` while
messages wait is cancelled and dialled again.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from ..consensus import limits
from ..consensus.state import ClusterState
from ..errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, RaftmeshError, Unavailable
from ..node.reads import ReadView
from ..node.tls import Dial, plaintext
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from .links import Link, Out

log = logging.getLogger(__name__)

_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009 (missing from grpc's type stubs)

ACK_SILENCE_S = 3.0
"""A stream with messages unanswered and nothing heard from the peer for this long is dropped
and dialled again (the peer's loop or the network is stuck; HTTP/2 alone may not notice)."""
HELLO_TIMEOUT_S = 5.0
"""How long either end of a new stream waits for the other's greeting (a stranger that opens a
stream and says nothing is not kept)."""
DIAL_MIN_S = 0.05
DIAL_MAX_S = 1.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # grpc 1.85 times an unanswered keepalive ping out after this, not keepalive_timeout_ms
    # (default 60 s: a frozen peer's stream would hang that long; see raftmesh.client._core)
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class PeerStreams:
    def __init__(
        self,
        node_id: str,
        incarnation: str,
        reads: ReadView,
        grpc_of: Callable[[str], str | None],
        take: Callable[[Link], tuple[list[Out], list[pb.PeerAck]]],
        on_frame: Callable[[Link, pb.PeerFrame], None],
        stats: dict[str, int],
        topics: Callable[[], list[str]],
        dial: Dial = plaintext,
    ) -> None:
        self._dial = dial
        self.node_id = node_id
        self.incarnation = incarnation
        self._reads = reads
        self._grpc_of = grpc_of
        self._take = take
        self._on_frame = on_frame
        self._stats = stats
        self._topics = topics
        self._sessions = itertools.count(1)
        self._dials: dict[str, asyncio.Task[None]] = {}
        self._aborts: dict[str, Callable[[], bool]] = {}
        """peer -> cancels the stream this node dialled to it."""
        self.metadata: tuple[tuple[str, str], ...] = ()
        """Sent on every stream this node dials: its node credential when tokens are on."""

    def dial(self, link: Link) -> None:
        """Keep a stream open to ``link.peer`` if this node is the one to dial it."""
        if self.node_id < link.peer and link.peer not in self._dials:
            # Lives as long as the link, not the call that first needed it: under no client's call.
            self._dials[link.peer] = asyncio.get_running_loop().create_task(
                self._dial_loop(link), name=f"peer stream {link.peer}", context=contextvars.Context()
            )

    async def stop(self) -> None:
        tasks = list(self._dials.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dials.clear()

    def check_silence(self, links: list[Link], now: float) -> None:
        for link in links:
            if link.session and link.waiting_since is not None and now - link.waiting_since > ACK_SILENCE_S:
                log.info(
                    "peer stream with %s: nothing heard for %.1fs; reconnecting", link.peer, ACK_SILENCE_S
                )
                abort = self._aborts.pop(link.peer, None)
                link.reset()
                if abort is not None:
                    abort()  # a write blocked on a dead connection returns at once

    def _open(self, link: Link, peer_incarnation: str) -> int:
        if link.session:
            link.reset()
        link.topics_out = self._topics()
        link.session = next(self._sessions)
        link.peer_incarnation = peer_incarnation
        self._stats["sessions_opened"] += 1
        link.kick()
        return link.session

    def _close(self, link: Link, session: int) -> None:
        if link.session == session:
            link.reset()

    async def _next_frame(self, link: Link, session: int) -> pb.PeerFrame | None:
        while link.session == session:
            outs, acks = self._take(link)
            if outs or acks or link.topics_out is not None or link.ping:
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
                        channel = self._dial(target, CHANNEL_OPTIONS)
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
        call = pb_grpc.PeerStub(channel).Exchange(metadata=self.metadata)
        try:
            await call.write(pb.PeerFrame(node_id=self.node_id, incarnation=self.incarnation))
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_S):
                    hello = await call.read()
            except TimeoutError:
                raise Unavailable(f"{link.peer} did not greet within {HELLO_TIMEOUT_S:g}s") from None
            if hello is _EOF:
                return False
            assert isinstance(hello, pb.PeerFrame)
            if hello.node_id != link.peer:
                raise Unavailable(f"the node at {link.peer}'s address says it is {hello.node_id!r}")
            session = self._open(link, hello.incarnation)
            self._aborts[link.peer] = call.cancel

            async def read() -> None:
                while True:
                    f = await call.read()
                    if f is _EOF or link.session != session:
                        return
                    assert isinstance(f, pb.PeerFrame)
                    self._on_frame(link, f)
                    await link.acks_room.wait()

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
            if self._aborts.get(link.peer) == call.cancel:
                del self._aborts[link.peer]
            call.cancel()

    async def serve(
        self, request_iterator: AsyncIterator[pb.PeerFrame], link_of: Callable[[str], Link]
    ) -> AsyncIterator[pb.PeerFrame]:
        """The stream a peer dialled: it must be a member in the incarnation it names, with the
        smaller id of the two."""
        frames = request_iterator.__aiter__()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                first = await frames.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"peer stream: a stream opens with a frame naming the node within {HELLO_TIMEOUT_S:g}s"
            ) from None
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
        link = link_of(peer)
        session = self._open(link, first.incarnation)
        failed: list[BaseException] = []

        async def read() -> None:
            try:
                async for f in frames:
                    if link.session != session:
                        return
                    self._on_frame(link, f)
                    await link.acks_room.wait()
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
            await asyncio.gather(reader, return_exceptions=True)
            self._close(link, session)


def _member(st: ClusterState, node: str, incarnation: str) -> tuple[bool, bool]:
    m = st.members.get(node)
    return m is not None, m is not None and m.incarnation == incarnation
