"""Run one chaos experiment end to end: cluster, workloads, nemesis, heal, drain, audit, check.

Timeline: start the nodes (``--snapshot-entries 10000000`` so every journal keeps the
whole log for the audit; or, with ``snapshot_entries``, frequent snapshots and
``--archive-applied``, so the audit reads the nodes' archives of applied entries
instead, see ``raftmesh.storage.archive``), warm up with the workloads alone, inject the seeded faults
for the fault phase, cool down with the workloads alone, stop the workloads, heal
everything, drain (every run terminal), read every run, wait until all replicas
have the same digest, stop the nodes gracefully, replay their journals (or archives)
and check.

Three workloads run side by side, each optional: DAG submits (``workload``), KV
clients (``kv_workload``) and lock holders writing fenced counters
(``lock_workload``). Their KV calls share one history and one clock; it is checked
for linearizability once the nodes are stopped (the search is CPU-bound and must
not compete with them).

Everything is cleaned up on the way out, also on Ctrl-C and SIGTERM: node processes
by pid, the netns lab, proxies, and the data directory (unless ``keep_dir``, or
``keep_on_window_s`` and the largest window exceeded it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..client import Client
from ..client._security import Credentials
from ..consensus import limits
from ..consensus.machine import StateMachine
from ..consensus.raft import batch_payload, read_journal
from ..errors import InvalidArgument, RaftmeshError, Unauthenticated, Unavailable
from ..localcluster import LocalCluster, wait_until
from ..security import certs
from ..security.tokens import add_token
from ..storage.archive import ArchiveContents, merge_archives, read_archive
from ..verify.audit import Audit
from ..verify.message_audit import logical_id
from . import netns
from .agents import COMPENSATION_PREFIX, relayed_id
from .audit_check import AuditCheck, check_audit
from .checker import (
    KvEntryRecord,
    Phases,
    ReplayCheck,
    RunRecord,
    TaskRecord,
    check_history,
    completions_ms,
    largest_stall,
    stalls,
    throughput,
)
from .coord_check import LINEARIZABILITY_TIMEOUT_S, KvCheck, LockCheck, check_kv, check_locks
from .kv_workload import HistoryClock, KvRecord, KvWorkload
from .lock_workload import LockRecord, LockWorkload
from .message_check import DeadRecord, Effect, MessageCall, MessageCheck, check_messages, kills_of
from .message_workload import MessageWorkload, read_effects
from .nemesis import Nemesis, NetMode, available_faults, plan_schedule
from .proxy import TcpProxy
from .report import STALLS_OVER_S, Report
from .runs_watch import SETTLE_S, WATCH_LIMIT, RunsWatcher, SseWatcher, WatchCheck, check_runs_watch
from .workload import AGENTS_MODULE, APPROVER, Operation, Workload, now_ms

SECURE_SUBJECT = "chaos"
"""``--secure``: the subject of the admin token every workload and checker call carries."""
SNAPSHOT_ENTRIES = 10_000_000
"""Node log compaction threshold: high, so each journal holds the whole log to audit.

pysyncobj also compacts after ``log_compaction_s`` (600 s) whatever the count, so a
run whose nodes live longer than that audits a log with a prefix missing; the
report says so rather than failing the replay check.
"""
LOG_COMPACTION_S = 600.0
SNAPSHOT_EVERY_MIN, SNAPSHOT_EVERY_MAX = 20, 1_000_000
FIRST_APPLIED_INDEX = 2
"""pysyncobj's log starts with an entry at index 1 that is never applied."""
START_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 60.0
LIST_PAGE = 1000
UNFINISHED_STATUSES = ("RUNNING", "COMPENSATING")
"""Run statuses the drain waits out (a PAUSED run would wait for a resume: no workload pauses one,
and one left PAUSED is reported unfinished)."""
PREEMPT_SLOTS = 2
MESSAGE_DRAIN_S = 90.0
"""How long the drain waits for the chaos actors' mailboxes to empty (a re-placement takes a lease)."""
"""Slots per node with ``--preempt-priority``: few enough that urgent runs find every slot busy."""


