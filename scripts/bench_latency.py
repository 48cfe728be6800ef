#!/usr/bin/env python3
"""Single-task latency through the leader and through a follower, this tree side by side with another.

What is measured
----------------
One trivial task (the built-in ``echo`` agent) submitted and waited for, ``--runs`` times per mode
after 5 untimed warm-up runs, on a 3-node cluster whose nodes run this tree and, with
``--baseline-tree DIR``, on a second 3-node cluster whose nodes run the code in DIR (put first on
their PYTHONPATH; the client is always this tree's). Modes, alternated run by run so both clusters
see the same machine load:

* ``run``: ``Client.run(dag)`` (one ``RunToEnd`` call where the node has it, else one
  ``SubmitAndWatchRun`` stream, else submit + wait with the same idempotency key: on a baseline
  cluster without ``RunToEnd`` this tree's client streams after one UNIMPLEMENTED per node);
* ``submit+wait``: ``Client.submit`` then ``Client.wait`` (what ``scripts/bench.py`` measures);

each through the leader and through a follower (a follower forwards every write to the leader).
The time is from the call's start until the finished run, with the task's output checked, is
returned. p50 and p90 in ms (linear interpolation between order statistics), and the ratios this /
baseline and follower / leader. Fsync is on (the default) on both clusters. The machine's load
average before and after is printed: the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from _benchkit import environment, percentile, positive_int, ratio, run_bench

from raftmesh import DAG, Client
from raftmesh.localcluster import LocalCluster

WARMUP = 5
RUN_TIMEOUT_S = 60.0


def log(msg: str) -> None:
    print(f"[bench_latency] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=positive_int, default=40, help="timed runs per mode (default 40)")
    p.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run a cluster whose nodes run the code in DIR (a checkout of another commit) side by side",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    return p.parse_args(argv)


def one(client: Client, how: str, x: int) -> float:
    dag = DAG("bench-latency")
    dag.task("a", "echo", input=x)
    t0 = time.perf_counter()
    if how == "run":
        run = client.run(dag, timeout_s=RUN_TIMEOUT_S)
    else:
        run = client.wait(client.submit(dag), timeout_s=RUN_TIMEOUT_S)
    dt = time.perf_counter() - t0
    if run.status != "SUCCEEDED" or run.tasks["a"].output != x:
        raise RuntimeError(f"echo({x}) -> {run.status} {run.tasks['a'].output!r} {run.error}")
    return dt * 1000


def measure(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    trees = {"this": None} | ({"baseline": os.path.abspath(args.baseline_tree)} if args.baseline_tree else {})
    clients: dict[str, Client] = {}
    for name, tree in trees.items():
        log(f"starting a 3-node cluster ({name}{': ' + tree if tree else ''})")
        cluster = LocalCluster(3, base_dir=os.path.join(tmp, name), env={"PYTHONPATH": tree} if tree else {})
        stack.callback(cluster.close)  # registered before start: a half-started cluster is stopped too
        cluster.start(timeout_s=60)
        leader = cluster.wait_ready()
        follower = next(i for i in cluster.nodes if i != leader)
        clients[f"{name} leader"] = cluster.client([cluster.nodes[leader].grpc])
        clients[f"{name} follower"] = cluster.client([cluster.nodes[follower].grpc])
    modes = [(f"{where} {how}", c, how) for where, c in clients.items() for how in ("run", "submit+wait")]
    samples: dict[str, list[float]] = {m: [] for m, _, _ in modes}
    load_before = os.getloadavg()
    for k in range(WARMUP + args.runs):
        for mode, client, how in modes:
            ms = one(client, how, k)
            if k >= WARMUP:
                samples[mode].append(ms)
    load_after = os.getloadavg()
    lat = {m: {"p50_ms": percentile(v, 50), "p90_ms": percentile(v, 90)} for m, v in samples.items()}

    def r(a: str, b: str) -> float | None:
        return ratio(lat[a]["p50_ms"], lat[b]["p50_ms"]) if a in lat and b in lat else None

    ratios: dict[str, float | None] = {}
    for name in trees:
        for how in ("run", "submit+wait"):
            ratios[f"{name} {how}: follower/leader"] = r(f"{name} follower {how}", f"{name} leader {how}")
    if "baseline" in trees:
        for where in ("leader", "follower"):
            for how in ("run", "submit+wait"):
                ratios[f"{where} {how}: this/baseline"] = r(f"this {where} {how}", f"baseline {where} {how}")
            ratios[f"{where} this run / baseline submit+wait"] = r(
                f"this {where} run", f"baseline {where} submit+wait"
            )
    return {
        "runs": args.runs,
        "baseline_tree": trees.get("baseline"),
        "latency_ms": lat,
        "ratios_p50": ratios,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "environment": environment(),
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"single-task latency, {report['runs']} runs per mode (ms)",
        f"{'mode':34} {'p50':>8} {'p90':>8}",
    ]
    for mode, v in report["latency_ms"].items():
        lines.append(f"{mode:34} {v['p50_ms']:8.2f} {v['p90_ms']:8.2f}")
    lines.append("p50 ratios (latency > 1 = slower)")
    for name, v in report["ratios_p50"].items():
        lines.append(f"  {name:48} {'n/a' if v is None else f'{v:.2f}'}")
    before, after = report["load_average_before"], report["load_average_after"]
    lines.append(f"load average before {before[0]:.2f} {before[1]:.2f}, after {after[0]:.2f} {after[1]:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(
        "raftmesh-bench-latency-", lambda tmp, stack: measure(args, tmp, stack), render, args.json, log, ()
    )


if __name__ == "__main__":
    sys.exit(main())
