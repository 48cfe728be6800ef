"""One node process: Raft member, proposer, scheduler, agent host and gRPC server.

Threads: pysyncobj runs its own thread and applies the log there; everything
else runs on one asyncio (uvloop) loop. Applied events cross over with
``call_soon_threadsafe``; every read of the state goes through one ``ReadView``
(``raftmesh.node.reads``). The runtime wires the parts: each gRPC service gets a
narrow ``NodeAccess`` (propose, barrier, read), the scheduler and the agent host
get a reader, a writer and the clock, never the runtime itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (also exported as health.aio)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..agents import ActorHost, AgentDef, AgentHost, AgentNode, AgentRegistry, load_agents
from ..agents._setup import set_up, tear_down
from ..clock import SYSTEM_CLOCK, Clock
from ..consensus import limits
from ..consensus.commands import ActorOffer, AgentOffer, RegisterNode
from ..consensus.machine import StateMachine
from ..consensus.members import offer_error
from ..consensus.raft import RaftConfig, RaftMember
from ..consensus.results import Event, RunChanged, TaskChanged
from ..consensus.state import TERMINAL_RUN, ClusterState
from ..errors import InvalidArgument, RaftmeshError
from ..messaging.router import MessageRouter
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ..security.tokens import TokenAuthenticator, node_metadata
from ..storage.archive import AppliedArchive
from ..storage.audit import AuditArchive
from ..storage.snapshots import LmdbSnapshotIO
from ..tracing import SpanSink
from . import convert
from .access import NodeAccess
from .config import NodeConfig, is_loopback_host
from .coordination_service import KvService, LocksService
from .decoding import guarded
from .gc_policy import GcPolicy
from .interceptor import CallInterceptor
from .liveness import Liveness
from .lock_waits import LockWaits
from .messages_service import MessagesService
from .metrics import MetricsServer, NodeMetrics, NodeSources
from .peers import HeartbeatSender, PeerAccess, PeerService
from .proposer import Proposer
from .reads import ReadView
from .scheduler import Scheduler
from .service import ClusterService
from .tls import NodeChannels
from .watch import WatchHub

if TYPE_CHECKING:
    from ..dashboard.server import Dashboard

log = logging.getLogger(__name__)

_RUN_EVENTS = frozenset({TaskChanged, RunChanged})
"""Events only the watch hub, the metrics and the spans read: a fan-out's batch is thousands of
them, and the actor host, the router and the lock waits looked at each one (type checks per
event: ~2.5% of the leader's GIL samples in a 2,002-task fan-out's profile)."""

MESSAGES_DRAIN_S = 3.0
"""How long a stopping node spends recording the fast-path dead letters it still holds."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Let clients ping as often as they do (raftmesh.client._core.channel_options: about once
    # a second, idle connections too), so they notice a paused or cut-off node within ~1.5 s.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 100),
    # A peer that pings more often than that (raftmesh's clients cannot: grpc sends at most one a
    # second) is sent GOAWAY after 2 strikes, grpc's default: each ping is answered on the node's
    # C threads, so unlimited strikes let a stranger flood a 2-core node before authenticating.
    ("grpc.http2.max_ping_strikes", 2),
]


def other_events(events: list[Event]) -> list[Event] | None:
    """What the actor host, the router and the lock waits are given of an applied batch: ``[]``
    when the state was replaced (no events: a snapshot), else the events that are not a task's
    or run's change, or None when that leaves nothing (to them an empty list means a replaced
    state)."""
    if not events:
        return events
    rest = [e for e in events if type(e) not in _RUN_EVENTS]
    return rest or None


def offered_agents(loaded: AgentRegistry, names: tuple[str, ...]) -> AgentRegistry:
    """The agents this node offers: ``--agents`` picks among the loaded ones (all by default)."""
    missing = [n for n in names if n not in loaded.agents]
    if missing:
        raise InvalidArgument(
            f"--agents names {', '.join(map(repr, missing))}, which no loaded module declares; "
            f"loaded: {', '.join(loaded.names())} (load more with --agents-module)"
        )
    return loaded.subset(list(names)) if names else loaded


