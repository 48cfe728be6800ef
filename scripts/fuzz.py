#!/usr/bin/env python3
"""Long fuzz run against a real node process: random, mutated and garbage requests to every RPC.

    .venv/bin/python scripts/fuzz.py --examples 20000 [--seed N] [--json]

Starts a one-node cluster (a real ``raftmesh node`` process on 127.0.0.1), sends hypothesis-drawn
requests (``raftmesh/testing/grpc_fuzz.py``) to every method of every service in ``cluster.proto``,
and checks after each one that the answer is a documented status code, that no call outlived its
deadline, and (every 50 inputs and at the end) that the process is alive and still answers
``ClusterStatus``. Prints ``inputs tried: N, crashes: 0`` and exits 0, or exits 1 with the first
failing input (hypothesis shrinks it first). ``tests/test_fuzz_grpc.py`` is the bounded CI run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, seed, settings

from raftmesh.localcluster import LocalCluster
from raftmesh.testing import grpc_fuzz as gf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="inputs to send (default 2000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    tried = 0
    codes: Counter[str] = Counter()
    failure = ""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="raftmesh-fuzz-") as d, LocalCluster(1, base_dir=d) as cluster:
        node = next(iter(cluster.nodes.values()))
        channel = gf.open_channel(cluster.addresses[0])

        def fixed() -> None:
            nonlocal tried
            for case in gf.fixed_cases():
                o = gf.call(channel, case)
                tried += 1
                codes[o.code.name] += 1
                gf.check(case, o)

        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(gf.cases())
        def fuzz(case: gf.Case) -> None:
            nonlocal tried
            o = gf.call(channel, case)
            tried += 1
            codes[o.code.name] += 1
            gf.check(case, o)
            if tried % 50 == 0:
                assert node.alive, f"the node process died after {case!r}"

        if args.seed is not None:
            fuzz = seed(args.seed)(fuzz)
        try:
            fixed()
            fuzz()
            assert node.alive, "the node process died"
            assert gf.serves(channel), "the node stopped answering ClusterStatus"
        except AssertionError as exc:
            failure = str(exc)
        finally:
            channel.close()
    out = {
        "inputs_tried": tried,
        "crashes": 1 if failure else 0,
        "codes": dict(sorted(codes.items())),
        "seconds": round(time.monotonic() - start, 1),
        "failure": failure,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"inputs tried: {tried}, crashes: {out['crashes']} ({out['seconds']} s)")
        print("status codes: " + ", ".join(f"{k} {v}" for k, v in out["codes"].items()))
        if failure:
            print(f"FAILED: {failure}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
