#!/usr/bin/env python3
"""raftmesh vs its peers (Dask distributed, Ray): fan-out/fan-in throughput, single-task latency and
many concurrent clients.

What is measured
----------------
Every system runs on this machine in the same run, side by side, for the whole run:

* raftmesh: a ``LocalCluster`` of ``--nodes`` real node processes on loopback (default 3), data in a
  temporary directory. The measuring client talks to the Raft leader (the analogue of a Dask client
  talking to its scheduler); a follower would forward every write to the leader, and one extra latency
  row shows what that costs.
* Dask (``--peers dask``): a ``distributed.LocalCluster`` with as many worker processes as raftmesh has
  nodes, one thread each (``processes=True, threads_per_worker=1``), on loopback, no dashboard, scratch
  space in the same temporary directory. Its scheduler runs in a thread of this benchmark process.
* Ray (``--peers ray``): a local Ray instance started by ``ray.init(num_cpus=N)`` in this process, N =
  ``--nodes`` (GCS, raylet and N worker processes; no dashboard; its session directory in the same
  temporary directory). This process is its driver. Tasks are ``ray.remote`` functions.

``--peers`` defaults to every peer that is installed here (a missing one is skipped with a message
saying how to install it); naming a missing peer is an error.

Three workloads, each with its answer checked against a value computed independently in this script
(a benchmark that does not check its answer is not a benchmark):

1. Fan-out + fan-in throughput: one root task, ``--tasks`` (default 2,000) independent trivial tasks
   that each depend on the root, and one fan-in task that depends on all of them (``--tasks`` + 2
   tasks in all). raftmesh runs the built-in ``sum`` agent (output = input.value + the sum of the
   numeric upstream outputs) in one ``Client.submit``; Dask and Ray run a Python function with the
   same semantics and the same dependency structure (Dask: ``client.submit`` for the root and the
   fan-in, ``client.map`` for the middle layer, all ``pure=False`` so nothing comes from a cache; Ray:
   ``f.remote(value, root_ref)`` per task, the fan-in given every leaf's ref). The root's value changes
   every repeat, so every repeat has a different answer.
   tasks/s = tasks / wall time from the start of submission until the result is available to this
   client: raftmesh ``Client.wait`` has returned the finished run with every task's output (every
   output is checked); Dask ``future.result()`` / Ray ``ray.get`` of the fan-in has returned (its
   value is checked, and it depends on every other task). Repeated ``--repeat`` times (default 3),
   the systems interleaved; the median is reported. For raftmesh the table also shows the run's own
   server-side duration (its ``created_ms`` -> ``finished_ms``, no client involved) and the Raft log
   entries committed per run: the difference between the client-side and the server-side time is
   what the client spends receiving the run's event stream (``Client.wait`` drains ``WatchRun``) and
   reading the result.
2. Single-task latency: submit one trivial task and wait for its result, ``--runs`` times (default 50)
   per mode after 5 untimed warm-up runs. raftmesh: ``Client.submit`` of a one-task DAG (``echo``)
   then ``Client.wait``; Dask: ``client.submit(f, x, pure=False).result()``; Ray:
   ``ray.get(f.remote(x))``. Two modes: *back to back* (the next submit right after the previous
   result, as in a tight loop) and *spaced* (25 ms of idle time before each run). They differ because
   the Dask client batches its messages to the scheduler in 10 ms windows: back to back, a submit
   usually waits for the window opened by the previous future's release message, which adds up to
   10 ms that has nothing to do with the work. Spaced runs measure the round trip alone (for every
   system, which also wakes up from idle each time). p50 and p99 are reported in ms (linear
   interpolation between order statistics; with 50 runs p99 is close to the maximum). One more
   raftmesh row (back to back, JSON ``latency_one_call``) times ``Client.run``: submit and result
   in one call (``RunToEnd``), the shape of Ray's ``ray.get(f.remote(x))``.
3. Concurrent clients: ``--clients`` (default 100) clients each submit one run of ``--client-tasks``
   (default 50) tasks at the same moment (the fan-out/fan-in shape again: 1 root, ``--client-tasks`` -
   2 leaves, 1 fan-in; every client's root value differs, every answer is checked), and wait for it.
   tasks/s = clients x tasks per run / wall time from the start until the last client has its result;
   the p50/p99 of a client's own submit -> result time is shown beside it. Every client is an asyncio
   task on one event loop in this process, created (and connected) before the clock starts: raftmesh
   ``raftmesh.aio.Client`` each (its own channel, ``await client.run(dag)``); Dask an asynchronous
   ``distributed.Client`` each (its own scheduler connection, ``await fan_in``); Ray has one driver
   per process, so its "clients" are concurrent submitters on this process's driver
   (``await fan_in_ref``) -- the cheapest form of concurrency Ray offers, not 100 separate drivers.
   Repeated ``--repeat`` times, interleaved; the median is reported.

How to read the ratios
----------------------
Every ratio is raftmesh / peer (one column per peer). For tasks/s a ratio below 1 means raftmesh
completes fewer tasks per second; for latency a ratio above 1 means raftmesh takes longer.

The comparison is about the cost of durability, plainly. raftmesh replicates every state change (the
submitted run, every batch of task assignments, every batch of results, and a barrier entry for each
linearizable read) through a Raft log on all nodes, and a change counts only once a majority has it
in its journal, so an acknowledged run survives a kill -9 of any node and the loss of any minority of
nodes, including the one that accepted it. Each node fsyncs its journal before it acknowledges
entries (one fsync per batch), so it also survives a power loss of every node; ``--fsync-compare``
shows what that costs. Dask's scheduler is a single in-memory process: nothing is written to disk or to another
process before a task counts, and if the scheduler dies every result and pending task is gone. Ray
keeps its task and object state in memory too (the GCS and the raylet; task results in the object
store), with lineage re-execution for lost objects but no durable log. The peers are the baseline of
"how fast can this be without durability"; the ratios show what raftmesh pays for it (or, for tasks/s
above 1, that its batching wins back more than durability costs here). They are not a verdict on
any system's efficiency at its own job.

Other differences worth knowing when reading the figures:

* raftmesh agents are asyncio coroutines inside the node processes (``--slots`` concurrent tasks per
  node); Dask runs one task at a time per worker thread and Ray one per worker process (``num_cpus``
  of them), and both move upstream results to the fan-in's worker (raftmesh's fan-in reads its inputs
  from the replicated state).
* Every cluster stays up during the whole run, so each system's idle background work (Raft
  heartbeats, Dask and Ray heartbeats) is present while the others are measured, and so is anything
  else running on the machine: the table prints the CPU count and the load average.

Usage::

    python scripts/bench.py                    # 3 nodes, 2,000 tasks, 50 runs, 3 repeats, 100 clients
    python scripts/bench.py --peers dask,ray   # the same, but fail if a peer is not installed
    python scripts/bench.py --json > out.json  # JSON on stdout, the table on stderr
    python scripts/bench.py --peers none       # raftmesh only (so is --skip-dask alone)
    python scripts/bench.py --skip-dask --fsync-compare  # raftmesh with fsync vs --unsafe-no-fsync

``--fsync-compare`` starts a second raftmesh cluster with ``--unsafe-no-fsync`` next to the first
(both up for the whole run, their fan-out repeats interleaved, the same latency runs) and prints
fsync / no-fsync ratios for tasks/s and latency. Both clusters keep their data under the
temporary directory (``TMPDIR``): point it at the disk you want to measure.

The peers are optional dependencies: ``pip install -e '.[bench]'`` (the project's "bench" extra
contains ``dask[distributed]`` and ``ray``). Everything started is stopped, and the temporary
directory removed, also on errors, Ctrl-C and SIGTERM: Ray's processes (GCS, raylet, workers) are
stopped by ``ray.shutdown()``, then checked for by pid below this process and killed if one is left.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _benchkit import (
    RAY_EXIT_WAIT_S,
    Interrupted,
    baseline_env,
    dask_cluster,
    dask_importable,
    environment,
    finite,
    interrupt,
    percentile,
    positive_int,
    ratio,
    ray_importable,
    ray_instance,
)

import raftmesh
import raftmesh.aio
from raftmesh.client import DAG, Client, RunInfo, Task
from raftmesh.localcluster import LocalCluster

WARMUP_RUNS = 5
LATENCY_SPACING_S = 0.025
"""Idle time before each "spaced" latency run: longer than the Dask client's 10 ms message batching."""
WARMUP_FANOUT_TASKS = 50
RUN_TIMEOUT_S = 120.0
INSTALL_HINT = "pip install -e '.[bench]'  (the project's 'bench' extra contains dask[distributed] and ray)"
PEERS = {"dask": "Dask", "ray": "Ray"}
"""--peers names -> the names in the table, in the table's order."""


