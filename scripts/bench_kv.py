#!/usr/bin/env python3
"""raftmesh KV vs etcd 3.4: puts and linearizable gets, 1 and 16 clients, side by side.

What is measured
----------------
Both systems run on this machine at the same time, for the whole run:

* raftmesh: a ``LocalCluster`` of 3 real node processes on loopback, data in a temporary
  directory, **fsync on** (the default: entries are fsynced before they are acknowledged).
* etcd: 3 ``etcd`` members (``--etcd``, default ``/usr/bin/etcd``) on loopback, data in the same
  temporary directory, default settings (etcd fsyncs its WAL before acknowledging; nothing is
  tuned). Skipped, with a message saying why, where ``etcd`` is not installed.
* optionally (``--baseline-tree DIR``) a second raftmesh cluster running the code in ``DIR`` (e.g.
  a checkout of main), so a change is measured against its starting point in the same run.

Every client is a thread of this process with its own gRPC channel to the **leader** of the system
it drives, and calls the system's own gRPC API through a plain stub (no SDK on either side):
raftmesh ``Kv.Put`` / ``Kv.Get`` (``stale_ok=false``: linearizable), etcd ``KV.Put`` /
``KV.Range`` (``serializable=false``: linearizable, etcd's ReadIndex). etcd's stubs come from a
minimal ``.proto`` (only the fields used) compiled at run time with ``grpcio-tools``. Values are
100 bytes (raftmesh: a JSON string of 98 characters, i.e. 100 bytes of ``value_json``; etcd: 100
raw bytes); each client writes and reads its own 20 keys in turn.

Workloads, each ``--seconds`` long (default 3) after a 0.5 s untimed warm-up, for every client count
in ``--clients`` (default ``1,16``): ``put`` (back-to-back puts per client) and ``get`` (back-to-back
linearizable gets of keys written beforehand). The systems take turns per workload (the order
alternates), so drift in the machine's load hits both; ``--rounds N`` runs every workload N times
per system (the order alternating each time) and reports each figure's median over the rounds.
Reported per system and workload: ops/s
(completed calls / wall time of the phase), per-call latency p50 and p99 (ms), the leader
process's CPU time per call (user + system from ``/proc``, over the whole phase with its warm-up:
less sensitive to other load on the machine than the rates), the same for all three member
processes together ("all cpu": the followers' work too), and the ratios
raftmesh/etcd (ops/s: above 1 is raftmesh faster; p50: below 1 is raftmesh faster). With a
baseline, the ratios this tree / baseline as well. Also the raftmesh leader's commit-index advance
per get (0 when reads append nothing to the log). Every get's answer is checked (the value last
put); a wrong answer fails the run (exit 1).

The machine's load average is printed with the results: other work on the machine shows up in
every figure, which is why only the ratios of the same run mean anything.

Usage::

    python scripts/bench_kv.py                            # 3 s per workload, 1 and 16 clients
    python scripts/bench_kv.py --baseline-tree /work/wt/base
    python scripts/bench_kv.py --json > out.json          # JSON on stdout, the table on stderr

Everything started (node processes, etcd members) is stopped and the temporary directory removed,
also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc
from _benchkit import baseline_env, environment, percentile, positive_int, ratio, run_bench

from raftmesh.localcluster import LocalCluster, free_ports
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

VALUE_BYTES = 100
KEYS_PER_CLIENT = 20

ETCD_PROTO = """
syntax = "proto3";
package etcdserverpb;
service KV {
  rpc Range(RangeRequest) returns (RangeResponse);
  rpc Put(PutRequest) returns (PutResponse);
}
service Maintenance {
  rpc Status(StatusRequest) returns (StatusResponse);
}
message ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4; }
message KeyValue { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4;
                   bytes value = 5; int64 lease = 6; }
message RangeRequest { bytes key = 1; bytes range_end = 2; int64 limit = 3; int64 revision = 4;
                       bool serializable = 7; }
message RangeResponse { ResponseHeader header = 1; repeated KeyValue kvs = 2; bool more = 3; int64 count = 4; }
message PutRequest { bytes key = 1; bytes value = 2; int64 lease = 3; }
message PutResponse { ResponseHeader header = 1; }
message StatusRequest {}
message StatusResponse { ResponseHeader header = 1; string version = 2; int64 dbSize = 3; uint64 leader = 4;
                         uint64 raftIndex = 5; uint64 raftTerm = 6; }