@dataclass(frozen=True)
class ChaosConfig:
    nodes: int = 3
    duration_min: float = 1.0
    """Length of the fault phase, in minutes."""
    seed: int = 0
    net: NetMode = "none"
    net_reason: str = ""
    clients: int = 4
    aio_clients: int | None = None
    """DAG clients driving ``raftmesh.aio.Client`` (the last ones); None: half of ``clients``."""
    node_down_after_s: float = 5.0
    keep_dir: bool = False
    keep_on_window_s: float | None = None
    """``--keep-on-window S``: keep the data dir and node logs only if the largest window with no
    task completing while a majority could form exceeds S seconds (a rare slow one can then be
    diagnosed from the node logs and journals); None: only ``keep_dir`` keeps them."""
    warmup_s: float | None = None
    """Workload alone before the first fault (default: 10% of the fault phase, 6-20 s)."""
    cooldown_s: float | None = None
    drain_timeout_s: float = 120.0
    base_dir: str | None = None
    dag: bool = True
    """Run the DAG workload (``--no-dag``: only KV and locks)."""
    kv_clients: int = 3
    kv_keys: int = 4
    lock_clients: int = 3
    lock_names: int = 2
    unfenced_experiment: bool = False
    """Lock holders also write an unfenced counter: what fencing prevents, side by side."""
    faults: bool = True
    """``--no-faults``: the fault phase runs the workloads alone (a baseline, or the quick experiment)."""
    lin_timeout_s: float = LINEARIZABILITY_TIMEOUT_S
    snapshot_entries: int | None = None
    """Snapshot every this many log entries (``--snapshot-every``), so snapshots are taken and
    installed under faults; the replay audit then reads the nodes' archives of applied entries.
    None: no snapshots, the audit replays the journals."""
    preempt_priority: int | None = None
    """Nodes run with ``--preempt-priority`` and ``PREEMPT_SLOTS`` slots; a share of the DAG runs
    get this priority, so they preempt attempts of the others while the faults go on."""
    message_clients: int = 0
    """Message senders (``--message-clients``): durable and fast sends and requests to chaos actors."""
    message_targets: int = 4
    secure: bool = False
    """``--secure``: nodes with TLS (mutual: the harness presents the client certificate) and a
    tokens file; every workload and checker call carries the admin token over TLS."""

    def __post_init__(self) -> None:
        if self.nodes not in (3, 5, 7):
            raise InvalidArgument(f"--nodes must be 3, 5 or 7, got {self.nodes}")
        if not 0 < self.duration_min <= 24 * 60:
            raise InvalidArgument(f"--duration must be > 0 minutes (at most a day), got {self.duration_min}")
        if not 1 <= self.clients <= 64:
            raise InvalidArgument(f"--clients must be 1-64, got {self.clients}")
        if self.aio_clients is not None and not 0 <= self.aio_clients <= self.clients:
            raise InvalidArgument(
                f"--aio-clients must be 0-{self.clients} (--clients), got {self.aio_clients}"
            )
        if not 0 <= self.kv_clients <= 64 or not 0 <= self.lock_clients <= 64:
            raise InvalidArgument("--kv-clients and --lock-clients must be 0-64")
        if not 1 <= self.kv_keys <= 100 or not 1 <= self.lock_names <= 100:
            raise InvalidArgument("--kv-keys and --lock-names must be 1-100")
        if not 0 <= self.message_clients <= 64 or not 1 <= self.message_targets <= 100:
            raise InvalidArgument("--message-clients must be 0-64 and --message-targets 1-100")
        if self.unfenced_experiment and not self.lock_clients:
            raise InvalidArgument("--unfenced-experiment needs lock clients (--lock-clients >= 1)")
        if not (self.dag or self.kv_clients or self.lock_clients or self.message_clients):
            raise InvalidArgument(
                "no workload: --no-dag with --kv-clients 0, --lock-clients 0 and --message-clients 0"
            )
        if self.lin_timeout_s <= 0:
            raise InvalidArgument("--lin-timeout must be > 0 seconds")
        if self.keep_on_window_s is not None and not self.keep_on_window_s >= 0:
            raise InvalidArgument(f"--keep-on-window must be >= 0 seconds, got {self.keep_on_window_s}")
        if self.net not in ("netns", "proxy", "none"):
            raise InvalidArgument(f"--net must be netns, proxy or none, got {self.net!r}")
        if self.preempt_priority is not None and not 1 <= self.preempt_priority <= limits.MAX_PRIORITY:
            raise InvalidArgument(
                f"--preempt-priority must be 1-{limits.MAX_PRIORITY}, got {self.preempt_priority}"
            )
        if self.snapshot_entries is not None and not (
            SNAPSHOT_EVERY_MIN <= self.snapshot_entries <= SNAPSHOT_EVERY_MAX
        ):
            raise InvalidArgument(
                f"--snapshot-every must be {SNAPSHOT_EVERY_MIN}-{SNAPSHOT_EVERY_MAX} log entries,"
                f" got {self.snapshot_entries}"
            )

    @property
    def aio(self) -> int:
        """How many DAG clients drive ``raftmesh.aio.Client``."""
        return self.clients // 2 if self.aio_clients is None else self.aio_clients

    @property
    def phase_s(self) -> float:
        return self.duration_min * 60

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(20.0, max(6.0, 0.1 * self.phase_s))

    @property
    def cooldown(self) -> float:
        return self.cooldown_s if self.cooldown_s is not None else min(20.0, max(6.0, 0.1 * self.phase_s))


def replay_command(cfg: ChaosConfig) -> str:
    cmd = (
        f"scripts/chaos.py --net {cfg.net} --nodes {cfg.nodes} --duration {cfg.duration_min:g}"
        f" --seed {cfg.seed} --clients {cfg.clients} --node-down-after {cfg.node_down_after_s:g}"
        f" --kv-clients {cfg.kv_clients} --kv-keys {cfg.kv_keys}"
        f" --lock-clients {cfg.lock_clients} --lock-names {cfg.lock_names}"
    )
    if cfg.aio_clients is not None:
        cmd += f" --aio-clients {cfg.aio_clients}"
    if cfg.warmup_s is not None:
        cmd += f" --warmup {cfg.warmup_s:g}"
    if cfg.cooldown_s is not None:
        cmd += f" --cooldown {cfg.cooldown_s:g}"
    if cfg.snapshot_entries is not None:
        cmd += f" --snapshot-every {cfg.snapshot_entries}"
    if cfg.preempt_priority is not None:
        cmd += f" --preempt-priority {cfg.preempt_priority}"
    if cfg.message_clients:
        cmd += f" --message-clients {cfg.message_clients} --message-targets {cfg.message_targets}"
    for flag, on in (
        ("--secure", cfg.secure),
        ("--no-dag", not cfg.dag),
        ("--no-faults", not cfg.faults),
        ("--unfenced-experiment", cfg.unfenced_experiment),
    ):
        if on:
            cmd += f" {flag}"
    return cmd


