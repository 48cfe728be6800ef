"""Node-to-node liveness: every node streams heartbeats to the leader over gRPC.

Heartbeats are sent from the node's event loop, so they prove that the agent
host can still run and report tasks (a Raft connection alone only proves that
pysyncobj's thread is alive). The leader's scheduler marks a member down when
its heartbeats stop (``node_down``); the member learns it from the replicated
state and registers again (rejoins) once it can reach the cluster.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ..clock import Clock
from ..consensus import limits
from ..consensus.state import ClusterState
from ..errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from . import rpc
from .reads import ReadView
from .tls import Dial, plaintext

if TYPE_CHECKING:
    from ..messaging.router import MessageRouter

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 0.5
MAX_ACK_TIMES = 4096
"""Ack arrival times a sender keeps (about half an hour of heartbeats)."""
ACK_SILENCE_S = 2.0
"""A stream whose acks stop for this long is dropped and opened again (to whoever leads then)."""


def no_peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The node id a peer's transport credential proves, or None if the transport proves none.

    The gRPC transport is insecure today, so no heartbeat carries proof of who sent it: the
    leader checks what it can (a well-formed node id of a member, that member's current
    incarnation) and bounds what it keeps. Once peers authenticate (a certificate or
    cluster secret), pass ``PeerService`` an ``identify`` that returns the authenticated id.
    """
    return None


@dataclass(frozen=True)
class PeerAccess:
    """What the Peer service may use of its node."""

    node_id: str
    reads: ReadView
    is_leader: Callable[[], bool]
    term: Callable[[], int]
    heard_from: Callable[[str], None]
    """The leader's liveness (``raftmesh.node.liveness``)."""


