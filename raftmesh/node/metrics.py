"""A node's Prometheus metrics: one registry per node, served over HTTP (``--metrics ADDR``).

Three sources, so ``apply`` (the Raft thread) does no metrics work beyond O(1) integer
counters the Raft member and the proposer already keep:
- counters fed on the node's loop: applied events (``NodeRuntime._applied``: task and run
  transitions, lock waits, KV writes, durable messages), every finished gRPC call (this is
  the interceptor's ``CallObserver``), every attempt this node ran (``AgentHost``), and a
  sampler that counts leader changes;
- a ``Collector`` that reads gauges at scrape time: Raft (term, leader, commit/applied
  index, snapshots), the proposer's queue, and cheap sizes of the replicated state through
  ``ReadView`` (indexes and small maps, never the runs themselves);
- the router's own message counters, copied at scrape time.

Counters fed by applied events count what the whole cluster did (every node applies every
command), so each node reports the same figure; aggregate them with ``max``, not ``sum``.
Attempts, gRPC calls, proposals and messages are this node's own.

Cardinality is bounded: labels are statuses, gRPC services, methods and codes (fixed sets),
node ids (the static peer list) and agent types (at most ``MAX_AGENT_TYPE_LABELS`` per
node; any further type reports as ``"other"``). Never a run id, task id, key or address.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

from ..consensus import breakers
from ..consensus.commands import Usage
from ..consensus.raft.member import APPLY_BUCKETS
from ..consensus.results import (
    Event,
    KvChanged,
    LockChanged,
    MessageQueued,
    RunChanged,
    TaskChanged,
    TopicPublished,
)
from ..consensus.state import ClusterState, RunStatus, TaskStatus
from ..errors import InvalidArgument
from ..security.roles import METHOD_ROLES

MAX_AGENT_TYPE_LABELS = 512
"""Distinct ``agent`` label values one node's metrics keep; later types report as ``other``."""

OTHER = "other"
MAX_SCRAPES_IN_FLIGHT = 8
"""HTTP requests one node's metrics endpoint serves at once; connections beyond are closed at accept."""
SCRAPE_IO_TIMEOUT_S = 10.0
"""A metrics client that sends or reads nothing for this long is disconnected (its slot freed)."""
LEADER_SAMPLE_S = 0.25
"""How often the leader-change sampler looks at Raft (changes faster than this count once)."""

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ATTEMPT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

_METHODS = frozenset(METHOD_ROLES)


def parse_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"--metrics {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9100")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def split_method(full: str) -> tuple[str, str]:
    """``/raftmesh.v1.Cluster/SubmitRun`` -> (``raftmesh.v1.Cluster``, ``SubmitRun``); a method the
    node does not serve (never labelled: a stranger chooses it) -> (``unknown``, ``unknown``)."""
    if full not in _METHODS:
        return "unknown", "unknown"
    _, service, method = full.split("/", 2)
    return service, method


class AgentLabels:
    """Bounds the ``agent`` label: the first ``limit`` types seen keep their name."""

    def __init__(self, limit: int = MAX_AGENT_TYPE_LABELS) -> None:
        self._limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, agent: str) -> str:
        if agent in self._known:
            return agent
        with self._lock:
            if len(self._known) < self._limit:
                self._known.add(agent)
                return agent
        return OTHER


@dataclass(frozen=True)
class NodeSources:
    """What the scrape-time collector reads (``NodeRuntime`` fills it; tests may pass parts)."""

    node_id: str
    raft: Any
    """``RaftMember``: term, leader, indexes, snapshot counters (attribute reads, no lock)."""
    read: Callable[[Callable[[ClusterState], Any]], Any]
    """``ReadView.read``: ``fn(state)`` under the apply lock."""
    leader_id: Callable[[], str]
    peer_ids: frozenset[str] = frozenset()
    """The configured members: a leader id outside them (never expected) is labelled ``unknown``."""
    proposer: Any = None
    host: Any = None
    router: Any = None
    scheduler: Any = None
    lock_waits: Any = None


