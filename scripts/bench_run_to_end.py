#!/usr/bin/env python3
"""``Client.run`` through a server stream against the same run through one unary call, side by side.

What is measured
----------------
One trivial task (the built-in ``echo`` agent) submitted and waited for through the leader of a
3-node cluster on loopback (fsync on, the default), by one synchronous ``raftmesh.Client`` in this
process, two ways:

* ``stream``: ``SubmitAndWatchRun`` (a server stream: the submit, then the run's status until it
  ends, the last event carrying the whole run), driven as ``Client.run`` drove it before
  ``RunToEnd`` (``_runs.SubmitWatch`` through the client's stream driver and its watchdog);
* ``unary``: ``RunToEnd`` (one unary call answering the ended run), as ``Client.run`` calls it.

``--client aio`` does the same with one ``raftmesh.aio.Client`` on an event loop of this process
(each call run to completion on it, both ways alike).

``--rounds`` rounds of ``--runs`` calls per way (after 5 untimed warm-up calls each), the two ways
alternating call by call and the first way alternating round by round, so both see the same load.
Per round and overall: p50 and mean wall time per call (ms), the client's CPU time per call (ms,
``time.process_time``: the gRPC threads this process starts included) and the ratios unary /
stream (< 1: the unary call is faster), and the median of the call-by-call differences (each
unary call minus the stream call next to it: the load they shared cancels). The load average is printed per round: figures are only
comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from _benchkit import environment, percentile, positive_int, ratio, run_bench

from raftmesh import DAG, Client, RunInfo
from raftmesh.aio import Client as AioClient
from raftmesh.client import _runs
from raftmesh.localcluster import LocalCluster

WARMUP = 5
RUN_TIMEOUT_S = 60.0
WAYS = ("stream", "unary")


def log(msg: str) -> None:
    print(f"[bench_run_to_end] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=positive_int, default=60, help="timed calls per way per round (default 60)")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    p.add_argument(
        "--client", choices=("sync", "aio"), default="sync", help="the SDK client measured (default sync)"
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    return p.parse_args(argv)


def via_stream(client: Client, dag: DAG) -> RunInfo:
    """What ``Client.run`` did before ``RunToEnd``: ``SubmitAndWatchRun`` read to its end."""
    plan = _runs.SubmitWatch(client, _runs.submit_request(dag), RUN_TIMEOUT_S)
    for _ in client._stream(plan):
        pass
    if plan.final is None:
        raise RuntimeError("SubmitAndWatchRun ended without the final run")
    return plan.final


def via_unary(client: Client, dag: DAG) -> RunInfo:
    run: RunInfo = client._drive(_runs.run_to_end(client, _runs.submit_request(dag), RUN_TIMEOUT_S))
    return run


async def via_stream_aio(client: AioClient, dag: DAG) -> RunInfo:
    plan = _runs.SubmitWatch(client, _runs.submit_request(dag), RUN_TIMEOUT_S)
    async for _ in client._stream(plan):
        pass
    if plan.final is None:
        raise RuntimeError("SubmitAndWatchRun ended without the final run")
    return plan.final


async def via_unary_aio(client: AioClient, dag: DAG) -> RunInfo:
    run: RunInfo = await client._drive(_runs.run_to_end(client, _runs.submit_request(dag), RUN_TIMEOUT_S))
    return run


CALLS: dict[str, Callable[[Client, DAG], RunInfo]] = {"stream": via_stream, "unary": via_unary}
AIO_CALLS: dict[str, Callable[[AioClient, DAG], Coroutine[Any, Any, RunInfo]]] = {
    "stream": via_stream_aio,
    "unary": via_unary_aio,
}


class Caller:
    """One client of either kind, called the same way (an aio call runs to completion on ``loop``)."""

    def __init__(self, sync: Client | None, aio: AioClient | None, loop: asyncio.AbstractEventLoop | None):
        self.sync, self.aio, self.loop = sync, aio, loop

    def __call__(self, way: str, dag: DAG) -> RunInfo:
        if self.sync is not None:
            return CALLS[way](self.sync, dag)
        assert self.aio is not None and self.loop is not None
        return self.loop.run_until_complete(AIO_CALLS[way](self.aio, dag))


def one(client: Caller, way: str, x: int) -> tuple[float, float]:
    dag = DAG("bench-run-to-end")
    dag.task("a", "echo", input=x)
    c0, t0 = time.process_time(), time.perf_counter()
    run = client(way, dag)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if run.status != "SUCCEEDED" or run.tasks["a"].output != x:
        raise RuntimeError(f"echo({x}) -> {run.status} {run.tasks['a'].output!r} {run.error}")
    return dt * 1000, dc * 1000


def stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(wall, 50),
        "p90_ms": percentile(wall, 90),
        "mean_ms": statistics.fmean(wall),
        "client_cpu_ms": statistics.fmean(cpu),
    }


def measure(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    log("starting a 3-node cluster")
    cluster = LocalCluster(3, base_dir=os.path.join(tmp, "cluster"))
    stack.callback(cluster.close)  # registered before start: a half-started cluster is stopped too
    cluster.start(timeout_s=60)
    leader = cluster.wait_ready()
    addr = cluster.nodes[leader].grpc
    if args.client == "aio":
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        aio = AioClient([addr], credentials=cluster.credentials)
        stack.callback(lambda: loop.run_until_complete(aio.close()))
        client = Caller(None, aio, loop)
    else:
        client = Caller(cluster.client([addr]), None, None)
    x = 0
    for way in WAYS:
        for _ in range(WARMUP):
            one(client, way, x := x + 1)
    rounds: list[dict[str, Any]] = []
    every: dict[str, tuple[list[float], list[float]]] = {w: ([], []) for w in WAYS}
    for r in range(args.rounds):
        order = WAYS if r % 2 == 0 else WAYS[::-1]
        got: dict[str, tuple[list[float], list[float]]] = {w: ([], []) for w in WAYS}
        load_before = os.getloadavg()
        for _ in range(args.runs):
            for way in order:
                wall, cpu = one(client, way, x := x + 1)
                got[way][0].append(wall)
                got[way][1].append(cpu)
                every[way][0].append(wall)
                every[way][1].append(cpu)
        per = {w: stats(*got[w]) for w in WAYS}
        diffs = [u - s for u, s in zip(got["unary"][0], got["stream"][0], strict=True)]
        rounds.append(
            {
                "first": order[0],
                "paired_median_diff_ms": statistics.median(diffs),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "ways": per,
                "unary/stream": {k: ratio(per["unary"][k], per["stream"][k]) for k in per["unary"]},
            }
        )
        log(f"round {r + 1}: unary/stream p50 {rounds[-1]['unary/stream']['p50_ms']:.2f}")
    total = {w: stats(*every[w]) for w in WAYS}
    return {
        "client": args.client,
        "runs": args.runs,
        "rounds": rounds,
        "overall": total,
        "overall unary/stream": {k: ratio(total["unary"][k], total["stream"][k]) for k in total["unary"]},
        "environment": environment(),
    }


def _row(name: str, v: dict[str, float]) -> str:
    return f"{name:22} {v['p50_ms']:8.2f} {v['p90_ms']:8.2f} {v['mean_ms']:8.2f} {v['client_cpu_ms']:9.2f}"


def _ratios(v: dict[str, float | None]) -> str:
    return "  ".join(f"{k.removesuffix('_ms')} {'n/a' if r is None else f'{r:.2f}'}" for k, r in v.items())


def render(report: dict[str, Any]) -> str:
    lines = [
        f"single task through the leader, {report['client']} client, {report['runs']} calls per way per round (ms)",
        f"{'':22} {'p50':>8} {'p90':>8} {'mean':>8} {'clientCPU':>9}",
    ]
    for i, rd in enumerate(report["rounds"], 1):
        b, a = rd["load_average_before"], rd["load_average_after"]
        lines.append(f"round {i} ({rd['first']} first; load {b[0]:.2f} -> {a[0]:.2f})")
        for w in WAYS:
            lines.append(_row(f"  {w}", rd["ways"][w]))
        lines.append(f"  unary/stream: {_ratios(rd['unary/stream'])}")
        lines.append(f"  median of (unary - stream) call by call: {rd['paired_median_diff_ms']:+.2f} ms")
    lines.append("overall")
    for w in WAYS:
        lines.append(_row(f"  {w}", report["overall"][w]))
    lines.append(f"  unary/stream: {_ratios(report['overall unary/stream'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(
        "raftmesh-bench-run-to-end-", lambda tmp, stack: measure(args, tmp, stack), render, args.json, log, ()
    )


if __name__ == "__main__":
    sys.exit(main())