# ---- the workload, shared by both systems ------------------------------------------------------


def sum_task(value: float, *upstream: float) -> float:
    """The Dask twin of raftmesh's built-in ``sum`` agent: value + sum of the upstream results."""
    return value + sum(upstream)


def echo_task(x: Any) -> Any:
    """The Dask twin of raftmesh's built-in ``echo`` agent."""
    return x


@dataclass(frozen=True)
class FanOut:
    """One fan-out/fan-in workload and its expected outputs, computed in closed form."""

    width: int
    root_value: int

    @property
    def total_tasks(self) -> int:
        return self.width + 2

    def expected_leaf(self, i: int) -> int:
        return i + self.root_value

    @property
    def expected_fan_in(self) -> int:
        # sum over i in [0, width) of (i + root_value)
        return self.width * (self.width - 1) // 2 + self.width * self.root_value

    def dag(self) -> DAG:
        dag = DAG(f"bench-fanout-{self.width}")
        root = dag.task("root", "sum", input={"value": self.root_value})
        leaves: list[Task | str] = [
            dag.task(f"w{i}", "sum", input={"value": i}, deps=[root]) for i in range(self.width)
        ]
        dag.task("fan_in", "sum", input={"value": 0}, deps=leaves)
        return dag


class WrongAnswer(AssertionError):
    """A system returned a result that differs from the expected value."""


def check_run(run: RunInfo, w: FanOut) -> None:
    """Every output of a finished raftmesh fan-out run, against the closed form."""
    if run.status != "SUCCEEDED":
        raise WrongAnswer(f"raftmesh run {run.run_id} ended {run.status}: {run.error}")
    if len(run.tasks) != w.total_tasks:
        raise WrongAnswer(f"raftmesh run has {len(run.tasks)} tasks, expected {w.total_tasks}")
    got = {tid: t.output for tid, t in run.tasks.items()}
    if got["root"] != w.root_value:
        raise WrongAnswer(f"raftmesh root output {got['root']!r} != {w.root_value}")
    bad = [i for i in range(w.width) if got[f"w{i}"] != w.expected_leaf(i)]
    if bad:
        i = bad[0]
        raise WrongAnswer(
            f"raftmesh: {len(bad)} wrong leaf outputs, e.g. w{i} = {got[f'w{i}']!r} != {w.expected_leaf(i)}"
        )
    if got["fan_in"] != w.expected_fan_in:
        raise WrongAnswer(f"raftmesh fan-in output {got['fan_in']!r} != {w.expected_fan_in}")


def concurrent_workloads(clients: int, tasks_per_run: int, rep: int) -> list[FanOut]:
    """One run per client, each with its own answer (root values differ across clients and repeats)."""
    return [FanOut(tasks_per_run - 2, root_value=1000 * (rep + 1) + i) for i in range(clients)]


# ---- statistics ------------------------------------------------------------------------------------


@dataclass
class FanOutResult:
    wall_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    raft_entries: list[int] = field(default_factory=list)
    tasks_per_node: list[dict[str, int]] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)
    """raftmesh only: the run's own created -> finished timestamps (ms resolution), no client in it."""

    def tasks_per_s(self, total_tasks: int) -> list[float]:
        return [total_tasks / w for w in self.wall_s]


@dataclass
class ConcurrentResult:
    wall_s: list[float] = field(default_factory=list)
    run_s: list[float] = field(default_factory=list)
    """Every client's own submit -> result time, all repeats pooled."""

    def summary(self, total_tasks: int) -> dict[str, Any]:
        tps = [total_tasks / w for w in self.wall_s]
        ms = [s * 1000 for s in self.run_s]
        return {
            "total_tasks": total_tasks,
            "wall_s": self.wall_s,
            "tasks_per_s": tps,
            "tasks_per_s_median": statistics.median(tps) if tps else math.nan,
            "run_p50_ms": percentile(ms, 50),
            "run_p99_ms": percentile(ms, 99),
        }


@dataclass
class LatencyResult:
    total_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ms = [s * 1000 for s in self.total_s]
        out: dict[str, Any] = {
            "runs": len(ms),
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.fmean(ms) if ms else math.nan,
            "min_ms": min(ms, default=math.nan),
            "max_ms": max(ms, default=math.nan),
        }
        if self.submit_s:
            sub = [s * 1000 for s in self.submit_s]
            out["submit_p50_ms"] = percentile(sub, 50)
            out["submit_p99_ms"] = percentile(sub, 99)
        return out


# ---- raftmesh -----------------------------------------------------------------------------------------


