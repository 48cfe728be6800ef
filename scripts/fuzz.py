#!/usr/bin/env python3
"""Long fuzz run against a real node process: random, mutated and garbage requests to every RPC.

    .venv/bin/python scripts/fuzz.py --examples 20000 [--seed N] [--json] [--tokens]

Starts a one-node cluster (a real ``raftmesh node`` process on 127.0.0.1), sends hypothesis-drawn
requests (``raftmesh/testing/grpc_fuzz.py``) to every method of every service in ``cluster.proto``,
and checks after each one that the answer is a documented status code, that no call outlived its
deadline, and (every 50 inputs and at the end) that the process is alive and still answers
``ClusterStatus``. Prints ``inputs tried: N, crashes: 0`` and exits 0, or exits 1 with the first
failing input (hypothesis shrinks it first). ``tests/test_fuzz_grpc.py`` is the bounded CI run.

--tokens: the node has a tokens file (an admin and a reader token) and the cluster secret, and each
input goes with a credential nobody should get past (``grpc_fuzz.auth_cases``): none, a garbage
``authorization`` header, the reader's token, a forged ``Node ID:HMAC``. Every call without a valid
credential must be UNAUTHENTICATED, a reader's call to a method it may not use PERMISSION_DENIED
(``tests/test_fuzz_grpc_tokens.py`` is its CI run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, seed, settings

from raftmesh.client._security import Credentials
from raftmesh.localcluster import LocalCluster
from raftmesh.node.config import read_secret_file
from raftmesh.security.tokens import add_token
from raftmesh.testing import grpc_fuzz as gf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="inputs to send (default 2000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--tokens",
        action="store_true",
        help="a node with a tokens file; inputs carry no, garbage, reader or forged-node credentials",
    )
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="raftmesh-fuzz-") as d:
        extra: list[str] = []
        creds = None
        reader = ""
        if args.tokens:
            tokens = str(Path(d) / "tokens.yaml")
            _, admin = add_token(tokens, "root", "admin")
            _, reader = add_token(tokens, "ro", "reader")
            extra, creds = ["--tokens-file", tokens], Credentials(token=admin)
        return _fuzz(args, LocalCluster(1, base_dir=d, extra_args=extra, credentials=creds), reader, creds)


def _fuzz(args: argparse.Namespace, cluster: LocalCluster, reader: str, creds: Credentials | None) -> int:
    """Start ``cluster``, fuzz its node, stop it; print the tally and return the exit status."""
    kinds: Counter[str] = Counter()
    tried = 0
    codes: Counter[str] = Counter()
    failure = ""
    start = time.monotonic()
    admin = (("authorization", f"Bearer {creds.token}"),) if creds and creds.token else None
    secret = read_secret_file(cluster.secret_path) if args.tokens and cluster.secret_path else ""
    with cluster:
        node = next(iter(cluster.nodes.values()))
        channel = gf.open_channel(cluster.addresses[0])

        def fixed() -> None:
            nonlocal tried
            for case in gf.fixed_cases():
                o = gf.call(channel, case, admin)
                tried += 1
                codes[o.code.name] += 1
                gf.check(case, o)

        def one(case: gf.Case, metadata: tuple[tuple[str, str | bytes], ...] | None) -> gf.Outcome:
            nonlocal tried
            o = gf.call(channel, case, metadata)
            tried += 1
            codes[o.code.name] += 1
            if tried % 50 == 0:
                assert node.alive, f"the node process died after {case!r}"
            return o

        settings_ = settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        if args.tokens:

            @settings_
            @given(gf.auth_cases(reader, secret))
            def fuzz(ac: gf.AuthCase) -> None:
                kinds[ac.kind] += 1
                gf.check_auth(ac, one(ac.case, ac.metadata))

        else:

            @settings_
            @given(gf.cases())
            def fuzz(case: gf.Case) -> None:
                gf.check(case, one(case, None))

        if args.seed is not None:
            fuzz = seed(args.seed)(fuzz)
        try:
            fixed()
            fuzz()
            assert node.alive, "the node process died"
            assert gf.serves(channel, metadata=admin), "the node stopped answering ClusterStatus"
        except AssertionError as exc:
            failure = str(exc)
        finally:
            channel.close()
    out: dict[str, Any] = {
        "inputs_tried": tried,
        "crashes": 1 if failure else 0,
        "codes": dict(sorted(codes.items())),
        "seconds": round(time.monotonic() - start, 1),
        "failure": failure,
    }
    if args.tokens:
        out["credentials"] = dict(sorted(kinds.items()))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"inputs tried: {tried}, crashes: {out['crashes']} ({out['seconds']} s)")
        print("status codes: " + ", ".join(f"{k} {v}" for k, v in sorted(codes.items())))
        if args.tokens:
            print("credentials: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        if failure:
            print(f"FAILED: {failure}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
