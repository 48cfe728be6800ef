"""One node process: Raft member, proposer, scheduler, agent host and gRPC server.

Threads: pysyncobj runs its own thread and applies the log there; everything
else runs on one asyncio (uvloop) loop. Applied events cross over with
``call_soon_threadsafe``; reads of the state take ``raft.lock``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (also exported as health.aio)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..agents import AgentRegistry, default_registry
from ..consensus.commands import RegisterNode
from ..consensus.locks import LockOutcome
from ..consensus.machine import StateMachine
from ..consensus.raft import RaftConfig, RaftMember
from ..consensus.results import Event, LockChanged
from ..errors import RaftmeshError
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ..storage.archive import AppliedArchive
from ..storage.snapshots import LmdbSnapshotIO
from .config import NodeConfig
from .coordination_service import KvService, LocksService
from .decoding import guarded
from .host import AgentHost
from .peers import HeartbeatSender, PeerService
from .proposer import Proposer, now_ms
from .scheduler import Scheduler
from .service import ClusterService
from .watch import WatchHub

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Let clients ping every second, so they notice a paused or cut-off node within seconds.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]


class NodeRuntime:
    def __init__(self, config: NodeConfig, registry: AgentRegistry | None = None) -> None:
        self.config = config
        reg = registry or default_registry()
        self.registry = reg.subset(list(config.agents)) if config.agents else reg
        self.incarnation = uuid.uuid4().hex[:12]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub = WatchHub()
        self._stopping = asyncio.Event()
        self._registered = False
        self._lock_waiters: dict[str, asyncio.Future[LockOutcome]] = {}

    # ---- wiring ---------------------------------------------------------------

    def _on_applied(self, events: list[Event]) -> None:
        """Raft thread -> loop. Coalesces: one wake-up per applied batch."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._applied, events)

    def _applied(self, events: list[Event]) -> None:
        self.scheduler.poke()
        self.host.poke()
        if events:
            self.hub.publish(events)
            if self._lock_waiters:
                for ev in events:
                    if isinstance(ev, LockChanged):
                        fut = self._lock_waiters.get(ev.request_id)
                        if fut is not None and not fut.done():
                            fut.set_result(
                                LockOutcome(
                                    ev.request_id, ev.owner, ev.granted, ev.token, ev.code, ev.message
                                )
                            )

    # ---- lock waits (used by the Locks service) ------------------------------------

    def lock_waiter(self, request_id: str) -> asyncio.Future[LockOutcome]:
        fut = self._lock_waiters.get(request_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._lock_waiters[request_id] = fut
        return fut

    def drop_lock_waiter(self, request_id: str) -> None:
        self._lock_waiters.pop(request_id, None)

    def lock_outcome(self, request_id: str) -> LockOutcome | None:
        with self.raft.lock:
            return self.raft.machine.state.locks.status(request_id)

    def lock_deadline(self, request_id: str) -> int:
        with self.raft.lock:
            held = self.raft.machine.state.locks.holder_of(request_id)
        return held[1].deadline_ms if held is not None else 0

    def _on_restored(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.hub.resync_all)
            loop.call_soon_threadsafe(self._applied, [])

    async def run(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        os.makedirs(cfg.data_dir, exist_ok=True)
        raft_cfg = RaftConfig(
            self_addr=cfg.raft,
            peer_addrs=tuple(p.raft for p in cfg.peers),
            journal_path=cfg.journal_path,
            snapshot_path=cfg.snapshot_path,
            password=cfg.raft_password,
            fsync=cfg.fsync,
            timings=cfg.timings,
        )
        archive = AppliedArchive(cfg.data_dir) if cfg.archive_applied else None
        snapshot_io = (
            archive.snapshot_io(LmdbSnapshotIO(), os.path.exists(cfg.snapshot_path))
            if archive
            else LmdbSnapshotIO()
        )
        self.raft = RaftMember(
            raft_cfg, StateMachine(), self._on_applied, snapshot_io, self._on_restored, archive
        )
        self.proposer = Proposer(self.raft, self.loop, cfg.commit_timeout_s, cfg.propose_timeout_s)
        self.scheduler = Scheduler(self.raft, self.proposer, cfg.node_id, cfg.node_down_after_s)
        self.host = AgentHost(cfg.node_id, self.incarnation, self.registry, self.raft, self.proposer)
        self.proposer.start()

        server = grpc.aio.server(options=GRPC_OPTIONS)
        ours = guarded(server)  # undecodable request bytes answer INVALID_ARGUMENT
        pb_grpc.add_ClusterServicer_to_server(ClusterService(self), ours)
        pb_grpc.add_PeerServicer_to_server(PeerService(self), ours)
        pb_grpc.add_KvServicer_to_server(KvService(self), ours)
        pb_grpc.add_LocksServicer_to_server(LocksService(self), ours)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["Cluster"].full_name,
                pb.DESCRIPTOR.services_by_name["Peer"].full_name,
                pb.DESCRIPTOR.services_by_name["Kv"].full_name,
                pb.DESCRIPTOR.services_by_name["Locks"].full_name,
                "grpc.health.v1.Health",
                reflection.SERVICE_NAME,
            ),
            server,
        )
        port = server.add_insecure_port(cfg.grpc)
        if port == 0:
            raise RaftmeshError(f"cannot listen on {cfg.grpc} (address in use?)")
        await server.start()
        log.info("node %s serving gRPC on %s, Raft on %s", cfg.node_id, cfg.grpc, cfg.raft)
        tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.host.run(), name="host"),
            asyncio.create_task(self._register_loop(), name="register"),
            asyncio.create_task(self._health_loop(), name="health"),
            asyncio.create_task(HeartbeatSender(self, lambda: self.host.running).run(), name="heartbeat"),
        ]
        try:
            await self._stopping.wait()
        finally:
            log.info("node %s stopping", cfg.node_id)
            await self.health.enter_graceful_shutdown()
            await server.stop(1.0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.proposer.stop()
            await asyncio.to_thread(self.raft.destroy)
            if archive is not None:
                archive.close()

    def stop(self) -> None:
        self._stopping.set()

    def _member_ok(self) -> bool:
        with self.raft.lock:
            m = self.raft.machine.state.members.get(self.config.node_id)
            return m is not None and m.up and m.incarnation == self.incarnation

    async def _register_loop(self) -> None:
        """Register this incarnation, and register again whenever the cluster marks it down (rejoin)."""
        generation = 0
        while True:
            cmd = RegisterNode(
                request_id=f"register-{self.config.node_id}-{self.incarnation}-{generation}",
                ts_ms=now_ms(),
                node_id=self.config.node_id,
                grpc=self.config.grpc,
                raft=self.config.raft,
                agents=tuple(self.registry.names()),
                slots=self.config.slots,
                incarnation=self.incarnation,
            )
            while True:
                try:
                    res = await self.proposer.propose(cmd, timeout_s=10.0)
                    if res.ok:
                        break
                    log.error("registration rejected: %s %s", res.code, res.message)
                except RaftmeshError as exc:
                    log.info("registration pending: %s", exc)
                await asyncio.sleep(0.2)
            self._registered = True
            log.info("node %s registered (incarnation %s)", self.config.node_id, self.incarnation)
            self.host.poke()
            # Stay here while the state says we are up; a node_down sends us round again.
            while self.raft.ready is False or self._member_ok():
                await asyncio.sleep(0.5)
            log.warning("node %s is marked down in the cluster state; rejoining", self.config.node_id)
            generation += 1

    async def _health_loop(self) -> None:
        """SERVING iff this incarnation is registered and up in this node's applied state.

        Not just "registered once": a node the cluster marked down (paused, cut off) is
        NOT_SERVING until its re-registration is applied, and a restarted node is
        NOT_SERVING until its own new incarnation is, so readiness checks can rely on it.
        """
        serving = None
        while True:
            ok = (
                self._registered
                and self.raft.ready
                and self.raft.leader_addr is not None
                and self._member_ok()
            )
            if ok != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set("", status)
                await self.health.set("raftmesh.v1.Cluster", status)
                serving = ok
            await asyncio.sleep(0.2)

    # ---- status -----------------------------------------------------------------

    def leader_id(self) -> str:
        addr = self.raft.leader_addr
        if addr is None:
            return ""
        peer = self.config.peer_by_raft(addr)
        return peer.id if peer else addr

    def status_pb(self, include_digest: bool = False) -> pb.ClusterStatusResponse:
        connected = self.raft.connected_addrs()
        members = []
        with self.raft.lock:
            st = self.raft.machine.state
            for p in self.config.peers:
                m = st.members.get(p.id)
                members.append(
                    pb.Member(
                        id=p.id,
                        grpc=p.grpc,
                        raft=p.raft,
                        up=bool(m and m.up),
                        agents=list(m.agents) if m else [],
                        slots=m.slots if m else 0,
                        running=len(st.running.get(p.id, ())),
                        connected=p.raft in connected or p.id == self.config.node_id,
                    )
                )
            revision = st.revision
            digest = st.digest() if include_digest else ""
        return pb.ClusterStatusResponse(
            leader=self.leader_id(),
            term=self.raft.term,
            members=members,
            node_id=self.config.node_id,
            commit_index=self.raft.commit_index,
            last_applied=self.raft.last_applied,
            revision=revision,
            has_quorum=self.raft.has_quorum,
            digest=digest,
            snapshots_loaded=self.raft.snapshots_loaded,
            log_entries=self.raft.log_entries,
        )
