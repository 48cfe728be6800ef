#!/usr/bin/env python3
"""Chaos test of a real raftmesh cluster: a seeded workload and nemesis, then a checked history.

    scripts/chaos.py [--nodes 3|5] [--duration MINUTES] [--seed N] [--net netns|proxy|none]
                     [--clients C] [--aio-clients A] [--node-down-after S] [--keep-dir] [--keep-on-window S]
                     [--json PATH]
                     [--kv-clients N] [--kv-keys K] [--lock-clients N] [--lock-names L]
                     [--no-dag] [--no-faults] [--unfenced-experiment] [--lin-timeout S]
                     [--snapshot-every ENTRIES] [--preempt-priority N]
                     [--message-clients N] [--message-targets T] [--secure]

Starts --nodes node processes and runs three workloads side by side: --clients
closed-loop clients submitting DAGs with unique idempotency keys (--no-dag: none),
--kv-clients clients doing get/put/cas/delete with unique values on --kv-keys keys,
and --lock-clients lock holders that increment counters guarded by fencing tokens
(an external counter in the harness and a lock-fenced KV key); some holders stall
past their lease TTL on purpose. During --duration minutes it injects faults one at a time on
a schedule drawn from --seed: kill -9 and restart of a random node and of the leader,
SIGSTOP/SIGCONT pauses, and with --net netns (root) real partitions (isolate the
leader or a follower, majority/minority halves, bridge, majorities ring) as nftables
drops between per-node network namespaces. --net proxy needs no root: client links go
through userspace TCP proxies that it cuts and delays, but Raft partitions cannot be
injected (the report lists what was not). --net none: process faults only.

At the end it heals, drains, checks (no acknowledged run lost, none duplicated, no
unexpected run, one committed result per task, none from a fenced attempt, no task
started early, equal replica digests, journal replay equal to the live state; the KV
history linearizable per key; lock holds never overlapping in the log, no stale
holder's fenced write accepted, no counter increment lost) and prints a report. A
linearizability search that times out (--lin-timeout) is reported as inconclusive,
not as a pass or a violation. --unfenced-experiment makes the holders also
increment a counter that ignores tokens and prints what it lost next to the fenced
one (expected corruption, not a violation). --no-faults runs the workloads without
the nemesis. Exit status: 0 no violation, 1 violations, 2 bad usage or the
harness failed, 130 interrupted. Nodes run with --snapshot-entries 10000000 so each
journal holds the whole log for the audit. --snapshot-every N instead snapshots every
N log entries (e.g. 300), so snapshots are taken and installed under the faults; the
nodes then run with --archive-applied and the replay audit reads the union of their
archives of applied entries (a gap or a disagreement in it is a violation), and the
report counts the snapshots written, installed and loaded. A failing seed replays
with --seed (the report prints the command).

The report gives the largest window with no task completing while a majority could form (time
when no majority could form is not counted) and every window over 1 s, each with the faults
active during it. --keep-dir keeps the run's directory (each node's data and node.log);
--keep-on-window S keeps it only when the largest window exceeds S seconds and says where, so a
rare slow window can be diagnosed from the node logs and journals without keeping every run.

Every run also exercises dead letters and usage: a share of the DAGs carry a task
that fails for good, and their clients retry it during the faults (a call, the same
call again, a fresh call); the checker holds the log to one requeue per acknowledged
retry, and every run's usage to the sum of what its accepted attempts reported.
--preempt-priority N runs the nodes with that flag and 2 slots each and submits a
quarter of the DAGs at priority N, so they preempt running attempts under the faults
(a preempted attempt's result must never commit: the fencing invariants cover it).

A seeded 30% of the DAGs are workflows: a spawner with a 3-replica vote, a map and an approval gate
its client approves or rejects (a call, the same call again, a fresh call), a saga whose third
step fails after two compensable ones, a fan-out that reaches its max_cost budget. The checker
holds them to: no spawned task lost or duplicated, votes fused from committed results only,
each approval applied once (as first acknowledged, never flipped, the task run only after it),
each compensation applied once (its fenced KV record written once, in reverse order), no
budget overspent by more than the attempts that could be running when it was reached.

The DAG clients come in two kinds: --aio-clients of them (default half) drive the asyncio SDK
(raftmesh.aio.Client, each on an event loop of its own thread), the others raftmesh.Client; every
invariant holds for both, and the report counts each kind's submits and outcomes. A runs watcher
holds Client.watch_runs(limit=1000) open throughout, reconnecting across the faults as the SDK
does, and one consumer reads the last node's dashboard /api/v1/events (the nodes run with --http)
as the page does; after the drain every run of their window (the 1,000 newest) must have reached
each in its final status, none seen leaving a terminal status (but a retried dead letter's run),
and no plain run's unfinished count seen growing (workflows and retried runs add tasks).

--message-clients N adds N message senders (default 0): each sends closed-loop, one call at a
time, durable and fast sends and requests, with its own id and a sequence number per path, to
--message-targets chaos actors (``chaos_log/k<j>``, raftmesh.chaos.agents) that record every
turn in the fenced KV (sender, sequence, message id, epoch, node) atomically with its ack; a
tenth of the messages get a TTL short enough to expire during a fault. After the drain the
checker reports durable messages lost or still queued, handler effects applied twice,
reordering per sender on each path, double activations (stale epochs committing, activations
overlapping, a grant while another lease ran, from the effects and the audited log), expired
messages delivered, replies without their committed turn (each must be 0), and the fast-path
losses explained by the death of the node holding them.

--secure runs the cluster as production would: a CA and node certificates in the run's
directory (``raftmesh certs init``, every node address in the SANs), nodes with --tls-cert,
--tls-key, --tls-ca and --tls-client-auth require, a tokens file with one admin token and the
cluster secret (node identity between nodes); every workload and checker call goes over TLS
with the client certificate and the admin token. The same checks must hold.
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
    p.add_argument(
        "--aio-clients",
        type=int,
        default=None,
        help="of --clients, how many drive raftmesh.aio.Client (default: half)",
    )
    p.add_argument("--node-down-after", type=float, default=5.0, help="node flag, seconds (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the first fault")
    p.add_argument("--cooldown", type=float, default=None, help="seconds after the last fault")
    p.add_argument("--keep-dir", action="store_true", help="keep node data and logs for debugging")
    p.add_argument(
        "--keep-on-window",
        type=float,
        default=None,
        metavar="S",
        help="keep node data and logs (and print where) only if the largest window with no task"
        " completing while a majority could form exceeds S seconds",
    )
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--kv-clients", type=int, default=3, help="KV workload clients (default 3; 0: none)")
    p.add_argument("--kv-keys", type=int, default=4, help="keys the KV clients share (default 4)")
    p.add_argument("--lock-clients", type=int, default=3, help="lock workload clients (default 3; 0: none)")
    p.add_argument("--lock-names", type=int, default=2, help="locks the lock clients share (default 2)")
    p.add_argument("--no-dag", action="store_true", help="run only the KV and lock workloads")
    p.add_argument("--no-faults", action="store_true", help="inject no fault (workloads alone)")
    p.add_argument(
        "--unfenced-experiment",
        action="store_true",
        help="lock holders also write a counter that ignores tokens: shows what fencing prevents",
    )
    p.add_argument(
        "--lin-timeout",
        type=float,
        default=60.0,
        help="seconds for the linearizability search (default 60); past it the verdict is inconclusive",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=None,
        metavar="ENTRIES",
        help="snapshot every ENTRIES log entries (e.g. 300); the audit reads archives of applied entries",
    )
    p.add_argument(
        "--preempt-priority",
        type=int,
        default=None,
        metavar="N",
        help="nodes preempt for runs of priority >= N (2 slots each); a quarter of the DAGs are urgent",
    )
    p.add_argument(
        "--message-clients",
        type=int,
        default=0,
        help="message senders: durable and fast sends and requests to chaos actors (default 0: none)",
    )
    p.add_argument(
        "--message-targets", type=int, default=4, help="chaos actors the senders share (default 4)"
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="nodes with mutual TLS and a tokens file; every client call carries the admin token",
    )
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
            aio_clients=args.aio_clients,
            node_down_after_s=args.node_down_after,
            keep_dir=args.keep_dir,
            keep_on_window_s=args.keep_on_window,
            warmup_s=args.warmup,
            cooldown_s=args.cooldown,
            dag=not args.no_dag,
            kv_clients=args.kv_clients,
            kv_keys=args.kv_keys,
            lock_clients=args.lock_clients,
            lock_names=args.lock_names,
            unfenced_experiment=args.unfenced_experiment,
            faults=not args.no_faults,
            lin_timeout_s=args.lin_timeout,
            snapshot_entries=args.snapshot_every,
            preempt_priority=args.preempt_priority,
            message_clients=args.message_clients,
            message_targets=args.message_targets,
            secure=args.secure,
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
