#!/usr/bin/env python3
"""raftmesh vs Dask distributed: lock acquire+release cycles/s and acquire latency, 1 and 8 clients.

What is measured
----------------
Both systems run on this machine in the same run, side by side, for the whole run:

* raftmesh: a ``LocalCluster`` of 3 real node processes on loopback, data in a temporary directory.
  Every lock client talks to the Raft leader (the analogue of a Dask client talking to its scheduler).
  One extra raftmesh-only row per contended scenario spreads the same clients round-robin over all
  three nodes, which shows what serving a lock client on a follower costs.
* Dask: a ``distributed.LocalCluster`` with 3 worker processes x 1 thread (``processes=True``), on
  loopback, no dashboard, scratch space in the same temporary directory; its scheduler runs in a
  thread of this process, as in ``scripts/bench.py``. ``distributed.Lock`` lives entirely in the
  scheduler (it is a ``Semaphore`` with one lease); the workers take no part in it.

Lock clients: every client is a thread of this benchmark process with its own client object: its own
``raftmesh.client.Client`` (own gRPC channel) for raftmesh, its own ``distributed.Client`` and its own
``distributed.Lock`` instance (same lock name) for Dask. Threads rather than processes for both,
because then both systems' clients run in the very same harness (same process, same GIL, same clock for
the overlap check) and the comparison is about the servers. One consequence to know when reading the
Dask figures: every synchronous ``distributed.Client`` in a process shares the process's one IO-loop
thread, and with a ``LocalCluster`` that loop also runs the scheduler, so Dask's 8 clients and its
scheduler do all their Python work on one thread (no cross-process hop to the scheduler, but no
parallelism either); raftmesh's gRPC calls release the GIL while they wait, and its servers are other
processes. Putting each Dask client in its own process would add 8 processes to a 2-core machine
(and 8 more event loops) and would then also call for raftmesh clients in processes; it is not what a
Dask user in one program gets, so the threaded layout is the one measured. (A trial on this 2-core
machine with each of 8 Dask clients in its own process was not consistently faster or slower than
threads: the difference was within the run-to-run noise.)

Workloads, each for ``--cycles`` cycles in all (default 300; or ``--duration`` seconds), after a short
untimed warm-up (3 cycles per client, checked like the rest):

* 1 client: acquire + release of one lock in a loop, no contention.
* N clients (``--clients``, default ``1,8``): N threads contend for the same lock; each claims the
  next cycle from a shared counter, so exactly ``--cycles`` cycles happen and none is idle while
  cycles remain. Fairness figures: the fewest and most cycles any client got, and how often the
  next grant went to the client that had just released (raftmesh serves waiters FIFO; Dask lets
  whoever asks first after a release win).

The critical section does nothing but the checks below and one ``time.sleep(0)``, which yields the GIL
so that, were the lock not exclusive, another client thread could run inside the section and the
checks would see it (with an empty section they would not: a deliberately broken lock passed them).
It takes microseconds, so the figures are the locks' own overhead.

A cycle: ``t_call`` -> acquire (blocks until granted) -> ``t_enter`` -> critical section -> ``t_exit``
-> release -> ``t_done``. Acquire latency = ``t_enter - t_call`` (from the acquire call until the
grant is known to the client, including any wait for other holders); release latency =
``t_done - t_exit``; cycles/s = cycles / (last ``t_done`` - first ``t_call``). p50 and p99 use linear
interpolation between order statistics. All timestamps are ``time.monotonic_ns()``.

raftmesh uses the raw API, ``client.locks.acquire(name, owner=..., ttl_s=30, wait_s=30)`` and
``client.locks.release(owner, name, token)`` (no keep-alive thread; the 30 s TTL matches Dask's default
``lease-timeout`` and is never approached). In Raft terms a cycle costs:

* acquire = one log entry (a ``LockAcquire`` command, committed on a majority and applied). If the
  lock is free it is granted in that entry and the reply follows its application on the serving node.
  If it is held, the entry enqueues the request and the call is parked on the serving node until an
  applied entry grants it: the holder's release entry grants the first waiter in the same entry (no
  extra entry for the hand-off), and the parked call returns when the serving node has applied it.
* release = one log entry (a ``LockRelease`` command), which also grants the next waiter, if any.

So 2 commands per cycle, whatever the contention, and at most 2 log entries: fewer when the
proposer's group commit carries several clients' commands in one entry (under contention). The table
shows the measured commit-index advance per cycle (anything else committed meanwhile, e.g. a ``Tick``
when a timer falls due, counts too). A grant's fencing token is the state machine's revision at the
command that granted it (the acquire itself, or the release that handed the lock over), so tokens
advance by about 2 per cycle. A client served by a follower costs more: the follower forwards each
command to the leader, and its reply (or a parked grant) waits until the follower has applied the
entry, which it learns from the leader's next AppendEntries.

Dask's acquire is one message round trip to the scheduler (a waiter is parked there on an
``asyncio.Event``; every release wakes all waiters, and whichever retries first wins: no FIFO),
release is another, and nothing is written anywhere.

Correctness, checked while running (a violation makes the run fail, exit 1):

* hold intervals ``[t_enter, t_exit]`` of all clients never overlap (sorted by ``t_enter``, each
  interval starts after the previous one ended), and an in-process guard sees at most one client in
  the critical section at any time;
* raftmesh: the fencing tokens strictly increase in grant order (the order of ``t_enter``, which the
  check above makes a total order), and afterwards the lock has no holder and no waiter and its
  ``last_token`` is the last token granted;
* Dask (which has no fencing tokens): afterwards the lock is not held;
* every acquire is granted within its 30 s wait, every release succeeds.

How to read the ratios
----------------------
Every ratio is raftmesh / Dask: for cycles/s below 1 means raftmesh does fewer cycles per second; for
latency above 1 means raftmesh takes longer. raftmesh commits every acquire and release to a Raft log
on a majority of its nodes before answering, so a granted lock and its fencing token survive the loss
of any minority of nodes (and stale holders are fenced off); Dask's lock is a counter in the
scheduler's memory with no fencing token, gone if the scheduler dies, and its docs warn that a lease
timeout can let two holders in at once. The ratios are the cost of that safety on this machine, not a
verdict on either system. Both clusters stay up for the whole run, and anything else running on the
machine shows up in the figures: the table prints the CPU count and the load average.

Usage::

    python scripts/bench_locks.py                      # defaults: 300 cycles, 1 and 8 clients
    python scripts/bench_locks.py --clients 1,2,8 --cycles 1000
    python scripts/bench_locks.py --duration 5         # 5 s per scenario instead of a cycle count
    python scripts/bench_locks.py --json > out.json    # JSON on stdout, the table on stderr
    python scripts/bench_locks.py --skip-dask          # raftmesh only
    python scripts/bench_locks.py --baseline-tree /work/wt/base   # also this tree / that tree

``--baseline-tree DIR`` starts a second 3-node cluster whose nodes run the code in DIR (put first
on their ``PYTHONPATH``) and runs every scenario on it too, in the same run, turn about with this
tree's; the table adds this tree / baseline ratios. The lock clients are this tree's SDK for both.

Dask is an optional dependency: ``pip install -e '.[bench]'``. Everything started is stopped, and the
temporary directory removed, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import math
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from _benchkit import (
    baseline_env,
    dask_cluster,
    dask_importable,
    environment,
    percentile,
    positive_int,
    ratio,
    run_bench,
)

from raftmesh.client import Client
from raftmesh.localcluster import LocalCluster

NODES = 3
DASK_WORKERS = 3
LOCK_TTL_S = 30.0
"""raftmesh lease TTL: the same as Dask's default ``distributed.scheduler.locks.lease-timeout``."""
WAIT_S = 30.0
"""How long one acquire may wait (raftmesh ``wait_s``, Dask ``timeout``); a timeout fails the run."""
WARMUP_CYCLES_PER_CLIENT = 3
JOIN_POLL_S = 0.2
INSTALL_HINT = "pip install -e '.[bench]'  (the project's 'bench' extra contains dask[distributed])"