def agent_offers(registry: AgentRegistry) -> tuple[AgentOffer, ...]:
    """What this node registers for each agent type it offers (capabilities and policy).

    Checked here with the state machine's own rule, so a bad agent definition stops the
    node at start instead of having its registration rejected by the cluster forever.
    """
    offers = []
    for name in registry.names():
        d = registry.agents[name]
        offer = AgentOffer(
            name=name,
            capabilities=tuple(sorted(d.capabilities)),
            concurrency=d.concurrency,
            breaker_failures=d.breaker_failures,
            breaker_cooldown_ms=d.breaker_cooldown_ms,
            timeout_ms=d.timeout_ms,
            retries=d.retries,
        )
        why = offer_error(offer)
        if why:
            raise InvalidArgument(f"agent {name!r} cannot be offered: {why}")
        offers.append(offer)
    if len(offers) > limits.MAX_AGENT_TYPES_PER_NODE:
        raise InvalidArgument(f"a node may offer at most {limits.MAX_AGENT_TYPES_PER_NODE} agent types")
    return tuple(offers)


def actor_offers(registry: AgentRegistry) -> tuple[ActorOffer, ...]:
    """What this node registers for each actor type it can activate (``@raftmesh.actor``)."""
    if len(registry.actors) > limits.MAX_ACTOR_TYPES_PER_NODE:
        raise InvalidArgument(f"a node may offer at most {limits.MAX_ACTOR_TYPES_PER_NODE} actor types")
    return tuple(
        ActorOffer(d.name, tuple(sorted(d.capabilities)), d.max_activations)
        for d in (registry.actors[n] for n in sorted(registry.actors))
    )