"""


class WrongAnswer(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench_kv {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the systems -----------------------------------------------------------------------


class Driver:
    """One system: makes per-client callables for puts and gets."""

    name: str

    def put_fn(self, client: int) -> Callable[[int, bytes], None]:
        raise NotImplementedError

    def get_fn(self, client: int) -> Callable[[int], bytes]:
        raise NotImplementedError

    def log_index(self) -> int | None:
        return None

    def leader_pid(self) -> int | None:
        return None

    def member_pids(self) -> list[int]:
        return []

    def close(self) -> None: ...


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RaftmeshDriver(Driver):
    def __init__(self, name: str, cluster: LocalCluster, leader: str) -> None:
        self.name = name
        self.cluster = cluster
        self.leader = leader
        self.addr = cluster.nodes[leader].grpc
        self._channels: list[grpc.Channel] = []

    def _stub(self) -> pb_grpc.KvStub:
        ch = grpc.insecure_channel(self.addr)
        self._channels.append(ch)
        return pb_grpc.KvStub(ch)

    def put_fn(self, client: int) -> Callable[[int, bytes], None]:
        stub = self._stub()

        def put(i: int, value: bytes) -> None:
            stub.Put(pb.KvPutRequest(key=f"c{client}/k{i}", value_json=value.decode()), timeout=30)

        return put

    def get_fn(self, client: int) -> Callable[[int], bytes]:
        stub = self._stub()

        def get(i: int) -> bytes:
            resp = stub.Get(pb.KvGetRequest(key=f"c{client}/k{i}"), timeout=30)
            return resp.entry.value_json.encode()

        return get

    def leader_pid(self) -> int | None:
        return self.cluster.nodes[self.leader].pid

    def member_pids(self) -> list[int]:
        return [n.pid for n in self.cluster.nodes.values() if n.pid is not None]

    def log_index(self) -> int | None:
        st = self.cluster.status_of(self.leader)
        return int(getattr(st, "commit_index", 0)) or None

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()


class EtcdDriver(Driver):
    name = "etcd"

    def __init__(self, pb2: Any, pb2_grpc: Any, addr: str, pid: int, pids: list[int]) -> None:
        self.pb2, self.pb2_grpc, self.addr, self.pid, self.pids = pb2, pb2_grpc, addr, pid, pids
        self._channels: list[grpc.Channel] = []

    def leader_pid(self) -> int | None:
        return self.pid

    def member_pids(self) -> list[int]:
        return self.pids

    def _stub(self) -> Any:
        ch = grpc.insecure_channel(self.addr)
        self._channels.append(ch)
        return self.pb2_grpc.KVStub(ch)

    def put_fn(self, client: int) -> Callable[[int, bytes], None]:
        stub, pb2 = self._stub(), self.pb2

        def put(i: int, value: bytes) -> None:
            stub.Put(pb2.PutRequest(key=f"c{client}/k{i}".encode(), value=value), timeout=30)

        return put

    def get_fn(self, client: int) -> Callable[[int], bytes]:
        stub, pb2 = self._stub(), self.pb2

        def get(i: int) -> bytes:
            resp = stub.Range(pb2.RangeRequest(key=f"c{client}/k{i}".encode()), timeout=30)
            return bytes(resp.kvs[0].value) if resp.kvs else b""

        return get

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()


def compile_etcd_proto(tmp: str) -> tuple[Any, Any]:
    from grpc_tools import protoc

    d = os.path.join(tmp, "etcdproto")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "etcd_kv.proto"), "w") as f:
        f.write(ETCD_PROTO)
    rc = protoc.main(["protoc", f"-I{d}", f"--python_out={d}", f"--grpc_python_out={d}", "etcd_kv.proto"])
    if rc != 0:
        raise SystemExit(f"bench_kv: protoc failed ({rc}) on the minimal etcd proto")
    sys.path.insert(0, d)
    return importlib.import_module("etcd_kv_pb2"), importlib.import_module("etcd_kv_pb2_grpc")


@contextlib.contextmanager
def etcd_cluster(binary: str, tmp: str, pb2: Any, pb2_grpc: Any) -> Iterator[tuple[EtcdDriver, list[int]]]:
    """3 etcd members on loopback with default durability; every member stopped on the way out."""
    ports = free_ports(6)
    names = ["e1", "e2", "e3"]
    peer = {n: f"http://127.0.0.1:{ports[3 + k]}" for k, n in enumerate(names)}
    client = {n: f"http://127.0.0.1:{ports[k]}" for k, n in enumerate(names)}
    initial = ",".join(f"{n}={peer[n]}" for n in names)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for n in names:
            lf = open(os.path.join(tmp, f"etcd-{n}.log"), "wb")  # noqa: SIM115 (closed below)
            logs.append(lf)
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--name",
                        n,
                        "--data-dir",
                        os.path.join(tmp, f"etcd-{n}"),
                        "--listen-client-urls",
                        client[n],
                        "--advertise-client-urls",
                        client[n],
                        "--listen-peer-urls",
                        peer[n],
                        "--initial-advertise-peer-urls",
                        peer[n],
                        "--initial-cluster",
                        initial,
                        "--initial-cluster-token",
                        f"bench-kv-{os.getpid()}",
                        "--initial-cluster-state",
                        "new",
                    ],
                    stdout=lf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        leader_addr = None
        leader_pid = 0
        while leader_addr is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench_kv: etcd did not elect a leader in 60 s (logs in {tmp})")
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"bench_kv: an etcd member exited with {p.returncode}")
            for k, n in enumerate(names):
                addr = client[n].removeprefix("http://")
                try:
                    with grpc.insecure_channel(addr) as ch:
                        st = pb2_grpc.MaintenanceStub(ch).Status(pb2.StatusRequest(), timeout=1)
                    if st.leader and st.leader == st.header.member_id:
                        leader_addr, leader_pid = addr, procs[k].pid
                        break
                except grpc.RpcError:
                    pass
            time.sleep(0.1)
        pids = [p.pid for p in procs]
        yield EtcdDriver(pb2, pb2_grpc, leader_addr, leader_pid, pids), pids
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for lf in logs:
            lf.close()


# ---- the workloads ----------------------------------------------------------------------


@dataclass
class Phase:
    ops: int
    seconds: float
    latencies_s: list[float]
    all_ops: int = 0
    """Calls completed in the phase, the warm-up's included (what the leader's CPU time covers)."""
    leader_cpu_s: float | None = None
    cluster_cpu_s: float | None = None
    """CPU time of every member process together (followers' work too)."""

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies_s]
        return {
            "ops": self.ops,
            "seconds": self.seconds,
            "ops_per_s": self.ops / self.seconds if self.seconds > 0 else float("nan"),
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "leader_cpu_ms_per_op": (
                1000 * self.leader_cpu_s / self.all_ops
                if self.leader_cpu_s is not None and self.all_ops
                else None
            ),
            "cluster_cpu_ms_per_op": (
                1000 * self.cluster_cpu_s / self.all_ops
                if self.cluster_cpu_s is not None and self.all_ops
                else None
            ),
        }


