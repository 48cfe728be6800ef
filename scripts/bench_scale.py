#!/usr/bin/env python3
"""raftmesh growth: do its costs stay flat as the work grows? (issue 13, goal 3)

What is measured
----------------
Cluster figures (``--nodes`` real node processes on loopback, fsync on, ``--metrics`` on), for this
tree and, with ``--baseline-tree DIR``, side by side for a second cluster running that tree's code
(phases interleaved: this tree, then the baseline, per phase):

1. Apply stall during a large submit. Every node is probed by its own client thread that reads a
   one-task run back to back with ``GetRun(stale_ok)``: that read takes the node's apply lock, so the
   longest probe latency while a ``--stall-tasks`` run is submitted (from the submit until every node
   has applied it, plus 0.5 s) is the longest time that node's apply lock or event loop was held, as a
   reader sees it. The run's root is a ``sleep`` task, so no other task runs in that window; the run is
   cancelled afterwards. A tree that exports ``raftmesh_raft_apply_entry_seconds_max`` (this one) also
   reports the longest time one log entry held the apply thread, exactly, and from the histogram
   of the same metric how many entries in that window took over 50 ms (wall time: on a loaded
   machine CPU contention inflates an entry's time several-fold).
2. Throughput at 1,000 vs 100,000 tasks: a fan-out + fan-in run of ``--small-tasks`` tasks (built-in
   ``sum`` agent; median of ``--repeat``), then ``--large-runs`` runs of ``--large-tasks`` tasks
   submitted together and waited for; tasks/s = tasks / wall time from the first submit until the
   last run's result is back (every output is checked). The issue's goal: large >= 0.8 x small.
3. Memory per finished run: each node's RSS (``/proc/PID/status`` VmRSS) before and after the
   large runs, divided by the runs (and by the tasks).

In-process figures (no cluster; for each tree in a subprocess that imports that tree; CPU time of
that process, which other load on the shared machine inflates far less than wall time):

4. Apply of a ``--stall-tasks`` submit: the CPU to decode the log entry and to apply it (median of
   ``--repeat``; this tree decodes before taking the apply lock, the baseline under it), and how long
   the first ``GetRun`` of that run (``ReadView.run``) holds the lock. A tree that stages large
   submits (``StageRun``) also reports the same run as its node proposes it: the number of log
   entries and the longest decode + apply CPU of one of them.
5. Snapshot after ``--snapshot-tasks`` finished tasks (runs of ``--snapshot-run-tasks``), built by
   applying real SubmitRun/Assign/Complete commands to a ``StateMachine``: the snapshot's size, how
   long the apply lock is held to take it (a tree whose ``ReadView`` has ``snapshot`` encodes
   finished runs once and off the lock; the baseline encodes the whole state under it), the time to
   encode it, and to write it with ``LmdbSnapshotIO`` (LMDB, synced, as a node does). Measured twice:
   the first snapshot, and the next one after one more small run finished (what a node pays at every
   later log compaction).

Ratios are this tree / baseline. The machine is shared: the load average is printed with the
results; compare ratios, not absolute figures. Everything started is stopped (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchkit import Interrupted, baseline_env, environment, finite, interrupt, positive_int, ratio

from raftmesh.errors import RaftmeshError

RUN_TIMEOUT_S = 900.0
CALL_TIMEOUT_S = 300.0
PROBE_TAIL_S = 0.5
"""Probing goes on this long after every node applied the large submit (its events are handled)."""


def log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- workloads ---------------------------------------------------------------------------------


def fan_out(name: str, total: int, root: dict[str, Any] | None = None) -> Any:
    """root -> (total - 2) leaves -> fan_in, built-in ``sum`` agents (``root`` overrides the root task)."""
    from raftmesh.client import DAG

    dag = DAG(name)
    r = dag.task("root", **(root or {"agent": "sum", "input": {"value": 1}}))
    leaves = [dag.task(f"w{i}", "sum", input={"value": i}, deps=[r]) for i in range(total - 2)]
    dag.task("fan_in", "sum", input={"value": 0}, deps=leaves)
    return dag


def check_fan_out(run: Any, total: int) -> None:
    width = total - 2
    if run.status != "SUCCEEDED" or len(run.tasks) != total:
        raise AssertionError(f"run {run.run_id} ended {run.status} with {len(run.tasks)} tasks: {run.error}")
    want = width * (width - 1) // 2 + width * 1
    if run.tasks["fan_in"].output != want:
        raise AssertionError(f"run {run.run_id}: fan_in {run.tasks['fan_in'].output!r} != {want}")
    bad = [i for i in range(width) if run.tasks[f"w{i}"].output != i + 1]
    if bad:
        raise AssertionError(f"run {run.run_id}: {len(bad)} wrong leaf outputs (w{bad[0]})")


# ---- cluster side ------------------------------------------------------------------------------


def rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def scrape(url: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


HIST = "raftmesh_raft_apply_entry_seconds"


def scrape_entries(url: str) -> tuple[float, float, float] | None:
    """(entries applied, entries that took over 50 ms, their summed seconds) from the node's
    apply-time histogram; None where the tree does not export it."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = within = summed = None
    for line in text.splitlines():
        if line.startswith(HIST + '_bucket{le="+Inf"}'):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(HIST + '_bucket{le="0.05"}'):
            within = float(line.rsplit(" ", 1)[1])
        elif line.startswith(HIST + "_sum "):
            summed = float(line.rsplit(" ", 1)[1])
    if total is None or within is None or summed is None:
        return None
    return total, total - within, summed


