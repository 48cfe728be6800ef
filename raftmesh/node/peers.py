"""Node-to-node liveness: every node streams heartbeats to the leader over gRPC.

Heartbeats are sent from the node's event loop, so they prove that the agent
host can still run and report tasks (a Raft connection alone only proves that
pysyncobj's thread is alive). The leader's scheduler marks a member down when
its heartbeats stop (``node_down``); the member learns it from the replicated
state and registers again (rejoins) once it can reach the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc

from ..consensus import limits
from ..errors import clip_message
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from .proposer import now_ms

if TYPE_CHECKING:
    from .runtime import NodeRuntime

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 0.5
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
        node: NodeRuntime,
        identify: Callable[[grpc.aio.ServicerContext], str | None] = no_peer_identity,
    ) -> None:
        self.node = node
        self._identify = identify

    async def Heartbeat(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        node = self.node
        async for hb in request_iterator:
            why = limits.id_error("node_id", hb.node_id) or limits.id_error("incarnation", hb.incarnation)
            if why:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, clip_message(f"heartbeat: {why}"))
            proven = self._identify(context)
            if proven is not None and proven != hb.node_id:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"heartbeat for node {hb.node_id!r} from a peer authenticated as {proven!r}",
                )
            with node.raft.lock:
                m = node.raft.machine.state.members.get(hb.node_id)
                current = m is not None and m.incarnation == hb.incarnation
                up = current and m is not None and m.up
            if m is not None and not current:
                # The member's incarnation is not echoed: it is what a heartbeat has to know.
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"node {hb.node_id!r} is registered with another incarnation than "
                    f"{hb.incarnation!r}; this process is not that member (register again)",
                )
            leads = node.raft.is_leader
            if leads and up:
                node.scheduler.heard_from(hb.node_id)
            yield pb.HeartbeatResponse(
                leader=node.config.node_id if leads else "", term=node.raft.term, up=up
            )


class HeartbeatSender:
    """Keeps one heartbeat stream open to whichever node leads."""

    def __init__(self, node: NodeRuntime, running: Callable[[], int]) -> None:
        self.node = node
        self._running = running

    def _leader_grpc(self) -> str | None:
        addr = self.node.raft.leader_addr
        if addr is None:
            return None
        peer = self.node.config.peer_by_raft(addr)
        if peer is None or peer.id == self.node.config.node_id:
            return None
        return peer.grpc

    async def run(self) -> None:
        while True:
            target = self._leader_grpc()
            if target is None:
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
            await asyncio.sleep(0.1)

    async def _stream(self, target: str) -> None:
        """One stream to ``target``, cancelled when another node leads or acks stop coming.

        Without the cancel, a stream to a leader that was cut off by a partition waits
        forever for an answer, and this node never heartbeats the new leader (which then
        marks it down).
        """
        node = self.node
        loop = asyncio.get_running_loop()
        last_ack = loop.time()

        async def beats() -> AsyncIterator[pb.HeartbeatRequest]:
            while True:
                yield pb.HeartbeatRequest(
                    node_id=node.config.node_id,
                    incarnation=node.incarnation,
                    running=self._running(),
                    ts_ms=now_ms(),
                )
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)

        async with grpc.aio.insecure_channel(target) as channel:
            call = pb_grpc.PeerStub(channel).Heartbeat(beats())

            async def read() -> None:
                nonlocal last_ack
                async for _ack in call:
                    last_ack = loop.time()

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
