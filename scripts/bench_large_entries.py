#!/usr/bin/env python3
"""raftmesh large-entry benchmark: how long a large non-ASCII SubmitRun takes to commit.

A fresh ``LocalCluster`` (default 3 real node processes on loopback) is started; then ``--reps``
runs of ``--tasks`` ``sleep`` tasks (3600 s, so nothing finishes and no outputs add load), each
input holding ``--chars`` random CJK characters (3 bytes each in UTF-8; the default 32 x 80,000
is the 7.7 MB run that once wedged a cluster), are submitted through the leader and then through
a follower. Each line is the time from the call to the acknowledgement (committed and applied on
the node that answered). The terms at the end show whether any election happened.

    .venv/bin/python scripts/bench_large_entries.py [--nodes 3] [--tasks 32] [--chars 80000] [--reps 3]
"""

from __future__ import annotations

import argparse
import random
import time

from raftmesh import DAG
from raftmesh.localcluster import LocalCluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--chars", type=int, default=80_000, help="CJK characters per task input")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with LocalCluster(args.nodes) as cluster:
        leader = cluster.wait_ready()
        targets = [leader, *[n for n in cluster.nodes if n != leader][:1]]
        terms = [cluster.status_of(n).term for n in cluster.nodes]
        print(f"{args.nodes} nodes, leader {leader}, terms {terms}")
        for target in targets:
            client = cluster.client([cluster.nodes[target].grpc], timeout_s=120, retry_deadline_s=120)
            role = "leader" if target == leader else "follower"
            for _ in range(args.reps):
                dag = DAG("large")
                for i in range(args.tasks):
                    text = "".join(map(chr, rng.choices(range(0x4E00, 0x9FA0), k=args.chars)))
                    dag.task(f"t{i}", "sleep", input={"seconds": 3600, "text": text})
                t0 = time.monotonic()
                client.submit(dag)
                mb = args.tasks * args.chars * 3 / 1e6
                print(
                    f"{mb:.1f} MB run via the {role} ({target}): committed in {time.monotonic() - t0:.2f} s"
                )
        print("terms", [cluster.status_of(n).term for n in cluster.nodes])


if __name__ == "__main__":
    main()