def median_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds of one system's workload (one round: that round)."""
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def value_for(client: int, i: int) -> bytes:
    """100 bytes that are also a JSON string (raftmesh stores JSON), distinct per client and key."""
    body = f"c{client}k{i}-".ljust(VALUE_BYTES - 2, "x")
    return json.dumps(body).encode()


def run_phase(driver: Driver, kind: str, clients: int, seconds: float, warmup_s: float = 0.5) -> Phase:
    fns: list[Callable[..., Any]] = [
        driver.put_fn(c) if kind == "put" else driver.get_fn(c) for c in range(clients)
    ]
    start_at = threading.Event()
    stop_at = [0.0]
    measure_from = [0.0]
    lat: list[list[float]] = [[] for _ in range(clients)]
    done = [0] * clients
    errors: list[BaseException] = []

    def loop(c: int) -> None:
        fn = fns[c]
        mine = lat[c]
        i = 0
        start_at.wait()
        try:
            while True:
                k = i % KEYS_PER_CLIENT
                t0 = time.perf_counter()
                if t0 >= stop_at[0]:
                    return
                if kind == "put":
                    fn(k, value_for(c, k))
                else:
                    got = fn(k)
                    want = value_for(c, k)
                    if got != want and json.loads(got) != json.loads(want):
                        raise WrongAnswer(f"{driver.name}: get c{c}/k{k} = {got[:40]!r}, want {want[:40]!r}")
                t1 = time.perf_counter()
                if t0 >= measure_from[0] and t1 <= stop_at[0]:
                    mine.append(t1 - t0)
                i += 1
                done[c] = i
        except BaseException as exc:  # reported after the phase
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    pid = driver.leader_pid()
    members = driver.member_pids()
    cpu0 = cpu_seconds(pid)
    all0 = [cpu_seconds(p) for p in members]
    now = time.perf_counter()
    measure_from[0] = now + warmup_s
    stop_at[0] = measure_from[0] + seconds
    start_at.set()
    for t in threads:
        t.join()
    cpu1 = cpu_seconds(pid)
    all1 = [cpu_seconds(p) for p in members]
    if errors:
        raise errors[0]
    flat = [x for xs in lat for x in xs]
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    spent = [b - a for a, b in zip(all0, all1, strict=True) if a is not None and b is not None]
    cluster_cpu = sum(spent) if members and len(spent) == len(members) else None
    return Phase(len(flat), seconds, flat, sum(done), cpu, cluster_cpu)