class WrongAnswer(AssertionError):
    """A lock was not exclusive, a token went backwards, or an acquire/release failed."""


# ---- the two systems behind one small interface ----------------------------------------------------


class Locker(Protocol):
    """One client's handle on the benchmark lock."""

    def acquire(self) -> int | None:
        """Block until granted; the fencing token (raftmesh) or None (Dask). Raises if not granted."""
        ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class RaftmeshLocker:
    """The raw API: ``client.locks.acquire`` (wait on the server) and ``client.locks.release``."""

    def __init__(self, address: str, name: str, owner: str) -> None:
        # Fail fast instead of retrying for 30 s against a cluster that is being stopped.
        self.client = Client([address], retry_deadline_s=5.0)
        self.name = name
        self.owner = owner
        self.token = 0

    def acquire(self) -> int | None:
        granted, token, rid = self.client.locks.acquire(
            self.name, owner=self.owner, ttl_s=LOCK_TTL_S, wait_s=WAIT_S
        )
        if not granted:
            raise WrongAnswer(
                f"raftmesh: {self.owner} was not granted {self.name!r} within {WAIT_S} s ({rid})"
            )
        self.token = token
        return token

    def release(self) -> None:
        self.client.locks.release(self.owner, self.name, self.token)

    def close(self) -> None:
        self.client.close()


