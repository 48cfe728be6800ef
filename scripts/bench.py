#!/usr/bin/env python3
"""raftmesh vs Dask distributed: throughput of a fan-out/fan-in DAG and single-task latency.

What is measured
----------------
Both systems run on this machine in the same run, side by side, for the whole run:

* raftmesh: a ``LocalCluster`` of ``--nodes`` real node processes on loopback (default 3), data in a
  temporary directory. The measuring client talks to the Raft leader (the analogue of a Dask client
  talking to its scheduler); a follower would forward every write to the leader, and one extra latency
  row shows what that costs.
* Dask: a ``distributed.LocalCluster`` with as many worker processes as raftmesh has nodes, one thread
  each (``processes=True, threads_per_worker=1``), on loopback, no dashboard, scratch space in the
  same temporary directory. Its scheduler runs in a thread of this benchmark process.

Two workloads, each with its answer checked against a value computed independently in this script
(a benchmark that does not check its answer is not a benchmark):

1. Fan-out + fan-in throughput: one root task, ``--tasks`` (default 2,000) independent trivial tasks
   that each depend on the root, and one fan-in task that depends on all of them (``--tasks`` + 2
   tasks in all). raftmesh runs the built-in ``sum`` agent (output = input.value + the sum of the
   numeric upstream outputs) in one ``Client.submit``; Dask runs a Python function with the same
   semantics and the same dependency structure (``client.submit`` for the root and the fan-in,
   ``client.map`` for the middle layer, all ``pure=False`` so nothing comes from a cache). The root's
   value changes every repeat, so every repeat has a different answer.
   tasks/s = tasks / wall time from the start of submission until the result is available to this
   client: raftmesh ``Client.wait`` has returned the finished run with every task's output (every
   output is checked); Dask ``future.result()`` of the fan-in has returned (its value is checked, and
   it depends on every other task). Repeated ``--repeat`` times (default 3), raftmesh and Dask
   interleaved; the median is reported. For raftmesh the table also shows the run's own server-side
   duration (its ``created_ms`` -> ``finished_ms``, no client involved) and the Raft log entries
   committed per run: the difference between the client-side and the server-side time is what the
   client spends receiving the run's event stream (``Client.wait`` drains ``WatchRun``) and reading
   the result.
2. Single-task latency: submit one trivial task and wait for its result, ``--runs`` times (default 50)
   per mode after 5 untimed warm-up runs. raftmesh: ``Client.submit`` of a one-task DAG (``echo``)
   then ``Client.wait``; Dask: ``client.submit(f, x, pure=False).result()``. Two modes:
   *back to back* (the next submit right after the previous result, as in a tight loop) and *spaced*
   (25 ms of idle time before each run). They differ because the Dask client batches its messages to
   the scheduler in 10 ms windows: back to back, a submit usually waits for the window opened by the
   previous future's release message, which adds up to 10 ms that has nothing to do with the work.
   Spaced runs measure the round trip alone (for both systems, which also wake up from idle each
   time). p50 and p99 are reported in ms (linear interpolation between order statistics; with 50
   runs p99 is close to the maximum).

How to read the ratios
----------------------
Every ratio is raftmesh / Dask. For tasks/s a ratio below 1 means raftmesh completes fewer tasks per
second; for latency a ratio above 1 means raftmesh takes longer.

The comparison is about the cost of durability, plainly. raftmesh replicates every state change (the
submitted run, every batch of task assignments, every batch of results, and a barrier entry for each
linearizable read) through a Raft log on all nodes, and a change counts only once a majority has it
in its journal, so an acknowledged run survives a kill -9 of any node and the loss of any minority of
nodes, including the one that accepted it. Each node fsyncs its journal before it acknowledges
entries (one fsync per batch), so it also survives a power loss of every node; ``--fsync-compare``
shows what that costs. Dask's scheduler is a single in-memory process: nothing is written to disk or to another
process before a task counts, and if the scheduler dies every result and pending task is gone. Dask
is the baseline of "how fast can this be without durability"; the ratios show what raftmesh pays for
it (or, for tasks/s above 1, that its batching wins back more than durability costs here).
They are not a verdict on either system's efficiency at its own job.

Other differences worth knowing when reading the figures:

* raftmesh agents are asyncio coroutines inside the node processes (``--slots`` concurrent tasks per
  node); Dask runs one task at a time per worker thread and moves upstream results between workers
  for the fan-in (raftmesh's fan-in reads its inputs from the replicated state).
* Both clusters stay up during the whole run, so each system's idle background work (Raft
  heartbeats, Dask heartbeats) is present while the other is measured, and so is anything else
  running on the machine: the table prints the CPU count and the load average.

Usage::

    python scripts/bench.py                    # defaults: 3 nodes, 2,000 tasks, 50 runs, 3 repeats
    python scripts/bench.py --json > out.json  # JSON on stdout, the table on stderr
    python scripts/bench.py --skip-dask        # raftmesh only
    python scripts/bench.py --skip-dask --fsync-compare  # raftmesh with fsync vs --unsafe-no-fsync

``--fsync-compare`` starts a second raftmesh cluster with ``--unsafe-no-fsync`` next to the first
(both up for the whole run, their fan-out repeats interleaved, the same latency runs) and prints
fsync / no-fsync ratios for tasks/s and latency. Both clusters keep their data under the
temporary directory (``TMPDIR``): point it at the disk you want to measure.

Dask is an optional dependency: ``pip install -e '.[bench]'`` (the project's "bench" extra contains
``dask[distributed]``). Everything started is stopped, and the temporary directory removed, also on
errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
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
    Interrupted,
    dask_cluster,
    dask_importable,
    environment,
    finite,
    interrupt,
    percentile,
    positive_int,
    ratio,
)

import raftmesh
from raftmesh.client import DAG, Client, Task
from raftmesh.localcluster import LocalCluster

WARMUP_RUNS = 5
LATENCY_SPACING_S = 0.025
"""Idle time before each "spaced" latency run: longer than the Dask client's 10 ms message batching."""
WARMUP_FANOUT_TASKS = 50
RUN_TIMEOUT_S = 120.0
INSTALL_HINT = "pip install -e '.[bench]'  (the project's 'bench' extra contains dask[distributed])"


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
    def __init__(self, client: Client) -> None:
        self.client = client

    def fan_out(self, w: FanOut, res: FanOutResult | None) -> None:
        dag = w.dag()  # built before the clock starts, like Dask's function objects
        before = self.client.status().commit_index
        t0 = time.perf_counter()
        run_id = self.client.submit(dag)
        t1 = time.perf_counter()
        run = self.client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        t2 = time.perf_counter()
        after = self.client.status().commit_index
        if run.status != "SUCCEEDED":
            raise WrongAnswer(f"raftmesh run {run_id} ended {run.status}: {run.error}")
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