def preload(driver: Driver, clients: int) -> None:
    """Write every key the gets read (from 4 threads: it is set-up, not measured)."""

    def one(c: int) -> None:
        put = driver.put_fn(c)
        for k in range(KEYS_PER_CLIENT):
            put(k, value_for(c, k))

    threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- report ------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    systems = report["systems"]
    lines = [
        "KV: puts and linearizable gets, 100-byte values, clients on the leader "
        f"(raftmesh fsync on; etcd default fsync). cpus {report['environment']['cpu_count']}, "
        f"load average {report['load_before']} before, {report['load_after']} after",
        f"{'workload':<22}"
        + "".join(
            f"{s + ' ops/s':>20}{'p50 ms':>9}{'p99 ms':>9}{'cpu ms/op':>10}{'all cpu':>9}" for s in systems
        ),
    ]
    for w in report["workloads"]:
        row = f"{w['label']:<22}"
        for s in systems:
            r = w["results"].get(s)
            if r is None:
                row += f"{'-':>20}{'-':>9}{'-':>9}{'-':>10}{'-':>9}"
            else:
                cpu, everyone = r["leader_cpu_ms_per_op"], r.get("cluster_cpu_ms_per_op")
                cpu_s = "-" if cpu is None else f"{cpu:.3f}"
                all_s = "-" if everyone is None else f"{everyone:.3f}"
                row += f"{r['ops_per_s']:>20.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{cpu_s:>10}{all_s:>9}"
        lines.append(row)
    for key, title in (("vs_etcd", "raftmesh / etcd"), ("vs_baseline", "raftmesh / baseline")):
        if not any(w.get(key) for w in report["workloads"]):
            continue
        lines.append(f"ratios {title}:{'':<3}{'ops/s':>10}{'p50':>10}{'cpu/op':>10}{'all cpu/op':>12}")
        for w in report["workloads"]:
            r = w.get(key)
            if r:
                ops = "-" if r["ops_per_s"] is None else f"{r['ops_per_s']:.2f}"
                p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
                cpu = "-" if r["leader_cpu_ms_per_op"] is None else f"{r['leader_cpu_ms_per_op']:.2f}"
                everyone = r.get("cluster_cpu_ms_per_op")
                all_s = "-" if everyone is None else f"{everyone:.2f}"
                lines.append(f"  {w['label']:<22}{ops:>10}{p50:>10}{cpu:>10}{all_s:>12}")
    for w in report["workloads"]:
        for s, per in w.get("log_entries_per_op", {}).items():
            if per is not None:
                lines.append(f"{s}: {w['label']}: raft commit-index advance per op {per:.3f}")
    if report.get("etcd_skipped"):
        lines.append(f"etcd skipped: {report['etcd_skipped']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per workload (default 3)")
    p.add_argument("--clients", default="1,16", help="comma-separated client counts (default 1,16)")
    p.add_argument("--etcd", default="/usr/bin/etcd", help="the etcd binary (default /usr/bin/etcd)")
    p.add_argument("--skip-etcd", action="store_true", help="raftmesh only")
    p.add_argument("--baseline-tree", help="also run a raftmesh cluster on the code in this directory")
    p.add_argument("--workloads", default="put,get", help="comma-separated: put,get (default both)")
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="run each workload this many times per system, the order alternating, and report each "
        "figure's median over the rounds (default 1); on a loaded machine 3-5 steady the ratios",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    args.client_counts = [positive_int(x) for x in args.clients.split(",") if x]
    args.kinds = [k for k in args.workloads.split(",") if k]
    if any(k not in ("put", "get") for k in args.kinds):
        p.error("--workloads takes put and/or get")
    return args


