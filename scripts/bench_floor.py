#!/usr/bin/env python3
"""The floor under raftmesh's latency on this machine: what its parts cost alone, measured.

What is measured
----------------
* ``fdatasync``: one fdatasync after a 200-byte append, in the data directory (what a journal
  fsync costs here).
* ``durable commit``: one tiny command (a KV put of ~100 bytes) proposed on the leader of a
  3-member Raft cluster and applied there, one at a time: three processes on loopback, each a
  real ``RaftMember`` (pysyncobj, the durable journal with fsync on, the cluster secret on, the
  real state machine) and nothing else (no gRPC, no agents, no scheduler). The time is from
  ``propose`` until its callback on the leader.
* ``gRPC unary``: one ~100-byte unary call from a synchronous ``grpc`` channel (the SDK's) to a
  ``grpc.aio`` server with a pass-through handler (the node's kind) in another process on
  loopback, no interceptors.

From these, the floors of two paths under raftmesh's guarantees (a task's submission and its
completion are each durable on a majority before anything is acknowledged):

* a single task, submit -> result (``Client.run``): at least one gRPC call and two durable
  commits in series (the submission, placed in its apply; the completion with the run's end);
* a contended lock hand-off cycle (one client releases, the next is granted and releases): at
  least one durable commit (release + grant in one entry) and one gRPC call per cycle.

With ``--ray``, Ray's single-task p50 (``ray.get(f.remote(x))``, ``ray.init(num_cpus=3)``) is
measured side by side in the same run and the floor is given as a ratio to it. p50 and p90 in ms.
The machine's load average before and after is printed: figures are comparable only within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from _benchkit import environment, percentile, positive_int, ratio, run_bench

HERE = os.path.dirname(os.path.abspath(__file__))
WARMUP = 20
CHILD_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(f"[bench_floor] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--samples", type=positive_int, default=400, help="timed samples per measure (default 400)"
    )
    p.add_argument("--ray", action="store_true", help="also measure Ray's single-task p50 side by side")
    p.add_argument(
        "--fsync-compare",
        action="store_true",
        help="also measure the durable commit with fsync off (what the fsyncs cost; never a raftmesh setting)",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    # internal: the child processes
    p.add_argument("--member", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--grpc-server", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def summary(samples: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {"samples": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90)}


# ---- fdatasync ------------------------------------------------------------------------------------


def measure_fdatasync(directory: str, n: int) -> dict[str, Any]:
    path = os.path.join(directory, "fsync.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    took: list[float] = []
    try:
        for i in range(WARMUP + n):
            os.write(fd, b"x" * 200)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            if i >= WARMUP:
                took.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return summary(took)


# ---- durable commit: three RaftMember processes --------------------------------------------------


def member_main(args: argparse.Namespace) -> int:
    """A child: one Raft member; the one that leads measures and prints its samples as JSON."""
    from raftmesh.consensus.commands import KvOp, KvTxn, encode_batch
    from raftmesh.consensus.machine import StateMachine
    from raftmesh.consensus.raft import RaftConfig, RaftMember
    from raftmesh.storage.snapshots import LmdbSnapshotIO

    ports = [int(p) for p in args.ports.split(",")]
    addrs = tuple(f"127.0.0.1:{p}" for p in ports)
    me = addrs[args.member]
    home = os.path.join(args.dir, f"m{args.member}")
    os.makedirs(home, exist_ok=True)
    member = RaftMember(
        RaftConfig(
            self_addr=me,
            peer_addrs=addrs,
            journal_path=os.path.join(home, "raft.journal"),
            snapshot_path=os.path.join(home, "snapshot.lmdb"),
            password="bench-floor-secret-0123456789abcdef",
            fsync=not args.no_fsync,
        ),
        StateMachine(),
        lambda events: None,
        LmdbSnapshotIO(),
    )
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        if member.is_leader and member.ready:
            break
        if member.leader_known and not member.is_leader:
            # a follower: serve until the parent stops this process
            time.sleep(CHILD_TIMEOUT_S)
            return 0
        time.sleep(0.01)
    else:
        print(json.dumps({"error": "no leader elected"}), flush=True)
        return 1
    value = "v" * 100
    done = threading.Event()
    failures: list[str] = []
    failed: list[str] = []

    def callback(results: Any, reason: str | None) -> None:
        if reason is not None:
            failures.append(reason)
        done.set()

    took: list[float] = []
    for i in range(WARMUP + args.samples):
        put = KvOp("put", f"floor/{i % 20}", value)
        payload = encode_batch([KvTxn(f"floor-{i}", int(time.time() * 1000), success=(put,))])
        done.clear()
        t0 = time.perf_counter()
        member.propose(payload, callback)
        if not done.wait(10.0):
            failed.append("no callback in 10 s")
            break
        if i >= WARMUP and not failures:
            took.append(time.perf_counter() - t0)
        if failures:  # not known to be applied (a leadership change under load): not a sample
            failed.extend(failures)
            failures.clear()
    print(json.dumps({"took": took, "failed": failed[:5], "failures": len(failed)}), flush=True)
    member.destroy()
    return 0


def measure_commit(tmp: str, n: int, stack: contextlib.ExitStack, fsync: bool = True) -> dict[str, Any]:
    from raftmesh.localcluster import free_ports

    ports = ",".join(str(p) for p in free_ports(3))
    procs: list[subprocess.Popen[str]] = []

    def stop() -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    stack.callback(stop)
    for i in range(3):
        cmd = [sys.executable, os.path.abspath(__file__), "--member", str(i), "--ports", ports]
        cmd += ["--dir", tmp, "--samples", str(n)] + ([] if fsync else ["--no-fsync"])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    # The leader's process prints one line and exits; the followers wait to be stopped.
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            out = ended[0].stdout.read() if ended[0].stdout else ""
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("the Raft members did not finish in time")
    stop()
    got = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": "no output"}
    if "error" in got or got["failures"] > n // 10:
        raise RuntimeError(f"durable commit measure failed: {got}")
    return summary(got["took"]) | {"failures": got["failures"]}


# ---- gRPC unary ------------------------------------------------------------------------------------


def grpc_server_main(args: argparse.Namespace) -> int:
    import asyncio

    import grpc

    async def serve() -> None:
        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.method_handlers_generic_handler(
            "floor.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    return 0


def measure_grpc(n: int, stack: contextlib.ExitStack) -> dict[str, Any]:
    import grpc

    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--grpc-server"], stdout=subprocess.PIPE, text=True
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    stack.callback(stop)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stack.callback(channel.close)
    call = channel.unary_unary("/floor.Echo/Call")
    body = b"x" * 100
    took: list[float] = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        got = call(body, timeout=10.0)
        if i >= WARMUP:
            took.append(time.perf_counter() - t0)
        if got != body:
            raise RuntimeError("the echo server answered something else")
    stop()
    return summary(took)


# ---- Ray -------------------------------------------------------------------------------------------


def measure_ray(tmp: str, n: int, stack: contextlib.ExitStack) -> dict[str, Any]:
    from _benchkit import ray_instance

    sys.path.insert(0, HERE)
    from bench import LatencyResult, RayBench

    stack.enter_context(ray_instance(3, os.path.join(tmp, "ray"), log))
    bench = RayBench()
    for x in range(WARMUP):
        bench.single(x, None)
    res = LatencyResult()
    for x in range(n):
        bench.single(x, res)
    return summary(res.total_s)


# ---- report ----------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    report: dict[str, Any] = {"environment": environment(), "load_before": os.getloadavg()}
    log("fdatasync")
    report["fdatasync"] = measure_fdatasync(tmp, args.samples)
    log("durable commit on a 3-member Raft cluster (3 processes)")
    report["durable_commit"] = measure_commit(tmp, args.samples, stack)
    if args.fsync_compare:
        log("the same with fsync off")
        report["commit_no_fsync"] = measure_commit(
            os.path.join(tmp, "nofsync"), args.samples, stack, fsync=False
        )
    log("gRPC unary call")
    report["grpc_unary"] = measure_grpc(args.samples, stack)
    if args.ray:
        log("Ray single task")
        report["ray_single_task"] = measure_ray(tmp, min(args.samples, 200), stack)
    c = report["durable_commit"]["p50_ms"]
    g = report["grpc_unary"]["p50_ms"]
    report["floor_single_task_p50_ms"] = g + 2 * c
    report["floor_lock_cycle_ms"] = g + c
    report["floor_lock_cycles_per_s"] = 1000.0 / (g + c)
    if args.ray:
        report["floor_single_task_over_ray"] = ratio(
            report["floor_single_task_p50_ms"], report["ray_single_task"]["p50_ms"]
        )
    report["load_after"] = os.getloadavg()
    return report


def render(r: dict[str, Any]) -> str:
    lines = [
        "floors on this machine (ms; fsync on, cluster secret on)",
        f"{'measure':34}{'p50':>9}{'p90':>9}",
    ]
    for key, name in (
        ("fdatasync", "fdatasync (200 B append)"),
        ("durable_commit", "durable commit, 3 members"),
        ("commit_no_fsync", "  the same, fsync off"),
        ("grpc_unary", "gRPC unary call (100 B)"),
        ("ray_single_task", "Ray single task"),
    ):
        if key in r:
            lines.append(f"{name:34}{r[key]['p50_ms']:9.3f}{r[key]['p90_ms']:9.3f}")
    lines.append(f"floor, single task (1 call + 2 commits), p50: {r['floor_single_task_p50_ms']:.3f} ms")
    if "floor_single_task_over_ray" in r:
        lines.append(f"  floor / Ray p50: {r['floor_single_task_over_ray']:.2f}")
    lines.append(
        f"floor, contended lock cycle (1 call + 1 commit): {r['floor_lock_cycle_ms']:.3f} ms "
        f"= at most {r['floor_lock_cycles_per_s']:.0f} cycles/s"
    )
    lb, la = r["load_before"], r["load_after"]
    lines.append(f"load average before {lb[0]:.2f} {lb[1]:.2f}, after {la[0]:.2f} {la[1]:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.member is not None:
        return member_main(args)
    if args.grpc_server:
        return grpc_server_main(args)
    return run_bench(
        "raftmesh-bench-floor-", lambda tmp, stack: measure(args, tmp, stack), render, args.json, log
    )


if __name__ == "__main__":
    sys.exit(main())