# ---- environment and output ------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render_table(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["config"]
    rm, dk = report["raftmesh"], report.get("dask")
    vs = env["versions"]
    lines = [
        "raftmesh vs Dask distributed benchmark",
        f"  machine : {env['cpu_count']} CPUs ({env['usable_cpus']} usable), Python {env['python']}, "
        f"{env['platform']}",
        f"  load    : 1-min load average {env['loadavg_1_5_15_at_start'][0]:.2f} at start, "
        f"{env['loadavg_1_5_15_at_end'][0]:.2f} at end (other processes on the machine skew the figures)",
        f"  versions: raftmesh {vs['raftmesh']}, pysyncobj {vs['pysyncobj']}, grpcio {vs['grpcio']}, "
        f"dask {vs['dask'] or '-'}, distributed {vs['distributed'] or '-'}",
        f"  raftmesh: {cfg['nodes']} node processes, Raft on loopback, {cfg['slots']} task slots per node, "
        f"client talks to {cfg['raftmesh_client_talks_to']}",
        "  Dask    : "
        + (
            f"LocalCluster, {cfg['dask_workers']} worker processes x 1 thread, scheduler in this process"
            if dk
            else f"SKIPPED ({report['dask_skipped']})"
        ),
        f"  startup : raftmesh {rm['startup_s']:.2f} s" + (f", Dask {dk['startup_s']:.2f} s" if dk else ""),
        "",
    ]

    def row(label: str, a: float | None, b: float | None, spec: str, with_ratio: bool = True) -> str:
        s = f"   {label:<26}{_fmt(a, spec):>12}"
        if dk:
            s += f"{_fmt(b, spec):>12}"
            s += f"{_fmt(ratio(a, b), '.2f') if with_ratio else '':>16}"
        return s.rstrip()

    hdr = f"   {'':<26}{'raftmesh':>12}" + (f"{'Dask':>12}{'raftmesh/Dask':>16}" if dk else "")
    r_fo = rm["fan_out"]
    d_fo = dk["fan_out"] if dk else {}
    lines += [
        f"1. Fan-out + fan-in: 1 root -> {cfg['tasks']:,} tasks -> 1 fan-in = {cfg['total_tasks']:,} tasks, "
        f"median of {cfg['repeat']} (answers checked)",
        hdr,
        row("tasks/s", r_fo["tasks_per_s_median"], d_fo.get("tasks_per_s_median"), ",.0f"),
        row("wall s", r_fo["wall_s_median"], d_fo.get("wall_s_median"), ".3f", with_ratio=False),
        row("  of which submit call s", r_fo["submit_s_median"], d_fo.get("submit_s_median"), ".3f", False),
        f"   {'tasks/s, each run':<26}raftmesh "
        + ", ".join(f"{v:,.0f}" for v in r_fo["tasks_per_s"])
        + ("; Dask " + ", ".join(f"{v:,.0f}" for v in d_fo["tasks_per_s"]) if dk else ""),
        f"   raftmesh server side (run created -> finished, no client): {r_fo['server_side_s_median']:.3f} s "
        f"= {r_fo['server_side_tasks_per_s_median']:,.0f} tasks/s;",
        f"   {statistics.median(r_fo['raft_entries']):.0f} Raft log entries per run; "
        f"tasks per node (last run) {r_fo['tasks_per_node'][-1]}",
        "",
    ]
    r_lat, d_lat = rm["latency"], (dk["latency"] if dk else {})
    r_sp, d_sp = rm["latency_spaced"], (dk["latency_spaced"] if dk else {})
    gap_ms = cfg["latency_spacing_s"] * 1000
    lines += [
        f"2. Single task submit -> result latency, {cfg['runs']} runs per mode after {cfg['warmup_runs']} "
        "warm-up runs (answers checked)",
        hdr,
        "   back to back (next submit right after the previous result):",
        row("  p50 ms", r_lat["p50_ms"], d_lat.get("p50_ms"), ".2f"),
        row("  p99 ms", r_lat["p99_ms"], d_lat.get("p99_ms"), ".2f"),
        row("  mean ms", r_lat["mean_ms"], d_lat.get("mean_ms"), ".2f"),
        row("  min ms", r_lat["min_ms"], d_lat.get("min_ms"), ".2f", with_ratio=False),
        row("  max ms", r_lat["max_ms"], d_lat.get("max_ms"), ".2f", with_ratio=False),
        f"   spaced ({gap_ms:.0f} ms idle before each run, longer than Dask's 10 ms client batching):",
        row("  p50 ms", r_sp["p50_ms"], d_sp.get("p50_ms"), ".2f"),
        row("  p99 ms", r_sp["p99_ms"], d_sp.get("p99_ms"), ".2f"),
        row("  mean ms", r_sp["mean_ms"], d_sp.get("mean_ms"), ".2f"),
        row("  min ms", r_sp["min_ms"], d_sp.get("min_ms"), ".2f", with_ratio=False),
        row("  max ms", r_sp["max_ms"], d_sp.get("max_ms"), ".2f", with_ratio=False),
        f"   raftmesh, back to back: the SubmitRun call alone (run committed on a majority) p50 "
        f"{r_lat['submit_p50_ms']:.2f} ms, p99 {r_lat['submit_p99_ms']:.2f} ms;",
        "   the rest is WatchRun until the run ends + GetRun.",
    ]
    f_lat = rm.get("latency_via_follower")
    if f_lat:
        lines.append(
            f"   raftmesh via a follower (writes forwarded to the leader), back to back: "
            f"p50 {f_lat['p50_ms']:.2f} ms, p99 {f_lat['p99_ms']:.2f} ms"
        )
    lines.append("")
    nf = report.get("raftmesh_unsafe_no_fsync")
    if nf:
        fr = report["ratios_fsync_over_no_fsync"]

        def frow(label: str, a: float, b: float, ratio_v: float | None, spec: str) -> str:
            return f"   {label:<26}{_fmt(a, spec):>12}{_fmt(b, spec):>14}{_fmt(ratio_v, '.2f'):>16}"

        lines += [
            "3. The cost of fsync: the same workloads on a second cluster started with --unsafe-no-fsync",
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
            "   tasks/s < 1 = fsync slower; latency > 1 = fsync slower.",
            "",
        ]
    mx = report.get("raftmesh_metrics")
    if mx:
        mr = report["ratios_metrics_over_no_metrics"]

        def mrow(label: str, a: float, b: float, ratio_v: float | None, spec: str) -> str:
            return f"   {label:<26}{_fmt(a, spec):>12}{_fmt(b, spec):>14}{_fmt(ratio_v, '.2f'):>18}"

        lines += [
            "4. The cost of metrics: the same workloads on a second cluster started with --metrics, every",
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
            "   tasks/s < 1 = metrics slower; latency > 1 = metrics slower.",
            "",
        ]
    bl = report.get("raftmesh_baseline")
    if bl:
        br = report["ratios_raftmesh_over_baseline"]

        def brow(label: str, a: float, b: float, ratio_v: float | None, spec: str) -> str:
            return f"   {label:<26}{_fmt(a, spec):>12}{_fmt(b, spec):>14}{_fmt(ratio_v, '.2f'):>18}"

        lines += [
            f"5. This tree vs a baseline cluster: nodes running {bl['tree'] or 'this tree'}"
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
            "   tasks/s < 1 = this tree slower; latency > 1 = this tree slower.",
            "",
        ]
    if dk:
        lines.append(
            "Ratios are raftmesh/Dask: tasks/s < 1 = raftmesh slower; latency > 1 = raftmesh slower.\n"
            "raftmesh commits every state change (run, assignments, results, read barriers) through Raft on a\n"
            "majority of its nodes before it counts, so it survives the loss of a minority of nodes; Dask's\n"
            "scheduler keeps all state in one process's memory. The ratios are the cost of that durability,\n"
            "not a verdict on either scheduler."
        )
    else:
        lines.append(f"Dask was skipped: {report['dask_skipped']}. No ratios.")
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
        description="Benchmark raftmesh against a Dask distributed LocalCluster on this machine.",
        epilog=f"Dask is optional: {INSTALL_HINT}",
    )
    p.add_argument("--nodes", type=positive_int, default=3, help="raftmesh nodes = Dask workers (default 3)")
    p.add_argument("--tasks", type=positive_int, default=2000, help="width of the fan-out (default 2000)")
    p.add_argument("--runs", type=positive_int, default=50, help="single-task latency runs (default 50)")
    p.add_argument("--repeat", type=positive_int, default=3, help="fan-out repeats; median (default 3)")
    p.add_argument("--slots", type=positive_int, default=64, help="raftmesh task slots per node (default 64)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--skip-dask", action="store_true", help="measure raftmesh only")
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
    return p.parse_args(argv)


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