def start_raftmesh(name: str, tmp: str, env: dict[str, str], stack: contextlib.ExitStack) -> RaftmeshDriver:
    cluster = LocalCluster(3, base_dir=os.path.join(tmp, name), env=env)
    stack.callback(cluster.close)
    cluster.start(timeout_s=60)
    leader = cluster.wait_ready()
    log(f"{name}: leader {leader}; node pids {[n.pid for n in cluster.nodes.values()]}")
    driver = RaftmeshDriver(name, cluster, leader)
    stack.callback(driver.close)
    return driver


def run(args: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    drivers: list[Driver] = [start_raftmesh("raftmesh", tmp, {}, stack)]
    if args.baseline_tree:
        env = baseline_env(args.baseline_tree, "bench_kv")
        drivers.append(start_raftmesh("baseline", tmp, env, stack))
    etcd_skipped = None
    etcd_pids: list[int] = []
    if args.skip_etcd:
        etcd_skipped = "--skip-etcd"
    elif not (os.path.isfile(args.etcd) and os.access(args.etcd, os.X_OK)):
        etcd_skipped = f"{args.etcd} is not an executable (install etcd 3.4, e.g. Debian's etcd-server)"
    else:
        try:
            pb2, pb2_grpc = compile_etcd_proto(tmp)
        except ImportError as exc:
            etcd_skipped = f"grpcio-tools is not installed ({exc}): pip install grpcio-tools"
        else:
            drv, etcd_pids = stack.enter_context(etcd_cluster(args.etcd, tmp, pb2, pb2_grpc))
            stack.callback(drv.close)
            drivers.append(drv)
            log(f"etcd: leader at {drv.addr}; pids {etcd_pids}")
    if etcd_skipped:
        log(f"etcd skipped: {etcd_skipped}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    workloads = []
    turn = 0
    for kind in args.kinds:
        for n in args.client_counts:
            if kind == "get":
                for d in drivers:
                    preload(d, n)
            label = f"{n} client{'s' if n > 1 else ''}, {kind}s"
            rounds: dict[str, list[dict[str, Any]]] = {d.name: [] for d in drivers}
            per_op: dict[str, float | None] = {}
            for _ in range(args.rounds):
                order = drivers if turn % 2 == 0 else list(reversed(drivers))
                turn += 1
                for d in order:
                    before = d.log_index()
                    ph = run_phase(d, kind, n, args.seconds)
                    after = d.log_index()
                    rounds[d.name].append(ph.summary())
                    if before is not None and after is not None and ph.ops:
                        # counts warm-up calls too: per op of the whole phase, approximately
                        total_ops = ph.ops * (args.seconds + 0.5) / args.seconds
                        per_op[d.name] = (after - before) / total_ops
                    log(
                        f"{label}: {d.name}: {ph.summary()['ops_per_s']:.0f} ops/s, p50 {ph.summary()['p50_ms']:.2f} ms"
                    )
            results = {name: median_summary(rs) for name, rs in rounds.items()}
            w: dict[str, Any] = {"label": label, "kind": kind, "clients": n, "results": results}
            if args.rounds > 1:
                w["rounds"] = rounds
            if kind == "get":
                w["log_entries_per_op"] = per_op
            for key, other in (("vs_etcd", "etcd"), ("vs_baseline", "baseline")):
                if other in results:
                    a, b = results["raftmesh"], results[other]
                    w[key] = {
                        "ops_per_s": ratio(a["ops_per_s"], b["ops_per_s"]),
                        "p50_ms": ratio(a["p50_ms"], b["p50_ms"]),
                        "leader_cpu_ms_per_op": ratio(a["leader_cpu_ms_per_op"], b["leader_cpu_ms_per_op"]),
                        "cluster_cpu_ms_per_op": ratio(
                            a["cluster_cpu_ms_per_op"], b["cluster_cpu_ms_per_op"]
                        ),
                    }
            workloads.append(w)
    return {
        "environment": environment(),
        "systems": [d.name for d in drivers],
        "settings": {
            "raftmesh": "3 nodes, fsync on (default)",
            "etcd": "3 members, default (WAL fsync on)",
            "seconds": args.seconds,
            "rounds": args.rounds,
            "value_bytes": VALUE_BYTES,
        },
        "etcd_pids": etcd_pids,
        "etcd_skipped": etcd_skipped,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "workloads": workloads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(
        "raftmesh-bench-kv-", lambda tmp, stack: run(args, tmp, stack), render, args.json, log, (WrongAnswer,)
    )


if __name__ == "__main__":
    sys.exit(main())