class RaftmeshBench:
    def __init__(self, client: Client, addresses: list[str], credentials: Any) -> None:
        self.client = client
        self.addresses = addresses
        self.credentials = credentials

    def fan_out(self, w: FanOut, res: FanOutResult | None) -> None:
        dag = w.dag()  # built before the clock starts, like Dask's function objects
        before = self.client.status().commit_index
        t0 = time.perf_counter()
        run_id = self.client.submit(dag)
        t1 = time.perf_counter()
        run = self.client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        t2 = time.perf_counter()
        after = self.client.status().commit_index
        check_run(run, w)
        if res is not None:
            res.wall_s.append(t2 - t0)
            res.submit_s.append(t1 - t0)
            res.raft_entries.append(after - before)
            res.server_s.append((run.finished_ms - run.created_ms) / 1000)
            res.tasks_per_node.append(dict(sorted(Counter(t.node for t in run.tasks.values()).items())))

    def single(self, x: int, res: LatencyResult | None) -> None:
        dag = DAG("bench-latency")
        dag.task("a", "echo", input=x)
        t0 = time.perf_counter()
        run_id = self.client.submit(dag)
        t1 = time.perf_counter()
        run = self.client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        t2 = time.perf_counter()
        if run.status != "SUCCEEDED" or run.tasks["a"].output != x:
            raise WrongAnswer(f"raftmesh echo({x}) -> {run.status} {run.tasks['a'].output!r} {run.error}")
        if res is not None:
            res.total_s.append(t2 - t0)
            res.submit_s.append(t1 - t0)

    def concurrent(self, ws: list[FanOut], res: ConcurrentResult) -> None:
        asyncio.run(self._concurrent(ws, res))

    async def _concurrent(self, ws: list[FanOut], res: ConcurrentResult) -> None:
        clients = [raftmesh.aio.Client(self.addresses, credentials=self.credentials) for _ in ws]
        try:
            dags = [w.dag() for w in ws]
            await asyncio.gather(*(c.status() for c in clients))  # every channel connected
            t0 = time.perf_counter()

            async def one(c: raftmesh.aio.Client, w: FanOut, dag: DAG) -> float:
                run = await c.run(dag, timeout_s=RUN_TIMEOUT_S)
                t = time.perf_counter() - t0
                check_run(run, w)
                return t

            took = await asyncio.gather(*(one(c, w, d) for c, w, d in zip(clients, ws, dags, strict=True)))
            res.wall_s.append(time.perf_counter() - t0)
            res.run_s.extend(took)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


class RaftmeshOneCall(RaftmeshBench):
    """Single tasks through ``Client.run``: submit and result in one call (``RunToEnd``),
    the analogue of Ray's ``ray.get(f.remote(x))``; everything else as ``RaftmeshBench``."""

    def single(self, x: int, res: LatencyResult | None) -> None:
        dag = DAG("bench-latency")
        dag.task("a", "echo", input=x)
        t0 = time.perf_counter()
        run = self.client.run(dag, timeout_s=RUN_TIMEOUT_S)
        t1 = time.perf_counter()
        if run.status != "SUCCEEDED" or run.tasks["a"].output != x:
            raise WrongAnswer(
                f"raftmesh run(echo({x})) -> {run.status} {run.tasks['a'].output!r} {run.error}"
            )
        if res is not None:
            res.total_s.append(t1 - t0)


# ---- Dask ------------------------------------------------------------------------------------------------


class DaskBench:
    def __init__(self, client: Any) -> None:
        self.client = client

    def fan_out(self, w: FanOut, res: FanOutResult | None) -> None:
        c = self.client
        values = list(range(w.width))
        t0 = time.perf_counter()
        root = c.submit(sum_task, w.root_value, pure=False)
        leaves = c.map(sum_task, values, [root] * w.width, pure=False)
        fan_in = c.submit(sum_task, 0, *leaves, pure=False)
        t1 = time.perf_counter()
        got = fan_in.result(timeout=RUN_TIMEOUT_S)
        t2 = time.perf_counter()
        del root, leaves, fan_in  # release the results on the workers before the next repeat
        if got != w.expected_fan_in:
            raise WrongAnswer(f"Dask fan-in result {got!r} != {w.expected_fan_in}")
        if res is not None:
            res.wall_s.append(t2 - t0)
            res.submit_s.append(t1 - t0)

    def single(self, x: int, res: LatencyResult | None) -> None:
        t0 = time.perf_counter()
        got = self.client.submit(echo_task, x, pure=False).result(timeout=RUN_TIMEOUT_S)
        t1 = time.perf_counter()
        if got != x:
            raise WrongAnswer(f"Dask echo({x}) -> {got!r}")
        if res is not None:
            res.total_s.append(t1 - t0)

    def concurrent(self, ws: list[FanOut], res: ConcurrentResult) -> None:
        asyncio.run(self._concurrent(ws, res))

    async def _concurrent(self, ws: list[FanOut], res: ConcurrentResult) -> None:
        from dask.distributed import Client as DaskClient

        address = self.client.scheduler.address
        clients: list[Any] = []
        try:
            for _ in ws:  # one scheduler connection each, made before the clock starts
                clients.append(await DaskClient(address, asynchronous=True))
            t0 = time.perf_counter()

            async def one(c: Any, w: FanOut) -> float:
                root = c.submit(sum_task, w.root_value, pure=False)
                leaves = c.map(sum_task, list(range(w.width)), [root] * w.width, pure=False)
                got = await c.submit(sum_task, 0, *leaves, pure=False)
                t = time.perf_counter() - t0
                if got != w.expected_fan_in:
                    raise WrongAnswer(f"Dask concurrent fan-in {got!r} != {w.expected_fan_in}")
                return t

            took = await asyncio.gather(*(one(c, w) for c, w in zip(clients, ws, strict=True)))
            res.wall_s.append(time.perf_counter() - t0)
            res.run_s.extend(took)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# ---- Ray -------------------------------------------------------------------------------------------------