def run(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    dask_skipped: str | None = None
    ok, why = dask_importable()
    if args.skip_dask:
        dask_skipped = "--skip-dask was given"
        if not ok:
            dask_skipped += f"; Dask is not importable here ({why}); install it with: {INSTALL_HINT}"
    elif not ok:
        raise SystemExit(
            f"bench: Dask is not importable ({why}).\n"
            f"Install it with: {INSTALL_HINT}\n"
            "or run with --skip-dask to measure raftmesh only."
        )

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
    rm = RaftmeshBench(rcluster.client([rcluster.nodes[leader].grpc]))
    follower = next((i for i in rcluster.nodes if i != leader), None)
    rm_follower = RaftmeshBench(rcluster.client([rcluster.nodes[follower].grpc])) if follower else None
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
        rm_nf = RaftmeshBench(ncluster.client([ncluster.nodes[nf_leader].grpc]))

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
        rm_mx = RaftmeshBench(mcluster.client([mcluster.nodes[mx_leader].grpc]))
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
        env: dict[str, str] = {}
        if args.baseline_tree:
            # PYTHONSAFEPATH: `python -m` would put the working directory (maybe another checkout) first.
            env = {"PYTHONPATH": os.path.abspath(args.baseline_tree), "PYTHONSAFEPATH": "1"}
            got = subprocess.run(
                [sys.executable, "-c", "import raftmesh; print(raftmesh.__file__)"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            if not got.startswith(os.path.abspath(args.baseline_tree) + os.sep):
                raise SystemExit(f"bench: --baseline-tree {args.baseline_tree}: the nodes would import {got}")
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
        rm_bl = RaftmeshBench(bcluster.client([bcluster.nodes[bl_leader].grpc]))
        log(f"baseline ready; leader {bl_leader}; node pids {[n.pid for n in bcluster.nodes.values()]}")

    dk: DaskBench | None = None
    dk_startup = math.nan
    if dask_skipped is None:
        log(f"starting Dask LocalCluster ({args.nodes} worker processes x 1 thread)")
        dclient, dk_startup = stack.enter_context(dask_cluster(args.nodes, os.path.join(tmp, "dask")))
        dk = DaskBench(dclient)
        log(f"Dask ready in {dk_startup:.2f} s")

    systems: list[tuple[str, RaftmeshBench | DaskBench]] = [("raftmesh", rm)]
    if rm_nf is not None:
        systems.append((nf_name, rm_nf))
    if rm_mx is not None:
        systems.append((mx_name, rm_mx))
    if rm_bl is not None:
        systems.append((bl_name, rm_bl))
    if dk is not None:
        systems.append(("Dask", dk))

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
    measured: list[tuple[str, RaftmeshBench | DaskBench]] = list(systems)
    if rm_follower is not None:
        measured.append((f"raftmesh via follower {follower}", rm_follower))
    # The baseline is compared with this tree run by run (alternating, each side first every other
    # run), so load that comes and goes on the machine falls on both sides alike; every other
    # system is measured on its own, as before.
    groups: list[list[tuple[str, RaftmeshBench | DaskBench]]] = []
    for name, sysb in measured:
        if name == bl_name:
            continue
        groups.append([(name, sysb)] + ([(bl_name, rm_bl)] if name == "raftmesh" and rm_bl else []))
    for group in groups:
        for _, sysb in group:
            for k in range(WARMUP_RUNS):
                sysb.single(-1 - k, None)
        name0 = group[0][0]
        spacings = (False, True) if name0 in ("raftmesh", "Dask", nf_name, mx_name) else (False,)
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
        },
        "raftmesh": {
            "startup_s": rm_startup,
            "fan_out": summarize_fan_out(fan["raftmesh"], total),
            "latency": lat[("raftmesh", False)].summary(),
            "latency_spaced": lat[("raftmesh", True)].summary(),
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
        "dask_skipped": dask_skipped,
        "ratios_raftmesh_over_dask": None,
    }

    def summary(name: str, startup_s: float | None) -> dict[str, Any]:
        return {
            "startup_s": startup_s,
            "fan_out": summarize_fan_out(fan[name], total),
            "latency": lat[(name, False)].summary(),
            "latency_spaced": lat[(name, True)].summary(),
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
