#!/usr/bin/env python3
"""raftmesh failover benchmark: how long a 3-node cluster stops when its leader dies or is cut off.

What is done
------------
A ``LocalCluster`` of 3 real node processes is started. When this machine can run network namespaces
(root, ``ip``, ``nft``), every node runs in its own namespace on a private bridge
(``raftmesh.chaos.netns.NetnsLab``), so a partition is real: nftables drops every packet between the
isolated node and its peers. Otherwise the nodes run on loopback and the partition part is skipped
(the output says so).

A steady background workload runs throughout: ``--clients`` threads (default 4), each with its own
``Client`` on all three nodes, keep submitting small runs with unique idempotency keys -- either a
chain of three ``sum`` tasks or a single ``sleep`` task of 0.1-0.3 s -- with at most two runs of their
own in flight, so tasks complete continuously (tens per second). A submit that fails is retried with
the same key (the same run), so an acknowledged run is exactly one run.

Then, under that workload:

1. ``--kills`` times (default 20): kill -9 the current leader (``t_fault`` = ``time.time()`` just before
   the signal), poll the two survivors every ~20 ms until both report the same new leader (one of them),
   restart the killed node, wait until all three nodes are up, agree on a leader and have applied
   everything committed, let the workload run ``--settle`` seconds (default 2), repeat.
2. ``--partitions`` times (default 20, namespaces only): isolate the current leader with a partition
   ``[{leader}, others]`` (``t_fault`` = once the nftables rules are in place in every namespace; they
   go in one namespace after another, and the time that takes is reported), poll the majority
   until it reports a new leader (and the isolated node until it steps down), check that the majority
   makes progress (a probe run of one ``echo`` task, submitted to the majority side, succeeds), heal,
   wait until all three nodes are healthy and caught up, settle, repeat. The probe's task may be placed
   on the isolated node (it is still "up" in the state until it is marked down), in which case the probe
   and the partition last until the node-down timeout; the output shows where each probe ran.

What is measured, per fault
---------------------------
* **new leader**: ``t_fault`` -> the first poll at which every majority node reports the same new leader.
  Polled over gRPC ``ClusterStatus`` (resolution ~20-40 ms).
* **next completion**: ``t_fault`` -> the first task ``finished_ms`` strictly greater than ``t_fault``,
  over every task of every run, collected after the workload stops. ``finished_ms`` is stamped by the
  *completing node when it proposes the result* (the ``ts_ms`` of its ``complete`` command; all nodes
  share this machine's clock), not when the result commits. A task that finishes on a surviving node
  during the election is stamped then and committed only once a new leader exists, so this figure is
  bounded by how long the work already running on the survivors takes to finish (the 0.1-0.3 s sleeps),
  not by the failover. It is reported as asked, but read it as "the next task to finish executing".
* **next new work done**: ``t_fault`` -> the first ``finished_ms`` of a task whose assignment was
  committed after the fault (``started_ms > t_fault``: only a post-fault leader can commit such an
  assignment). This includes election + the assign commit + running the task (``sum``: ~0) + proposing
  its result, and is the figure that shows how long the cluster really stood still.

Median, p90 (linear interpolation) and max are reported for kills and for partitions, plus the
steady-state gap between consecutive completions (the resolution of the completion figures).

What bounds the figures (``raftmesh/consensus/raft/member.py`` ``RaftTimings``, node flags)
------------------------------------------------------------------------------
* Election (``raftmesh/consensus/raft/election.py``): a follower whose link to the leader *closes* (kill -9:
  the dead process's kernel closes its sockets) pre-votes after a random 20-200 ms; one that just stops
  hearing the leader (a partition) pre-votes after a random 0.6-1.2 s (``election_min_s``/``election_max_s``;
  heartbeat every 0.1 s). A pre-vote that a majority grants is followed by the real election: one more
  round trip. So a kill costs a few hundred ms to a new leader, a partition about 1 s.
* Leader fallback (check-quorum): an isolated leader steps down after ``leader_fallback_s`` = 2 s without a
  majority; it can commit nothing in the meantime. The majority does not wait for that.
* Commit retry: a node's write batch that was in flight to the lost leader is retried when pysyncobj
  reports the failure, at the latest after ``commit_timeout_s`` = 3 s.
* Node down: the attempts that were running on the lost node are put back to READY (a new attempt and
  fencing token) when its restarted process registers a new incarnation, or when the new leader marks
  it down after ``--node-down-after`` seconds without heartbeats (default 5; the new leader's clock
  starts at its election). Until then those runs wait, and placement may even give the lost node new
  attempts (it is still "up" in the state). That bounds the latency of the affected runs (fault +
  election + node-down-after), not the next completion, as long as the survivors have work.

So the expected figures are: new leader 0.1-0.5 s after a kill, ~1 s after a partition; next new work
done tens of ms after the new leader, next completion well under the election time.

Observed before pre-vote and the link pings (pysyncobj 0.3.17): the new leader typically appeared after
2-3.5 s and two election rounds (term +2). pysyncobj checks a connection's read timeout
(``connectionTimeout``, 3 s in raftmesh) only when it sends on it, and drops the message when the check
fails; the link between two followers carries no traffic while a leader is alive, so the first
candidate's ``request_vote`` to the other survivor is usually discarded together with the "timed out"
link. The other survivor then times out on its own (split vote at the same term) and a third timeout
decides. The per-fault "term" column shows it.
A partition that outlasts election + ``--node-down-after`` also gets the healthy majority follower
marked down (and flapping down/up until some seconds after the heal): its heartbeat stream
(``raftmesh/node/peers.py``) stays stuck on the old, unreachable leader, so no heartbeat reaches the
new one. The per-fault "down before heal" column shows it.

Verification: after the faults the workload stops, every acknowledged run is waited for, and the
benchmark exits non-zero if any acknowledged run did not end SUCCEEDED with the right outputs, if a run
shows up that nobody submitted or twice for one key, or if the replicas do not converge to one digest.
A benchmark that loses work is not a benchmark.

No side-by-side peer: Dask distributed (used by ``scripts/bench.py``) has no scheduler failover -- its
scheduler is a single process, and when it dies every pending task and result is lost -- so there is
nothing comparable to measure there.

Usage::

    python scripts/bench_failover.py                          # 20 kills + 20 partitions, ~4-6 min
    python scripts/bench_failover.py --kills 3 --partitions 3 # quick run
    python scripts/bench_failover.py --json > out.json        # JSON on stdout, the table on stderr

Everything is cleaned up on exit and on Ctrl-C/SIGTERM: node processes are stopped by pid, the
namespaces removed, the temporary data directories deleted.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from _benchkit import Interrupted, finite, interrupt, percentile, positive_int

from raftmesh.chaos.netns import NetnsLab, is_supported
from raftmesh.client import DAG, Client, ClusterInfo, RunInfo
from raftmesh.consensus.raft import RaftTimings
from raftmesh.errors import InvalidArgument, NotFound, RaftmeshError
from raftmesh.localcluster import LocalCluster, wait_until

NODES = ["n1", "n2", "n3"]
WINDOW = 2
"""Runs each client thread keeps in flight."""
PACE_S = (0.05, 0.25)
"""Pause after each submit (uniform): keeps the run count well under the 10,000 finished runs retained."""
CLIENT_CALL_TIMEOUT_S = 5.0
CLIENT_RETRY_DEADLINE_S = 30.0
SUBMIT_GIVE_UP_S = 120.0
WAIT_TIMEOUT_S = 10.0
STATUS_TIMEOUT_S = 0.5
POLL_S = 0.02
LEADER_TIMEOUT_S = 60.0
STEPDOWN_WATCH_S = 15.0
HEALTHY_TIMEOUT_S = 90.0
PROBE_TIMEOUT_S = 60.0
WARMUP_S = 3.0
QUIET_AFTER_HEALTHY_S = 0.5
"""Steady-state gaps are taken from this long after the cluster is healthy again until the next fault."""
DRAIN_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 90.0
ELECTION_S = (RaftTimings().election_min_s, RaftTimings().election_max_s)
LEADER_FALLBACK_S = RaftTimings().leader_fallback_s


def log(msg: str) -> None:
    print(f"[bench_failover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(samples: Sequence[float | None]) -> dict[str, Any]:
    xs = [x for x in samples if x is not None]
    return {
        "n": len(xs),
        "missing": len(samples) - len(xs),
        "median": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "max": max(xs, default=math.nan),
        "min": min(xs, default=math.nan),
    }


# ---- the workload -----------------------------------------------------------------------------------


@dataclass
class Submission:
    key: str
    kind: str
    """"chain", "sleep" or "probe"."""
    dag: DAG
    expected: dict[str, Any]
    """task id -> expected output."""
    run_id: str | None = None
    acked: bool = False
    attempts: int = 0
    last_error: str = ""
    final: RunInfo | None = None
    """The run once it ended (from the client's wait, or fetched at the end)."""


def make_chain(key: str, rng: random.Random) -> Submission:
    dag = DAG("failover-chain")
    values = [rng.randint(1, 1000) for _ in range(3)]
    prev = None
    expected: dict[str, Any] = {}
    for i, v in enumerate(values):
        prev = dag.task(f"s{i}", "sum", input={"value": v}, deps=[prev] if prev else [])
        expected[f"s{i}"] = sum(values[: i + 1])
    return Submission(key, "chain", dag, expected)


def make_sleep(key: str, rng: random.Random) -> Submission:
    dag = DAG("failover-sleep")
    inp = {"seconds": round(rng.uniform(0.1, 0.3), 3)}
    dag.task("z", "sleep", input=inp)
    return Submission(key, "sleep", dag, {"z": inp})


def make_probe(key: str, n: int) -> Submission:
    dag = DAG("failover-probe")
    dag.task("p", "echo", input=n)
    return Submission(key, "probe", dag, {"p": n})


class Ledger:
    """Every submission of this benchmark, thread-safe."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.subs: list[Submission] = []

    def add(self, s: Submission) -> None:
        with self._lock:
            self.subs.append(s)

    def snapshot(self) -> list[Submission]:
        with self._lock:
            return list(self.subs)


def submit_until_acked(
    client: Client, s: Submission, ledger: Ledger, abort: threading.Event, give_up_s: float
) -> None:
    """Submit with the same idempotency key until acknowledged, rejected, or ``give_up_s`` passed."""
    ledger.add(s)
    deadline = time.monotonic() + give_up_s
    while not abort.is_set():
        s.attempts += 1
        try:
            s.run_id = client.submit(s.dag, idempotency_key=s.key)
            s.acked = True
            return
        except (InvalidArgument, NotFound) as exc:  # a bug in this script: never retried
            s.last_error = f"{type(exc).__name__}: {exc}"
            return
        except RaftmeshError as exc:
            s.last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


class Workload:
    """``clients`` threads submitting small runs continuously, each with ``WINDOW`` runs in flight."""

    def __init__(self, addresses: list[str], clients: int, ledger: Ledger, seed: int) -> None:
        self.addresses = addresses
        self.ledger = ledger
        self.seed = seed
        self.stop_event = threading.Event()
        self.abort = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"workload-{i}", daemon=True)
            for i in range(clients)
        ]
        self.errors: list[str] = []

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, timeout_s: float) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            self.abort.set()
            for t in self.threads:
                t.join(5.0)

    def _loop(self, idx: int) -> None:
        rng = random.Random(self.seed * 1000 + idx)
        inflight: deque[Submission] = deque()
        n = 0
        try:
            with Client(
                self.addresses, timeout_s=CLIENT_CALL_TIMEOUT_S, retry_deadline_s=CLIENT_RETRY_DEADLINE_S
            ) as client:
                while not self.stop_event.is_set():
                    key = f"{self.ledger.prefix}-c{idx}-{n}"
                    n += 1
                    s = make_chain(key, rng) if rng.random() < 0.5 else make_sleep(key, rng)
                    submit_until_acked(client, s, self.ledger, self.abort, SUBMIT_GIVE_UP_S)
                    if s.acked:
                        inflight.append(s)
                    while len(inflight) >= WINDOW and not self.abort.is_set():
                        self._wait(client, inflight.popleft())
                    time.sleep(rng.uniform(*PACE_S))
                while inflight and not self.abort.is_set():
                    self._wait(client, inflight.popleft())
        except Exception as exc:  # a crashed thread would silently thin the workload: report it
            self.errors.append(f"workload-{idx}: {type(exc).__name__}: {exc}")
            log(f"workload thread {idx} crashed: {type(exc).__name__}: {exc}")

    def _wait(self, client: Client, s: Submission) -> None:
        assert s.run_id is not None
        try:
            info = client.wait(s.run_id, timeout_s=WAIT_TIMEOUT_S)
        except RaftmeshError:
            return  # still running, or the watched node is cut off: checked again at the end
        if info.done:
            s.final = info


# ---- observing the cluster ------------------------------------------------------------------------------


class Prober:
    """Fast ``ClusterStatus`` per node, one persistent channel each, no failover, short timeouts."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.addr = {n: cluster.nodes[n].grpc for n in cluster.nodes}
        self.clients = {n: Client([a], timeout_s=1.0, retry_deadline_s=0) for n, a in self.addr.items()}

    def status(self, node: str) -> ClusterInfo | None:
        try:
            return self.clients[node].status_of(self.addr[node], timeout_s=STATUS_TIMEOUT_S)
        except RaftmeshError:
            return None

    def agreed_leader(self, among: Sequence[str]) -> tuple[str, int] | None:
        """(leader, term) if every node of ``among`` reports the same leader, one of them."""
        seen: set[tuple[str, int]] = set()
        for n in among:
            st = self.status(n)
            if st is None:
                return None
            seen.add((st.leader, st.term))
        if len(seen) != 1:
            return None
        ((leader, term),) = seen
        return (leader, term) if leader in among else None

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def wait_healthy(cluster: LocalCluster, prober: Prober, timeout_s: float) -> tuple[str, int]:
    """All nodes alive, up in the state, agreeing on a leader, and caught up with its commit index."""
    deadline = time.monotonic() + timeout_s
    leader = cluster.wait_ready(timeout_s=timeout_s)
    st = wait_until(lambda: prober.status(leader), max(1.0, deadline - time.monotonic()), "leader status")
    target = st.commit_index

    def caught_up() -> bool:
        sts = [prober.status(n) for n in cluster.nodes]
        return all(s is not None and s.last_applied >= target for s in sts)

    wait_until(caught_up, max(1.0, deadline - time.monotonic()), f"every node to apply index {target}")
    agreed = wait_until(
        lambda: prober.agreed_leader(list(cluster.nodes)),
        max(1.0, deadline - time.monotonic()),
        "all nodes to agree on the leader",
    )
    return agreed[0], agreed[1]


# ---- faults ---------------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    """"kill" or "partition"."""
    index: int
    old_leader: str
    old_term: int
    t_fault: float
    apply_s: float = 0.0
    """Partition: how long applying the nftables rules took (``t_fault`` is when they are all in place)."""
    new_leader: str | None = None
    new_term: int | None = None
    leader_s: float | None = None
    stepdown_s: float | None = None
    """Partition: when the isolated old leader stopped reporting itself as leader."""
    probe_s: float | None = None
    """Partition: fault -> a probe run submitted to the majority side succeeded."""
    probe_placements: list[str] = field(default_factory=list)
    """Partition: where the probe's task was started (attempt, node), from its watch stream."""
    old_marked_down: bool | None = None
    """Partition: the majority had marked the isolated node down before the heal."""
    down_before_heal: list[str] = field(default_factory=list)
    """Partition: every node the new leader's state had marked down just before the heal."""
    recovered_s: float | None = None
    """Fault -> all three nodes healthy and caught up again (after restart / heal)."""
    restart_s: float | None = None
    """Kill: restart of the killed node -> all healthy."""
    reelected_after_rejoin: bool | None = None
    """The leader or term changed when the killed/isolated node came back (a disruptive rejoin)."""
    term_after: int | None = None
    next_completion_s: float | None = None
    next_new_work_s: float | None = None
    t_quiet_from: float = math.nan
    error: str = ""


def poll_new_leader(
    prober: Prober,
    fault: Fault,
    majority: Sequence[str],
    watch_old: bool,
    on_leader: Callable[[], None] | None = None,
) -> None:
    """Poll until the majority agrees on a new leader (and, if ``watch_old``, the old one steps down).

    ``on_leader`` runs once, as soon as the new leader is seen (it must not block).
    """
    deadline = fault.t_fault + LEADER_TIMEOUT_S
    while time.time() < deadline:
        if fault.leader_s is None:
            got = prober.agreed_leader(majority)
            if got is not None:
                fault.leader_s = time.time() - fault.t_fault
                fault.new_leader, fault.new_term = got
                if on_leader is not None:
                    on_leader()
        if watch_old and fault.stepdown_s is None:
            st = prober.status(fault.old_leader)
            if st is not None and st.leader != fault.old_leader:
                fault.stepdown_s = time.time() - fault.t_fault
        stepdown_done = not watch_old or fault.stepdown_s is not None
        if fault.leader_s is not None and (stepdown_done or time.time() - fault.t_fault > STEPDOWN_WATCH_S):
            return
        time.sleep(POLL_S)
    if fault.leader_s is None:
        raise TimeoutError(f"no new leader agreed by {list(majority)} within {LEADER_TIMEOUT_S} s")


def kill_cycle(cluster: LocalCluster, prober: Prober, index: int, leader: str, term: int) -> Fault:
    survivors = [n for n in NODES if n != leader]
    fault = Fault("kill", index, leader, term, time.time())
    cluster.kill(leader)
    try:
        poll_new_leader(prober, fault, survivors, watch_old=False)
    finally:
        t_restart = time.time()
        cluster.start_node(leader)
    new_leader, fault.term_after = wait_healthy(cluster, prober, HEALTHY_TIMEOUT_S)
    now = time.time()
    fault.restart_s = now - t_restart
    fault.recovered_s = now - fault.t_fault
    fault.reelected_after_rejoin = (new_leader, fault.term_after) != (fault.new_leader, fault.new_term)
    return fault


def run_probe(cluster: LocalCluster, majority: Sequence[str], ledger: Ledger, fault: Fault) -> None:
    """Submit a one-task run to the majority side and wait for it: progress during the partition."""
    probe = make_probe(f"{ledger.prefix}-probe-{fault.index}", fault.index)
    with Client(
        [cluster.nodes[n].grpc for n in majority],
        timeout_s=CLIENT_CALL_TIMEOUT_S,
        retry_deadline_s=PROBE_TIMEOUT_S,
    ) as client:
        submit_until_acked(client, probe, ledger, threading.Event(), PROBE_TIMEOUT_S)
        if probe.acked and probe.run_id is not None:
            try:
                for ev in client.watch(probe.run_id, timeout_s=PROBE_TIMEOUT_S):
                    if ev.kind == "task" and ev.status == "RUNNING":
                        fault.probe_placements.append(f"attempt {ev.attempt} on {ev.node}")
                    elif ev.kind == "snapshot" and ev.run is not None:
                        fault.probe_placements += [
                            f"attempt {t.attempt} on {t.node}"
                            for t in ev.run.tasks.values()
                            if t.status == "RUNNING"
                            and f"attempt {t.attempt} on {t.node}" not in fault.probe_placements
                        ]
                info = client.get(probe.run_id)
            except RaftmeshError as exc:
                probe.last_error = f"{type(exc).__name__}: {exc}"
            else:
                probe.final = info
                if info.status == "SUCCEEDED":
                    fault.probe_s = time.time() - fault.t_fault
                if not fault.probe_placements:  # it ran before the watch began: the final attempt only
                    fault.probe_placements = [f"attempt {t.attempt} on {t.node}" for t in info.tasks.values()]
    if fault.probe_s is None:
        fault.error = f"no progress on the majority side (probe: {probe.last_error or 'not done'})"


def partition_cycle(
    cluster: LocalCluster, lab: NetnsLab, prober: Prober, ledger: Ledger, index: int, leader: str, term: int
) -> Fault:
    majority = [n for n in NODES if n != leader]
    t_cut = time.time()
    lab.partition([{leader}, set(majority)])
    # Measured from when the rules are in place in every namespace: before that the old leader may
    # still commit (the rules go in one namespace after another), which would count as "new work".
    fault = Fault("partition", index, leader, term, time.time())
    fault.apply_s = fault.t_fault - t_cut
    prober_thread = threading.Thread(
        target=run_probe, args=(cluster, majority, ledger, fault), name="probe", daemon=True
    )
    try:
        poll_new_leader(prober, fault, majority, watch_old=True, on_leader=prober_thread.start)
        prober_thread.join(PROBE_TIMEOUT_S * 2)
        st = prober.status(fault.new_leader or majority[0])
        if st is not None:
            fault.old_marked_down = not next((m.up for m in st.members if m.id == leader), True)
            fault.down_before_heal = sorted(m.id for m in st.members if not m.up)
    finally:
        lab.heal()
    new_leader, fault.term_after = wait_healthy(cluster, prober, HEALTHY_TIMEOUT_S)
    fault.recovered_s = time.time() - fault.t_fault
    fault.reelected_after_rejoin = (new_leader, fault.term_after) != (fault.new_leader, fault.new_term)
    return fault


def scan_logs(cluster: LocalCluster) -> dict[str, dict[str, int]]:
    """Warnings and worse in the node logs, per node, grouped by logger and message (digits masked)."""
    out: dict[str, dict[str, int]] = {}
    for n in cluster.nodes.values():
        counts: dict[str, int] = {}
        try:
            with open(n.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        rec = {"level": "RAW", "logger": "stdout", "msg": line.strip()}
                    if rec.get("level") not in ("WARNING", "ERROR", "CRITICAL", "RAW"):
                        continue
                    msg = re.sub(r"\d+(\.\d+)?", "N", str(rec.get("msg", "")))[:110]
                    k = f"{rec.get('level')} {rec.get('logger')}: {msg}"
                    counts[k] = counts.get(k, 0) + 1
        except OSError:
            pass
        out[n.id] = counts
    return out


# ---- analysis -----------------------------------------------------------------------------------------


@dataclass
class Verification:
    submitted: int = 0
    acknowledged: int = 0
    succeeded: int = 0
    not_succeeded: list[str] = field(default_factory=list)
    wrong_output: list[str] = field(default_factory=list)
    unacknowledged: int = 0
    unacknowledged_found: int = 0
    unacknowledged_found_succeeded: int = 0
    unexpected_runs: list[str] = field(default_factory=list)
    duplicate_keys: list[str] = field(default_factory=list)
    runs_in_cluster: int = 0
    converged_digest: str = ""
    converge_error: str = ""
    tasks_reassigned: int = 0
    """Tasks that needed more than one attempt (an attempt lost with a node)."""
    run_latency_s: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.not_succeeded
            or self.wrong_output
            or self.unexpected_runs
            or self.duplicate_keys
            or self.converge_error
        )


def list_all_runs(client: Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = client.list_runs(limit=1000, offset=len(out))
        out.extend(page)
        if len(page) < 1000:
            return out


def verify(cluster: LocalCluster, ledger: Ledger) -> Verification:
    v = Verification()
    subs = ledger.snapshot()
    v.submitted = len(subs)
    client = cluster.client(timeout_s=10.0, retry_deadline_s=60.0)
    for s in subs:
        if s.acked and s.run_id is not None and s.final is None:
            try:
                s.final = client.wait(s.run_id, timeout_s=DRAIN_TIMEOUT_S)
            except RaftmeshError as exc:
                s.last_error = f"not finished at the end: {type(exc).__name__}: {exc}"
    runs = list_all_runs(client)
    v.runs_in_cluster = len(runs)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_key.setdefault(r["idempotency_key"], []).append(r)
    v.duplicate_keys = sorted(k for k, rs in by_key.items() if len(rs) > 1)
    ours = {s.key for s in subs}
    v.unexpected_runs = sorted(
        f"{r['run_id']} (key {r['idempotency_key']!r})" for r in runs if r["idempotency_key"] not in ours
    )
    for s in subs:
        if s.acked:
            continue
        v.unacknowledged += 1
        found = by_key.get(s.key)
        if found:  # the submit committed but its answer was lost: the run exists, it must be fine too
            v.unacknowledged_found += 1
            s.run_id = found[0]["run_id"]
            with contextlib.suppress(RaftmeshError):
                s.final = client.wait(s.run_id, timeout_s=DRAIN_TIMEOUT_S)
            if s.final is not None and s.final.status == "SUCCEEDED":
                v.unacknowledged_found_succeeded += 1
    latencies: list[float] = []
    for s in subs:
        if not s.acked:
            continue
        v.acknowledged += 1
        info = s.final
        if info is None or info.status != "SUCCEEDED":
            why = s.last_error if info is None else f"{info.status}: {info.error}"
            v.not_succeeded.append(f"{s.run_id} (key {s.key}): {why}")
            continue
        v.succeeded += 1
        got = {tid: t.output for tid, t in info.tasks.items()}
        if got != s.expected:
            v.wrong_output.append(f"{s.run_id} (key {s.key}): {got} != {s.expected}")
        if info.finished_ms and info.created_ms:
            latencies.append((info.finished_ms - info.created_ms) / 1000.0)
        v.tasks_reassigned += sum(1 for t in info.tasks.values() if t.attempt > 1)
    v.run_latency_s = summary(latencies)
    try:
        v.converged_digest = cluster.wait_converged(timeout_s=CONVERGE_TIMEOUT_S)
    except (TimeoutError, RaftmeshError) as exc:
        v.converge_error = str(exc)
    return v


def completions(subs: Sequence[Submission]) -> tuple[list[int], list[tuple[int, int]]]:
    """Sorted finished_ms of every SUCCEEDED task, and (started_ms, finished_ms) pairs."""
    done: list[int] = []
    pairs: list[tuple[int, int]] = []
    for s in subs:
        if s.final is None:
            continue
        for t in s.final.tasks.values():
            if t.status == "SUCCEEDED" and t.finished_ms:
                done.append(t.finished_ms)
                pairs.append((t.started_ms, t.finished_ms))
    done.sort()
    return done, pairs


def annotate(faults: list[Fault], subs: Sequence[Submission]) -> dict[str, Any]:
    """Fill each fault's completion figures; return the steady-state completion gap figures."""
    done, pairs = completions(subs)
    for f in faults:
        t_ms = f.t_fault * 1000.0
        i = bisect.bisect_right(done, t_ms)
        # finished_ms are whole ms: "strictly greater than t_fault" on the ms scale
        while i < len(done) and done[i] <= t_ms:
            i += 1
        f.next_completion_s = (done[i] - t_ms) / 1000.0 if i < len(done) else None
        new_work = [fin for st, fin in pairs if st > t_ms]
        f.next_new_work_s = (min(new_work) - t_ms) / 1000.0 if new_work else None
    # Steady state: gaps between consecutive completions inside quiet windows (from when the cluster was
    # healthy again + settle, to the next fault).
    starts = sorted(faults, key=lambda f: f.t_fault)
    windows: list[tuple[float, float]] = []
    prev_quiet = math.nan
    for f in starts:
        if not math.isnan(prev_quiet):
            windows.append((prev_quiet * 1000.0, f.t_fault * 1000.0))
        prev_quiet = f.t_quiet_from
    gaps: list[float] = []
    for a, b in itertools.pairwise(done):
        if any(lo <= a and b <= hi for lo, hi in windows):
            gaps.append(float(b - a))
    return {
        "completions": len(done),
        "gap_ms": summary(gaps) | {"p99": percentile(gaps, 99)},
    }


# ---- report ----------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def render(report: dict[str, Any]) -> str:
    cfg, env, res = report["config"], report["environment"], report["results"]
    lines = [
        "raftmesh failover benchmark",
        f"  machine : {env['cpu_count']} CPUs, Python {env['python']}, {env['platform']}",
        f"  load    : 1-min load average {env['loadavg_start'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} "
        f"at end; {env['foreign_raftmesh_nodes_at_start']} raftmesh node processes of other runs at start "
        "(other work on the machine makes the figures noisy)",
        f"  cluster : 3 nodes, {cfg['network']}; --node-down-after {cfg['node_down_after_s']} s; "
        f"election timeout {ELECTION_S[0]:g}-{ELECTION_S[1]:g} s, leader fallback {LEADER_FALLBACK_S:g} s",
        f"  workload: {cfg['clients']} client threads, {WINDOW} runs in flight each: 3-task `sum` chains and "
        f"single 0.1-0.3 s `sleep` tasks (seed {cfg['seed']})",
        f"  faults  : {cfg['kills']} leader kills (kill -9 + restart), {cfg['partitions']} leader isolations"
        + (f" -- partitions SKIPPED: {cfg['partitions_skipped']}" if cfg["partitions_skipped"] else ""),
        "",
        f"  {'seconds from the fault to ...':<44}{'n':>4}{'median':>9}{'p90':>9}{'max':>9}",
    ]
    for kind, title in (("kill", "kill -9 the leader"), ("partition", "isolate the leader (partition)")):
        s = res.get(kind)
        if not s:
            continue
        lines.append(f"  {title}")
        rows = [
            ("new leader (reported by the majority)", s["leader_s"]),
            ("next completion (first finished_ms > t)", s["next_completion_s"]),
            ("next new work done (task assigned after t)", s["next_new_work_s"]),
        ]
        if kind == "partition":
            rows.insert(1, ("old leader steps down (isolated side)", s["stepdown_s"]))
            rows.append(("probe run on the majority side succeeded", s["probe_s"]))
        rows.append(
            ("all 3 nodes healthy again" + (" (after heal)" if kind == "partition" else ""), s["recovered_s"])
        )
        for label, st in rows:
            lines.append(
                f"    {label:<42}{st['n']:>4}{_fmt(st['median']):>9}{_fmt(st['p90']):>9}{_fmt(st['max']):>9}"
                + (f"   ({st['missing']} missing)" if st["missing"] else "")
            )
        lines.append(
            f"    more than one election round (term +2 or more): {s['extra_election_rounds']}/{s['count']}; "
            f"re-election when the node came back: {s['reelected_after_rejoin']}/{s['count']}"
            + (
                f"; isolated node marked down before heal: {s['old_marked_down']}/{s['count']}"
                f"; a healthy majority node marked down: {s['majority_node_marked_down']}/{s['count']}"
                if kind == "partition"
                else ""
            )
            + (f"; errors: {s['errors']}" if s["errors"] else "")
        )
        if kind == "partition":
            lines.append(
                f"    (from when the nftables rules were in place; applying them took median "
                f"{s['apply_s']['median'] * 1000:.0f} ms, max {s['apply_s']['max'] * 1000:.0f} ms)"
            )
    if cfg["partitions_skipped"]:
        lines.append(f"  isolate the leader (partition): SKIPPED -- {cfg['partitions_skipped']}")
    gap = res["steady_gap_ms"]
    lines += [
        f"  steady state: {res['completions']:,} task completions; gap between consecutive completions "
        f"median {_fmt(gap['median'], '.0f')} ms, p99 {_fmt(gap['p99'], '.0f')} ms (resolution of the completion rows)",
        "",
        "  per fault (s): kind  #  old->new  term  leader  next-completion  next-new-work  recovered  "
        "rejoin-reelection",
    ]
    for f in report["faults"]:
        lines.append(
            f"    {f['kind']:<9} {f['index']:>2}  {f['old_leader']}->{f['new_leader'] or '?'}  "
            f"{'+' + str(f['new_term'] - f['old_term']) if f['new_term'] is not None else '?':>3}  "
            f"{_fmt(f['leader_s']):>6}  {_fmt(f['next_completion_s'], '.3f'):>7}  "
            f"{_fmt(f['next_new_work_s'], '.3f'):>7}  {_fmt(f['recovered_s']):>6}  "
            f"{'yes' if f['reelected_after_rejoin'] else 'no'}"
            + (
                f"  step-down {_fmt(f['stepdown_s'])}  probe {_fmt(f['probe_s'])} "
                f"({', '.join(f['probe_placements']) or '?'})"
                + (f"  down before heal: {','.join(f['down_before_heal'])}" if f["down_before_heal"] else "")
                if f["kind"] == "partition"
                else ""
            )
            + (f"  ERROR {f['error']}" if f["error"] else "")
        )
    v = report["verification"]
    lat = v["run_latency_s"]
    lines += [
        "",
        f"  runs    : {v['submitted']:,} submitted, {v['acknowledged']:,} acknowledged, {v['succeeded']:,} "
        f"SUCCEEDED with the right outputs, {len(v['not_succeeded'])} acknowledged but not SUCCEEDED, "
        f"{len(v['wrong_output'])} wrong outputs",
        f"            {v['unacknowledged']} never acknowledged ({v['unacknowledged_found']} of them exist in the "
        f"cluster, {v['unacknowledged_found_succeeded']} SUCCEEDED); {len(v['unexpected_runs'])} unexpected runs; "
        f"{len(v['duplicate_keys'])} keys with two runs; {v['runs_in_cluster']:,} runs in the cluster",
        f"            run latency median {_fmt(lat.get('median'))} s, p90 {_fmt(lat.get('p90'))} s, "
        f"max {_fmt(lat.get('max'))} s; {v['tasks_reassigned']} tasks needed a new attempt after a node loss",
        "  replicas: "
        + (
            f"converged, digest {v['converged_digest'][:16]}"
            if not v["converge_error"]
            else f"NOT converged: {v['converge_error']}"
        ),
        f"  verdict : {'OK: no acknowledged run was lost' if report['ok'] else 'FAILED: ' + '; '.join(report['problems'])}",
        "",
        *render_log_warnings(report["node_log_warnings"]),
        "",
        "  'next completion' uses finished_ms, stamped by the completing node when it proposes the result",
        "  (before it commits), so tasks already running on the survivors make it small; 'next new work done'",
        "  needs an assignment committed by the new leader and shows how long the cluster really stood still.",
        "  No side-by-side peer: Dask distributed has no scheduler failover (a dead scheduler loses all of its",
        "  pending work), so there is nothing comparable to measure.",
    ]
    return "\n".join(lines)


def render_log_warnings(warnings: dict[str, dict[str, int]]) -> list[str]:
    lines = ["  node logs: warnings and worse (digits masked as N), count per node"]
    keys = sorted(
        {k for c in warnings.values() for k in c}, key=lambda k: -sum(c.get(k, 0) for c in warnings.values())
    )
    if not keys:
        lines.append("    none")
    for k in keys[:12]:
        per = ", ".join(f"{n} {c[k]}" for n, c in warnings.items() if c.get(k))
        lines.append(f"    [{per}] {k}")
    if len(keys) > 12:
        lines.append(f"    ... {len(keys) - 12} more kinds (see --json)")
    return lines


def summarize_kind(faults: list[Fault], kind: str) -> dict[str, Any] | None:
    fs = [f for f in faults if f.kind == kind]
    if not fs:
        return None
    return {
        "count": len(fs),
        "leader_s": summary([f.leader_s for f in fs]),
        "stepdown_s": summary([f.stepdown_s for f in fs]),
        "next_completion_s": summary([f.next_completion_s for f in fs]),
        "next_new_work_s": summary([f.next_new_work_s for f in fs]),
        "probe_s": summary([f.probe_s for f in fs]),
        "apply_s": summary([f.apply_s for f in fs]),
        "recovered_s": summary([f.recovered_s for f in fs]),
        "restart_s": summary([f.restart_s for f in fs]),
        "reelected_after_rejoin": sum(1 for f in fs if f.reelected_after_rejoin),
        "extra_election_rounds": sum(1 for f in fs if f.new_term is not None and f.new_term - f.old_term > 1),
        "old_marked_down": sum(1 for f in fs if f.old_marked_down),
        "majority_node_marked_down": sum(
            1 for f in fs if set(f.down_before_heal) - {f.old_leader, f.new_leader or ""}
        ),
        "errors": sum(1 for f in fs if f.error),
    }


def foreign_node_processes() -> int:
    """raftmesh node processes on this machine that this benchmark did not start (noise)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"raftmesh.cli.main\x00node" in cmd:
            n += 1
    return n


# ---- main ---------------------------------------------------------------------------------------------------


def _install_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {v}")
    return v


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Kill -9 / isolate the raftmesh leader under a steady workload; time the failover."
    )
    p.add_argument("--kills", type=non_negative_int, default=20, help="leader kills (default 20)")
    p.add_argument(
        "--partitions", type=non_negative_int, default=20, help="leader isolations (default 20; netns only)"
    )
    p.add_argument(
        "--node-down-after",
        type=float,
        default=5.0,
        help="seconds without heartbeats before the leader marks a node down (passed to nodes; default 5)",
    )
    p.add_argument("--clients", type=positive_int, default=4, help="workload client threads (default 4)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds of workload between faults (default 2)")
    p.add_argument("--seed", type=int, default=None, help="workload seed (default: random)")
    p.add_argument("--logs-dir", default=None, help="copy the node logs here at the end")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    load_start = os.getloadavg()
    foreign = foreign_node_processes()
    ok_netns, why = is_supported()
    want_partitions = args.partitions > 0
    lab: NetnsLab | None = None
    partitions_skipped = ""
    if ok_netns:
        lab = NetnsLab(NODES, prefix="rmbf")
        stack.callback(lab.cleanup)
        lab.start()
        _install_handlers()  # ours again: nodes must be stopped before the lab is removed
        log(f"network namespaces: lab {lab.run_name} on {lab.subnet}")
    else:
        if want_partitions:
            partitions_skipped = f"network namespaces unavailable here ({why}); nodes run on loopback"
            log(f"partitions SKIPPED: {partitions_skipped}")
    extra = ["--node-down-after", str(args.node_down_after)]
    if lab is not None:
        cluster = LocalCluster(
            3, hosts={n: lab.ip_of(n) for n in NODES}, exec_prefix=lab.exec_prefix, extra_args=extra
        )
    else:
        cluster = LocalCluster(3, extra_args=extra)
    stack.callback(cluster.close)  # registered after the lab's cleanup: runs first (LIFO)
    if args.logs_dir:
        stack.callback(copy_logs, cluster, args.logs_dir)
    log(f"starting 3 nodes (data in {cluster.base_dir})")
    cluster.start(timeout_s=STARTUP_TIMEOUT_S)
    prober = Prober(cluster)
    stack.callback(prober.close)
    leader, term = wait_healthy(cluster, prober, STARTUP_TIMEOUT_S)
    log(f"cluster ready, leader {leader} (term {term}); pids {[n.pid for n in cluster.nodes.values()]}")

    ledger = Ledger(f"bf-{secrets.token_hex(4)}")
    workload = Workload(cluster.addresses, args.clients, ledger, seed)
    stack.callback(workload.abort.set)
    stack.callback(workload.stop_event.set)
    workload.start()
    time.sleep(WARMUP_S)
    faults: list[Fault] = []
    problems: list[str] = []
    t_warm_end = time.time()
    plan = [("kill", i) for i in range(args.kills)]
    if lab is not None:
        plan += [("partition", i) for i in range(args.partitions)]
    for kind, i in plan:
        n_kind = args.kills if kind == "kill" else args.partitions
        try:
            leader, term = wait_healthy(cluster, prober, HEALTHY_TIMEOUT_S)
            if kind == "kill":
                f = kill_cycle(cluster, prober, i + 1, leader, term)
            else:
                assert lab is not None
                f = partition_cycle(cluster, lab, prober, ledger, i + 1, leader, term)
        except (TimeoutError, RaftmeshError) as exc:
            msg = f"{kind} {i + 1}: {type(exc).__name__}: {exc}"
            problems.append(f"the cluster did not recover: {msg}")
            log(f"ERROR {msg}; stopping the fault loop")
            break
        f.t_quiet_from = time.time() + QUIET_AFTER_HEALTHY_S
        faults.append(f)
        log(
            f"{kind} {i + 1}/{n_kind}: {f.old_leader} -> {f.new_leader} in {_fmt(f.leader_s)} s"
            + (f", old leader stepped down after {_fmt(f.stepdown_s)} s" if kind == "partition" else "")
            + (f", probe ok after {_fmt(f.probe_s)} s" if kind == "partition" else "")
            + f"; healthy again after {_fmt(f.recovered_s)} s"
            + ("; re-election on rejoin" if f.reelected_after_rejoin else "")
            + (f"; {f.error}" if f.error else "")
        )
        time.sleep(args.settle)
    log("stopping the workload and draining")
    workload.stop(timeout_s=SUBMIT_GIVE_UP_S + WAIT_TIMEOUT_S * (WINDOW + 1))
    problems += [f"workload thread crashed: {e}" for e in workload.errors]
    v = verify(cluster, ledger)
    log_warnings = scan_logs(cluster)
    subs = ledger.snapshot()
    # the warm-up window [workload start + 1 s, first fault] counts as steady state too
    warm = Fault("warmup", 0, "", 0, t_warm_end - WARMUP_S + 1.0)
    warm.t_quiet_from = warm.t_fault
    steady = annotate([warm, *faults], subs)
    if v.not_succeeded:
        problems.append(
            f"{len(v.not_succeeded)} acknowledged runs did not SUCCEED, e.g. {v.not_succeeded[:3]}"
        )
    if v.wrong_output:
        problems.append(f"{len(v.wrong_output)} runs with wrong outputs, e.g. {v.wrong_output[:3]}")
    if v.unexpected_runs:
        problems.append(f"{len(v.unexpected_runs)} unexpected runs, e.g. {v.unexpected_runs[:3]}")
    if v.duplicate_keys:
        problems.append(f"{len(v.duplicate_keys)} idempotency keys with more than one run")
    if v.converge_error:
        problems.append(f"replicas did not converge: {v.converge_error}")
    if v.unacknowledged_found != v.unacknowledged_found_succeeded:
        problems.append("a run whose submit was never acknowledged exists but did not SUCCEED")
    return {
        "benchmark": "raftmesh-failover",
        "environment": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": list(load_start),
            "loadavg_end": list(os.getloadavg()),
            "foreign_raftmesh_nodes_at_start": foreign,
        },
        "config": {
            "kills": args.kills,
            "partitions": args.partitions if lab is not None else 0,
            "partitions_skipped": partitions_skipped,
            "network": "one network namespace per node (nftables partitions)" if lab else "loopback",
            "node_down_after_s": args.node_down_after,
            "clients": args.clients,
            "runs_in_flight_per_client": WINDOW,
            "settle_s": args.settle,
            "seed": seed,
            "election_timeout_s": list(ELECTION_S),
            "leader_fallback_s": LEADER_FALLBACK_S,
        },
        "results": {
            "kill": summarize_kind(faults, "kill"),
            "partition": summarize_kind(faults, "partition"),
            "completions": steady["completions"],
            "steady_gap_ms": steady["gap_ms"],
        },
        "faults": [asdict(f) for f in faults],
        "node_log_warnings": log_warnings,
        "verification": asdict(v),
        "ok": not problems and v.ok,
        "problems": problems,
        "dask": "no comparison: Dask distributed has no scheduler failover (a dead scheduler loses the work)",
    }


def copy_logs(cluster: LocalCluster, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    for n in cluster.nodes.values():
        with contextlib.suppress(OSError):
            shutil.copy(n.log_path, os.path.join(dest, f"{n.id}.log"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _install_handlers()
    t0 = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            report = run(args, stack)
            log("stopping the cluster")
    except Interrupted as exc:
        log(f"{exc}: stopped the nodes, removed the namespaces and the data directories")
        return 128 + exc.signum
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    report["elapsed_s"] = time.monotonic() - t0
    table = render(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(finite(report), indent=2, allow_nan=False))
    else:
        print(table)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