class RayBench:
    """Drives the Ray instance that ``ray.init`` started in this process (this process is its driver)."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        # Functions of __main__ go to the workers by value (cloudpickle): the same code as Dask runs.
        self.sum_r: Any = ray.remote(sum_task)
        self.echo_r: Any = ray.remote(echo_task)

    def _submit_fan_out(self, w: FanOut) -> Any:
        root = self.sum_r.remote(w.root_value)
        leaves = [self.sum_r.remote(i, root) for i in range(w.width)]
        return self.sum_r.remote(0, *leaves)

    def fan_out(self, w: FanOut, res: FanOutResult | None) -> None:
        t0 = time.perf_counter()
        fan_in = self._submit_fan_out(w)
        t1 = time.perf_counter()
        got = self.ray.get(fan_in, timeout=RUN_TIMEOUT_S)
        t2 = time.perf_counter()
        del fan_in
        if got != w.expected_fan_in:
            raise WrongAnswer(f"Ray fan-in result {got!r} != {w.expected_fan_in}")
        if res is not None:
            res.wall_s.append(t2 - t0)
            res.submit_s.append(t1 - t0)

    def single(self, x: int, res: LatencyResult | None) -> None:
        t0 = time.perf_counter()
        got = self.ray.get(self.echo_r.remote(x), timeout=RUN_TIMEOUT_S)
        t1 = time.perf_counter()
        if got != x:
            raise WrongAnswer(f"Ray echo({x}) -> {got!r}")
        if res is not None:
            res.total_s.append(t1 - t0)

    def concurrent(self, ws: list[FanOut], res: ConcurrentResult) -> None:
        asyncio.run(self._concurrent(ws, res))

    async def _concurrent(self, ws: list[FanOut], res: ConcurrentResult) -> None:
        t0 = time.perf_counter()

        async def one(w: FanOut) -> float:
            got = await self._submit_fan_out(w)
            t = time.perf_counter() - t0
            if got != w.expected_fan_in:
                raise WrongAnswer(f"Ray concurrent fan-in {got!r} != {w.expected_fan_in}")
            return t

        async with asyncio.timeout(RUN_TIMEOUT_S):
            took = await asyncio.gather(*(one(w) for w in ws))
        res.wall_s.append(time.perf_counter() - t0)
        res.run_s.extend(took)


Bench = RaftmeshBench | DaskBench | RayBench


def bench_of(cluster: LocalCluster, node: str, stack: contextlib.ExitStack) -> RaftmeshBench:
    """A bench whose clients all talk to ``node`` of ``cluster``.

    Its client is closed with the stack, but not after Ctrl-C or SIGTERM: the signal may have
    interrupted a blocking gRPC call half-way, and closing a channel then waits forever for that
    call to drain (grpc 1.85) -- the reason the client is not ``cluster.client()``, which
    ``LocalCluster.close`` would close.
    """
    addresses = [cluster.nodes[node].grpc]
    client = Client(addresses, credentials=cluster.credentials)

    def close(exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None or not issubclass(exc_type, Interrupted):
            client.close()

    stack.push(close)
    return RaftmeshBench(client, addresses, cluster.credentials)


# ---- environment and output ------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render_table(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["config"]
    rm = report["raftmesh"]
    vs = env["versions"]
    # (table name, its report) for every peer that ran, in PEERS order
    peers = [(PEERS[k], report[k]) for k in PEERS if report.get(k)]
    dk, ry = report.get("dask"), report.get("ray")
    lines = [
        "raftmesh vs " + (" and ".join(n for n, _ in peers) or "no peer") + " benchmark",
        f"  machine : {env['cpu_count']} CPUs ({env['usable_cpus']} usable), Python {env['python']}, "
        f"{env['platform']}",
        f"  load    : 1-min load average {env['loadavg_1_5_15_at_start'][0]:.2f} at start, "
        f"{env['loadavg_1_5_15_at_end'][0]:.2f} at end (other processes on the machine skew the figures)",
        f"  versions: raftmesh {vs['raftmesh']}, pysyncobj {vs['pysyncobj']}, grpcio {vs['grpcio']}, "
        f"dask {vs['dask'] or '-'}, distributed {vs['distributed'] or '-'}, ray {vs.get('ray') or '-'}",
        f"  raftmesh: {cfg['nodes']} node processes, Raft on loopback, fsync on, {cfg['slots']} task slots "
        f"per node, client talks to {cfg['raftmesh_client_talks_to']}",
        "  Dask    : "
        + (
            f"LocalCluster, {cfg['dask_workers']} worker processes x 1 thread, scheduler in this process"
            if dk
            else f"SKIPPED ({report['dask_skipped']})"
        ),
        "  Ray     : "
        + (
            f"ray.init(num_cpus={cfg['ray_num_cpus']}) in this process (its driver), no dashboard"
            if ry
            else f"SKIPPED ({report['ray_skipped']})"
        ),
        f"  startup : raftmesh {rm['startup_s']:.2f} s"
        + "".join(f", {n} {p['startup_s']:.2f} s" for n, p in peers),
        "",
    ]

    def row(label: str, key: tuple[str, ...], spec: str, with_ratio: bool = True) -> str:
        def get(d: dict[str, Any]) -> Any:
            for k in key:
                d = d.get(k) if isinstance(d, dict) else None  # type: ignore[assignment]
            return d

        a = get(rm)
        s = f"   {label:<26}{_fmt(a, spec):>12}"
        for _, p in peers:
            s += f"{_fmt(get(p), spec):>12}"
        if with_ratio:
            for _, p in peers:
                s += f"{_fmt(ratio(a, get(p)), '.2f'):>16}"
        return s.rstrip()

    hdr = (
        f"   {'':<26}{'raftmesh':>12}"
        + "".join(f"{n:>12}" for n, _ in peers)
        + "".join(f"{'raftmesh/' + n:>16}" for n, _ in peers)
    )
    r_fo = rm["fan_out"]
    lines += [
        f"1. Fan-out + fan-in: 1 root -> {cfg['tasks']:,} tasks -> 1 fan-in = {cfg['total_tasks']:,} tasks, "
        f"median of {cfg['repeat']} (answers checked)",
        hdr,
        row("tasks/s", ("fan_out", "tasks_per_s_median"), ",.0f"),
        row("wall s", ("fan_out", "wall_s_median"), ".3f", with_ratio=False),
        row("  of which submit call s", ("fan_out", "submit_s_median"), ".3f", False),
        f"   {'tasks/s, each run':<26}raftmesh "
        + ", ".join(f"{v:,.0f}" for v in r_fo["tasks_per_s"])
        + "".join(f"; {n} " + ", ".join(f"{v:,.0f}" for v in p["fan_out"]["tasks_per_s"]) for n, p in peers),
        f"   raftmesh server side (run created -> finished, no client): {r_fo['server_side_s_median']:.3f} s "
        f"= {r_fo['server_side_tasks_per_s_median']:,.0f} tasks/s;",
        f"   {statistics.median(r_fo['raft_entries']):.0f} Raft log entries per run; "
        f"tasks per node (last run) {r_fo['tasks_per_node'][-1]}",
        "",
    ]
    r_lat = rm["latency"]
    r_sp = rm["latency_spaced"]
    gap_ms = cfg["latency_spacing_s"] * 1000
    lines += [
        f"2. Single task submit -> result latency, {cfg['runs']} runs per mode after {cfg['warmup_runs']} "
        "warm-up runs (answers checked)",
        hdr,
        "   back to back (next submit right after the previous result):",
        row("  p50 ms", ("latency", "p50_ms"), ".2f"),
        row("  p99 ms", ("latency", "p99_ms"), ".2f"),
        row("  mean ms", ("latency", "mean_ms"), ".2f"),
        row("  min ms", ("latency", "min_ms"), ".2f", with_ratio=False),
        row("  max ms", ("latency", "max_ms"), ".2f", with_ratio=False),
        f"   spaced ({gap_ms:.0f} ms idle before each run, longer than Dask's 10 ms client batching):",
        row("  p50 ms", ("latency_spaced", "p50_ms"), ".2f"),
        row("  p99 ms", ("latency_spaced", "p99_ms"), ".2f"),
        row("  mean ms", ("latency_spaced", "mean_ms"), ".2f"),
        row("  min ms", ("latency_spaced", "min_ms"), ".2f", with_ratio=False),
        row("  max ms", ("latency_spaced", "max_ms"), ".2f", with_ratio=False),
        f"   raftmesh, back to back: the SubmitRun call alone (run committed on a majority) p50 "
        f"{r_lat['submit_p50_ms']:.2f} ms, p99 {r_lat['submit_p99_ms']:.2f} ms;",
        "   the rest is WatchRun until the run's end, whose last message carries the finished run.",
    ]
    o_lat = rm.get("latency_one_call")
    if o_lat:
        lines.append(
            f"   raftmesh Client.run (submit and result in one call, like ray.get(f.remote(x))), back to back: "
            f"p50 {o_lat['p50_ms']:.2f} ms, p99 {o_lat['p99_ms']:.2f} ms "
            f"({_fmt(ratio(o_lat['p50_ms'], r_lat['p50_ms']), '.2f')}x submit + wait"
            + (
                f"; {_fmt(ratio(o_lat['p50_ms'], ry_p50), '.2f')}x Ray's p50)"
                if (ry_p50 := (report.get("ray") or {}).get("latency", {}).get("p50_ms"))
                else ")"
            )
        )
    f_lat = rm.get("latency_via_follower")
    if f_lat:
        lines.append(
            f"   raftmesh via a follower (writes forwarded to the leader), back to back: "
            f"p50 {f_lat['p50_ms']:.2f} ms, p99 {f_lat['p99_ms']:.2f} ms "
            f"({_fmt(ratio(f_lat['p50_ms'], r_lat['p50_ms']), '.2f')}x the leader's p50)"
        )
    lines.append("")
    if cfg["clients"]:
        lines += [
            f"3. Concurrent clients: {cfg['clients']} clients each submit one {cfg['client_tasks']}-task "
            f"fan-out/fan-in run at once = {cfg['clients'] * cfg['client_tasks']:,} tasks, median of "
            f"{cfg['repeat']} (answers checked)",
            hdr,
            row("tasks/s", ("concurrent", "tasks_per_s_median"), ",.0f"),
            row("a client's run p50 ms", ("concurrent", "run_p50_ms"), ",.0f"),
            row("a client's run p99 ms", ("concurrent", "run_p99_ms"), ",.0f"),
            f"   {'tasks/s, each run':<26}raftmesh "
            + ", ".join(f"{v:,.0f}" for v in rm["concurrent"]["tasks_per_s"])
            + "".join(
                f"; {n} " + ", ".join(f"{v:,.0f}" for v in p["concurrent"]["tasks_per_s"]) for n, p in peers
            ),
            "   "
            + "; ".join(
                [f"raftmesh: one raftmesh.aio.Client each (to {cfg['raftmesh_client_talks_to']})"]
                + (["Dask: one asynchronous distributed.Client each"] if dk else [])
                + (
                    ["Ray: concurrent submitters on this process's one driver (one driver per process)"]
                    if ry
                    else []
                )
            )
            + ".",
            "",
        ]
    section = 4
    nf = report.get("raftmesh_unsafe_no_fsync")
    if nf:
        fr = report["ratios_fsync_over_no_fsync"]

        def frow(label: str, a: float, b: float, ratio_v: float | None, spec: str) -> str:
            return f"   {label:<26}{_fmt(a, spec):>12}{_fmt(b, spec):>14}{_fmt(ratio_v, '.2f'):>16}"

        lines += [
            f"{section}. The cost of fsync: the same workloads on a second cluster started with --unsafe-no-fsync",
            f"   {'':<26}{'fsync':>12}{'no fsync':>14}{'fsync/no fsync':>16}",
            frow(
                "fan-out tasks/s",
                rm["fan_out"]["tasks_per_s_median"],
                nf["fan_out"]["tasks_per_s_median"],
                fr["fan_out_tasks_per_s"],
                ",.0f",
            ),
            frow("latency p50 ms", r_lat["p50_ms"], nf["latency"]["p50_ms"], fr["latency_p50"], ".2f"),
            frow("latency p99 ms", r_lat["p99_ms"], nf["latency"]["p99_ms"], fr["latency_p99"], ".2f"),
            frow(
                "spaced p50 ms",
                r_sp["p50_ms"],
                nf["latency_spaced"]["p50_ms"],
                fr["latency_spaced_p50"],
                ".2f",
            ),
            frow(
                "spaced p99 ms",
                r_sp["p99_ms"],
                nf["latency_spaced"]["p99_ms"],
                fr["latency_spaced_p99"],
                ".2f",
            ),
            frow(
                "concurrent tasks/s",
                rm["concurrent"]["tasks_per_s_median"],
                nf["concurrent"]["tasks_per_s_median"],
                fr["concurrent_tasks_per_s"],
                ",.0f",
            ),
            "   tasks/s < 1 = fsync slower; latency > 1 = fsync slower.",
            "",
        ]
        section += 1
    mx = report.get("raftmesh_metrics")
    if mx:
        mr = report["ratios_metrics_over_no_metrics"]

        def mrow(label: str, a: float, b: float, ratio_v: float | None, spec: str) -> str:
            return f"   {label:<26}{_fmt(a, spec):>12}{_fmt(b, spec):>14}{_fmt(ratio_v, '.2f'):>18}"

        lines += [
            f"{section}. The cost of metrics: the same workloads on a second cluster started with --metrics, every",
            f"   node scraped each second ({mx['scrapes_ok']} scrapes, {mx['scrapes_failed']} failed)",
            f"   {'':<26}{'metrics':>12}{'no metrics':>14}{'metrics/none':>18}",
            mrow(
                "fan-out tasks/s",
                mx["fan_out"]["tasks_per_s_median"],
                rm["fan_out"]["tasks_per_s_median"],
                mr["fan_out_tasks_per_s"],
                ",.0f",
            ),
            mrow("latency p50 ms", mx["latency"]["p50_ms"], r_lat["p50_ms"], mr["latency_p50"], ".2f"),
            mrow("latency p99 ms", mx["latency"]["p99_ms"], r_lat["p99_ms"], mr["latency_p99"], ".2f"),
            mrow(
                "spaced p50 ms",
                mx["latency_spaced"]["p50_ms"],
                r_sp["p50_ms"],
                mr["latency_spaced_p50"],
                ".2f",
            ),
            mrow(
                "spaced p99 ms",
                mx["latency_spaced"]["p99_ms"],
                r_sp["p99_ms"],
                mr["latency_spaced_p99"],
                ".2f",
            ),
            mrow(
                "concurrent tasks/s",
                mx["concurrent"]["tasks_per_s_median"],
                rm["concurrent"]["tasks_per_s_median"],
                mr["concurrent_tasks_per_s"],
                ",.0f",
            ),
            "   tasks/s < 1 = metrics slower; latency > 1 = metrics slower.",
            "",
        ]
        section += 1
    bl = report.get("raftmesh_baseline")
    if bl:
        br = report["ratios_raftmesh_over_baseline"]

        def brow(label: str, a: float, b: float, ratio_v: float | None, spec: str) -> str:
            return f"   {label:<26}{_fmt(a, spec):>12}{_fmt(b, spec):>14}{_fmt(ratio_v, '.2f'):>18}"

        lines += [
            f"{section}. This tree vs a baseline cluster: nodes running {bl['tree'] or 'this tree'}"
            + (f" with {bl['extra_node_flags']}" if bl["extra_node_flags"] else "")
            + " (latency runs alternate between the two)",
            f"   {'':<26}{'this':>12}{'baseline':>14}{'this/baseline':>18}",
            brow(
                "fan-out tasks/s",
                rm["fan_out"]["tasks_per_s_median"],
                bl["fan_out"]["tasks_per_s_median"],
                br["fan_out_tasks_per_s"],
                ",.0f",
            ),
            f"   {'tasks/s, each run':<26}this "
            + ", ".join(f"{v:,.0f}" for v in rm["fan_out"]["tasks_per_s"])
            + "; baseline "
            + ", ".join(f"{v:,.0f}" for v in bl["fan_out"]["tasks_per_s"]),
            brow("latency p50 ms", r_lat["p50_ms"], bl["latency"]["p50_ms"], br["latency_p50"], ".2f"),
            brow("latency p99 ms", r_lat["p99_ms"], bl["latency"]["p99_ms"], br["latency_p99"], ".2f"),
            brow(
                "spaced p50 ms",
                r_sp["p50_ms"],
                bl["latency_spaced"]["p50_ms"],
                br["latency_spaced_p50"],
                ".2f",
            ),
            brow(
                "spaced p99 ms",
                r_sp["p99_ms"],
                bl["latency_spaced"]["p99_ms"],
                br["latency_spaced_p99"],
                ".2f",
            ),
            brow(
                "concurrent tasks/s",
                rm["concurrent"]["tasks_per_s_median"],
                bl["concurrent"]["tasks_per_s_median"],
                br["concurrent_tasks_per_s"],
                ",.0f",
            ),
            "   tasks/s < 1 = this tree slower; latency > 1 = this tree slower.",
            "",
        ]
        section += 1
    if peers:
        lines.append(
            "Ratios are raftmesh/peer: tasks/s < 1 = raftmesh slower; latency > 1 = raftmesh slower.\n"
            "raftmesh commits every state change (run, assignments, results, read barriers) through Raft on a\n"
            "majority of its nodes, each fsyncing its journal, before it counts, so it survives the loss of a\n"
            "minority of nodes; Dask's scheduler and Ray's GCS/raylet keep their state in memory. The ratios\n"
            "are the cost of that durability, not a verdict on either scheduler."
        )
    else:
        lines.append(
            "No peer ran ("
            + "; ".join(f"{PEERS[k]}: {report[k + '_skipped']}" for k in PEERS)
            + "). No ratios."
        )
    for k in PEERS:
        if report.get(k) is None and report.get(k + "_skipped") and peers:
            lines.append(f"{PEERS[k]} was skipped: {report[k + '_skipped']}.")
    procs = (ry or {}).get("processes")
    if procs:
        lines.append(
            f"Ray: {procs['processes']} processes stopped by ray.shutdown()"
            + (f"; killed after {RAY_EXIT_WAIT_S:.0f} s: {procs['killed']}" if procs["killed"] else "")
            + (f"; STILL RUNNING: {procs['left']}" if procs["left"] else "")
            + "."
        )
    return "\n".join(lines)


def summarize_fan_out(res: FanOutResult, total_tasks: int) -> dict[str, Any]:
    tps = res.tasks_per_s(total_tasks)
    out: dict[str, Any] = {
        "total_tasks": total_tasks,
        "wall_s": res.wall_s,
        "wall_s_median": statistics.median(res.wall_s),
        "tasks_per_s": tps,
        "tasks_per_s_median": statistics.median(tps),
        "submit_s": res.submit_s,
        "submit_s_median": statistics.median(res.submit_s),
    }
    if res.raft_entries:
        out["raft_entries"] = res.raft_entries
        out["tasks_per_node"] = res.tasks_per_node
        out["server_side_s"] = res.server_s
        out["server_side_s_median"] = statistics.median(res.server_s)
        out["server_side_tasks_per_s_median"] = statistics.median(total_tasks / s for s in res.server_s)
    return out


# ---- main ----------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"The peers are optional: {INSTALL_HINT}",
    )
    p.add_argument("--nodes", type=positive_int, default=3, help="raftmesh nodes = Dask workers (default 3)")
    p.add_argument("--tasks", type=positive_int, default=2000, help="width of the fan-out (default 2000)")
    p.add_argument("--runs", type=positive_int, default=50, help="single-task latency runs (default 50)")
    p.add_argument("--repeat", type=positive_int, default=3, help="fan-out repeats; median (default 3)")
    p.add_argument("--slots", type=positive_int, default=64, help="raftmesh task slots per node (default 64)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument(
        "--peers",
        type=peer_list,
        default=None,
        help="comma-separated peers to run side by side: dask, ray, or none (default: every one that is "
        "installed; a named one that is missing is an error)",
    )
    p.add_argument(
        "--skip-dask",
        action="store_true",
        help="raftmesh only, as before --peers existed; with --peers it leaves Dask out of that list",
    )
    p.add_argument(
        "--clients",
        type=non_negative_int,
        default=100,
        help="concurrent clients in workload 3, one run each (default 100; 0 skips workload 3)",
    )
    p.add_argument(
        "--client-tasks",
        type=positive_int,
        default=50,
        help="tasks in each concurrent client's run: 1 root, N-2 leaves, 1 fan-in (default 50, >= 3)",
    )
    p.add_argument(
        "--fsync-compare",
        action="store_true",
        help="also run a raftmesh cluster with --unsafe-no-fsync side by side and print the ratios",
    )
    p.add_argument(
        "--metrics-compare",
        action="store_true",
        help="also run a raftmesh cluster with --metrics (every node scraped each second) side by side "
        "and print the ratios",
    )
    p.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run a raftmesh cluster whose nodes run the code in DIR (a checkout of another commit, "
        "put first on the nodes' PYTHONPATH; the client is this tree's) side by side and print the ratios",
    )
    p.add_argument(
        "--baseline-args",
        metavar="ARGS",
        default="",
        help="extra node flags for the baseline cluster (e.g. '--audit-max-runs 0'); alone, without "
        "--baseline-tree, it compares this tree with and without those flags",
    )
    args = p.parse_args(argv)
    if args.client_tasks < 3:
        p.error("--client-tasks must be >= 3 (a root, at least one leaf, a fan-in)")
    return args


def peer_list(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer {unknown[0]!r}; choose from {', '.join(PEERS)}, none")
    return names


def non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {v}")
    return v


METRICS_SCRAPE_S = 1.0
"""How often the --metrics-compare cluster's endpoints are scraped (a 1 s Prometheus interval)."""