class Side:
    """One cluster (this tree or the baseline) and the figures measured on it."""

    def __init__(self, name: str, cluster: Any) -> None:
        self.name = name
        self.cluster = cluster
        self.leader = cluster.wait_ready()
        # Calls wait long: on a loaded machine a 10,000-task submit can take many seconds.
        self.client = cluster.client([cluster.nodes[self.leader].grpc], timeout_s=CALL_TIMEOUT_S)
        self.figures: dict[str, Any] = {"name": name}

    def stall(self, tasks: int) -> None:
        c, cl = self.client, self.cluster
        probe_run = c.submit(fan_out("probe", 3))
        c.wait(probe_run, timeout_s=RUN_TIMEOUT_S)
        nodes = sorted(cl.nodes)
        clients = {n: cl.client([cl.nodes[n].grpc], timeout_s=CALL_TIMEOUT_S) for n in nodes}
        samples: dict[str, list[tuple[float, float]]] = {n: [] for n in nodes}
        stop = threading.Event()

        def probe(n: str) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    clients[n].get(probe_run, stale_ok=True)
                except RaftmeshError as exc:  # counted as waited-for until it failed
                    log(f"probe of {n} failed after {time.perf_counter() - t0:.1f} s: {exc}")
                samples[n].append((t0, time.perf_counter() - t0))

        threads = [threading.Thread(target=probe, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the probes' quiet latency, before the submit
        dag = fan_out("stall", tasks, root={"agent": "sleep", "input": {"seconds": 3600}})
        before = {n: scrape(f"http://{cl.nodes[n].metrics}/metrics", MAX_METRIC) for n in nodes}
        hist0 = {n: scrape_entries(f"http://{cl.nodes[n].metrics}/metrics") for n in nodes}
        t0 = time.perf_counter()
        run_id = c.submit(dag)
        submit_s = time.perf_counter() - t0
        commit = c.status().commit_index
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for n in nodes:
            while clients[n].status_of(cl.nodes[n].grpc).last_applied < commit:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n} did not apply index {commit}")
                time.sleep(0.02)
        time.sleep(PROBE_TAIL_S)
        t1 = time.perf_counter()
        stop.set()
        for t in threads:
            t.join(30)
        # Read before the run is cancelled: cancelling its 10,000 tasks is one entry of its own,
        # O(tasks), that the submit's figures must not include.
        afters = {n: scrape(f"http://{cl.nodes[n].metrics}/metrics", MAX_METRIC) for n in nodes}
        hist1 = {n: scrape_entries(f"http://{cl.nodes[n].metrics}/metrics") for n in nodes}
        c.cancel(run_id, "benchmark")
        per_node = {}
        for n in nodes:
            quiet = [s for t, s in samples[n] if t < t0]
            window = [s for t, s in samples[n] if t0 <= t <= t1] or [math.nan]
            after = afters[n]
            h0, h1 = hist0[n], hist1[n]
            # Entries applied in the window (the submit's, and ticks and probes' neighbours), how many
            # of them held the apply thread over 50 ms (wall: lock wait and CPU contention included).
            entries = None if h0 is None or h1 is None else [b - a for a, b in zip(h0, h1, strict=True)]
            per_node[n] = {
                "probe_max_ms": max(window) * 1000,
                "probe_quiet_p50_ms": statistics.median(quiet) * 1000 if quiet else math.nan,
                "probes": len(window),
                # The largest entry since the node started; it is the submit's if it grew in the window.
                "apply_entry_max_ms": None if after is None else after * 1000,
                "apply_entry_max_before_ms": None if before[n] is None else before[n] * 1000,
                "entries": None if entries is None else int(entries[0]),
                "entries_over_50ms": None if entries is None else int(entries[1]),
                "apply_s": None if entries is None else entries[2],
            }
        self.figures["stall"] = {
            "tasks": tasks,
            "submit_ms": submit_s * 1000,
            "nodes": per_node,
            "probe_max_ms": max(v["probe_max_ms"] for v in per_node.values()),
            "apply_entry_max_ms": max(
                (v["apply_entry_max_ms"] for v in per_node.values() if v["apply_entry_max_ms"] is not None),
                default=None,
            ),
            "entries_over_50ms": max(
                (v["entries_over_50ms"] for v in per_node.values() if v["entries_over_50ms"] is not None),
                default=None,
            ),
        }
        log(f"{self.name}: stall {json.dumps(finite(self.figures['stall']))}")

    def small(self, tasks: int, repeat: int) -> None:
        rates = []
        for i in range(repeat):
            dag = fan_out(f"small-{i}", tasks)
            t0 = time.perf_counter()
            run = self.client.wait(self.client.submit(dag), timeout_s=RUN_TIMEOUT_S)
            rates.append(tasks / (time.perf_counter() - t0))
            check_fan_out(run, tasks)
        self.figures["small"] = {"tasks": tasks, "tasks_per_s": statistics.median(rates), "all": rates}
        log(f"{self.name}: {tasks} tasks: {statistics.median(rates):.0f} tasks/s ({rates})")

    def large(self, runs: int, tasks: int) -> None:
        pids = {n: p.pid for n, p in self.cluster.nodes.items()}
        rss0 = {n: rss_bytes(pid) for n, pid in pids.items()}
        dags = [fan_out(f"large-{i}", tasks) for i in range(runs)]
        t0 = time.perf_counter()
        ids = [self.client.submit(d) for d in dags]
        done = [self.client.wait(r, timeout_s=RUN_TIMEOUT_S) for r in ids]
        wall = time.perf_counter() - t0
        for run in done:
            check_fan_out(run, tasks)
        del done
        rss1 = {n: rss_bytes(pid) for n, pid in pids.items()}
        per_run = {n: (rss1[n] - rss0[n]) / runs for n in pids}
        self.figures["large"] = {
            "runs": runs,
            "tasks": runs * tasks,
            "tasks_per_s": runs * tasks / wall,
            "wall_s": wall,
            "rss_before_mb": {n: v / 2**20 for n, v in rss0.items()},
            "rss_after_mb": {n: v / 2**20 for n, v in rss1.items()},
            "rss_per_finished_run_mb": {n: v / 2**20 for n, v in per_run.items()},
            "rss_per_finished_task_kb": {n: v / tasks / 1024 for n, v in per_run.items()},
            "max_rss_per_finished_run_mb": max(per_run.values()) / 2**20,
        }
        log(f"{self.name}: large {json.dumps(finite(self.figures['large']))}")


MAX_METRIC = "raftmesh_raft_apply_entry_seconds_max"


def start_cluster(args: argparse.Namespace, base: str, tree: str | None, stack: contextlib.ExitStack) -> Any:
    from raftmesh.localcluster import LocalCluster

    env = baseline_env(tree, "bench_scale") if tree else {}
    cluster = LocalCluster(
        args.nodes,
        base_dir=base,
        slots=args.slots,
        metrics=True,
        extra_args=shlex.split(args.node_args),
        env=env,
    )
    stack.callback(cluster.close)  # registered before start: a half-started cluster is stopped too
    cluster.start(timeout_s=120)
    return cluster


# ---- in-process snapshot figure ----------------------------------------------------------------


class TimedLock:
    """An RLock that records the longest time it was held (the apply lock's stand-in), in CPU
    time of this (single-threaded) process: other load on the machine does not inflate it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._t = 0.0
        self.longest = 0.0

    def __enter__(self) -> None:
        self._lock.acquire()
        self._t = time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.longest = max(self.longest, time.process_time() - self._t)
        self._lock.release()


def apply_figures(tasks: int, repeat: int) -> dict[str, Any]:
    """CPU time (median of ``repeat``) to decode and to apply one ``tasks``-task SubmitRun, and
    how long a first GetRun of that run holds the lock (``ReadView.run``)."""
    from raftmesh.consensus.commands import RegisterNode, SubmitRun, TaskSpec, decode_batch, encode_batch
    from raftmesh.consensus.machine import StateMachine
    from raftmesh.node.reads import ReadView

    sm = StateMachine()
    sm.apply(RegisterNode("reg", 1_000, "n1", "n1:1", "n1:2", ("sum", "sleep"), 8, "i1"))
    lock = TimedLock()
    view = ReadView(lock, lambda: sm.state)
    decode, apply, read = [], [], []
    for i in range(repeat):
        width = tasks - 2
        specs = [TaskSpec(id="root", agent="sleep", input={"seconds": 3600})]
        specs += [TaskSpec(id=f"w{j}", agent="sum", input={"value": j}, deps=("root",)) for j in range(width)]
        specs.append(TaskSpec(id="fan_in", agent="sum", deps=tuple(f"w{j}" for j in range(width))))
        payload = encode_batch([SubmitRun(f"s{i}", 2_000, f"run{i}", "", tuple(specs), 0, "r", "bench")])
        t0 = time.process_time()
        commands = decode_batch(payload)
        decode.append(time.process_time() - t0)
        t0 = time.process_time()
        res, _ = sm.apply(commands[0])  # type: ignore[arg-type]
        apply.append(time.process_time() - t0)
        assert res.ok, res
        lock.longest = 0.0
        got = view.run(f"run{i}")
        assert got is not None and len(got.run.tasks) == tasks
        read.append(lock.longest)
    out = {
        "tasks": tasks,
        "decode_ms": statistics.median(decode) * 1000,
        "apply_ms": statistics.median(apply) * 1000,
        "getrun_lock_held_ms": statistics.median(read) * 1000,
    }
    out.update(staged_apply_figures(sm, specs, repeat))
    return out


def staged_apply_figures(sm: Any, specs: list[Any], repeat: int) -> dict[str, Any]:
    """A tree that stages large submits (``StageRun``): the same run as its node proposes it, in
    parts; the longest apply CPU of one of its entries (decode included) and their count."""
    try:
        from raftmesh.consensus.commands import StageRun, SubmitRun, decode_batch, encode_batch
        from raftmesh.consensus.dag import stage_parts
    except ImportError:
        return {}
    import dataclasses

    longest, each, entries = [], [], 0
    for i in range(repeat):
        parts = stage_parts(specs)
        run_id = f"staged{i}"
        cmds: list[Any] = [
            StageRun(f"g{i}-{seq}", 2_000, run_id=run_id, seq=seq, tasks=tuple(p), node_id="n1")
            for seq, p in enumerate(parts[:-1])
        ]
        whole = SubmitRun(f"ss{i}", 2_000, run_id, "", tuple(parts[-1]), 0, "r", "bench")
        cmds.append(dataclasses.replace(whole, staged=len(specs) - len(parts[-1])))
        worst = 0.0
        for cmd in cmds:
            payload = encode_batch([cmd])
            t0 = time.process_time()
            res, _ = sm.apply(decode_batch(payload)[0])
            worst = max(worst, time.process_time() - t0)
            each.append(time.process_time() - t0)
            assert res.ok, res
        longest.append(worst)
        entries = len(cmds)
    # The longest entry includes any full garbage collection that fell into it (with several
    # 10,000-task runs alive, ~0.1 s here): the median entry shows the part itself.
    return {
        "staged_entries": entries,
        "staged_entry_max_ms": statistics.median(longest) * 1000,
        "staged_entry_p50_ms": statistics.median(each) * 1000,
    }


def snapshot_figures(total: int, per_run: int, tmp: str) -> dict[str, Any]:
    """Built and measured in this process, with whatever ``raftmesh`` is importable."""
    import raftmesh
    from raftmesh.consensus.commands import (
        Assign,
        Assignment,
        Complete,
        Completion,
        RegisterNode,
        SubmitRun,
        TaskSpec,
    )
    from raftmesh.consensus.machine import StateMachine
    from raftmesh.node.reads import ReadView
    from raftmesh.storage.snapshots import LmdbSnapshotIO

    sm = StateMachine()
    ts = 1_000_000
    n = [0]

    def rid() -> str:
        n[0] += 1
        return f"r{n[0]}"

    sm.apply(RegisterNode(rid(), ts, "n1", "n1:1", "n1:2", ("sum",), 100_000, "i1"))

    def finish_run(run_id: str, tasks: int) -> None:
        width = max(tasks - 2, 0)
        specs = [TaskSpec(id="root", agent="sum", input={"value": 1})]
        specs += [TaskSpec(id=f"w{i}", agent="sum", input={"value": i}, deps=("root",)) for i in range(width)]
        specs.append(
            TaskSpec(id="fan_in", agent="sum", input={"value": 0}, deps=tuple(f"w{i}" for i in range(width)))
        )
        res, _ = sm.apply(SubmitRun(rid(), ts, run_id, "", tuple(specs), 0, run_id, "bench"))
        assert res.ok, res
        for layer in (["root"], [f"w{i}" for i in range(width)], ["fan_in"]):
            for off in range(0, len(layer), 1000):
                chunk = layer[off : off + 1000]
                res, _ = sm.apply(Assign(rid(), ts, tuple(Assignment(run_id, t, "n1", 1) for t in chunk)))
                assert res.ok, res
                run = sm.state.runs[run_id]
                items = tuple(Completion(run_id, t, 1, run.tasks[t].token, {"v": 1}) for t in chunk)
                res, _ = sm.apply(Complete(rid(), ts, "n1", items))
                assert res.ok, res
        assert sm.state.runs[run_id].status.value == "SUCCEEDED", sm.state.runs[run_id].status

    t0 = time.process_time()
    done = 0
    i = 0
    while done < total:
        k = min(per_run, total - done)
        finish_run(f"snap-{i}", max(k, 3))
        done += max(k, 3)
        i += 1
    build_cpu_s = time.process_time() - t0
    lock = TimedLock()
    reads = ReadView(lock, lambda: sm.state)
    cached = hasattr(reads, "snapshot")
    io = LmdbSnapshotIO()
    out: dict[str, Any] = {
        "tree": os.path.dirname(os.path.dirname(raftmesh.__file__)),
        "finished_tasks": done,
        "runs_built": i,
        "runs_retained": len(sm.state.runs),
        "tasks_retained": sum(len(r.tasks) for r in sm.state.runs.values()),
        "build_cpu_s": build_cpu_s,
        "off_lock_snapshot": cached,
    }
    for label in ("first", "next"):
        if label == "next":
            finish_run(f"snap-extra-{i}", 10)
        lock.longest = 0.0
        t0 = time.process_time()
        if cached:
            state = reads.snapshot()
        else:
            with lock:  # what RaftMember._serialize does
                state = sm.snapshot()
        encode_s = time.process_time() - t0
        assert state == sm.state.encode()
        path = os.path.join(tmp, f"snapshot-{label}")
        t0 = time.perf_counter()
        io.write(path, b"meta", state)
        write_s = time.perf_counter() - t0
        out[label] = {
            "bytes": len(state),
            "lock_held_ms": lock.longest * 1000,
            "encode_ms": encode_s * 1000,
            "write_ms": write_s * 1000,
            "total_ms": (encode_s + write_s) * 1000,
        }
        log(f"snapshot {label}: {out[label]}")
    return out


def snapshot_in(tree: str | None, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if tree:
        env.update(PYTHONPATH=os.path.abspath(tree), PYTHONSAFEPATH="1")
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--snapshot-only",
        "--snapshot-tasks",
        str(args.snapshot_tasks),
        "--snapshot-run-tasks",
        str(args.snapshot_run_tasks),
        "--stall-tasks",
        str(args.stall_tasks),
        "--repeat",
        str(args.repeat),
        "--json",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: the snapshot measurement for {tree or 'this tree'} failed")
    result: dict[str, Any] = json.loads(out)
    return result


# ---- report ------------------------------------------------------------------------------------


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


ROWS = [
    (
        "stall: longest probe read during a {stall} submit, ms (max over nodes)",
        ("stall", "probe_max_ms"),
        "{:.1f}",
    ),
    ("stall: longest apply entry, ms (exact; max over nodes)", ("stall", "apply_entry_max_ms"), "{:.1f}"),
    ("stall: entries over 50 ms during it (exact; max over nodes)", ("stall", "entries_over_50ms"), "{:.0f}"),
    ("stall: submit call, ms", ("stall", "submit_ms"), "{:.1f}"),
    ("tasks/s at {small} tasks (median)", ("small", "tasks_per_s"), "{:.0f}"),
    ("tasks/s at {large} tasks", ("large", "tasks_per_s"), "{:.0f}"),
    ("large / small tasks/s (goal >= 0.8)", ("growth",), "{:.2f}"),
    ("RSS per finished run, MB (max over nodes)", ("large", "max_rss_per_finished_run_mb"), "{:.2f}"),
    ("in-process: decode a {stall} submit, CPU ms", ("snapshot", "apply", "decode_ms"), "{:.0f}"),
    ("in-process: apply it, CPU ms", ("snapshot", "apply", "apply_ms"), "{:.0f}"),
    ("in-process: staged, log entries", ("snapshot", "apply", "staged_entries"), "{:.0f}"),
    (
        "in-process: staged, longest entry's decode + apply, CPU ms",
        ("snapshot", "apply", "staged_entry_max_ms"),
        "{:.1f}",
    ),
    (
        "in-process: staged, median entry's decode + apply, CPU ms",
        ("snapshot", "apply", "staged_entry_p50_ms"),
        "{:.1f}",
    ),
    (
        "in-process: first GetRun of it, apply lock held, CPU ms",
        ("snapshot", "apply", "getrun_lock_held_ms"),
        "{:.2f}",
    ),
    ("snapshot bytes after {snap} finished tasks", ("snapshot", "first", "bytes"), "{:,.0f}"),
    ("snapshot: finished tasks retained", ("snapshot", "tasks_retained"), "{:,.0f}"),
    ("snapshot: apply lock held, CPU ms (first)", ("snapshot", "first", "lock_held_ms"), "{:.0f}"),
    ("snapshot: encode (CPU) + write (wall), ms (first)", ("snapshot", "first", "total_ms"), "{:.0f}"),
    ("snapshot: write (LMDB, synced), ms (first)", ("snapshot", "first", "write_ms"), "{:.0f}"),
    ("snapshot: apply lock held, CPU ms (next)", ("snapshot", "next", "lock_held_ms"), "{:.1f}"),
    ("snapshot: encode (CPU) + write (wall), ms (next)", ("snapshot", "next", "total_ms"), "{:.0f}"),
]


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    fmt = {
        "stall": f"{cfg['stall_tasks']:,}-task",
        "small": f"{cfg['small_tasks']:,}",
        "large": f"{cfg['large_runs'] * cfg['large_tasks']:,}",
        "snap": f"{cfg['snapshot_tasks']:,}",
    }
    this, base = report["this"], report.get("baseline")
    lines = [
        f"raftmesh growth, {cfg['nodes']} nodes, fsync on; load average {report['load_start']} -> {report['load_end']}",
        f"{'':<72}{'this':>14}{'baseline':>14}{'this/base':>11}",
    ]
    for label, path, spec in ROWS:
        a, b = _get(this, *path), _get(base, *path)
        if a is None and b is None:
            continue
        r = ratio(a, b)
        lines.append(
            f"{label.format(**fmt):<72}{spec.format(a) if a is not None else '-':>14}"
            f"{spec.format(b) if b is not None else '-':>14}{f'{r:.2f}' if r is not None else '-':>11}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="raftmesh growth figures: apply stalls, tasks/s at 1k vs 100k tasks, memory per "
        "finished run, snapshot size and time. See the module docstring for what each figure means.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--nodes", type=positive_int, default=3)
    p.add_argument("--slots", type=positive_int, default=8, help="slots per node")
    p.add_argument("--baseline-tree", default=None, help="a second cluster runs this checkout's code")
    p.add_argument("--node-args", default="", help="extra node flags for every cluster")
    p.add_argument("--stall-tasks", type=positive_int, default=10_000)
    p.add_argument("--small-tasks", type=positive_int, default=1_000)
    p.add_argument("--repeat", type=positive_int, default=3)
    p.add_argument("--large-runs", type=positive_int, default=10)
    p.add_argument("--large-tasks", type=positive_int, default=10_000)
    p.add_argument("--snapshot-tasks", type=positive_int, default=1_000_000)
    p.add_argument("--snapshot-run-tasks", type=positive_int, default=10_000)
    p.add_argument("--skip", default="", help="comma-separated phases to skip: stall,small,large,snapshot")
    p.add_argument("--snapshot-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p.parse_args(argv)


def run(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    skip = {s for s in args.skip.split(",") if s}
    load_start = os.getloadavg()
    sides: list[Side] = []
    if not {"stall", "small", "large"} <= skip:
        log("starting this tree's cluster")
        sides.append(Side("this", start_cluster(args, os.path.join(tmp, "this"), None, stack)))
        if args.baseline_tree:
            log(f"starting the baseline cluster ({args.baseline_tree})")
            sides.append(
                Side("baseline", start_cluster(args, os.path.join(tmp, "base"), args.baseline_tree, stack))
            )
        for s in sides:
            s.small(min(args.small_tasks, 100), 1)  # warm-up
        if "stall" not in skip:
            for s in sides:
                s.stall(args.stall_tasks)
        if "small" not in skip:
            for s in sides:
                s.small(args.small_tasks, args.repeat)
        if "large" not in skip:
            for s in sides:
                s.large(args.large_runs, args.large_tasks)
        for s in sides:
            sm, lg = _get(s.figures, "small", "tasks_per_s"), _get(s.figures, "large", "tasks_per_s")
            s.figures["growth"] = ratio(lg, sm)
    figures = {s.name: s.figures for s in sides}
    if "snapshot" not in skip:
        log(f"snapshot after {args.snapshot_tasks:,} finished tasks, this tree")
        figures.setdefault("this", {})["snapshot"] = snapshot_in(None, args)
        if args.baseline_tree:
            log(f"snapshot after {args.snapshot_tasks:,} finished tasks, {args.baseline_tree}")
            figures.setdefault("baseline", {})["snapshot"] = snapshot_in(args.baseline_tree, args)
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "snapshot_only")},
        "environment": environment(),
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "this": figures.get("this", {}),
        "baseline": figures.get("baseline"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, contextlib.ExitStack() as stack:
            if args.snapshot_only:
                out = {"apply": apply_figures(args.stall_tasks, args.repeat)}
                out.update(snapshot_figures(args.snapshot_tasks, args.snapshot_run_tasks, tmp))
                print(json.dumps(finite(out)))
                return 0
            report = run(args, tmp, stack)
    except Interrupted as exc:
        log(f"interrupted ({exc}); everything started was stopped")
        return 130
    print(json.dumps(finite(report), indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
