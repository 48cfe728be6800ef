#!/usr/bin/env python3
"""What each agent isolation mode costs per attempt, and what a spinning agent costs its node.

What is measured
----------------
1. Attempt overhead, host level (no cluster): the empty agent of each mode run through the
   agent host's own path for that mode, ``--iterations`` times, the modes interleaved so they
   see the same machine: ``async`` (awaited on the loop), ``thread`` (the host's thread pool),
   ``process`` (a warm worker of the host's process pool: request and result over its pipe).
   p50/p99 in microseconds and the ratio of each mode's p50/p99 to async's.
2. Attempt overhead, end to end: one-task runs of the same empty agents on a 3-node cluster
   (``submit`` -> SUCCEEDED seen by ``get``, the modes interleaved), p50/p99 and ratios. Most of
   this is the Raft commits of the start and the result, the same in every mode.
3. Cancellation: from calling ``cancel`` (it commits through Raft) to the attempt stopped on the node, per mode
   (``--cancels`` rounds): the async attempt gone from the host, the thread agent's function
   returned (it polls ``ctx.cancelled``), the process worker dead.
4. Heartbeat gaps on one node while an agent spins a CPU in pure Python for ``--seconds``
   (default 10): an idle baseline, then a ``thread`` agent, then a ``process`` agent, one after
   the other in the same run. Per phase: the gaps between answered heartbeats of that node
   (sent every 0.5 s; the leader stops placing work after 1.5 s of silence and marks a node
   down after 5 s), max and p99; the node loop's lag (a 10 ms timer on its loop, how late it
   fires: what the GIL held by a spinning thread costs every coroutine); and the latency of
   one-task ``echo`` runs placed on that node meanwhile.

The cluster: n2 and n3 are node processes; n1 runs in this process (see
tests/isolation_cluster.py: a node cannot load an agent module from its command line yet) with
the agents of tests/isolation_agents.py, and only n1 offers them. The SDK calls of this script
run in the same process as n1, so they share its GIL too (as a co-located client would).

Usage (from the repository root; not run in CI)::

    python scripts/bench_agents.py                       # 300 iterations, 10 s spins
    python scripts/bench_agents.py --iterations 100 --seconds 5 --json

Everything started is stopped, and the temporary directory removed, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _benchkit import environment, finite, interrupt, percentile, positive_int, ratio

from raftmesh import DAG
from raftmesh.agents import AgentRegistry, TaskContext
from raftmesh.agents._context import SyncTaskContext
from raftmesh.agents._pools import ProcessPool, ThreadPool
from raftmesh.localcluster import wait_until
from tests import isolation_agents
from tests.isolation_cluster import MixedCluster, gaps, os_pid_alive, read_text

MODES = ("async", "thread", "process")


def summary(samples_s: list[float], unit: float) -> dict[str, float | int]:
    xs = [s * unit for s in samples_s]
    return {
        "n": len(xs),
        "p50": percentile(xs, 50),
        "p99": percentile(xs, 99),
        "max": max(xs) if xs else float("nan"),
    }


def with_ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    base = rows["async"]
    for r in rows.values():
        r["p50_vs_async"] = ratio(r["p50"], base["p50"])
        r["p99_vs_async"] = ratio(r["p99"], base["p99"])
    return rows


def host_overhead(iterations: int) -> dict[str, dict[str, Any]]:
    reg = AgentRegistry()
    isolation_agents.register_agents(reg)
    logger: Any = None

    def ctx(cls: type[TaskContext]) -> TaskContext:
        return cls("r", "t", 1, 1, "n1", None, {}, "r", logger)

    async def main() -> dict[str, list[float]]:
        threads = ThreadPool()
        procs = ProcessPool("bench", size=1)

        async def handle(target: str, op: str, args: list[Any], kw: dict[str, Any]) -> Any:
            raise AssertionError("the empty agent makes no calls")

        request = {
            "source": isolation_agents.SOURCE,
            "agent": "empty_process",
            "run_id": "r",
            "task_id": "t",
            "attempt": 1,
            "token": 1,
            "input": None,
            "upstream": {},
        }
        empty_async = reg.agents["empty_async"].fn
        empty_thread = reg.agents["empty_thread"].fn
        try:
            assert (await procs.run(request, handle)).ok  # spawn and load before measuring
            await threads.run(lambda: None)
            samples: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(iterations):
                t0 = time.perf_counter()
                await empty_async(ctx(TaskContext))
                t1 = time.perf_counter()
                c = ctx(SyncTaskContext)
                await threads.run(lambda c=c: empty_thread(c))
                t2 = time.perf_counter()
                res = await procs.run(request, handle)
                t3 = time.perf_counter()
                assert res.ok, res.error
                samples["async"].append(t1 - t0)
                samples["thread"].append(t2 - t1)
                samples["process"].append(t3 - t2)
            return samples
        finally:
            procs.close()
            threads.close()

    samples = asyncio.run(main())
    return with_ratios({m: summary(samples[m], 1e6) for m in MODES})


def one_task(name: str, agent: str, inp: Any = None) -> DAG:
    dag = DAG(name)
    dag.task("t", agent, input=inp)
    return dag


def cluster_overhead(mixed: MixedCluster, iterations: int) -> dict[str, dict[str, Any]]:
    c = mixed.client
    assert c is not None
    for m in MODES:  # warm: the process pool spawns its worker here
        assert c.run(one_task(f"warm-{m}", f"empty_{m}"), timeout_s=60).status == "SUCCEEDED"
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(iterations):
        for m in MODES:
            t0 = time.perf_counter()
            run = c.run(one_task(f"o-{m}-{i}", f"empty_{m}"), timeout_s=60)
            samples[m].append(time.perf_counter() - t0)
            assert run.status == "SUCCEEDED", run.error
    return with_ratios({m: summary(samples[m], 1e3) for m in MODES})


def cancel_once(mixed: MixedCluster, mode: str, name: str, pid_file: str) -> float:
    """Seconds from calling ``cancel`` to the attempt stopped on n1: the async attempt gone
    from the host, the thread agent's function returned (it polls ``ctx.cancelled``), the
    process worker dead."""
    c = mixed.client
    host = mixed.runtime.host
    assert c is not None
    agent, inp = {
        "async": ("wait_async", None),
        "thread": ("spin_thread", {"seconds": 120}),
        "process": ("wait_process", {"pid_file": pid_file}),
    }[mode]
    run_id = c.submit(one_task(name, agent, inp))
    wait_until(lambda: c.get(run_id).tasks["t"].status == "RUNNING", 30, f"{agent} to run")
    stopped: Callable[[], bool]
    if mode == "process":
        wait_until(lambda: read_text(pid_file), 30, "the worker to start")
        pid = int(read_text(pid_file))
        stopped = lambda: not os_pid_alive(pid)  # noqa: E731
    elif mode == "thread":
        wait_until(lambda: mixed.on_loop(lambda: host.threads.busy) > 0, 30, "the thread")
        stopped = lambda: mixed.on_loop(lambda: host.threads.busy) == 0  # noqa: E731
    else:
        stopped = lambda: mixed.on_loop(lambda: host.running) == 0  # noqa: E731
    t0 = time.perf_counter()
    c.cancel(run_id)
    wait_until(stopped, 30, f"the {mode} attempt to stop", interval_s=0.002)
    return time.perf_counter() - t0


def cancel_latency(mixed: MixedCluster, rounds: int, tmp: str) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(rounds):
        for m in MODES:
            samples[m].append(cancel_once(mixed, m, f"cancel-{m}-{i}", os.path.join(tmp, f"pid-{i}")))
    return {m: summary(samples[m], 1e3) for m in MODES}


def spin_phase(mixed: MixedCluster, agent: str | None, seconds: float) -> dict[str, Any]:
    """Heartbeat gaps, loop lag and echo latency on n1 while ``agent`` spins (None: idle)."""
    c = mixed.client
    loop = mixed.runtime.loop
    assert c is not None and loop is not None
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t0 - 0.01)

    prober = asyncio.run_coroutine_threadsafe(probe(), loop)
    run_id = None
    if agent is not None:
        run_id = c.submit(one_task(f"spin-{agent}", agent, {"seconds": seconds}))
        wait_until(lambda: c.get(run_id).tasks["t"].status == "RUNNING", 30, f"{agent} to run")
    acks_from = len(mixed.ack_times())
    echoes: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        run = c.run(one_task(f"echo-{agent}-{i}", "echo_here", {"i": i}), timeout_s=60)
        echoes.append(time.perf_counter() - t0)
        assert run.status == "SUCCEEDED", run.error
        i += 1
    times = mixed.ack_times()[acks_from:]
    loop.call_soon_threadsafe(stop.set)
    prober.result(10)
    if run_id is not None:
        wait_until(lambda: c.get(run_id).status == "SUCCEEDED", 60, f"{agent} to finish")
    g = gaps(times)
    return {
        "agent": agent or "idle",
        "heartbeats": len(times),
        "gap_max_ms": max(g) * 1e3 if g else float("nan"),
        "gap_p99_ms": percentile([x * 1e3 for x in g], 99),
        "gap_p50_ms": percentile([x * 1e3 for x in g], 50),
        "loop_lag_p50_ms": percentile([x * 1e3 for x in lags], 50),
        "loop_lag_p99_ms": percentile([x * 1e3 for x in lags], 99),
        "loop_lag_max_ms": max(lags) * 1e3 if lags else float("nan"),
        "echo_runs": len(echoes),
        "echo_p50_ms": percentile([x * 1e3 for x in echoes], 50),
        "echo_p99_ms": percentile([x * 1e3 for x in echoes], 99),
        "n1_up": bool(mixed.n1_member().up),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=positive_int, default=300, help="attempts per mode (default 300)")
    ap.add_argument(
        "--seconds", type=positive_int, default=10, help="spin (and baseline) duration (default 10)"
    )
    ap.add_argument("--cancels", type=positive_int, default=10, help="cancellations per mode (default 10)")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    out = sys.stderr if args.json else sys.stdout
    result: dict[str, Any] = {"environment": environment(), "args": vars(args)}

    result["host_overhead_us"] = host = host_overhead(args.iterations)
    print(f"attempt overhead, host level (empty agent, {args.iterations} per mode, microseconds)", file=out)
    for m, r in host.items():
        print(
            f"  {m:<8} p50 {r['p50']:9.1f}  p99 {r['p99']:9.1f}  "
            f"x async p50 {r['p50_vs_async']:7.1f}  p99 {r['p99_vs_async']:7.1f}",
            file=out,
        )
    base = tempfile.mkdtemp(prefix="raftmesh-bench-agents-")
    mixed = MixedCluster(base)
    try:
        mixed.start()
        if mixed.leader() is None or mixed.runtime.raft.is_leader:
            raise SystemExit("n1 must follow (it heartbeats the leader); start again")
        result["cluster_overhead_ms"] = cl = cluster_overhead(mixed, max(1, args.iterations // 3))
        print(
            f"attempt overhead, end to end (one-task runs, {max(1, args.iterations // 3)} per mode, ms)",
            file=out,
        )
        for m, r in cl.items():
            print(
                f"  {m:<8} p50 {r['p50']:8.2f}  p99 {r['p99']:8.2f}  "
                f"x async p50 {r['p50_vs_async']:5.2f}  p99 {r['p99_vs_async']:5.2f}",
                file=out,
            )
        result["cancel_ms"] = cancel = cancel_latency(mixed, args.cancels, base)
        print(f"cancel call -> attempt stopped on n1 ({args.cancels} per mode, ms)", file=out)
        for m, r in cancel.items():
            print(f"  {m:<8} p50 {r['p50']:7.1f}  max {r['max']:7.1f}", file=out)
        phases = [spin_phase(mixed, a, args.seconds) for a in (None, "spin_thread", "spin_process")]
        result["heartbeats"] = phases
        print(f"n1 while an agent spins a CPU for {args.seconds} s (heartbeats every 500 ms)", file=out)
        for p in phases:
            print(
                f"  {p['agent']:<13} hb gap max {p['gap_max_ms']:6.0f} p99 {p['gap_p99_ms']:6.0f} ms | "
                f"loop lag p50 {p['loop_lag_p50_ms']:5.2f} p99 {p['loop_lag_p99_ms']:5.2f} "
                f"max {p['loop_lag_max_ms']:5.1f} ms | echo p50 {p['echo_p50_ms']:5.1f} "
                f"p99 {p['echo_p99_ms']:5.1f} ms ({p['echo_runs']} runs) | n1 up {p['n1_up']}",
                file=out,
            )
    finally:
        try:
            mixed.close()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(finite(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