class NodeRuntime:
    def __init__(
        self, config: NodeConfig, registry: AgentRegistry | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.registry = offered_agents(
            registry if registry is not None else load_agents(config.agents_modules), config.agents
        )
        self.offers = agent_offers(self.registry)
        self.actor_offers = actor_offers(self.registry)
        self._set_up: list[AgentDef] = []
        self.clock = clock
        self.incarnation = uuid.uuid4().hex[:12]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub = WatchHub()
        self.lock_waits = LockWaits()
        self._stopping = asyncio.Event()
        self._registered = False
        self.metrics = NodeMetrics(config.node_id)
        """Fed and served only with ``config.metrics`` (off: no observer, hook or sampler is wired)."""
        self.metrics_server: MetricsServer | None = None
        self.dashboard: Dashboard | None = None
        """The web dashboard with ``--http`` (None: off)."""
        # Read here, before the node starts: a bad tokens file stops it (exit 2, naming the entry).
        self.authenticator = (
            TokenAuthenticator(
                config.tokens_file,
                config.raft_password or "",
                peer_cn=config.tls is not None and config.tls.client_auth == "require",
            )
            if config.tokens_file
            else None
        )
        if config.tokens_file and config.tls is None and not is_loopback_host(config.grpc.rsplit(":", 1)[0]):
            log.warning(
                "tokens are on but TLS is off and --grpc %s is not a loopback address: bearer tokens and "
                "the node credential cross the network in clear text (anyone on the path can replay "
                "them); give the node --tls-cert/--tls-key/--tls-ca (raftmesh certs init)",
                config.grpc,
            )
        self.node_metadata = (
            node_metadata(config.node_id, config.raft_password or "") if config.tokens_file else ()
        )
        """What this node's own calls to other nodes carry (``authorization: Node ID:HMAC``)."""
        self.spans: SpanSink | None = None
        """Where run and attempt spans go (``raftmesh.node.otel``; set before ``run``); None: nowhere."""

    # ---- wiring ---------------------------------------------------------------

    def _on_applied(self, events: list[Event]) -> None:
        """Raft thread -> loop. Coalesces: one wake-up per applied batch."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._applied, events)

    def _applied(self, events: list[Event]) -> None:
        rest = other_events(events)
        if rest is not None:
            self.actors.applied(rest)
        self.scheduler.poke()
        self.host.poke()
        if rest is not None:
            self.router.applied(rest)
        if events:
            self.hub.publish(events)
            if rest:
                self.lock_waits.applied(rest)
            if self.metrics_server is not None:
                self.metrics.applied(events)
            if self.spans is not None:
                self._run_spans(events)

    def _run_spans(self, events: list[Event]) -> None:
        """The span of each run that ended in this batch, from the leader only (one per run)."""
        ended = [e.run_id for e in events if isinstance(e, RunChanged) and e.status in TERMINAL_RUN]
        if not ended or not self.raft.is_leader or self.spans is None:
            return
        spans = self.spans

        def copy(st: ClusterState) -> list[functools.partial[None]]:
            # Only the fields, under the apply lock: building and queueing spans happens after it.
            out = []
            for run_id in ended:
                r = st.runs.get(run_id)
                if r is not None and r.status in TERMINAL_RUN:
                    out.append(
                        functools.partial(
                            spans.run_ended,
                            r.trace_id,
                            r.run_id,
                            r.name,
                            r.status.value,
                            r.reason,
                            r.error,
                            r.created_ms,
                            r.finished_ms,
                            len(r.tasks),
                            r.usage,
                        )
                    )
            return out

        for emit in self.reads.read(copy):
            emit()

    def _on_restored(self) -> None:
        self.reads.restored()
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.hub.resync_all)
            loop.call_soon_threadsafe(self._applied, [])

    def agent_node(self, agent: str) -> AgentNode:
        """What a class agent's ``setup(node)`` receives on this node."""
        cfg = self.config
        return AgentNode(
            cfg.node_id,
            agent,
            os.path.join(cfg.data_dir, "agents", agent),
            cfg.grpc,
            tuple(p.grpc for p in cfg.peers),
            *((cfg.tls.ca, cfg.tls.cert, cfg.tls.key) if cfg.tls else ()),
        )

    async def run(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        # Class agents are set up before Raft or gRPC start: one that fails leaves nothing half-started.
        self._set_up = await set_up(self.registry, self.agent_node)
        try:
            await self._serve()
        finally:
            await tear_down(self._set_up)

    async def _serve(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        raft_cfg = RaftConfig(
            self_addr=cfg.raft,
            peer_addrs=tuple(p.raft for p in cfg.peers),
            journal_path=cfg.journal_path,
            snapshot_path=cfg.snapshot_path,
            password=cfg.raft_password,
            fsync=cfg.fsync,
            timings=cfg.timings,
        )
        machine = StateMachine()
        # RaftMember's constructor may load a snapshot (calling _on_restored) before its lock
        # exists for a ReadView: this placeholder has nothing cached and is replaced at once.
        self.reads = ReadView(threading.RLock(), lambda: machine.state)
        archive = AppliedArchive(cfg.data_dir) if cfg.archive_applied else None
        snapshot_io = (
            archive.snapshot_io(LmdbSnapshotIO(), os.path.exists(cfg.snapshot_path))
            if archive
            else LmdbSnapshotIO()
        )
        self.audit = (
            AuditArchive(cfg.data_dir, cfg.audit_max_runs, cfg.audit_max_bytes)
            if cfg.audit_max_runs
            else None
        )
        self.raft = RaftMember(
            raft_cfg, machine, self._on_applied, snapshot_io, self._on_restored, archive, self.audit
        )
        raft = self.raft
        self.reads = ReadView(raft.lock, lambda: raft.machine.state)
        raft.encode_state = self.reads.snapshot
        clock = self.clock
        self.proposer = Proposer(
            raft, self.loop, cfg.commit_timeout_s, cfg.propose_timeout_s, clock, node_id=cfg.node_id
        )
        self.scheduler = Scheduler(
            self.reads,
            self.proposer,
            lambda: raft.is_leader,
            cfg.node_id,
            Liveness(clock, cfg.node_id, cfg.node_down_after_s, raft_ages=self._raft_ages),
            clock,
            preempt_priority=cfg.preempt_priority,
            leader_term=lambda: raft.leader_term,
        )
        self.host = AgentHost(
            cfg.node_id,
            self.incarnation,
            self.registry,
            self.reads,
            self.proposer,
            clock,
            ready=lambda: raft.ready,
            thread_pool_size=cfg.agent_threads,
            process_pool_size=cfg.agent_processes,
            agent_node=self.agent_node,
        )
        self.host.spans = self.spans
        self.actors = ActorHost(
            cfg.node_id,
            self.incarnation,
            self.registry,
            self.reads,
            self.proposer,
            clock,
            ready=lambda: raft.ready,
        )
        self.proposer.start()
        channels = NodeChannels(cfg.tls)  # every node-to-node channel: TLS when this node has it
        self.router = MessageRouter(
            cfg.node_id, self.incarnation, self.reads, self.proposer, clock, self._grpc_of, dial=channels.dial
        )
        self.router.peer_metadata = self.node_metadata

        access = NodeAccess(
            # A leader this node can still hear (``leader_known``): pysyncobj keeps naming one whose
            # every link closed with a reset, and a read would wait out its deadline.
            self.proposer,
            self.reads,
            clock,
            lambda: raft.leader_known,
            cfg.propose_timeout_s,
        )
        peer_access = PeerAccess(
            cfg.node_id, self.reads, lambda: raft.is_leader, lambda: raft.term, self.scheduler.heard_from
        )
        # Every call: request and trace ids, authentication, the role check, metrics.
        self.interceptor = CallInterceptor(authenticator=self.authenticator)
        server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[self.interceptor])
        ours = guarded(server)  # undecodable request bytes answer INVALID_ARGUMENT
        pb_grpc.add_ClusterServicer_to_server(
            ClusterService(
                access,
                self.hub,
                self.status_pb,
                self.audit,
                cfg.node_id,
                auth=self.authenticator is not None,
                leader_id=self.leader_id,
            ),
            ours,
        )
        self.peer_service = PeerService(peer_access, router=self.router)
        pb_grpc.add_PeerServicer_to_server(self.peer_service, ours)
        pb_grpc.add_KvServicer_to_server(KvService(access, self.hub), ours)
        pb_grpc.add_LocksServicer_to_server(LocksService(access, self.lock_waits), ours)
        pb_grpc.add_MessagesServicer_to_server(MessagesService(access, self.router), ours)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["Cluster"].full_name,
                pb.DESCRIPTOR.services_by_name["Peer"].full_name,
                pb.DESCRIPTOR.services_by_name["Kv"].full_name,
                pb.DESCRIPTOR.services_by_name["Locks"].full_name,
                pb.DESCRIPTOR.services_by_name["Messages"].full_name,
                "grpc.health.v1.Health",
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self._start_metrics()  # before the gRPC port: a metrics port in use leaves nothing serving
        try:
            await self._start_dashboard()  # the same for the dashboard's (its calls wait for the port)
        except BaseException:
            if self.metrics_server is not None:
                self.metrics_server.close()
            raise
        port = (
            server.add_secure_port(cfg.grpc, cfg.tls.server_credentials())
            if cfg.tls is not None
            else server.add_insecure_port(cfg.grpc)
        )
        if port == 0:
            if self.metrics_server is not None:
                self.metrics_server.close()
            if self.dashboard is not None:
                await self.dashboard.close()
                self.dashboard = None
            raise RaftmeshError(f"cannot listen on {cfg.grpc} (address in use?)")
        await server.start()
        log.info("node %s serving gRPC on %s, Raft on %s", cfg.node_id, cfg.grpc, cfg.raft)
        self.heartbeats = HeartbeatSender(
            cfg.node_id,
            self.incarnation,
            self._leader_grpc,
            lambda: self.host.running,
            clock,
            dial=channels.dial,
        )
        self.heartbeats.metadata = self.node_metadata
        # ctx.send/request/publish of task agents and actors; actors take the router's fast messages
        self.host.attach_router(self.router)
        self.actors.attach_router(self.router)
        self.router.attach(self.actors)
        actors = asyncio.create_task(self.actors.run(), name="actors")
        tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.host.run(), name="host"),
            asyncio.create_task(self._register_loop(), name="register"),
            asyncio.create_task(self._health_loop(), name="health"),
            asyncio.create_task(self.heartbeats.run(), name="heartbeat"),
            asyncio.create_task(self.router.run(), name="messages"),
            asyncio.create_task(self._gc_loop(), name="gc"),
        ]
        if self.metrics_server is not None:
            tasks.append(asyncio.create_task(self.metrics.sample_leader(self.leader_id), name="metrics"))
        try:
            await self._stopping.wait()
        finally:
            log.info("node %s stopping", cfg.node_id)
            await self.health.enter_graceful_shutdown()
            if self.dashboard is not None:  # first: its streams are calls to the gRPC server
                await self.dashboard.close()
                self.dashboard = None
            self.peer_service.end_heartbeat_streams()
            await server.stop(1.0)
            if self.metrics_server is not None:
                await asyncio.to_thread(self.metrics_server.close)
                self.metrics_server = None
            # The actor host first (it gives what its inboxes hold back to their senders, which
            # resend them), then the router gives up what it still sends and records the dead letters: both
            # while the router and the proposer still run, so none is lost to the shutdown.
            actors.cancel()
            await asyncio.gather(actors, return_exceptions=True)
            await self.router.drain(MESSAGES_DRAIN_S)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.proposer.stop()
            await asyncio.to_thread(self.raft.destroy)
            if self.spans is not None:
                await asyncio.to_thread(self.spans.shutdown)
            if archive is not None:
                archive.close()
            if self.audit is not None:
                self.audit.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _start_dashboard(self) -> None:
        """With ``--http``: the web dashboard, a gateway to this node's own gRPC API (same loop)."""
        cfg = self.config
        if not cfg.http:
            return
        from ..dashboard.server import Dashboard, DashboardNode  # aiohttp only when it is on

        board = Dashboard(
            DashboardNode(
                cfg.node_id,
                cfg.grpc,
                cfg.tls,
                auth=self.authenticator is not None,
                leader=lambda: (self.leader_id(), self.raft.term),
                client_auth=cfg.dashboard_client_auth,
            ),
            max_streams=cfg.http_max_streams,
        )
        try:
            await board.start(cfg.http)
        except OSError as exc:
            await board.close()
            raise RaftmeshError(f"cannot serve the dashboard on --http {cfg.http}: {exc.strerror}") from exc
        self.dashboard = board

    def _start_metrics(self) -> None:
        """With ``--metrics``: feed the metrics from the parts made above and serve them."""
        if not self.config.metrics:
            return
        self.interceptor.observer = self.metrics
        self.proposer.on_batch = self.metrics.proposed
        self.host.on_attempt = self.metrics.attempt
        self.metrics.attach(
            NodeSources(
                node_id=self.config.node_id,
                raft=self.raft,
                read=self.reads.read,
                leader_id=self.leader_id,
                peer_ids=frozenset(p.id for p in self.config.peers),
                proposer=self.proposer,
                host=self.host,
                router=self.router,
                scheduler=self.scheduler,
                lock_waits=self.lock_waits,
            )
        )
        self.metrics_server = self.metrics.serve(self.config.metrics)
        log.info(
            "node %s serving Prometheus metrics on http://%s/metrics",
            self.config.node_id,
            self.config.metrics,
        )

    def _member_ok(self) -> bool:
        return self.reads.read(lambda st: st.up_member(self.config.node_id, self.incarnation))

    def _grpc_of(self, node_id: str) -> str | None:
        """A member's gRPC address (where the router dials it), from the replica."""

        def find(st: ClusterState) -> str | None:
            m = st.members.get(node_id)
            return m.grpc if m is not None and m.grpc else None

        return self.reads.read(find)

    def _leader_grpc(self) -> str | None:
        """Where heartbeats go: the leader's gRPC address, unless this node leads (or none does)."""
        addr = self.raft.leader_addr
        if addr is None:
            return None
        peer = self.config.peer_by_raft(addr)
        if peer is None or peer.id == self.config.node_id:
            return None
        return peer.grpc

    async def _register_loop(self) -> None:
        """Register this incarnation, and register again whenever the cluster marks it down (rejoin)."""
        generation = 0
        while True:
            cmd = RegisterNode(
                request_id=f"register-{self.config.node_id}-{self.incarnation}-{generation}",
                ts_ms=self.clock.now_ms(),
                node_id=self.config.node_id,
                grpc=self.config.grpc,
                raft=self.config.raft,
                agents=tuple(o.name for o in self.offers),
                slots=self.config.slots,
                incarnation=self.incarnation,
                offers=self.offers,
                actors=self.actor_offers,
                places=True,  # the agent host starts whatever the state says runs here
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
            self.actors.poke()
            self.heartbeats.poke()
            # Stay here while the state says we are up; a node_down sends us round again.
            while self.raft.ready is False or self._member_ok():
                await asyncio.sleep(0.5)
            log.warning("node %s is marked down in the cluster state; rejoining", self.config.node_id)
            generation += 1

    async def _gc_loop(self) -> None:
        """Full garbage collections walk only what is new (``raftmesh.node.gc_policy``)."""
        policy = GcPolicy()
        policy.install()
        try:
            while True:
                policy.tick()
                await asyncio.sleep(0.5)
        finally:
            policy.uninstall()

    async def _health_loop(self) -> None:
        """SERVING iff this incarnation is registered and up in this node's applied state, and
        the leader counts it (this node leads, or the leader's last heartbeat answer said so).

        Not just "registered once": a node the cluster marked down (paused, cut off) is
        NOT_SERVING until its re-registration is applied, and a restarted node is
        NOT_SERVING until its own new incarnation is, so readiness checks can rely on it.
        The leader places work only on members it has heard from since it became leader:
        without the last condition a run submitted right after "ready" could run wholly on
        the leader.
        """
        serving = None
        leader = self.raft.leader_addr
        while True:
            now_leader = self.raft.leader_addr
            if now_leader is not None:
                self.proposer.leader_seen()
            if now_leader != leader:
                # One line per change (a 0.05 s poll): the node logs then tell a chaos window's
                # elections (``scripts/chaos.py --keep-on-window``) without Raft debug logging.
                log.info(
                    "leader %s -> %s (term %d)", self._name(leader), self._name(now_leader), self.raft.term
                )
                leader = now_leader
                if now_leader is not None:
                    # Retry what failed during the election now, and let a new leader's
                    # scheduler start at once rather than at its next idle wake. Only a speed-up:
                    # a failure must not end this loop (readiness would freeze).
                    try:
                        self.proposer.leader_changed()
                        self.scheduler.poke()
                    except Exception:
                        log.exception("reacting to the new leader %s failed", now_leader)
            ok = (
                self._registered
                and self.raft.ready
                and self.raft.leader_known
                and self._member_ok()
                and (self.raft.is_leader or self.heartbeats.counted)
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
            await asyncio.sleep(0.05)  # a few attribute reads: checked often, so readiness shows at once

    # ---- status -----------------------------------------------------------------

    def _name(self, raft_addr: str | None) -> str:
        """The node id of a Raft address (the address itself if unknown, "none" for None)."""
        if raft_addr is None:
            return "none"
        if raft_addr == self.config.raft:
            return self.config.node_id
        peer = self.config.peer_by_raft(raft_addr)
        return peer.id if peer is not None else raft_addr

    def _raft_ages(self) -> dict[str, float]:
        """Member id -> seconds since this leader's last Raft answer from it (``Liveness``)."""
        out = {}
        for addr, age in self.raft.response_ages().items():
            peer = self.config.peer_by_raft(addr)
            if peer is not None:
                out[peer.id] = age
        return out

    def leader_id(self) -> str:
        addr = self.raft.leader_addr
        if addr is None:
            return ""
        peer = self.config.peer_by_raft(addr)
        return peer.id if peer else addr

    def status_pb(self, include_digest: bool = False) -> pb.ClusterStatusResponse:
        connected = self.raft.connected_addrs()

        now_ms = self.clock.now_ms()

        def view(st: ClusterState) -> tuple[list[pb.Member], int]:
            members = []
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
                        suspect=bool(m and m.up and m.suspect),
                        **(convert.member_extras_to_pb(st, m, now_ms) if m else {}),
                    )
                )
            return members, st.revision

        # The digest is taken first and the members after it: the revision reported is the
        # digest's (a later apply may show in the members, never the other way round).
        digest = ""
        if include_digest:
            revision, digest = self.reads.digest()
            members, _ = self.reads.read(view)
        else:
            members, revision = self.reads.read(view)
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
            messaging=self.router.counters(),
        )
