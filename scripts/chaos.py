#!/usr/bin/env python3
"""Chaos test of a real raftmesh cluster: a seeded workload and nemesis, then a checked history.

    scripts/chaos.py [--nodes 3|5] [--duration MINUTES] [--seed N] [--net netns|proxy|none]
                     [--clients C] [--node-down-after S] [--keep-dir] [--json PATH]

Starts --nodes node processes, runs --clients closed-loop clients submitting DAGs with
unique idempotency keys, and during --duration minutes injects faults one at a time on
a schedule drawn from --seed: kill -9 and restart of a random node and of the leader,
SIGSTOP/SIGCONT pauses, and with --net netns (root) real partitions (isolate the
leader or a follower, majority/minority halves, bridge, majorities ring) as nftables
drops between per-node network namespaces. --net proxy needs no root: client links go
through userspace TCP proxies that it cuts and delays, but Raft partitions cannot be
injected (the report lists what was not). --net none: process faults only.

At the end it heals, drains, checks (no acknowledged run lost, none duplicated, no
unexpected run, one committed result per task, none from a fenced attempt, no task
started early, equal replica digests, journal replay equal to the live state) and
prints a report. Exit status: 0 no violation, 1 violations, 2 bad usage or the
harness failed, 130 interrupted. Nodes run with --snapshot-entries 10000000 so each
journal holds the whole log for the audit. A failing seed replays with --seed (the
report prints the command).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from raftmesh.chaos.report import format_report
from raftmesh.chaos.runner import ChaosConfig, choose_net, run_chaos
from raftmesh.errors import RaftmeshError

EXIT_OK, EXIT_VIOLATIONS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--duration", type=float, default=1.0, help="minutes of fault phase (default 1)")
    p.add_argument("--seed", type=int, default=None, help="default: random (always printed)")
    p.add_argument(
        "--net",
        choices=("netns", "proxy", "none"),
        default=None,
        help="default: netns if supported, else proxy",
    )
    p.add_argument("--clients", type=int, default=4, help="concurrent closed-loop clients (default 4)")
    p.add_argument("--node-down-after", type=float, default=5.0, help="node flag, seconds (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the first fault")
    p.add_argument("--cooldown", type=float, default=None, help="seconds after the last fault")
    p.add_argument("--keep-dir", action="store_true", help="keep node data and logs for debugging")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    if args.net is None:
        net, reason = choose_net()
    else:
        net, reason = args.net, "chosen with --net"
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"chaos: seed {seed} (replay with --seed {seed}); --net {net}: {reason}")
    try:
        cfg = ChaosConfig(
            nodes=args.nodes,
            duration_min=args.duration,
            seed=seed,
            net=net,
            net_reason=reason,
            clients=args.clients,
            node_down_after_s=args.node_down_after,
            keep_dir=args.keep_dir,
            warmup_s=args.warmup,
            cooldown_s=args.cooldown,
        )
        report = run_chaos(cfg, log=log)
    except KeyboardInterrupt:
        log(f"chaos: interrupted; everything was cleaned up. seed {seed}")
        return EXIT_INTERRUPTED
    except RaftmeshError as exc:
        log(f"chaos: {type(exc).__name__}: {exc.message} (seed {seed})")
        return EXIT_ERROR
    except Exception:
        traceback.print_exc()
        log(f"chaos: the harness failed (seed {seed})")
        return EXIT_ERROR
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2, default=str)
    return EXIT_OK if report.ok else EXIT_VIOLATIONS


if __name__ == "__main__":
    sys.exit(main())
