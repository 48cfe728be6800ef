#!/usr/bin/env python3
"""The two Python clients and the dashboard's HTTP gateway, side by side on one cluster.

What is measured
----------------
One ``LocalCluster`` of 3 real node processes on loopback, with the dashboard on (``--http``).
All clients talk to the same follower (a client's first address), so every row pays the same
forwarding. Rounds alternate the sides (sync first, then aio first, ...) so a drift of the
shared machine's load falls on both; each figure is the median over ``--rounds`` rounds.

* ``kv.get`` sequential: ``--ops`` linearizable reads one after another, ``raftmesh.Client``
  vs ``raftmesh.aio.Client`` (p50 latency and ops/s).
* ``kv.get`` concurrent: the same ``--ops`` reads with ``--concurrency`` in flight: the sync
  client from that many threads (one shared client, as its docs allow), the aio client with
  ``asyncio.gather`` over a semaphore, on one event loop (ops/s).
* ``run`` of a 1-task DAG, submit -> result, ``--runs`` one after another (p50 latency).
* Reads through the dashboard (``httpx``, keep-alive) vs the same read over gRPC with the sync
  SDK: ``GET /api/v1/runs?limit=100`` vs ``list_runs(limit=100)``, and
  ``GET /api/v1/runs/{id}`` of a ``--big``-task run vs ``get`` (p50 latency).

Ratios are aio / sync and dashboard / SDK (latency: below 1 is faster; ops/s: above 1 is
faster). Nothing here is asserted; ``--json`` prints the whole report on stdout.

Usage::

    python scripts/bench_sdk.py                   # defaults: 300 ops, 16 in flight, 5 rounds
    python scripts/bench_sdk.py --json

Everything started is stopped, and the temporary directory removed, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx
from _benchkit import environment, finite, interrupt, percentile, positive_int, ratio

import raftmesh
from raftmesh import DAG, aio
from raftmesh.localcluster import LocalCluster

KEY = "bench-sdk/k"


def one_task(i: int) -> DAG:
    dag = DAG(f"bench-sdk-{i}")
    dag.task("t", "echo", input={"i": i})
    return dag


def fan_out(n: int) -> DAG:
    dag = DAG("bench-sdk-big")
    for i in range(n):
        dag.task(f"t{i}", "echo", input={"i": i, "pad": "x" * 64})
    return dag


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def sync_side(addresses: list[str], args: argparse.Namespace) -> dict[str, Any]:
    with raftmesh.Client(addresses) as c:
        c.kv.get(KEY)  # the channel is up before the clock starts
        seq = timed(lambda: c.kv.get(KEY), args.ops)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda _: c.kv.get(KEY), range(args.ops)))
        concurrent_s = time.perf_counter() - t
        runs = timed(lambda: c.run(one_task(0), timeout_s=60), args.runs)
    return {"get_seq": seq, "get_concurrent_s": concurrent_s, "run": runs}


def aio_side(addresses: list[str], args: argparse.Namespace) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with aio.Client(addresses) as c:
            await c.kv.get(KEY)
            seq = []
            for _ in range(args.ops):
                t = time.perf_counter()
                await c.kv.get(KEY)
                seq.append(time.perf_counter() - t)
            gate = asyncio.Semaphore(args.concurrency)

            async def one() -> None:
                async with gate:
                    await c.kv.get(KEY)

            t = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(args.ops)))
            concurrent_s = time.perf_counter() - t
            runs = []
            for _ in range(args.runs):
                t = time.perf_counter()
                await c.run(one_task(0), timeout_s=60)
                runs.append(time.perf_counter() - t)
        return {"get_seq": seq, "get_concurrent_s": concurrent_s, "run": runs}

    return asyncio.run(main())


def gateway_side(http: str, addresses: list[str], big: str, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(base_url=f"http://{http}", timeout=60) as web, raftmesh.Client(addresses) as c:
        web.get("/api/v1/runs?limit=100").raise_for_status()
        c.list_runs(limit=100)
        return {
            "list_http": timed(lambda: web.get("/api/v1/runs?limit=100").raise_for_status(), args.reads),
            "list_grpc": timed(lambda: c.list_runs(limit=100), args.reads),
            "big_http": timed(lambda: web.get(f"/api/v1/runs/{big}").raise_for_status(), args.reads),
            "big_grpc": timed(lambda: c.get(big), args.reads),
        }


def p50_ms(xs: list[float]) -> float:
    return percentile(xs, 50) * 1000


def median(xs: list[float]) -> float:
    return percentile(xs, 50)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=positive_int, default=300, help="kv.get calls per side per round")
    ap.add_argument("--concurrency", type=positive_int, default=16, help="calls in flight (concurrent rows)")
    ap.add_argument("--runs", type=positive_int, default=20, help="1-task runs per side per round")
    ap.add_argument("--reads", type=positive_int, default=30, help="dashboard/gRPC reads per side per round")
    ap.add_argument("--big", type=positive_int, default=1000, help="tasks of the big run read whole")
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--json", action="store_true", help="the report as JSON on stdout (the table on stderr)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, interrupt)

    rounds: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "config": vars(args),
        "environment": environment(),
        "loadavg_start": os.getloadavg()[0],
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-sdk-") as tmp,
        LocalCluster(3, base_dir=tmp, http=True) as cl,
    ):
        leader = cl.wait_ready()
        follower = next(n for n in cl.nodes if n != leader)
        addresses = [cl.nodes[follower].grpc]
        http = cl.nodes[follower].http
        with raftmesh.Client(addresses) as c:
            c.kv.put(KEY, {"v": "x" * 100})
            big = c.submit(fan_out(args.big))
            assert c.wait(big, timeout_s=300).status == "SUCCEEDED"
        for r in range(args.rounds):
            sides: dict[str, Any] = {}
            order = ("sync", "aio") if r % 2 == 0 else ("aio", "sync")
            for side in order:
                sides[side] = (sync_side if side == "sync" else aio_side)(addresses, args)
            sides["gateway"] = gateway_side(http, addresses, big, args)
            rounds.append(sides)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    report["loadavg_end"] = os.getloadavg()[0]

    def fig(side: str, key: str, f: Callable[[Any], float]) -> float:
        return median([f(rd[side][key]) for rd in rounds])

    rows = [
        ("kv.get sequential p50 ms", fig("sync", "get_seq", p50_ms), fig("aio", "get_seq", p50_ms)),
        (
            f"kv.get {args.concurrency} in flight ops/s",
            fig("sync", "get_concurrent_s", lambda s: args.ops / s),
            fig("aio", "get_concurrent_s", lambda s: args.ops / s),
        ),
        ("1-task run submit->result p50 ms", fig("sync", "run", p50_ms), fig("aio", "run", p50_ms)),
    ]
    gw = [
        ("list 100 runs p50 ms", fig("gateway", "list_grpc", p50_ms), fig("gateway", "list_http", p50_ms)),
        (
            f"a {args.big}-task run p50 ms",
            fig("gateway", "big_grpc", p50_ms),
            fig("gateway", "big_http", p50_ms),
        ),
    ]
    report["clients"] = [
        {"measure": m, "sync": a, "aio": b, "aio_over_sync": ratio(b, a)} for m, a, b in rows
    ]
    report["gateway"] = [
        {"measure": m, "grpc_sdk": a, "http": b, "http_over_sdk": ratio(b, a)} for m, a, b in gw
    ]
    lines = [f"{'measure':40} {'sync':>10} {'aio':>10} {'aio/sync':>9}"]
    for m, a, b in rows:
        lines.append(f"{m:40} {a:10.2f} {b:10.2f} {ratio(b, a) or float('nan'):9.2f}")
    lines.append(f"{'measure':40} {'gRPC SDK':>10} {'HTTP':>10} {'HTTP/SDK':>9}")
    for m, a, b in gw:
        lines.append(f"{m:40} {a:10.2f} {b:10.2f} {ratio(b, a) or float('nan'):9.2f}")
    lines.append(
        f"(medians of {args.rounds} rounds; load average {report['loadavg_start']:.1f} -> "
        f"{report['loadavg_end']:.1f})"
    )
    print("\n".join(lines), file=sys.stderr)
    if args.json:
        print(json.dumps(finite(report), indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