class LeaderChanges:
    """Leader changes among samples: a sample with no leader (an election under way) is no
    change by itself, so X -> none -> Y counts once and X -> none -> X (X re-elected) not at all."""

    def __init__(self) -> None:
        self._last: str | None = None

    def see(self, leader: str | None) -> bool:
        if not leader or leader == self._last:
            return False
        self._last = leader
        return True


class NodeMetrics:
    """One node's registry and the instruments the node feeds (a ``CallObserver``)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        # No ``*_created`` series: they double the output and no dashboard reads them (this
        # switch is process-wide; nothing else in a node uses prometheus_client).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.agent_label = AgentLabels()
        r = self.registry
        self.grpc_handled = Counter(
            "raftmesh_grpc_server_handled",
            "gRPC calls this node finished, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "raftmesh_grpc_server_handling_seconds",
            "How long this node took to finish a gRPC call (a stream: its whole life).",
            ["grpc_service", "grpc_method"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.task_transitions = Counter(
            "raftmesh_task_transitions",
            "Applied task status changes, by the new status (cluster-wide: every node counts all).",
            ["status"],
            registry=r,
        )
        self.run_transitions = Counter(
            "raftmesh_run_transitions",
            "Applied run status changes, by the new status (cluster-wide).",
            ["status"],
            registry=r,
        )
        self.task_retries = Counter(
            "raftmesh_task_retries",
            "Attempts started after a task's first (retries, preemption re-runs; cluster-wide).",
            registry=r,
        )
        self.lock_waits = Counter(
            "raftmesh_lock_waits",
            "Lock acquires that waited and then ended, by outcome (granted or the code; cluster-wide).",
            ["outcome"],
            registry=r,
        )
        self.kv_ops = Counter(
            "raftmesh_kv_operations",
            "Applied KV writes, by operation (put, delete; cluster-wide).",
            ["op"],
            registry=r,
        )
        self.messages_queued = Counter(
            "raftmesh_messages_queued",
            "Applied durable message enqueues (one per destination batch; cluster-wide).",
            registry=r,
        )
        self.topic_publishes = Counter(
            "raftmesh_topic_publishes",
            "Applied durable topic publishes (cluster-wide).",
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "raftmesh_attempt_duration_seconds",
            "Task attempts this node ran, from start to report, by agent type and outcome.",
            ["agent", "outcome"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.agent_tokens = Counter(
            "raftmesh_agent_tokens",
            "Model tokens the attempts this node ran reported, by agent type and direction.",
            ["agent", "direction"],
            registry=r,
        )
        self.agent_cost = Counter(
            "raftmesh_agent_cost",
            "Cost the attempts this node ran reported (the agents' unit, what run budgets count).",
            ["agent"],
            registry=r,
        )
        self.batch_commands = Histogram(
            "raftmesh_proposer_batch_commands",
            "Commands per log entry this node proposed (the proposer batches them).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.entry_bytes = Histogram(
            "raftmesh_raft_proposed_entry_bytes",
            "Size of each log entry (a batch of commands) this node proposed.",
            buckets=BYTES_BUCKETS,
            registry=r,
        )
        self.leader_changes = Counter(
            "raftmesh_raft_leader_changes",
            "Times this node saw the Raft leader change (including to and from none).",
            registry=r,
        )
        self._sources: NodeSources | None = None
        # Label children by status, looked up once: every applied task change increments one.
        self._task_children: dict[TaskStatus, Any] = {}
        self._run_children: dict[RunStatus, Any] = {}

    # ---- feeding ----------------------------------------------------------------------

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """``CallObserver``: one finished gRPC call."""
        service, name = split_method(method)
        self.grpc_handled.labels(service, name, code.name).inc()
        self.grpc_seconds.labels(service, name).observe(seconds)

    def applied(self, events: Iterable[Event]) -> None:
        """Applied events, on the node's loop: O(events), no state reads."""
        tasks, runs = self._task_children, self._run_children
        for ev in events:
            if isinstance(ev, TaskChanged):
                child = tasks.get(ev.status)
                if child is None:
                    child = tasks[ev.status] = self.task_transitions.labels(ev.status.value)
                child.inc()
                if ev.status is TaskStatus.RUNNING and ev.attempt > 1:
                    self.task_retries.inc()
            elif isinstance(ev, RunChanged):
                child = runs.get(ev.status)
                if child is None:
                    child = runs[ev.status] = self.run_transitions.labels(ev.status.value)
                child.inc()
            elif isinstance(ev, KvChanged):
                self.kv_ops.labels(ev.event.kind).inc()
            elif isinstance(ev, LockChanged):
                self.lock_waits.labels("granted" if ev.granted else ev.code.name).inc()
            elif isinstance(ev, MessageQueued):
                self.messages_queued.inc()
            elif isinstance(ev, TopicPublished):
                self.topic_publishes.inc()

    def attempt(self, agent: str, ok: bool, seconds: float, usage: Usage) -> None:
        """One attempt this node ran was reported (``AgentHost.on_attempt``)."""
        label = self.agent_label(agent)
        self.attempt_seconds.labels(label, "succeeded" if ok else "failed").observe(seconds)
        if usage.tokens_in:
            self.agent_tokens.labels(label, "in").inc(usage.tokens_in)
        if usage.tokens_out:
            self.agent_tokens.labels(label, "out").inc(usage.tokens_out)
        if usage.cost > 0:
            self.agent_cost.labels(label).inc(usage.cost)

    def proposed(self, commands: int, payload_bytes: int) -> None:
        """One log entry the proposer sent (``Proposer.on_batch``)."""
        self.batch_commands.observe(commands)
        self.entry_bytes.observe(payload_bytes)

    def attach(self, sources: NodeSources) -> None:
        """The node's parts the scrape-time collector reads (once the runtime has made them)."""
        if self._sources is not None:
            raise RuntimeError("NodeMetrics.attach: already attached")
        self._sources = sources
        self.registry.register(_StateCollector(self, sources))

    async def sample_leader(
        self, leader: Callable[[], str | None], period_s: float = LEADER_SAMPLE_S
    ) -> None:
        """Counts leader changes by looking every ``period_s`` (pysyncobj has no election hook).

        A node starts knowing no leader, so the first leader it learns of counts as a change."""
        seen = LeaderChanges()
        while True:
            if seen.see(leader()):
                self.leader_changes.inc()
            await asyncio.sleep(period_s)

    def exposition(self) -> bytes:
        """The text format, as the HTTP endpoint serves it."""
        return generate_latest(self.registry)

    def serve(self, addr: str) -> MetricsServer:
        """Serve ``/metrics`` on ``addr`` from a thread of this process (never a fork)."""
        host, port = parse_address(addr)

        class Server(_BoundedServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            server = make_server(
                host, port, make_wsgi_app(self.registry), Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise InvalidArgument(f"--metrics {addr}: cannot listen ({exc.strerror or exc})") from exc
        thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        return MetricsServer(server, thread)


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_IO_TIMEOUT_S  # a client that stalls mid-request gives its thread back

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class _BoundedServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-request server, with at most ``MAX_SCRAPES_IN_FLIGHT``
    requests at once (anyone who reaches the port could otherwise start unbounded threads)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES_IN_FLIGHT)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


@dataclass
class _StateSizes:
    """What one short read of the replica yields (all O(members + agent types + priorities))."""

    revision: int = 0
    runs_active: int = 0
    runs_retained_finished: int = 0
    ready: int = 0
    running: int = 0
    waiting_approval: int = 0
    dead_letters: int = 0
    members_up: int = 0
    members_down: int = 0
    slots: int = 0
    node_slots: int = 0
    node_running: int = 0
    running_by_agent: dict[str, int] | None = None
    breakers: dict[tuple[str, str], int] | None = None


def _sizes(st: ClusterState, node_id: str) -> _StateSizes:
    s = _StateSizes()
    s.revision = st.revision
    s.runs_retained_finished = len(st.finished)
    s.runs_active = len(st.runs) - s.runs_retained_finished
    s.ready = sum(len(q) for q in st.ready.values())
    s.running = sum(len(r) for r in st.running.values())
    s.node_running = len(st.running.get(node_id, ()))
    s.waiting_approval = len(st.open_gates)
    s.dead_letters = len(st.dead_letters)
    by_agent: dict[str, int] = {}
    for (_node, agent), n in st.running_agent.items():
        by_agent[agent] = by_agent.get(agent, 0) + n
    s.running_by_agent = by_agent
    brk: dict[tuple[str, str], int] = {}
    for mid, m in st.members.items():
        if m.up:
            s.members_up += 1
            s.slots += m.slots
        else:
            s.members_down += 1
        if mid == node_id:
            s.node_slots = m.slots
        for agent, b in m.breakers.items():
            state = breakers.state_of(b, st.time_ms).value
            brk[(agent, state)] = brk.get((agent, state), 0) + 1
    s.breakers = brk
    return s


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _StateCollector(Collector):
    """Gauges read at scrape time (one short read of the replica under the apply lock)."""

    def __init__(self, metrics: NodeMetrics, sources: NodeSources) -> None:
        self._m = metrics
        self._s = sources

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: the registry must not scrape the node while registering

    def collect(self) -> Iterator[Metric]:
        src = self._s
        raft = src.raft
        node = src.node_id
        yield _gauge("raftmesh_raft_term", "The Raft term this node is in.", raft.term)
        yield _gauge("raftmesh_raft_is_leader", "1 if this node is the Raft leader.", int(raft.is_leader))
        leader = GaugeMetricFamily(
            "raftmesh_raft_leader",
            "1, labelled with the leader's node id as this node sees it ('' while there is none).",
            labels=["leader"],
        )
        leader_id = src.leader_id()
        leader.add_metric([leader_id if not leader_id or leader_id in src.peer_ids else "unknown"], 1)
        yield leader
        yield _gauge(
            "raftmesh_raft_has_quorum", "1 if this node is connected to a quorum.", int(raft.has_quorum)
        )
        commit, applied = raft.commit_index, raft.last_applied
        yield _gauge("raftmesh_raft_commit_index", "The highest log index this node knows committed.", commit)
        yield _gauge("raftmesh_raft_applied_index", "The highest log index this node has applied.", applied)
        yield _gauge(
            "raftmesh_raft_apply_lag_entries",
            "Committed log entries this node has not applied yet (commit index - applied index).",
            max(0, commit - applied),
        )
        yield _gauge(
            "raftmesh_raft_log_entries",
            "Entries in this node's Raft log (since the last snapshot).",
            raft.log_entries,
        )
        yield _counter(
            "raftmesh_raft_applied_entries", "Log entries this node applied.", raft.applied_entries
        )
        yield _counter(
            "raftmesh_raft_applied_bytes", "Bytes of log entries this node applied.", raft.applied_bytes
        )
        yield _counter(
            "raftmesh_raft_snapshots_loaded",
            "Snapshots this node loaded (restart or from the leader).",
            raft.snapshots_loaded,
        )
        yield _counter(
            "raftmesh_raft_snapshots_written",
            "Snapshots (log compactions) this node wrote.",
            raft.snapshots_written,
        )
        yield _counter(
            "raftmesh_raft_snapshot_write_seconds",
            "Time this node spent writing snapshots.",
            raft.snapshot_write_seconds,
        )
        yield _gauge(
            "raftmesh_raft_snapshot_bytes",
            "Size of the state in this node's last snapshot.",
            raft.snapshot_bytes,
        )
        times = raft.apply_seconds
        buckets = [
            (str(b), n) for b, n in zip(APPLY_BUCKETS, itertools.accumulate(times.counts), strict=False)
        ]
        yield HistogramMetricFamily(
            "raftmesh_raft_apply_entry_seconds",
            "Per applied log entry: how long the apply thread spent on it (decode, apply lock wait, apply).",
            buckets=[*buckets, ("+Inf", sum(times.counts))],
            sum_value=times.sum,
        )
        yield _gauge(
            "raftmesh_raft_apply_entry_seconds_max",
            "The longest one log entry took to apply on this node since it started (lock wait included).",
            times.max,
        )
        yield from self._state(node)
        yield from self._local()

    def _state(self, node: str) -> Iterator[Metric]:
        s: _StateSizes = self._s.read(lambda st: _sizes(st, node))
        yield _gauge(
            "raftmesh_state_revision", "The replicated state's revision (applied commands).", s.revision
        )
        runs = GaugeMetricFamily(
            "raftmesh_runs",
            "Runs in the replicated state, active or finished-and-retained.",
            labels=["state"],
        )
        runs.add_metric(["active"], s.runs_active)
        runs.add_metric(["finished"], s.runs_retained_finished)
        yield runs
        tasks = GaugeMetricFamily(
            "raftmesh_tasks", "Tasks of retained runs in a queue-like status.", labels=["status"]
        )
        tasks.add_metric([TaskStatus.READY.value], s.ready)
        tasks.add_metric([TaskStatus.RUNNING.value], s.running)
        tasks.add_metric([TaskStatus.WAITING_APPROVAL.value], s.waiting_approval)
        yield tasks
        yield _gauge(
            "raftmesh_dead_letters", "Failed tasks of retained runs (the dead-letter list).", s.dead_letters
        )
        members = GaugeMetricFamily("raftmesh_members", "Cluster members by liveness.", labels=["up"])
        members.add_metric(["true"], s.members_up)
        members.add_metric(["false"], s.members_down)
        yield members
        yield _gauge("raftmesh_slots", "Task slots of the members that are up.", s.slots)
        yield _gauge("raftmesh_node_slots", "This node's task slots.", s.node_slots)
        yield _gauge(
            "raftmesh_node_slots_in_use",
            "Attempts the cluster placed on this node that are running.",
            s.node_running,
        )
        label = self._m.agent_label
        in_use = GaugeMetricFamily(
            "raftmesh_slots_in_use", "Running attempts, cluster-wide, by agent type.", labels=["agent"]
        )
        for agent, n in _relabel(s.running_by_agent or {}, label).items():
            in_use.add_metric([agent], n)
        yield in_use
        brk = GaugeMetricFamily(
            "raftmesh_breakers",
            "Circuit breakers not closed-and-clean, by agent type and state (one per node and type).",
            labels=["agent", "state"],
        )
        merged: dict[tuple[str, str], int] = {}
        for (agent, state), n in (s.breakers or {}).items():
            key = (label(agent), state)
            merged[key] = merged.get(key, 0) + n
        for (agent, state), n in sorted(merged.items()):
            brk.add_metric([agent, state], n)
        yield brk

    def _local(self) -> Iterator[Metric]:
        src = self._s
        p = src.proposer
        if p is not None:
            yield _gauge(
                "raftmesh_proposer_queue_commands",
                "Commands waiting in this node's proposer queue.",
                p.queued_commands,
            )
            yield _gauge(
                "raftmesh_proposer_queue_bytes",
                "Encoded bytes of the commands admitted to the queue.",
                p.queued_bytes,
            )
            yield _gauge(
                "raftmesh_proposer_inflight_batches",
                "Log entries proposed and not yet committed.",
                p.inflight_batches,
            )
            yield _counter(
                "raftmesh_proposer_retries",
                "Commands the proposer sent again after a failed batch.",
                p.retried,
            )
        h = src.host
        if h is not None:
            yield _gauge("raftmesh_attempts_active", "Attempts running on this node.", h.running)
        sch = src.scheduler
        if sch is not None:
            yield _counter(
                "raftmesh_preemptions", "Running attempts preempted by this node while it led.", sch.preempted
            )
        lw = src.lock_waits
        if lw is not None:
            yield _gauge("raftmesh_lock_waiters", "Lock acquires parked on this node, waiting.", lw.waiting)
        router = src.router
        if router is not None:
            msgs = CounterMetricFamily(
                "raftmesh_messages",
                "Actor messages this node handled, by event (sent, delivered, dead_lettered, ...).",
                labels=["event"],
            )
            for event, n in router.counters().items():
                msgs.add_metric([event], n)
            yield msgs


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _relabel(counts: dict[str, int], label: Callable[[str], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for agent, n in counts.items():
        key = label(agent)
        out[key] = out.get(key, 0) + n
    return out