class DaskLocker:
    """A ``distributed.Lock`` bound to this thread's own ``distributed.Client``."""

    def __init__(self, scheduler_address: str, name: str) -> None:
        from dask.distributed import Client as DaskClient
        from dask.distributed import Lock

        self.client: Any = DaskClient(scheduler_address, set_as_default=False)
        self.lock: Any = Lock(name, scheduler_rpc=self.client.scheduler, loop=self.client.loop)
        self.name = name

    def acquire(self) -> int | None:
        if not self.lock.acquire(timeout=WAIT_S):
            raise WrongAnswer(f"Dask: lock {self.name!r} was not granted within {WAIT_S} s")
        return None

    def release(self) -> None:
        if not self.lock.release():
            raise WrongAnswer(f"Dask: releasing lock {self.name!r} failed")

    def close(self) -> None:
        cb = getattr(self.lock, "refresh_callback", None)
        if cb is not None:
            cb.stop()  # the lease refresher would otherwise keep calling a closed client
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)


# ---- one scenario: N threads, one lock ----------------------------------------------------------------


@dataclass(frozen=True)
class Cycle:
    client: int
    t_call: int
    t_enter: int
    t_exit: int
    t_done: int
    token: int | None

    @property
    def acquire_ms(self) -> float:
        return (self.t_enter - self.t_call) / 1e6

    @property
    def release_ms(self) -> float:
        return (self.t_done - self.t_exit) / 1e6


class Quota:
    """Hands out cycles to the client threads: ``total`` in all, or until ``deadline`` (monotonic s)."""

    def __init__(self, total: int | None, deadline_s: float | None) -> None:
        self._mu = threading.Lock()
        self._left = total
        self._deadline = deadline_s
        self.stop = threading.Event()
        """Set on the first error (or Ctrl-C): the other clients stop after their current cycle."""

    def claim(self) -> bool:
        if self.stop.is_set():
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        with self._mu:
            if self._left is None:
                return True
            if self._left <= 0:
                return False
            self._left -= 1
            return True


