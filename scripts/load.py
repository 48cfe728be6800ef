#!/usr/bin/env python3
"""Load: many concurrent clients submitting and watching small runs against a 3-node cluster.

    .venv/bin/python scripts/load.py --clients 100 --runs 5 [--tasks 2] [--addresses a,b,c] [--json]

Each client is its own ``raftmesh.Client`` (its own channels) in its own thread, and talks first to
one of the nodes in turn (so writes arrive at followers too, which forward them to the leader). It
submits ``--runs`` runs one after the other, each a chain of ``--tasks`` ``echo`` tasks whose input
names the client and run, and watches each until it ends (``Client.wait``: the ``WatchRun`` stream),
then checks that it SUCCEEDED with every task's output equal to its input. Without ``--addresses``
a ``LocalCluster`` of 3 real node processes on 127.0.0.1 is started and stopped.

Reports runs/s (runs finished / wall time from the first submit to the last end), the submit->done
latency (p50, p99, max: ``submit`` called -> ``wait`` returned with the run's outputs) and the
errors (any exception, a run that did not succeed, an output that differs), with their first
messages. Exits 1 if there was any error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raftmesh import DAG, Client
from raftmesh.localcluster import LocalCluster


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def small_run(client: int, run: int, tasks: int) -> DAG:
    dag = DAG(name=f"load-{client}-{run}")
    prev = None
    for t in range(tasks):
        prev = dag.task(
            f"t{t}", "echo", input={"client": client, "run": run, "task": t}, deps=[prev] if prev else []
        )
    return dag


def load(
    addresses: list[str], clients: int, runs: int, tasks: int, timeout_s: float = 120.0
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def one(c: int) -> None:
        # Each client starts at a different node: submits reach followers as well as the leader.
        order = addresses[c % len(addresses) :] + addresses[: c % len(addresses)]
        client = Client(order, timeout_s=30.0)
        try:
            start_gate.wait()
            for r in range(runs):
                t0 = time.monotonic()
                try:
                    info = client.wait(client.submit(small_run(c, r, tasks)), timeout_s=timeout_s)
                    dt = time.monotonic() - t0
                    bad = ""
                    if info.status != "SUCCEEDED":
                        bad = f"client {c} run {r}: {info.run_id} ended {info.status}"
                    else:
                        for t in range(tasks):
                            want = {"client": c, "run": r, "task": t}
                            got = info.tasks[f"t{t}"].output
                            if got != want:
                                bad = f"client {c} run {r}: task t{t} output {got!r} != {want!r}"
                                break
                except Exception as exc:  # a load test counts every failure, whatever it is
                    dt, bad = time.monotonic() - t0, f"client {c} run {r}: {type(exc).__name__}: {exc}"
                with lock:
                    if bad:
                        errors.append(bad)
                    else:
                        latencies.append(dt)
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(c,), name=f"load-{c}", daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    start_gate.wait()
    began = time.monotonic()
    for th in threads:
        th.join()
    wall = time.monotonic() - began
    return {
        "clients": clients,
        "runs_per_client": runs,
        "tasks_per_run": tasks,
        "runs_ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "wall_s": round(wall, 2),
        "runs_per_s": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        "p50_s": round(percentile(latencies, 0.50), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "max_s": round(max(latencies, default=0.0), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5, help="runs per client, one after the other")
    ap.add_argument("--tasks", type=int, default=2, help="echo tasks per run (a chain)")
    ap.add_argument("--addresses", default="", help="a running cluster's gRPC addresses, comma-separated")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.addresses:
        out = load(args.addresses.split(","), args.clients, args.runs, args.tasks)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="raftmesh-load-") as d,
            LocalCluster(3, base_dir=d) as cluster,
        ):
            cluster.wait_ready()
            out = load(cluster.addresses, args.clients, args.runs, args.tasks)
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['clients']} clients x {out['runs_per_client']} runs of {out['tasks_per_run']} tasks: "
            f"{out['runs_ok']} ok, errors: {out['errors']}; {out['runs_per_s']} runs/s; "
            f"submit->done p50 {out['p50_s']} s, p99 {out['p99_s']} s, max {out['max_s']} s"
        )
        for e in out["first_errors"]:
            print(f"  error: {e}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