def choose_net() -> tuple[NetMode, str]:
    """netns if this machine supports it, else proxy; and why."""
    ok, why = netns.is_supported()
    if ok:
        return "netns", "default: network namespaces are supported here"
    return "proxy", f"default: netns unsupported here ({why}), so client links go through a userspace proxy"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Cleanup must not be interrupted half-way: SIGINT and SIGTERM are ignored meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def run_chaos(cfg: ChaosConfig, log: Callable[[str], None] = print) -> Report:
    """Run the experiment and return its report (raises only if the harness itself fails)."""
    with _sigterm_as_interrupt():
        return _Run(cfg, log).run()


class _Run:
    def __init__(self, cfg: ChaosConfig, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self._log = log
        self.t0 = time.monotonic()
        self.base = cfg.base_dir or tempfile.mkdtemp(prefix=f"raftmesh-chaos-{cfg.seed}-")
        os.makedirs(self.base, exist_ok=True)
        self.lab: netns.NetnsLab | None = None
        self.cluster: LocalCluster | None = None
        self.proxies: dict[str, TcpProxy] = {}
        self.workload: Workload | None = None
        self.kv_workload: KvWorkload | None = None
        self.lock_workload: LockWorkload | None = None
        self.message_workload: MessageWorkload | None = None
        self.watchers: list[RunsWatcher | SseWatcher] = []
        """The ``watch_runs`` watcher, then the dashboard's event-stream consumer (with the DAG workload)."""
        self.stop = threading.Event()
        self.notes: list[str] = []
        self.keep = cfg.keep_dir
        """Whether cleanup keeps the data dir: ``keep_dir``, or a window over ``keep_on_window_s``."""

    def log(self, msg: str) -> None:
        self._log(f"[chaos +{time.monotonic() - self.t0:6.1f}s] {msg}")

    def run(self) -> Report:
        try:
            return self._run()
        finally:
            with _signals_deferred():
                self._cleanup()

    # ---- the experiment -------------------------------------------------------------

    def _run(self) -> Report:
        cfg = self.cfg
        ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        self.log(f"seed {cfg.seed}; --net {cfg.net} ({cfg.net_reason or 'chosen'}); data in {self.base}")
        if cfg.net == "netns":
            self.lab = netns.NetnsLab(ids).start()
            self.log(f"netns lab {self.lab.run_name} on {self.lab.subnet}")
        lab = self.lab
        hosts = {i: lab.ip_of(i) for i in ids} if lab else {}
        creds, secure_args = self._secure(ids, hosts) if cfg.secure else (None, {})
        cluster = self.cluster = LocalCluster(
            cfg.nodes,
            base_dir=self.base,
            hosts=hosts,
            exec_prefix=lab.exec_prefix if lab else None,
            extra_args=[
                "--node-down-after",
                str(cfg.node_down_after_s),
                "--snapshot-entries",
                str(cfg.snapshot_entries or SNAPSHOT_ENTRIES),
                "--snapshot-seconds",
                str(SNAPSHOT_ENTRIES),  # no time-based compaction: the audit replays the whole log
                *(["--archive-applied"] if cfg.snapshot_entries else []),
                *(["--preempt-priority", str(cfg.preempt_priority)] if cfg.preempt_priority else []),
            ],
            slots=PREEMPT_SLOTS if cfg.preempt_priority else LocalCluster.slots,
            agents_modules=[AGENTS_MODULE],
            credentials=creds,
            http=cfg.dag,  # the dashboard, for its event-stream consumer (``SseWatcher``)
        )
        for node_id, args in secure_args.items():
            cluster.nodes[node_id].argv += args
        cluster.start(wait=True, timeout_s=START_TIMEOUT_S)
        self.log(f"cluster up: {', '.join(f'{n.id}={n.grpc}' for n in cluster.nodes.values())}")
        if creds is not None:
            self._check_secured(cluster, creds)
        addresses = cluster.addresses
        if cfg.net == "proxy":
            for node_id, n in cluster.nodes.items():
                host, port = n.grpc.rsplit(":", 1)
                self.proxies[node_id] = TcpProxy(host, int(port), name=f"client->{node_id}")
            addresses = [p.address for p in self.proxies.values()]
            self.log(f"client links through proxies {addresses}")

        kinds, skipped = available_faults(cfg.net, cfg.nodes)
        if not cfg.faults:
            skipped = {str(k): "--no-faults" for k in kinds}
            kinds = []
        schedule = plan_schedule(cfg.seed, cfg.phase_s, kinds)
        self.log(f"{len(schedule)} faults planned from {[str(k) for k in kinds]}")
        nemesis = Nemesis(cluster, lab, self.proxies, log=self.log)
        clock = HistoryClock()
        workload = self.workload = Workload(
            addresses,
            cfg.seed,
            cfg.clients if cfg.dag else 0,
            urgent_priority=cfg.preempt_priority,
            credentials=creds,
            aio_clients=cfg.aio if cfg.dag else 0,
        )
        if cfg.dag:
            # The dashboard consumer reads one node's page API straight (not through a proxy).
            dash = cluster.nodes[ids[-1]]
            self.watchers = [
                RunsWatcher(addresses, creds, WATCH_LIMIT),
                SseWatcher(dash.id, dash.http, creds, WATCH_LIMIT),
            ]
        kv_workload = self.kv_workload = KvWorkload(
            addresses, cfg.seed, cfg.kv_clients, cfg.kv_keys, clock=clock, credentials=creds
        )
        lock_workload = self.lock_workload = LockWorkload(
            addresses,
            cfg.seed,
            cfg.lock_clients,
            cfg.lock_names,
            clock=clock,
            unfenced=cfg.unfenced_experiment,
            credentials=creds,
        )
        message_workload = self.message_workload = MessageWorkload(
            addresses, cfg.seed, cfg.message_clients, cfg.message_targets, clock=clock, credentials=creds
        )

        start_ms = now_ms()
        for w in self.watchers:
            w.start()
        workload.start()
        kv_workload.start()
        lock_workload.start()
        message_workload.start()
        self.log(
            f"workloads: DAG {workload.clients} clients ({workload.aio_clients} on raftmesh.aio)"
            + (f", runs watchers: {'; '.join(w.source for w in self.watchers)}" if self.watchers else "")
            + f", KV {cfg.kv_clients} clients on {cfg.kv_keys} keys,"
            f" locks {cfg.lock_clients} clients on {cfg.lock_names} names"
            + (" (+ unfenced experiment)" if cfg.unfenced_experiment else "")
            + f", messages {cfg.message_clients} senders to {cfg.message_targets} actors"
        )
        self.log(f"warm-up {cfg.warmup:.0f} s")
        self.stop.wait(cfg.warmup)
        faults_start_ms = now_ms()
        phase_end = time.monotonic() + cfg.phase_s
        self.log(f"fault phase {cfg.phase_s:.0f} s")
        nemesis.run(schedule, phase_end, self.stop)
        self.stop.wait(max(0.0, phase_end - time.monotonic()))
        faults_end_ms = now_ms()
        self.log(f"cool-down {cfg.cooldown:.0f} s")
        self.stop.wait(cfg.cooldown)
        end_ms = now_ms()
        stuck = self._stop_workloads()
        if stuck:
            self.notes.append(f"client threads still busy after the workloads stopped: {stuck}")
        ops = workload.snapshot()
        kv_records = kv_workload.snapshot()
        lock_records, lock_kv_records = lock_workload.snapshot()
        message_calls = message_workload.snapshot()
        self.log(
            f"workloads stopped after {len(ops)} submits, {len(kv_records) + len(lock_kv_records)} KV calls,"
            f" {len(lock_records)} lock acquisitions, {len(message_calls)} message calls; healing and draining"
        )

        healed = nemesis.heal_all()
        if healed:
            self.notes.append(f"at the end: {', '.join(healed)}")
        if nemesis.wait_whole() is None:
            self.notes.append("the cluster was not whole (all up, one leader) 60 s after the final heal")
        runs = self._drain_and_read(cluster)
        watches = self._check_watches(runs, ops) if self.watchers else []
        audit_timelines = self._check_audit_timelines(cluster, runs, {op.key for op in ops})
        effects: list[Effect] = []
        live_dead: list[DeadRecord] = []
        if cfg.message_clients:
            effects, live_dead = self._drain_messages(cluster, message_workload, message_calls)
        digests, statuses = self._converge(cluster)
        self._stop_nodes(cluster)
        archive_problems: list[str] = []
        snapshot_stats: dict[str, int] = {}
        if cfg.snapshot_entries:
            audit, replays, unaudited, archive_problems, snapshot_stats = self._audit_archives(
                cluster, statuses
            )
        else:
            audit, replays, unaudited = self._audit_journals(cluster, statuses)

        if audit is not None:
            audit_timelines.cross_check(audit.succeeded)
            self.log(
                f"audit timelines: {audit_timelines.cross_checked} succeeded tasks cross-checked with the log"
            )
        check = check_history(
            ops,
            runs,
            audit,
            digests,
            replays,
            unaudited,
            archive_problems,
            # Secured, a gate's decider is the caller's principal, not the ``by`` it sends.
            approver=f"token:{SECURE_SUBJECT}" if cfg.secure else APPROVER,
        )
        kv_check, lock_check = self._check_coordination(
            kv_records + lock_kv_records, lock_records, lock_workload, audit, unaudited
        )
        message_check = None
        if cfg.message_clients:
            message_check = self._check_messages(
                message_calls, effects, live_dead, audit, unaudited, kills_of(nemesis.records)
            )
        log_stats = {}
        if audit is not None:
            attempts = sum(audit.starts.values())
            log_stats = {
                "commands": audit.commands,
                "tasks_started": len(audit.starts),
                "attempts": attempts,
                "attempts_again": attempts - len(audit.starts),
                "stale_results_rejected": audit.stale_rejected,
                "dead_letters_requeued": sum(audit.requeues.values()),
                "attempts_preempted": audit.preemptions,
            }
        log_stats.update(snapshot_stats)
        phases = Phases(start_ms, faults_start_ms, faults_end_ms, end_ms)
        done = completions_ms(runs, {op.key for op in ops})
        kv_done = sorted(r.return_ms for r in kv_records + lock_kv_records if r.outcome == "ok")
        stall = largest_stall(done, phases, nemesis.records)
        if cfg.keep_dir:
            self.notes.append("--keep-dir: node data and logs were kept")
        elif cfg.keep_on_window_s is not None and stall.seconds > cfg.keep_on_window_s:
            # (with --no-dag nothing completes: the window is the whole run, so it keeps the dir)
            self.keep = True
            self.notes.append(
                f"--keep-on-window {cfg.keep_on_window_s:g}: the largest window ({stall.seconds} s) exceeds it,"
                f" so node data and logs were kept in {self.base} (node logs: <node>/node.log)"
            )
            self.log(f"largest window {stall.seconds} s > {cfg.keep_on_window_s:g} s: keeping {self.base}")
        return Report(
            seed=cfg.seed,
            nodes=cfg.nodes,
            net=cfg.net,
            net_reason=cfg.net_reason,
            duration_min=cfg.duration_min,
            clients=cfg.clients,
            node_down_after_s=cfg.node_down_after_s,
            replay_command=replay_command(cfg),
            not_injected=skipped,
            phases=phases,
            faults=nemesis.records,
            check=check,
            throughput=throughput(done, phases),
            stall=stall,
            stalls=stalls(done, phases, nemesis.records, STALLS_OVER_S),
            digests=digests,
            replays=replays,
            log_stats=log_stats,
            operations=[op.to_json() for op in ops],
            notes=self.notes,
            data_dir=self.base if self.keep else "",
            workloads={
                "dag_clients": workload.clients,
                "aio_clients": workload.aio_clients,
                "runs_watchers": [w.source for w in self.watchers],
                "kv_clients": cfg.kv_clients,
                "kv_keys": cfg.kv_keys,
                "lock_clients": cfg.lock_clients,
                "lock_names": cfg.lock_names,
                "lock_ttl_s": lock_workload.ttl_s,
                "unfenced_experiment": cfg.unfenced_experiment,
                "faults": cfg.faults,
                "snapshot_entries": cfg.snapshot_entries or 0,
                "preempt_priority": cfg.preempt_priority,
                "message_clients": cfg.message_clients,
                "message_targets": cfg.message_targets,
                "secure": cfg.secure,
            },
            kv=kv_check,
            locks=lock_check,
            kv_throughput=throughput(kv_done, phases) if kv_check else {},
            kv_stall=largest_stall(kv_done, phases, nemesis.records) if kv_check else None,
            kv_history=[r.to_json() for r in kv_records + lock_kv_records],
            lock_history=[r.to_json() for r in lock_records],
            messages=message_check,
            message_history=[c.to_json() for c in message_calls],
            audit_timelines=audit_timelines,
            watches=watches,
        )

    def _secure(self, ids: list[str], hosts: dict[str, str]) -> tuple[Credentials, dict[str, list[str]]]:
        """``--secure``: a CA and certificates in the run's dir (every node's address in the SANs:
        netns nodes are not on loopback), a tokens file with an admin token; the harness's
        credentials and each node's extra flags. The cluster secret that proves node identity
        is ``LocalCluster``'s (``--raft-secret-file``)."""
        tls_dir = os.path.join(self.base, "tls")
        issued = certs.init(tls_dir, ids, hosts=[*certs.DEFAULT_HOSTS, *sorted(set(hosts.values()))])
        tokens_path = os.path.join(self.base, "tokens.yaml")
        _entry, token = add_token(tokens_path, SECURE_SUBJECT, "admin")
        creds = Credentials(token=token, ca=issued.ca, cert=issued.client[0], key=issued.client[1])
        args = {
            i: [
                "--tls-cert",
                issued.nodes[i][0],
                "--tls-key",
                issued.nodes[i][1],
                "--tls-ca",
                issued.ca,
                "--tls-client-auth",
                "require",
                "--tokens-file",
                tokens_path,
            ]
            for i in ids
        }
        self.log(
            f"secure: mutual TLS (CA {issued.ca}), tokens in {tokens_path} (admin token:{SECURE_SUBJECT})"
        )
        return creds, args

    def _check_secured(self, cluster: LocalCluster, creds: Credentials) -> None:
        """The nodes really are secured (a run whose flags were silently dropped must not pass as
        one): over TLS without the token a call is refused, and a plaintext one cannot connect."""
        for node_id, n in cluster.nodes.items():
            for what, c in (
                ("over TLS without a token", Credentials(ca=creds.ca, cert=creds.cert, key=creds.key)),
                ("in plaintext", None),
            ):
                with Client([n.grpc], timeout_s=5, retry_deadline_s=0, credentials=c) as sdk:
                    try:
                        sdk.status()
                    except (Unauthenticated, Unavailable):
                        continue
                    except RaftmeshError as exc:
                        raise RaftmeshError(
                            f"--secure: {node_id} answered a call {what} with {exc!r}"
                        ) from exc
                raise RaftmeshError(f"--secure: {node_id} served a call {what}: the cluster is not secured")
        self.log("secure: every node refuses a call without a token and a plaintext connection")

    def _check_audit_timelines(
        self, cluster: LocalCluster, runs: dict[str, RunRecord], keys: set[str]
    ) -> AuditCheck:
        """Every run the workload submitted and saw finish: a complete, coherent GetAudit timeline."""
        finished = [r.run_id for r in runs.values() if r.key in keys and r.status not in UNFINISHED_STATUSES]
        check = check_audit(cluster.client(retry_deadline_s=30), finished)
        self.log(check.lines()[0])
        return check

    def _check_watches(self, runs: dict[str, RunRecord], ops: list[Operation]) -> list[WatchCheck]:
        """Once every run ended: wait until each watcher shows every run of its window (the newest
        ``WATCH_LIMIT``: ``runs`` is in ListRuns order, newest first) in its final status, stop it
        and judge what it saw."""
        final = {run_id: r.status for run_id, r in runs.items()}
        covered = list(runs)[:WATCH_LIMIT]
        t0 = time.monotonic()
        try:
            wait_until(
                lambda: not any(w.missing(final, covered) for w in self.watchers),
                SETTLE_S,
                "the runs watchers to show every run's final status",
                interval_s=0.2,
            )
        except TimeoutError:
            pass  # the checks name each run a watcher missed
        settle_s = round(time.monotonic() - t0, 1)
        checks = []
        for w, title in zip(self.watchers, ("runs watch", "dashboard events"), strict=False):
            if not w.stop():
                self.notes.append(f"the {title} thread did not end when its watch was closed")
            check = check_runs_watch(w.snapshot(), runs, covered, ops)
            check.title = title
            check.stats.update(
                source=w.source,
                limit=w.limit,
                settle_s=settle_s,
                errors=w.errors,
                error_examples=w.error_examples,
            )
            self.log(check.lines()[0])
            checks.append(check)
        return checks

    def _stop_workloads(self) -> list[str]:
        """Stop every workload at once (each finishes its current call), then wait for them."""
        loads: list[Workload | KvWorkload | LockWorkload | MessageWorkload] = [
            w
            for w in (self.workload, self.kv_workload, self.lock_workload, self.message_workload)
            if w is not None
        ]
        for w in loads:
            w.request_stop()
        stuck: list[str] = []
        timeout_s = (self.workload.wait_timeout_s if self.workload else 0.0) + 15
        for w in loads:
            stuck += w.stop(timeout_s=timeout_s)
        return stuck

    def _check_coordination(
        self,
        kv_records: list[KvRecord],
        lock_records: list[LockRecord],
        lock_workload: LockWorkload,
        audit: Audit | None,
        unaudited: str,
    ) -> tuple[KvCheck | None, LockCheck | None]:
        cfg = self.cfg
        kv_check = lock_check = None
        if cfg.kv_clients or cfg.lock_clients:
            self.log(
                f"checking linearizability of {len(kv_records)} KV calls (timeout {cfg.lin_timeout_s:g} s)"
            )
            kv_check = check_kv(kv_records, timeout_s=cfg.lin_timeout_s)
            self.log(f"KV history: {kv_check.verdict} in {kv_check.elapsed_s:.1f} s")
        if cfg.lock_clients:
            lock_check = check_locks(
                lock_records,
                list(lock_workload.counters.values()),
                audit,
                unaudited,
                list(lock_workload.unfenced_counters.values()),
            )
        return kv_check, lock_check

    def _drain_messages(
        self, cluster: LocalCluster, mw: MessageWorkload, calls: list[MessageCall]
    ) -> tuple[list[Effect], list[DeadRecord]]:
        """Wait until no chaos actor has a durable message queued, every acknowledged durable
        message has its turn or a dead letter (an unplaced mailbox is not listed with the
        activations) and the turns stopped growing; then read every turn and the listed dead
        letters (the audit has them all)."""
        client = cluster.client(retry_deadline_s=30)
        targets = mw.addresses_used
        durable = {c.mid for c in calls if c.path == "durable" and c.outcome == "ok"}
        seen: list[int] = []

        def dead_letters() -> list[DeadRecord]:
            return [
                DeadRecord(logical_id(d.message.payload, d.message.id), d.reason, d.node, d.recorded_ms)
                for d in client.messages.dead_letters(limit=limits.MAX_MESSAGE_DEAD_LETTERS_LISTED)
            ]

        def settled() -> bool:
            queued = sum(a.queued for a in client.messages.activations(prefix="chaos_", limit=1000))
            effects, _ = read_effects(client, targets)
            seen.append(len(effects))
            pending = (durable | {relayed_id(e.mid) for e in effects if e.to}) - {e.mid for e in effects}
            if pending:
                pending -= {d.mid for d in dead_letters()}
            return not queued and not pending and len(seen) >= 3 and seen[-1] == seen[-3]

        try:
            wait_until(settled, MESSAGE_DRAIN_S, "every chaos actor's mailbox to empty", interval_s=1.0)
        except TimeoutError as exc:
            self.notes.append(f"message drain: {exc}")
        effects, problems = read_effects(client, targets)
        self.notes += problems
        dead = dead_letters()
        self.log(f"read {len(effects)} message effects, {len(dead)} dead letters")
        return effects, dead

    def _check_messages(
        self,
        calls: list[MessageCall],
        effects: list[Effect],
        live_dead: list[DeadRecord],
        audit: Audit | None,
        unaudited: str,
        kills: list[Any],
    ) -> MessageCheck:
        """The dead letters and the still-queued messages come from the audited log's final state
        when there is one (every dead letter kept, not only the newest listed)."""
        dead, queued = live_dead, []
        if audit is not None:
            store = audit.machine.state.messages
            dead = [
                DeadRecord(
                    logical_id(d.letter.message.payload, d.letter.message.id),
                    d.letter.reason,
                    d.node,
                    d.recorded_ms,
                )
                for d in store.dead_letters
            ]
            queued = [
                logical_id(q.message.payload, q.message.id)
                for box in store.mailboxes.values()
                for q in box.queue.values()
            ]
        check = check_messages(
            calls, effects, dead, kills, audit.messages if audit else None, unaudited, queued=queued
        )
        self.log(f"messages: {check.violations} violation(s)")
        return check

    def _drain_and_read(self, cluster: LocalCluster) -> dict[str, RunRecord]:
        """Wait until no run is RUNNING or COMPENSATING, then read every run the cluster holds
        (and the compensation records its saga runs wrote in the KV)."""
        client = cluster.client(retry_deadline_s=30)

        def drained() -> bool:
            return not any(client.list_runs(limit=1, status=s) for s in UNFINISHED_STATUSES)

        try:
            wait_until(drained, self.cfg.drain_timeout_s, "every run to end", interval_s=0.5)
        except TimeoutError as exc:
            self.notes.append(f"drain: {exc}")
        summaries: list[dict[str, Any]] = []
        while True:
            page = client.list_runs(limit=LIST_PAGE, offset=len(summaries))
            summaries += page
            if len(page) < LIST_PAGE:
                break
        runs: dict[str, RunRecord] = {}
        for s in summaries:
            info = client.get(s["run_id"], stale_ok=True)
            tasks = {
                t.id: TaskRecord(
                    t.status,
                    t.output,
                    t.attempt,
                    t.node,
                    t.finished_ms,
                    t.error,
                    (t.usage.tokens_in, t.usage.tokens_out, t.usage.cost),
                    None if t.gate is None else (t.gate.id, t.gate.decision, t.gate.by, t.gate.decided_ms),
                    tuple((a.attempt, a.outcome, a.started_ms) for a in t.history),
                    t.started_ms,
                )
                for t in info.tasks.values()
            }
            u = info.usage
            kv = {}
            if info.compensations:
                prefix = f"{COMPENSATION_PREFIX}{info.run_id}/"
                kv = {
                    e.key: KvEntryRecord(e.value, e.version, e.create_revision)
                    for e in client.kv.list(prefix, limit=LIST_PAGE)
                }
            runs[info.run_id] = RunRecord(
                info.run_id,
                s["idempotency_key"],
                info.status,
                info.error,
                tasks,
                (u.tokens_in, u.tokens_out, u.cost),
                info.reason,
                tuple(c.task_id for c in info.compensations),
                kv,
            )
        self.log(f"read {len(runs)} runs")
        return runs

    def _converge(self, cluster: LocalCluster) -> tuple[dict[str, tuple[int, str]], dict[str, Any]]:
        """The statuses of the poll that found every replica equal (compared as such: a later
        read could catch a tick committed meanwhile and report a false divergence), or, if
        they never converge, of one read of each."""
        try:
            statuses = cluster.wait_converged_statuses(CONVERGE_TIMEOUT_S, among=list(cluster.nodes))
        except TimeoutError as exc:
            self.notes.append(f"replicas did not converge: {exc}")
            statuses = cluster.statuses(among=list(cluster.nodes))
        digests = {i: (s.revision, s.digest) for i, s in statuses.items()}
        self.log(f"replicas: {sorted(set(digests.values()))}")
        return digests, statuses

    def _stop_nodes(self, cluster: LocalCluster) -> None:
        """Graceful stop of every node at once (stopping one by one lets the leader act meanwhile)."""
        threads = [threading.Thread(target=cluster.stop_node, args=(i,)) for i in cluster.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _audit_journals(
        self, cluster: LocalCluster, statuses: dict[str, Any]
    ) -> tuple[Audit | None, list[ReplayCheck], str]:
        """Replay each journal up to the index its node had applied when the digests were read.

        The longest one goes through the ``Audit``; every one must reproduce the live digest.
        A journal that lost its prefix to a snapshot is left out (it cannot reproduce the
        state from an empty one); the third value says why nothing was audited, if so.
        """
        journals: dict[str, list[tuple[int, bytes]]] = {}
        compacted = []
        for i, n in cluster.nodes.items():
            if os.path.exists(os.path.join(n.data_dir, "snapshot.lmdb")):
                compacted.append(i)
                continue
            try:
                entries, _commit = read_journal(os.path.join(n.data_dir, "raft.journal"))
            except Exception as exc:
                self.notes.append(f"journal of {i} unreadable: {type(exc).__name__}: {exc}")
                continue
            # With each entry's term: apply refuses a leader's decision logged in another term.
            journals[i] = [(term, p) for idx, term, p in entries if idx <= statuses[i].last_applied]
        if compacted:
            self.notes.append(
                f"{', '.join(compacted)} took or installed a snapshot, so their journals miss a prefix of "
                f"the log and were not replayed (pysyncobj compacts after {LOG_COMPACTION_S:.0f} s of node "
                "uptime whatever --snapshot-entries says)"
            )
        if not journals:
            why = "every journal was compacted" if compacted and len(compacted) == len(cluster.nodes) else ""
            return None, [], why
        longest = max(journals, key=lambda i: len(journals[i]))
        audit = Audit()
        replays = []
        for i, payloads in journals.items():
            machine = audit.machine if i == longest else StateMachine()
            # Compared where the live digest was taken (its revision): the node's applied index is
            # read a moment later, and a live cluster keeps committing (activation renewals).
            seen: tuple[int, int, str] | None = None
            for count, (term, p) in enumerate(payloads, 1):
                if i == longest:
                    audit.feed(p, term)
                else:
                    machine.apply_batch(p, term=term)
                if seen is None and machine.state.revision >= statuses[i].revision:
                    seen = (count, machine.state.revision, machine.digest())
            count, rev, dig = seen or (len(payloads), machine.state.revision, machine.digest())
            replays.append(ReplayCheck(i, count, rev, dig, statuses[i].digest))
        self.log(f"audited {audit.commands} commands from {longest}'s journal")
        return audit, replays, ""

    def _audit_archives(
        self, cluster: LocalCluster, statuses: dict[str, Any]
    ) -> tuple[Audit | None, list[ReplayCheck], str, list[str], dict[str, int]]:
        """Audit the union of the nodes' archives of applied entries (snapshot mode).

        Each archive misses what its node took from a snapshot; their union must hold every
        index up to the last applied one, and agree wherever two hold the same index. One
        replay of it goes through the ``Audit``; its state at each node's applied index must
        be that node's live digest. Returns the audit, the replays, why nothing was audited
        (never: an unreadable archive is a problem), the problems and snapshot counts.
        """
        problems: list[str] = []
        archives: dict[str, ArchiveContents] = {}
        for i, n in cluster.nodes.items():
            try:
                archives[i] = read_archive(n.data_dir)
            except Exception as exc:
                problems.append(f"archive of {i} unreadable: {type(exc).__name__}: {exc}")
        stats = {
            "snapshots_written": sum(a.count("snapshot_written") for a in archives.values()),
            "snapshots_loaded": sum(a.count("snapshot_loaded") for a in archives.values()),
            "snapshots_installed": sum(a.count("snapshot_installed") for a in archives.values()),
        }
        self.log(
            f"snapshots: {stats['snapshots_written']} written, {stats['snapshots_installed']} installed"
            f" from a leader, {stats['snapshots_loaded']} loaded at a node's start"
        )
        if not archives:
            return None, [], "", problems, stats
        targets = {i: int(st.last_applied) for i, st in statuses.items()}
        merged = merge_archives(archives, FIRST_APPLIED_INDEX, max(targets.values()))
        stats["archived_entries"] = len(merged.entries)
        problems += [f"no archive holds log entries {a}-{b}" for a, b in merged.gaps]
        problems += [
            f"archives disagree on entry {i}: {' | '.join(','.join(nodes) for nodes in groups)}"
            for i, groups in merged.disagreements.items()
        ]
        problems += [
            f"{node} applied two different entries at index {i}"
            for node, idxs in merged.conflicts.items()
            for i in idxs
        ]
        audit = Audit()
        at: dict[str, tuple[int, int, str]] = {}
        pending = sorted(targets.items(), key=lambda kv: kv[1])
        batches = 0

        def settle(upto: int) -> None:
            # A node's live digest was taken at its revision, its applied index read a moment
            # later: the replay is compared at that revision once it reaches it.
            rev = audit.machine.state.revision
            for entry in [e for e in pending if e[1] <= upto or rev >= statuses[e[0]].revision]:
                pending.remove(entry)
                at[entry[0]] = (batches, rev, audit.machine.digest())

        for index, entry in merged.entries:
            settle(index - 1)
            payload = batch_payload(entry)
            if payload is not None:
                audit.feed(payload, merged.terms.get(index))
                batches += 1
        settle(max(targets.values()))
        replays = [
            ReplayCheck(i, n, rev, dig, statuses[i].digest, source="archives")
            for i, (n, rev, dig) in at.items()
        ]
        self.log(
            f"audited {audit.commands} commands from the union of {len(archives)} archives"
            f" ({len(merged.entries)} entries, {len(merged.gaps)} gap(s))"
        )
        return audit, replays, "", problems, stats

    # ---- cleanup -----------------------------------------------------------------------

    def _cleanup(self) -> None:
        self.stop.set()
        for watcher in self.watchers:
            watcher.stop(timeout_s=5)
        loads = (self.workload, self.kv_workload, self.lock_workload, self.message_workload)
        for w in loads:
            if w is not None:
                w.request_stop()
        for w in loads:
            if w is not None:
                w.stop(timeout_s=5)
        for p in self.proxies.values():
            with contextlib.suppress(Exception):
                p.close()
        if self.cluster is not None:
            for i, n in self.cluster.nodes.items():
                # By pid: SIGCONT first if paused, then SIGTERM, SIGKILL after 5 s.
                try:
                    self.cluster.stop_node(i, timeout_s=5)
                except Exception:
                    with contextlib.suppress(Exception):
                        self.cluster.kill(i)
                if n.alive:
                    self.log(f"could not stop {i} (pid {n.pid})")
            self.cluster.close()
        if self.lab is not None:
            self.lab.cleanup()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)


__all__ = ["ChaosConfig", "choose_net", "replay_command", "run_chaos"]