class Guard:
    """An in-process witness of mutual exclusion: counts the clients inside the critical section."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._inside: set[int] = set()
        self.violations: list[str] = []

    def enter(self, client: int) -> None:
        with self._mu:
            if self._inside:
                self.violations.append(f"client {client} entered while {sorted(self._inside)} were inside")
            self._inside.add(client)

    def exit(self, client: int) -> None:
        with self._mu:
            self._inside.discard(client)


def run_clients(lockers: Sequence[Locker], quota: Quota) -> list[Cycle]:
    """Every locker in its own thread, all started together; the cycles of all of them."""
    guard = Guard()
    start = threading.Barrier(len(lockers) + 1)
    per_client: list[list[Cycle]] = [[] for _ in lockers]
    errors: list[BaseException] = []

    def loop(i: int, lk: Locker) -> None:
        out = per_client[i]
        try:
            start.wait()
            while quota.claim():
                t_call = time.monotonic_ns()
                token = lk.acquire()
                t_enter = time.monotonic_ns()
                guard.enter(i)
                time.sleep(0)  # yield the GIL: were the lock not exclusive, another client could get in here
                guard.exit(i)
                t_exit = time.monotonic_ns()
                lk.release()
                t_done = time.monotonic_ns()
                out.append(Cycle(i, t_call, t_enter, t_exit, t_done, token))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            quota.stop.set()

    threads = [
        threading.Thread(target=loop, args=(i, lk), name=f"lock-client-{i}", daemon=True)
        for i, lk in enumerate(lockers)
    ]
    for t in threads:
        t.start()
    try:
        start.wait()
        for t in threads:
            while t.is_alive():  # short joins: a signal handler in the main thread still runs
                t.join(JOIN_POLL_S)
    except BaseException:
        quota.stop.set()
        start.abort()  # clients still at the start line leave with BrokenBarrierError
        raise
    if errors:
        exc = errors[0]
        if isinstance(exc, WrongAnswer):
            raise exc
        raise WrongAnswer(f"a lock client failed: {type(exc).__name__}: {exc}") from exc
    if guard.violations:
        raise WrongAnswer(
            f"mutual exclusion violated: {guard.violations[0]} ({len(guard.violations)} in all)"
        )
    cycles = sorted((c for cs in per_client for c in cs), key=lambda c: c.t_enter)
    check_exclusive(cycles)
    return cycles


def check_exclusive(cycles: Sequence[Cycle]) -> None:
    """Hold intervals never overlap; fencing tokens (if any) strictly increase in grant order."""
    for prev, cur in itertools.pairwise(cycles):
        if cur.t_enter < prev.t_exit:
            raise WrongAnswer(
                f"hold intervals overlap: client {cur.client} entered {prev.t_exit - cur.t_enter:,} ns "
                f"before client {prev.client} left"
            )
        if cur.token is not None and prev.token is not None and cur.token <= prev.token:
            raise WrongAnswer(
                f"fencing token did not increase: client {prev.client} got {prev.token}, then client "
                f"{cur.client} got {cur.token}"
            )


# ---- statistics ------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    clients: int
    cycles: list[Cycle]
    raft_entries: int | None = None
    last_token: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        cs = self.cycles
        wall_s = (max(c.t_done for c in cs) - min(c.t_call for c in cs)) / 1e9
        acq = [c.acquire_ms for c in cs]
        rel = [c.release_ms for c in cs]
        per_client = Counter(c.client for c in cs)
        # How often the next grant went to the client that had just released (barging, not FIFO).
        same = sum(1 for a, b in itertools.pairwise(cs) if a.client == b.client)
        out: dict[str, Any] = {
            "clients": self.clients,
            "cycles": len(cs),
            "wall_s": wall_s,
            "cycles_per_s": len(cs) / wall_s if wall_s > 0 else math.nan,
            "acquire_p50_ms": percentile(acq, 50),
            "acquire_p99_ms": percentile(acq, 99),
            "acquire_mean_ms": statistics.fmean(acq),
            "acquire_max_ms": max(acq),
            "release_p50_ms": percentile(rel, 50),
            "release_p99_ms": percentile(rel, 99),
            "cycles_per_client_min": min(per_client.get(i, 0) for i in range(self.clients)),
            "cycles_per_client_max": max(per_client.values()),
            "regrant_to_same_client": same / (len(cs) - 1) if len(cs) > 1 else math.nan,
            "checked": "hold intervals disjoint"
            + ("; fencing tokens strictly increasing" if cs[0].token is not None else ""),
            **self.extra,
        }
        if self.raft_entries is not None:
            out["raft_entries"] = self.raft_entries
            out["raft_entries_per_cycle"] = self.raft_entries / len(cs)
            out["first_token"] = cs[0].token
            out["last_token"] = self.last_token
        return out


# ---- the systems -------------------------------------------------------------------------------------------


class RaftmeshSystem:
    name = "raftmesh"

    def __init__(self, cluster: LocalCluster, leader: str, observer: Client) -> None:
        self.cluster = cluster
        self.leader = leader
        self.observer = observer

    def run(self, n: int, quota_for: Callable[[], Quota], spread: bool, label: str) -> ScenarioResult:
        name = f"bench/{label}/{uuid.uuid4().hex[:8]}"
        ids = list(self.cluster.nodes)
        if spread:  # round-robin over the nodes, leader first
            ids.remove(self.leader)
            ids.insert(0, self.leader)
            addrs = [self.cluster.nodes[ids[i % len(ids)]].grpc for i in range(n)]
        else:
            addrs = [self.cluster.nodes[self.leader].grpc] * n
        lockers = [RaftmeshLocker(a, name, f"bench-{label}-{i}") for i, a in enumerate(addrs)]
        try:
            run_clients(lockers, Quota(WARMUP_CYCLES_PER_CLIENT * n, None))
            before = self.observer.status().commit_index
            cycles = run_clients(lockers, quota_for())
            after = self.observer.status().commit_index
        finally:
            for lk in lockers:
                lk.close()
        # The table keeps a free lock's record (its last_token fences old holders) below 100,000 records,
        # so on this fresh cluster it must be there.
        found = [lk for lk in self.observer.locks.list(prefix=name) if lk["name"] == name]
        last = cycles[-1].token
        if not found:
            raise WrongAnswer(f"raftmesh: lock {name!r} has no record after the run")
        info = found[0]
        if info["holders"] or info["waiters"]:
            raise WrongAnswer(f"raftmesh: {name!r} still has holders/waiters after the run: {info}")
        if info["last_token"] != last:
            raise WrongAnswer(f"raftmesh: {name!r} last_token {info['last_token']} != last granted {last}")
        node_of = {n.grpc: i for i, n in self.cluster.nodes.items()}
        client_node = [node_of[a] for a in addrs]
        per_node = Counter(client_node)
        acquire_p50_by_node = {
            i: percentile([c.acquire_ms for c in cycles if client_node[c.client] == i], 50)
            for i in self.cluster.nodes
            if per_node[i]
        }
        return ScenarioResult(
            n,
            cycles,
            raft_entries=after - before,
            last_token=info["last_token"],
            extra={
                "clients_per_node": {i: per_node[i] for i in self.cluster.nodes},
                "acquire_p50_ms_by_node": acquire_p50_by_node,
                "final_state_checked": "no holder, no waiter, last_token = last token granted",
            },
        )


class DaskSystem:
    name = "Dask"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.address: str = client.scheduler.address

    def run(self, n: int, quota_for: Callable[[], Quota], label: str) -> ScenarioResult:
        from dask.distributed import Lock

        name = f"bench/{label}/{uuid.uuid4().hex[:8]}"
        lockers: list[DaskLocker] = []
        try:
            for _ in range(n):
                lockers.append(DaskLocker(self.address, name))
            run_clients(lockers, Quota(WARMUP_CYCLES_PER_CLIENT * n, None))
            cycles = run_clients(lockers, quota_for())
        finally:
            for lk in lockers:
                lk.close()
        probe: Any = Lock(name, scheduler_rpc=self.client.scheduler, loop=self.client.loop)
        try:
            if probe.locked():
                raise WrongAnswer(f"Dask: lock {name!r} is still held after the run")
        finally:
            cb = getattr(probe, "refresh_callback", None)
            if cb is not None:
                cb.stop()
        return ScenarioResult(n, cycles)


# ---- environment and output ----------------------------------------------------------------------------------


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def render_table(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["config"]
    vs = env["versions"]
    dk_on = report["dask_skipped"] is None
    load0, load1 = env["loadavg_1_5_15_at_start"], env["loadavg_1_5_15_at_end"]
    amount = f"{cfg['duration_s']:g} s" if cfg["duration_s"] else f"{cfg['cycles']} cycles"
    lines = [
        "raftmesh vs Dask distributed: lock acquire+release benchmark",
        f"  machine : {env['cpu_count']} CPUs ({env['usable_cpus']} usable), Python {env['python']}, "
        f"{env['platform']}",
        f"  load    : load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} (1/5/15 min) at start, "
        f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at end (other processes skew the figures)",
        f"  versions: raftmesh {vs['raftmesh']}, pysyncobj {vs['pysyncobj']}, grpcio {vs['grpcio']}, "
        f"dask {vs['dask'] or '-'}, distributed {vs['distributed'] or '-'}",
        f"  raftmesh: {cfg['nodes']} node processes, Raft on loopback; raw client.locks.acquire/release, "
        f"ttl {cfg['ttl_s']:g} s, wait {cfg['wait_s']:g} s; clients talk to the leader ({cfg['leader']})",
        "  Dask    : "
        + (
            f"LocalCluster, {cfg['dask_workers']} worker processes x 1 thread, scheduler in this process; "
            "distributed.Lock"
            if dk_on
            else f"SKIPPED ({report['dask_skipped']})"
        ),
        "  clients : one thread of this process per client, each with its own Client (raftmesh) / its own",
        "            distributed.Client + Lock (Dask); all contend for one lock; "
        f"{amount} per scenario after {cfg['warmup_cycles_per_client']} warm-up cycles per client",
    ]
    if cfg.get("baseline_tree"):
        lines.append(
            f"  baseline: the same scenarios on a cluster running {cfg['baseline_tree']} (turn about)"
        )
    lines.append("")

    def row(label: str, key: str, spec: str, rm: dict[str, Any], dk: dict[str, Any] | None) -> str:
        a = rm.get(key)
        s = f"   {label:<30}{_fmt(a, spec):>12}"
        if dk_on:
            b = dk.get(key) if dk else None
            s += f"{_fmt(b, spec):>12}{_fmt(ratio(a, b), '.2f'):>16}"
        return s.rstrip()

    hdr = f"   {'':<30}{'raftmesh':>12}" + (f"{'Dask':>12}{'raftmesh/Dask':>16}" if dk_on else "")
    for k, sc in enumerate(report["scenarios"], 1):
        rm, dk = sc["raftmesh"], sc.get("dask")
        n = sc["clients"]
        what = "1 client, no contention" if n == 1 else f"{n} clients contending for one lock"
        lines += [
            f"{k}. {what}: {rm['cycles']} cycles (exclusion and fencing checked)",
            hdr,
            row("cycles/s", "cycles_per_s", ",.0f", rm, dk),
            row("acquire p50 ms", "acquire_p50_ms", ".2f", rm, dk),
            row("acquire p99 ms", "acquire_p99_ms", ".2f", rm, dk),
            row("acquire max ms", "acquire_max_ms", ".2f", rm, dk),
            row("release p50 ms", "release_p50_ms", ".2f", rm, dk),
            row("release p99 ms", "release_p99_ms", ".2f", rm, dk),
        ]
        if n > 1:
            lines += [
                row("cycles per client, min", "cycles_per_client_min", "d", rm, dk),
                row("cycles per client, max", "cycles_per_client_max", "d", rm, dk),
                row("next grant to same client", "regrant_to_same_client", ".0%", rm, dk),
            ]
        lines.append(
            f"   raftmesh: {rm['raft_entries']} Raft log entries committed = "
            f"{rm['raft_entries_per_cycle']:.2f} per cycle; tokens {rm['first_token']} .. {rm['last_token']}"
        )
        bl, br = sc.get("baseline"), sc.get("ratios_raftmesh_over_baseline")
        if bl and br:
            lines.append(
                f"   baseline tree: {bl['cycles_per_s']:,.0f} cycles/s, acquire p50 {bl['acquire_p50_ms']:.2f} ms, "
                f"release p50 {bl['release_p50_ms']:.2f} ms, {bl['raft_entries_per_cycle']:.2f} entries/cycle; "
                f"this tree / baseline: cycles/s {_fmt(br['cycles_per_s'], '.2f')}, acquire p50 "
                f"{_fmt(br['acquire_p50_ms'], '.2f')}, entries/cycle {_fmt(br['raft_entries_per_cycle'], '.2f')}"
            )
        sp = sc.get("raftmesh_spread")
        if sp:
            lines.append(
                f"   raftmesh, the {n} clients spread over all nodes {sp['clients_per_node']}: "
                f"{sp['cycles_per_s']:,.0f} cycles/s, acquire p50 {sp['acquire_p50_ms']:.2f} ms, "
                f"p99 {sp['acquire_p99_ms']:.2f} ms, release p50 {sp['release_p50_ms']:.2f} ms;"
            )
            by_node = ", ".join(
                f"{i}{' (leader)' if i == cfg['leader'] else ''} {v:.2f} ms"
                for i, v in sp["acquire_p50_ms_by_node"].items()
            )
            lines.append(f"   acquire p50 of the clients served by {by_node}")
        lines.append("")
    if dk_on:
        lines.append(
            "Ratios are raftmesh/Dask: cycles/s < 1 = raftmesh slower; latency > 1 = raftmesh slower.\n"
            "raftmesh commits every acquire and release to a Raft log on a majority of its nodes and hands out\n"
            "fencing tokens, so a grant survives the loss of a minority of nodes and a stale holder is fenced\n"
            "off; Dask's lock is a counter in the scheduler's memory with no fencing token. The ratios are the\n"
            "cost of that safety, not a verdict on either system."
        )
    else:
        lines.append(f"Dask was skipped: {report['dask_skipped']}. No ratios.")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench_locks] {msg}", file=sys.stderr, flush=True)


def positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {v}")
    return v


def client_counts(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of client counts, not {text!r}") from None
    if not out or any(n < 1 or n > 64 for n in out):
        raise argparse.ArgumentTypeError(f"client counts must be 1..64, not {text!r}")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark raftmesh's distributed locks against Dask's distributed.Lock on this machine.",
        epilog=f"Dask is optional: {INSTALL_HINT}",
    )
    p.add_argument(
        "--cycles", type=positive_int, default=300, help="acquire+release cycles per scenario (default 300)"
    )
    p.add_argument(
        "--duration", type=positive_float, default=None, help="seconds per scenario instead of --cycles"
    )
    p.add_argument(
        "--clients",
        type=client_counts,
        default=[1, 8],
        help="comma-separated numbers of contending clients, one scenario each (default 1,8)",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--skip-dask", action="store_true", help="measure raftmesh only")
    p.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run every scenario on a 3-node cluster running the code in DIR (this tree / DIR ratios)",
    )
    return p.parse_args(argv)


def _brief(s: dict[str, Any]) -> str:
    return (
        f"{s['cycles']} cycles in {s['wall_s']:.2f} s = {s['cycles_per_s']:,.0f} cycles/s, acquire p50 "
        f"{s['acquire_p50_ms']:.2f} ms p99 {s['acquire_p99_ms']:.2f} ms ({s['checked']})"
    )


def start_raftmesh(
    name: str, tmp: str, env: dict[str, str], stack: contextlib.ExitStack
) -> tuple[RaftmeshSystem, float]:
    log(f"starting {name}: a raftmesh LocalCluster ({NODES} nodes, data in {tmp})")
    t0 = time.perf_counter()
    cluster = LocalCluster(NODES, base_dir=os.path.join(tmp, name), env=env)
    stack.callback(cluster.close)  # registered before start: a half-started cluster is stopped too
    cluster.start(timeout_s=60)
    leader = cluster.wait_ready()
    startup = time.perf_counter() - t0
    log(
        f"{name} ready in {startup:.2f} s; leader {leader}; node pids {[n.pid for n in cluster.nodes.values()]}"
    )
    return RaftmeshSystem(cluster, leader, cluster.client([cluster.nodes[leader].grpc])), startup


def run(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    dask_skipped: str | None = None
    ok, why = dask_importable()
    if args.skip_dask:
        dask_skipped = "--skip-dask was given"
        if not ok:
            dask_skipped += f"; Dask is not importable here ({why}); install it with: {INSTALL_HINT}"
    elif not ok:
        raise SystemExit(
            f"bench_locks: Dask is not importable ({why}).\n"
            f"Install it with: {INSTALL_HINT}\n"
            "or run with --skip-dask to measure raftmesh only."
        )

    load_start = os.getloadavg()
    rm, rm_startup = start_raftmesh("raftmesh", tmp, {}, stack)
    leader = rm.leader
    base: RaftmeshSystem | None = None
    if args.baseline_tree:
        base, _ = start_raftmesh("baseline", tmp, baseline_env(args.baseline_tree, "bench_locks"), stack)

    dk: DaskSystem | None = None
    dk_startup = math.nan
    if dask_skipped is None:
        log(f"starting Dask LocalCluster ({DASK_WORKERS} worker processes x 1 thread)")
        dclient, dk_startup = stack.enter_context(dask_cluster(DASK_WORKERS, os.path.join(tmp, "dask")))
        dk = DaskSystem(dclient)
        log(f"Dask ready in {dk_startup:.2f} s; scheduler {dk.address}")

    def quota_for() -> Quota:
        if args.duration is not None:
            return Quota(None, time.monotonic() + args.duration)
        return Quota(args.cycles, None)

    scenarios: list[dict[str, Any]] = []
    for n in args.clients:
        sc: dict[str, Any] = {"clients": n}
        # The baseline's turn alternates with this tree's (the machine's load drifts).
        order = [("raftmesh", rm), ("baseline", base)]
        for key, system in order if len(scenarios) % 2 == 0 else order[::-1]:
            if system is None:
                continue
            sc[key] = s = system.run(n, quota_for, spread=False, label=f"{key}-{n}").summary()
            log(f"{key}, {n} client(s): {_brief(s)}; {s['raft_entries_per_cycle']:.2f} Raft entries/cycle")
        if dk is not None:
            sc["dask"] = s = dk.run(n, quota_for, label=f"dask-{n}").summary()
            log(f"Dask, {n} client(s): {_brief(s)}")
        if n > 1:
            sc["raftmesh_spread"] = s = rm.run(n, quota_for, spread=True, label=f"rm-{n}-spread").summary()
            log(f"raftmesh, {n} clients spread over {s['clients_per_node']}: {_brief(s)}")
        if dk is not None:
            r, d = sc["raftmesh"], sc["dask"]
            sc["ratios_raftmesh_over_dask"] = {
                k: ratio(r[k], d[k])
                for k in (
                    "cycles_per_s",
                    "acquire_p50_ms",
                    "acquire_p99_ms",
                    "release_p50_ms",
                    "release_p99_ms",
                )
            }
        if base is not None:
            r, b = sc["raftmesh"], sc["baseline"]
            sc["ratios_raftmesh_over_baseline"] = {
                k: ratio(r[k], b[k])
                for k in ("cycles_per_s", "acquire_p50_ms", "release_p50_ms", "raft_entries_per_cycle")
            }
        scenarios.append(sc)

    return {
        "benchmark": "raftmesh-vs-dask-locks",
        "environment": {
            **environment(),
            "loadavg_1_5_15_at_start": list(load_start),
            "loadavg_1_5_15_at_end": list(os.getloadavg()),
        },
        "config": {
            "nodes": NODES,
            "leader": leader,
            "dask_workers": DASK_WORKERS if dk else None,
            "dask_threads_per_worker": 1 if dk else None,
            "clients": args.clients,
            "cycles": None if args.duration else args.cycles,
            "duration_s": args.duration,
            "warmup_cycles_per_client": WARMUP_CYCLES_PER_CLIENT,
            "ttl_s": LOCK_TTL_S,
            "wait_s": WAIT_S,
            "client_layout": "one thread of the benchmark process per client, each with its own client object",
            "baseline_tree": os.path.abspath(args.baseline_tree) if args.baseline_tree else None,
        },
        "startup_s": {"raftmesh": rm_startup, "dask": dk_startup if dk else None},
        "baseline_skipped": None if base else "no --baseline-tree",
        "scenarios": scenarios,
        "dask_skipped": dask_skipped,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()

    def measure(tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
        # Registered before Dask is imported, so it runs after Dask's own exit handlers (atexit is
        # LIFO): they may write to its scratch space in the directory as the process exits.
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        report = run(args, tmp, stack)
        report["elapsed_s"] = time.perf_counter() - t_start
        return report

    return run_bench("raftmesh-bench-locks-", measure, render_table, args.json, log, (WrongAnswer,))


if __name__ == "__main__":
    sys.exit(main())