def scrape_loop(urls: list[str], stop: threading.Event, counts: list[int]) -> None:
    """Scrape every node's /metrics each METRICS_SCRAPE_S until ``stop`` (the load Prometheus adds)."""
    while not stop.wait(METRICS_SCRAPE_S):
        for url in urls:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    resp.read()
                counts[0] += 1
            except OSError:
                counts[1] += 1


def resolve_peers(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The peers to run, and why each other one is not run. A peer named in --peers that is not
    installed stops the benchmark; by default a missing one is skipped with the install hint."""
    importable = {"dask": dask_importable, "ray": ray_importable}
    explicit = args.peers is not None
    wanted = list(PEERS) if args.peers is None else args.peers
    run_these: list[str] = []
    skipped: dict[str, str] = {}
    for peer in PEERS:
        # --skip-dask predates --peers and meant "raftmesh only": alone it still does
        if args.skip_dask and (peer == "dask" or not explicit):
            skipped[peer] = "--skip-dask was given"
            continue
        if peer not in wanted:
            skipped[peer] = f"not in --peers {','.join(wanted) or 'none'}"
            continue
        ok, why = importable[peer]()
        if ok:
            run_these.append(peer)
        elif explicit:
            raise SystemExit(
                f"bench: {PEERS[peer]} is not importable ({why}).\n"
                f"Install it with: {INSTALL_HINT}\n"
                f"or leave it out of --peers."
            )
        else:
            skipped[peer] = f"not installed here ({why}); install it with: {INSTALL_HINT}"
    return run_these, skipped


def run(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    peers, skipped = resolve_peers(args)
    for peer, why in skipped.items():
        log(f"{PEERS[peer]} skipped: {why}")

    load_start = os.getloadavg()
    log(f"raftmesh from {os.path.dirname(os.path.dirname(raftmesh.__file__))}")
    log(f"starting raftmesh LocalCluster ({args.nodes} nodes, data in {tmp})")
    t0 = time.perf_counter()
    rcluster = LocalCluster(args.nodes, base_dir=os.path.join(tmp, "raftmesh"), slots=args.slots)
    stack.callback(rcluster.close)  # registered before start: a half-started cluster is stopped too
    rcluster.start(timeout_s=60)
    rm_startup = time.perf_counter() - t0
    leader = rcluster.wait_ready()
    # The main figures talk to the leader (the analogue of Dask's client talking to its scheduler);
    # a follower forwards every write to the leader, which the extra latency row shows.
    rm = bench_of(rcluster, leader, stack)
    follower = next((i for i in rcluster.nodes if i != leader), None)
    rm_follower = bench_of(rcluster, follower, stack) if follower else None
    rm_one = RaftmeshOneCall(rm.client, rm.addresses, rm.credentials)
    log(
        f"raftmesh ready in {rm_startup:.2f} s; leader {leader}; "
        f"node pids {[n.pid for n in rcluster.nodes.values()]}"
    )

    nf_name = "raftmesh --unsafe-no-fsync"
    rm_nf: RaftmeshBench | None = None
    nf_startup = math.nan
    if args.fsync_compare:
        log(f"starting a second raftmesh LocalCluster with --unsafe-no-fsync ({args.nodes} nodes)")
        t0 = time.perf_counter()
        ncluster = LocalCluster(
            args.nodes,
            base_dir=os.path.join(tmp, "raftmesh-no-fsync"),
            slots=args.slots,
            unsafe_no_fsync=True,
        )
        stack.callback(ncluster.close)
        ncluster.start(timeout_s=60)
        nf_startup = time.perf_counter() - t0
        nf_leader = ncluster.wait_ready()
        rm_nf = bench_of(ncluster, nf_leader, stack)

    mx_name = "raftmesh --metrics"
    rm_mx: RaftmeshBench | None = None
    mx_startup = math.nan
    scrapes = [0, 0]  # ok, failed
    if args.metrics_compare:
        log(f"starting a second raftmesh LocalCluster with --metrics, scraped every {METRICS_SCRAPE_S} s")
        t0 = time.perf_counter()
        mcluster = LocalCluster(
            args.nodes, base_dir=os.path.join(tmp, "raftmesh-metrics"), slots=args.slots, metrics=True
        )
        stack.callback(mcluster.close)
        mcluster.start(timeout_s=60)
        mx_startup = time.perf_counter() - t0
        mx_leader = mcluster.wait_ready()
        rm_mx = bench_of(mcluster, mx_leader, stack)
        stop_scraping = threading.Event()
        scraper = threading.Thread(
            target=scrape_loop, args=(mcluster.metrics_urls, stop_scraping, scrapes), daemon=True
        )
        scraper.start()
        stack.callback(scraper.join, 10)
        stack.callback(stop_scraping.set)

    bl_name = "raftmesh baseline"
    rm_bl: RaftmeshBench | None = None
    bl_startup = math.nan
    if args.baseline_tree or args.baseline_args:
        env = baseline_env(args.baseline_tree, "bench") if args.baseline_tree else {}
        log(
            f"starting a baseline raftmesh LocalCluster: tree {args.baseline_tree or '(this one)'}, "
            f"extra node flags {args.baseline_args!r}"
        )
        t0 = time.perf_counter()
        bcluster = LocalCluster(
            args.nodes,
            base_dir=os.path.join(tmp, "raftmesh-baseline"),
            slots=args.slots,
            extra_args=shlex.split(args.baseline_args),
            env=env,
        )
        stack.callback(bcluster.close)
        bcluster.start(timeout_s=60)
        bl_startup = time.perf_counter() - t0
        bl_leader = bcluster.wait_ready()
        rm_bl = bench_of(bcluster, bl_leader, stack)
        log(f"baseline ready; leader {bl_leader}; node pids {[n.pid for n in bcluster.nodes.values()]}")

    dk: DaskBench | None = None
    dk_startup = math.nan
    if "dask" in peers:
        log(f"starting Dask LocalCluster ({args.nodes} worker processes x 1 thread)")
        dclient, dk_startup = stack.enter_context(dask_cluster(args.nodes, os.path.join(tmp, "dask")))
        dk = DaskBench(dclient)
        log(f"Dask ready in {dk_startup:.2f} s")

    ry: RayBench | None = None
    ry_startup = math.nan
    ray_record: dict[str, Any] | None = None
    if "ray" in peers:
        log(f"starting Ray (ray.init(num_cpus={args.nodes}))")
        ray_record, ry_startup = stack.enter_context(ray_instance(args.nodes, os.path.join(tmp, "ray"), log))
        # ray.init may install its own handlers: Ctrl-C and SIGTERM must still unwind through the stack.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, interrupt)
        ry = RayBench()
        ry.single(0, None)  # its workers start on first use
        log(f"Ray ready in {ry_startup:.2f} s")

    systems: list[tuple[str, Bench]] = [("raftmesh", rm)]
    if rm_nf is not None:
        systems.append((nf_name, rm_nf))
    if rm_mx is not None:
        systems.append((mx_name, rm_mx))
    if rm_bl is not None:
        systems.append((bl_name, rm_bl))
    if dk is not None:
        systems.append(("Dask", dk))
    if ry is not None:
        systems.append(("Ray", ry))

    # 1. fan-out / fan-in throughput
    fan: dict[str, FanOutResult] = {name: FanOutResult() for name, _ in systems}
    for name, sysb in systems:
        log(f"{name}: fan-out warm-up ({WARMUP_FANOUT_TASKS} tasks)")
        sysb.fan_out(FanOut(WARMUP_FANOUT_TASKS, root_value=7), None)
    for rep in range(args.repeat):
        w = FanOut(args.tasks, root_value=rep + 1)  # a different answer every repeat
        # With a baseline, every other repeat runs in reverse order: neither side always goes first.
        for name, sysb in systems if rm_bl is None or rep % 2 == 0 else systems[::-1]:
            sysb.fan_out(w, fan[name])
            wall = fan[name].wall_s[-1]
            log(
                f"{name}: fan-out {rep + 1}/{args.repeat}: {w.total_tasks} tasks in {wall:.3f} s "
                f"= {w.total_tasks / wall:,.0f} tasks/s (fan-in = {w.expected_fan_in}, correct)"
            )

    # 2. single-task latency, back to back and then spaced
    lat: dict[tuple[str, bool], LatencyResult] = {}
    measured: list[tuple[str, Bench]] = list(systems)
    measured.append(("raftmesh Client.run", rm_one))
    if rm_follower is not None:
        measured.append((f"raftmesh via follower {follower}", rm_follower))
    # The baseline is compared with this tree run by run (alternating, each side first every other
    # run), so load that comes and goes on the machine falls on both sides alike; every other
    # system is measured on its own, as before.
    groups: list[list[tuple[str, Bench]]] = []
    for name, sysb in measured:
        if name == bl_name:
            continue
        groups.append([(name, sysb)] + ([(bl_name, rm_bl)] if name == "raftmesh" and rm_bl else []))
    for group in groups:
        for _, sysb in group:
            for k in range(WARMUP_RUNS):
                sysb.single(-1 - k, None)
        name0 = group[0][0]
        spacings = (False, True) if name0 in ("raftmesh", "Dask", "Ray", nf_name, mx_name) else (False,)
        for spaced in spacings:
            for name, _ in group:
                lat[(name, spaced)] = LatencyResult()
            for k in range(args.runs):
                for name, sysb in group if k % 2 == 0 else group[::-1]:
                    if spaced:
                        time.sleep(LATENCY_SPACING_S)
                    sysb.single(k * 7919 + 13, lat[(name, spaced)])
            for name, _ in group:
                s = lat[(name, spaced)].summary()
                log(
                    f"{name}: latency over {args.runs} runs, {'spaced' if spaced else 'back to back'}: "
                    f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms"
                )

    # 3. concurrent clients, each with one run
    conc: dict[str, ConcurrentResult] = {name: ConcurrentResult() for name, _ in systems}
    conc_total = args.clients * args.client_tasks
    for rep in range(args.repeat if args.clients else 0):
        ws = concurrent_workloads(args.clients, args.client_tasks, rep)
        for name, sysb in systems if rep % 2 == 0 else systems[::-1]:
            sysb.concurrent(ws, conc[name])
            wall = conc[name].wall_s[-1]
            log(
                f"{name}: {args.clients} clients x {args.client_tasks} tasks {rep + 1}/{args.repeat}: "
                f"{conc_total} tasks in {wall:.3f} s = {conc_total / wall:,.0f} tasks/s (answers correct)"
            )

    total = args.tasks + 2
    report: dict[str, Any] = {
        "benchmark": "raftmesh-vs-dask",
        "environment": {
            **environment(),
            # other processes on the machine skew every figure; a load above the CPU count means contention
            "loadavg_1_5_15_at_start": list(load_start),
            "loadavg_1_5_15_at_end": list(os.getloadavg()),
        },
        "config": {
            "nodes": args.nodes,
            "dask_workers": args.nodes if dk else None,
            "dask_threads_per_worker": 1 if dk else None,
            "tasks": args.tasks,
            "total_tasks": total,
            "repeat": args.repeat,
            "runs": args.runs,
            "warmup_runs": WARMUP_RUNS,
            "latency_spacing_s": LATENCY_SPACING_S,
            "slots": args.slots,
            "raftmesh_client_talks_to": f"{leader} (the Raft leader)",
            "peers": peers,
            "ray_num_cpus": args.nodes if ry else None,
            "clients": args.clients,
            "client_tasks": args.client_tasks,
        },
        "raftmesh": {
            "startup_s": rm_startup,
            "fan_out": summarize_fan_out(fan["raftmesh"], total),
            "latency": lat[("raftmesh", False)].summary(),
            "latency_spaced": lat[("raftmesh", True)].summary(),
            "concurrent": conc["raftmesh"].summary(conc_total),
            "latency_one_call": lat[("raftmesh Client.run", False)].summary(),
            "latency_via_follower": (
                lat[(f"raftmesh via follower {follower}", False)].summary()
                if rm_follower is not None
                else None
            ),
        },
        "raftmesh_unsafe_no_fsync": None,
        "ratios_fsync_over_no_fsync": None,
        "raftmesh_metrics": None,
        "ratios_metrics_over_no_metrics": None,
        "raftmesh_baseline": None,
        "ratios_raftmesh_over_baseline": None,
        "dask": None,
        "dask_skipped": skipped.get("dask"),
        "ratios_raftmesh_over_dask": None,
        "ray": None,
        "ray_skipped": skipped.get("ray"),
        "ratios_raftmesh_over_ray": None,
    }

    def summary(name: str, startup_s: float | None) -> dict[str, Any]:
        return {
            "startup_s": startup_s,
            "fan_out": summarize_fan_out(fan[name], total),
            "latency": lat[(name, False)].summary(),
            "latency_spaced": lat[(name, True)].summary(),
            "concurrent": conc[name].summary(conc_total),
        }

    def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
        """a/b for the figures both sides report."""
        return {
            "fan_out_tasks_per_s": ratio(
                a["fan_out"]["tasks_per_s_median"], b["fan_out"]["tasks_per_s_median"]
            ),
            "latency_p50": ratio(a["latency"]["p50_ms"], b["latency"]["p50_ms"]),
            "latency_p99": ratio(a["latency"]["p99_ms"], b["latency"]["p99_ms"]),
            "latency_spaced_p50": ratio(a["latency_spaced"]["p50_ms"], b["latency_spaced"]["p50_ms"]),
            "latency_spaced_p99": ratio(a["latency_spaced"]["p99_ms"], b["latency_spaced"]["p99_ms"]),
            "concurrent_tasks_per_s": ratio(
                a["concurrent"]["tasks_per_s_median"], b["concurrent"]["tasks_per_s_median"]
            ),
        }

    if rm_nf is not None:
        report["raftmesh_unsafe_no_fsync"] = nf = summary(nf_name, nf_startup)
        report["ratios_fsync_over_no_fsync"] = ratios(report["raftmesh"], nf)
    if rm_mx is not None:
        report["raftmesh_metrics"] = mx = summary(mx_name, mx_startup)
        mx["scrapes_ok"], mx["scrapes_failed"] = scrapes
        report["ratios_metrics_over_no_metrics"] = ratios(mx, report["raftmesh"])
    if rm_bl is not None:
        report["raftmesh_baseline"] = bl = summary(bl_name, bl_startup)
        bl["tree"] = os.path.abspath(args.baseline_tree) if args.baseline_tree else None
        bl["extra_node_flags"] = args.baseline_args
        report["ratios_raftmesh_over_baseline"] = ratios(report["raftmesh"], bl)
    if dk is not None:
        report["dask"] = d = summary("Dask", dk_startup)
        report["ratios_raftmesh_over_dask"] = ratios(report["raftmesh"], d)
    if ry is not None:
        report["ray"] = r = summary("Ray", ry_startup)
        r["num_cpus"] = args.nodes
        # filled in when the stack closes: how many Ray processes there were, killed, left
        r["processes"] = ray_record
        report["ratios_raftmesh_over_ray"] = ratios(report["raftmesh"], r)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="raftmesh-bench-")
    # Registered before Dask is imported, so it runs after Dask's own exit handlers (atexit is LIFO):
    # a Dask process interrupted half-way through its start may still write its scratch space late.
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    # Explicit handlers: Ctrl-C works even when started with SIGINT ignored (e.g. `cmd &` in a script).
    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    t_start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            report = run(args, tmp, stack)
            log("stopping the clusters")
    except Interrupted as exc:
        log(f"{exc}: stopped the clusters, removed {tmp}")
        return 128 + exc.signum
    except WrongAnswer as exc:
        log(f"WRONG ANSWER: {exc}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    report["elapsed_s"] = time.perf_counter() - t_start
    table = render_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(finite(report), indent=2, allow_nan=False))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