class PeerService(pb_grpc.PeerServicer):
    """Answers heartbeats; the leader counts one only from an up member in its current incarnation.

    A heartbeat keeps a member from being marked down, so it is taken on these terms:
    the node id and incarnation are well formed (INVALID_ARGUMENT); if the transport proves
    an identity, it is the node id claimed (PERMISSION_DENIED); the member's incarnation in
    the replicated state is the one sent (FAILED_PRECONDITION: the sender is not the current
    process of that node, e.g. the old process of a restarted node; it must register again).
    An unknown or down node id is answered ``up=False`` and nothing is recorded (a node may
    heartbeat before its registration commits), so the leader's liveness maps only ever hold
    members.
    """

    def __init__(
        self,
        node: PeerAccess,
        identify: Callable[[grpc.aio.ServicerContext], str | None] = no_peer_identity,
        router: MessageRouter | None = None,
    ) -> None:
        self.node = node
        self._identify = identify
        self._router = router
        self._heartbeat_streams: set[asyncio.Task[object]] = set()

    def end_heartbeat_streams(self) -> None:
        """The node is stopping: end the heartbeat streams peers hold open to it. They never end
        by themselves, so the server's graceful stop would wait out its whole grace for them."""
        for task in self._heartbeat_streams:
            task.cancel()

    @rpc.stream
    async def Exchange(
        self, request_iterator: AsyncIterator[pb.PeerFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PeerFrame]:
        """Fast-path messages and acks with one peer node (``raftmesh.messaging.router``)."""
        if self._router is None:
            raise Unavailable("this node does not route agent messages")
        proven = self._identify(context)
        frames = request_iterator if proven is None else _proven(request_iterator, proven)
        async for frame in self._router.serve_exchange(frames, context):
            yield frame

    @rpc.stream
    async def Heartbeat(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        task = asyncio.current_task()
        if task is not None:
            self._heartbeat_streams.add(task)
        try:
            async for hb in self._heartbeats(request_iterator, context):
                yield hb
        finally:
            if task is not None:
                self._heartbeat_streams.discard(task)

    async def _heartbeats(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        node = self.node
        async for hb in request_iterator:
            why = limits.id_error("node_id", hb.node_id) or limits.id_error("incarnation", hb.incarnation)
            if why:
                raise InvalidArgument(f"heartbeat: {why}")
            proven = self._identify(context)
            if proven is not None and proven != hb.node_id:
                raise PermissionDenied(
                    f"heartbeat for node {hb.node_id!r} from a peer authenticated as {proven!r}"
                )
            known, current, up = node.reads.read(
                functools.partial(_membership, node_id=hb.node_id, incarnation=hb.incarnation)
            )
            if known and not current:
                # The member's incarnation is not echoed: it is what a heartbeat has to know.
                raise FailedPrecondition(
                    f"node {hb.node_id!r} is registered with another incarnation than "
                    f"{hb.incarnation!r}; this process is not that member (register again)"
                )
            leads = node.is_leader()
            if leads and up:
                node.heard_from(hb.node_id)
            yield pb.HeartbeatResponse(leader=node.node_id if leads else "", term=node.term(), up=up)


async def _proven(frames: AsyncIterator[pb.PeerFrame], proven: str) -> AsyncIterator[pb.PeerFrame]:
    """The frames of a stream whose transport proves ``proven``: each must say it is from it."""
    async for f in frames:
        if f.node_id != proven:
            raise PermissionDenied(
                f"peer frame for node {f.node_id!r} from a peer authenticated as {proven!r}"
            )
        yield f


def _membership(st: ClusterState, node_id: str, incarnation: str) -> tuple[bool, bool, bool]:
    """(a member, in this incarnation, up) for a heartbeat's sender."""
    m = st.members.get(node_id)
    return m is not None, m is not None and m.incarnation == incarnation, st.up_member(node_id, incarnation)


class HeartbeatSender:
    """Keeps one heartbeat stream open to whichever node leads."""

    def __init__(
        self,
        node_id: str,
        incarnation: str,
        leader_grpc: Callable[[], str | None],
        running: Callable[[], int],
        clock: Clock,
        dial: Dial = plaintext,
    ) -> None:
        self._dial = dial
        self._node_id = node_id
        self._incarnation = incarnation
        self._leader = leader_grpc
        self._running = running
        self._clock = clock
        self.counted = False
        """The leader's latest answer said it counts this node (an up member in this incarnation).

        Until then the leader places no work here: readiness (SERVING) waits for it."""
        self.acks = 0
        """Answers received from leaders since start."""
        self.ack_times: collections.deque[float] = collections.deque(maxlen=MAX_ACK_TIMES)
        """When the latest answers arrived (loop time): the gaps between them are what the
        leader's liveness sees of this node (a stalled loop shows as a long gap)."""
        self.metadata: tuple[tuple[str, str], ...] = ()
        """Sent on every heartbeat stream: this node's credential when tokens are on."""
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Send the next heartbeat now (this node just registered: the leader's answer to it
        is what makes the node counted, hence SERVING, without waiting out the interval)."""
        self._poked.set()

    def _leader_grpc(self) -> str | None:
        """The leader's gRPC address, or None if there is none or it is this node."""
        return self._leader()

    async def run(self) -> None:
        while True:
            target = self._leader_grpc()
            if target is None:
                self.counted = False
                await asyncio.sleep(0.1)
                continue
            try:
                await self._stream(target)
            except grpc.aio.AioRpcError as exc:
                log.debug("heartbeat stream to %s ended: %s", target, exc.code())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat stream to %s failed", target)
            self.counted = False  # until the next leader answers
            await asyncio.sleep(0.1)

    async def _stream(self, target: str) -> None:
        """One stream to ``target``, cancelled when another node leads or acks stop coming.

        Without the cancel, a stream to a leader that was cut off by a partition waits
        forever for an answer, and this node never heartbeats the new leader (which then
        marks it down).
        """
        loop = asyncio.get_running_loop()
        last_ack = loop.time()

        async def beats() -> AsyncIterator[pb.HeartbeatRequest]:
            while True:
                self._poked.clear()
                yield pb.HeartbeatRequest(
                    node_id=self._node_id,
                    incarnation=self._incarnation,
                    running=self._running(),
                    ts_ms=self._clock.now_ms(),
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_INTERVAL_S):
                        await self._poked.wait()

        async with self._dial(target, ()) as channel:
            call = pb_grpc.PeerStub(channel).Heartbeat(beats(), metadata=self.metadata)

            async def read() -> None:
                nonlocal last_ack
                async for ack in call:
                    last_ack = loop.time()
                    self.acks += 1
                    self.ack_times.append(last_ack)
                    self.counted = bool(ack.up and ack.leader)

            reader = asyncio.ensure_future(read())
            try:
                while not reader.done():
                    await asyncio.wait({reader}, timeout=0.2)
                    if self._leader_grpc() != target or loop.time() - last_ack > ACK_SILENCE_S:
                        call.cancel()
                        break
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
