#!/usr/bin/env python3
"""How much a large read costs the reader, and how much it costs everyone else's writes.

What is measured
----------------
A ``LocalCluster`` of 3 real node processes on loopback. First one fan-out run of ``--tasks``
(default 2,000) ``echo`` tasks is submitted and waited for: the *big run*. Then, for
``--seconds`` (default 10) per phase, while a second fan-out run of the same size executes in
the background (the load that keeps apply busy), this script measures on the leader:

* ``GetRun`` of the big run: latency of each call, p50/p99/max in ms, calls back to back from
  ``--readers`` threads (default 2), through a plain gRPC stub (the SDK's conversion of the answer
  into ``RunInfo`` is client-side work that no server change affects, so it is left out). Both
  ``stale_ok=False`` (read barrier, what clients use by default) and ``stale_ok=True`` (the read
  alone) are measured, in separate phases.
* ``status --digest``: latency of ``ClusterStatus(include_digest=True)`` back to back from one
  thread, in its own phase.
* A writer that is not reading anything: one ``kv.put`` at a time, back to back, latency
  p50/p99/max. A read that holds the apply lock delays the apply of this write, so its p99/max is
  the visible cost of reads on apply (a write that waits behind a 29 ms read takes 29 ms more).
* The background run's own duration (its ``created_ms`` -> ``finished_ms``).

A baseline phase runs the same background run and writer with no reader, so the effect of the
readers is the difference between the rows.

Then, in this process and with no network, how long each read holds the apply lock, on a state
shaped like the cluster's (five runs of ``--tasks`` tasks, 10,000 KV writes; one run changes
between digests, as during a fan-out): what the node held it for before ``raftmesh.node.reads``
(``convert.run_to_pb`` of the live run for GetRun, ``ClusterState.digest`` for the digest: the
calls it made under the lock) next to ``ReadView``, median of 7. Skipped on code without
``raftmesh.node.reads``.

Usage::

    python scripts/bench_reads.py                 # defaults: 2,000 tasks, 10 s per phase
    python scripts/bench_reads.py --json          # JSON on stdout, the table on stderr

Everything started is stopped, and the temporary directory removed, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc
from _benchkit import environment, finite, interrupt, percentile, positive_int

from raftmesh import DAG
from raftmesh.localcluster import LocalCluster
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc


def fan_out(name: str, tasks: int) -> DAG:
    dag = DAG(name)
    root = dag.task("root", "echo", input={"v": 0})
    for i in range(tasks):
        dag.task(f"t{i}", "echo", input={"i": i, "pad": "x" * 64}, deps=[root])
    return dag


def stats(samples: list[float]) -> dict[str, float | int]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


def loop(stop: threading.Event, fn: Callable[[], Any], out: list[float], errors: list[BaseException]) -> None:
    """Call ``fn`` back to back; a failed call ends the loop and is kept (the phase then fails:
    stats of part of the window would be reported as if they covered all of it)."""
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    except Exception as exc:
        errors.append(exc)


def phase(
    cluster: LocalCluster, leader: str, args: argparse.Namespace, big: str, reader: str
) -> dict[str, Any]:
    addr = cluster.nodes[leader].grpc
    client = cluster.client([addr])
    stop = threading.Event()
    writes: list[float] = []
    reads: list[float] = []
    errors: list[BaseException] = []
    threads = []
    k = [0]

    def put() -> None:
        k[0] += 1
        client.kv.put(f"bench/{k[0] % 64}", k[0])

    threads.append(threading.Thread(target=loop, args=(stop, put, writes, errors), daemon=True))
    channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.ClusterStub(channel)
    readers = {
        "none": None,
        "get_run": lambda: stub.GetRun(pb.GetRunRequest(run_id=big), timeout=30),
        "get_run_stale_ok": lambda: stub.GetRun(pb.GetRunRequest(run_id=big, stale_ok=True), timeout=30),
        "status_digest": lambda: client.status_of(addr, include_digest=True, timeout_s=10.0),
    }
    fn = readers[reader]
    if fn is not None:
        n = 1 if reader == "status_digest" else args.readers
        for _ in range(n):
            threads.append(threading.Thread(target=loop, args=(stop, fn, reads, errors), daemon=True))
    bg = client.submit(fan_out(f"bg-{reader}", args.tasks))
    for t in threads:
        t.start()
    time.sleep(args.seconds)  # the measuring window (a duration, not a wait for a condition)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    channel.close()
    if errors:
        raise RuntimeError(f"phase {reader!r}: {len(errors)} measuring thread(s) failed: {errors[0]!r}")
    run = client.wait(bg, timeout_s=300)
    assert run.status == "SUCCEEDED", run.status
    return {
        "reader": reader,
        "reads": stats(reads) if fn is not None else None,
        "writes": stats(writes),
        "background_run_s": (run.finished_ms - run.created_ms) / 1000,
    }


def lock_hold(tasks: int) -> dict[str, float] | None:
    """Apply-lock hold time per read in ms (median of 7), the old calls and ReadView, in process."""
    try:
        from raftmesh.node.reads import ReadView
    except ImportError:
        return None
    from raftmesh.consensus.commands import (
        Assign,
        Complete,
        Completion,
        KvOp,
        KvTxn,
        RegisterNode,
        SubmitRun,
        TaskSpec,
    )
    from raftmesh.consensus.machine import StateMachine
    from raftmesh.consensus.placement import plan_assignments
    from raftmesh.node import convert

    sm = StateMachine()
    for n in ("n1", "n2", "n3"):
        sm.apply(
            RegisterNode(
                f"reg-{n}", 1, node_id=n, grpc="g", raft=n, agents=("echo",), slots=10**5, incarnation="i"
            )
        )
    for r in range(5):
        specs = tuple(TaskSpec(f"t{i}", "echo", input={"i": i, "pad": "x" * 64}) for i in range(tasks + 1))
        sm.apply(SubmitRun(f"s{r}", 2, run_id=f"r{r}", tasks=specs))
        plan = plan_assignments(sm.state, 3, {}, 10**5)
        sm.apply(Assign(f"a{r}", 3, tuple(plan)))
        items = [
            Completion(
                a.run_id, a.task_id, a.attempt, sm.state.runs[a.run_id].tasks[a.task_id].token, {"i": 1}
            )
            for a in plan
        ]
        for k in range(0, len(items), 200):
            sm.apply(Complete(f"c{r}-{k}", 4, "n1", tuple(items[k : k + 200])))
    for i in range(10_000):
        sm.apply(KvTxn(f"kv{i}", 5, success=(KvOp("put", f"k{i % 64}", i),)))

    class TimedLock:
        def __init__(self) -> None:
            self.lock = threading.RLock()
            self.held: list[float] = []
            self._t0 = 0.0

        def __enter__(self) -> None:
            self.lock.acquire()
            self._t0 = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            self.held.append(time.perf_counter() - self._t0)
            self.lock.release()

    lock = TimedLock()
    view = ReadView(lock, lambda: sm.state)

    def median_ms(fn: Callable[[], Any]) -> float:
        held = []
        for _ in range(7):
            lock.held.clear()
            fn()
            held.append(sum(lock.held))
        return percentile([h * 1000 for h in held], 50)

    def old_get_run() -> None:
        with lock:
            convert.run_to_pb(sm.state.runs["r0"])

    def old_digest() -> None:
        with lock:
            sm.state.digest()

    def new_digest() -> None:
        sm.state.runs["r4"].revision += 1  # one run in flux between digests
        view.digest()

    def new_get_run_changed() -> None:
        sm.state.runs["r0"].revision += 1
        view.run("r0")

    view.digest()
    return {
        "get_run_before_ms": median_ms(old_get_run),
        "get_run_after_changed_ms": median_ms(new_get_run_changed),
        "get_run_after_unchanged_ms": median_ms(lambda: view.run("r0")),
        "digest_before_ms": median_ms(old_digest),
        "digest_after_ms": median_ms(new_digest),
    }


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"GetRun of a {cfg['tasks']:,}-task run while a {cfg['tasks']:,}-task fan-out runs "
        f"(3 nodes, {cfg['readers']} reader threads, {cfg['seconds']} s per phase, on the leader)",
        f"  code: {report['raftmesh_file']}",
        f"  load: 1-min load average {report['loadavg_start']:.2f} at start",
        f"   {'phase':<18}{'reads':>7}{'p50':>9}{'p99':>9}{'max':>9}   "
        f"{'writes':>7}{'p50':>8}{'p99':>8}{'max':>9}   {'bg run s':>8}",
    ]
    for p in report["phases"]:
        r = p["reads"] or {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
        w = p["writes"]
        lines.append(
            f"   {p['reader']:<18}{r['n']:>7}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}   "
            f"{w['n']:>7}{w['p50_ms']:>8.1f}{w['p99_ms']:>8.1f}{w['max_ms']:>9.1f}   "
            f"{p['background_run_s']:>8.2f}"
        )
    lines.append(
        "   (ms; writes = one kv.put at a time on the leader, its latency includes any wait for apply)"
    )
    hold = report.get("lock_hold")
    if hold:
        lines += [
            "Apply-lock hold per read, in process (median of 7, ms): before (the calls made under the lock) -> ReadView",
            f"   GetRun of a {cfg['tasks']:,}-task run   {hold['get_run_before_ms']:8.2f} -> "
            f"{hold['get_run_after_changed_ms']:.2f} (run changed since the last read), "
            f"{hold['get_run_after_unchanged_ms']:.3f} (unchanged)",
            f"   status --digest              {hold['digest_before_ms']:8.2f} -> {hold['digest_after_ms']:.2f}",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=positive_int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--readers", type=positive_int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    import raftmesh

    report: dict[str, Any] = {
        "config": vars(args),
        "environment": environment(),
        "raftmesh_file": raftmesh.__file__,
        "loadavg_start": os.getloadavg()[0],
        "phases": [],
    }
    with LocalCluster(3) as cluster:
        leader = cluster.wait_ready()
        client = cluster.client([cluster.nodes[leader].grpc])
        big = client.submit(fan_out("big", args.tasks))
        run = client.wait(big, timeout_s=300)
        assert run.status == "SUCCEEDED" and len(run.tasks) == args.tasks + 1, run.status
        for reader in ("none", "get_run", "get_run_stale_ok", "status_digest"):
            report["phases"].append(phase(cluster, leader, args, big, reader))
    report["lock_hold"] = lock_hold(args.tasks)
    print(render(report), file=sys.stderr)
    if args.json:
        print(json.dumps(finite(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
