"""Raw requests against live nodes: every poison input gets INVALID_ARGUMENT with a bounded
message, what is stored stays readable by everyone, and forged heartbeats do not keep a
dead node up.

The requests are built with the generated stubs (or as raw bytes), not the SDK, so that
they reach the node exactly as a hostile or buggy client would send them.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from raftmesh.consensus import limits
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

from .test_e2e_durability import sleepers

pytestmark = pytest.mark.e2e

MAX_DETAILS = limits.MAX_STATUS_MESSAGE_BYTES + 64

POISON_JSON = {
    "NaN": '{"x": NaN}',
    "Infinity": "Infinity",
    "-Infinity": "[-Infinity]",
    "1e400": "1e400",
    "2**64": str(2**64),
    "2**70": str(2**70),
    "depth 65": "[" * 65 + "]" * 65,
    "depth 1000": "[" * 1000 + "]" * 1000,
    "lone surrogate": '"\\ud800"',
}


@pytest.fixture(scope="module")
def node1() -> Iterator[LocalCluster]:
    with LocalCluster(1) as c:
        c.wait_ready()
        yield c


@pytest.fixture
def channel(node1: LocalCluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node1.addresses[0]) as ch:
        yield ch


def rejected(call: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """``call(*args, **kw)`` must fail with INVALID_ARGUMENT and a bounded message, which is returned."""
    with pytest.raises(grpc.RpcError) as err:
        out = call(*args, **kw)
        if isinstance(out, grpc.Call) and hasattr(out, "__next__"):
            list(out)  # a server stream: the status comes with the first read
    exc: Any = err.value
    details = exc.details() or ""
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), details[:200])
    assert 0 < len(details.encode()) <= MAX_DETAILS, len(details)
    return str(details)


def submit(cl: pb_grpc.ClusterStub, input_json: str = "", name: str = "", key: str = "") -> Any:
    task = pb.TaskSpec(id="a", agent="echo", input_json=input_json)
    return cl.SubmitRun(pb.SubmitRunRequest(name=name, idempotency_key=key, tasks=[task]), timeout=30)


@pytest.mark.parametrize("text", POISON_JSON.values(), ids=POISON_JSON.keys())
def test_poison_json_is_refused_everywhere_and_reads_stay_readable(channel: grpc.Channel, text: str) -> None:
    cl, kv = pb_grpc.ClusterStub(channel), pb_grpc.KvStub(channel)
    assert "input_json" in rejected(submit, cl, text)
    rejected(kv.Put, pb.KvPutRequest(key="poison/k", value_json=text), timeout=30)
    put = pb.KvOperation(kind="put", key="poison/k", value_json=text)
    rejected(kv.Txn, pb.KvTxnRequest(success=[put]), timeout=30)
    cmp = pb.KvCompare(key="poison/k", target="value", op="=", operand_json=text)
    rejected(kv.Txn, pb.KvTxnRequest(compares=[cmp]), timeout=30)
    # What every client reads is unaffected: the whole keyspace and a fresh run.
    kv.List(pb.KvListRequest(prefix=""), timeout=30)
    assert not kv.Get(pb.KvGetRequest(key="poison/k"), timeout=30).entry.found
    run_id = submit(cl, '{"ok": [1, 2.5, "é"]}').run_id
    run = cl.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
    assert json.loads(run.tasks[0].input_json) == {"ok": [1, 2.5, "é"]}


def test_values_at_the_limits_are_stored_and_read_back(channel: grpc.Channel) -> None:
    cl, kv = pb_grpc.ClusterStub(channel), pb_grpc.KvStub(channel)
    value = {"max": 2**64 - 1, "min": -(2**63), "deep": json.loads("[" * 63 + "]" * 63), "s": "\u202e"}
    text = json.dumps(value)
    kv.Put(pb.KvPutRequest(key="limits/k", value_json=text), timeout=30)
    assert json.loads(kv.Get(pb.KvGetRequest(key="limits/k"), timeout=30).entry.value_json) == value
    run_id = submit(cl, text).run_id
    run = cl.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
    assert json.loads(run.tasks[0].input_json) == value
    watch = kv.Watch(pb.KvWatchRequest(prefix="limits/", from_revision=1), timeout=30)
    first = next(ev for ev in watch if ev.kind)
    watch.cancel()
    assert json.loads(first.entry.value_json) == value


def test_request_ids_are_bounded_and_printable(channel: grpc.Channel) -> None:
    kv, locks = pb_grpc.KvStub(channel), pb_grpc.LocksStub(channel)
    for rid in ("r" * 1_000_000, "r" * (limits.MAX_REQUEST_ID_CHARS + 1), "\x1b[31mred", "a\nb"):
        rejected(kv.Put, pb.KvPutRequest(key="k", value_json="1", request_id=rid), timeout=30)
        rejected(kv.Delete, pb.KvDeleteRequest(key="k", request_id=rid), timeout=30)
        rejected(kv.Txn, pb.KvTxnRequest(request_id=rid), timeout=30)
        rejected(kv.Lease, pb.KvLeaseRequest(ttl_ms=1000, request_id=rid), timeout=30)
        acquire = pb.LockAcquireRequest(owner="o", locks=[pb.LockItem(name="l")], ttl_ms=1000, request_id=rid)
        rejected(locks.Acquire, acquire, timeout=30)
        rejected(
            locks.Release, pb.LockReleaseRequest(owner="o", name="l", token=1, request_id=rid), timeout=30
        )
    ok = "r" * limits.MAX_REQUEST_ID_CHARS
    assert kv.Put(pb.KvPutRequest(key="k", value_json="1", request_id=ok), timeout=30).succeeded


def test_error_messages_that_echo_inputs_are_bounded(channel: grpc.Channel) -> None:
    cl = pb_grpc.ClusterStub(channel)
    n = 10_000
    tasks = [pb.TaskSpec(id=f"t{i:0120d}", agent="echo", deps=[f"t{(i + 1) % n:0120d}"]) for i in range(n)]
    assert "cycle" in rejected(cl.SubmitRun, pb.SubmitRunRequest(tasks=tasks), timeout=60)
    huge = "r" * 1_000_000
    rejected(cl.GetRun, pb.GetRunRequest(run_id=huge), timeout=30)
    rejected(cl.CancelRun, pb.CancelRunRequest(run_id=huge), timeout=30)
    unknown = pb.TaskSpec(id="a", agent="é" * 500_000)
    rejected(cl.SubmitRun, pb.SubmitRunRequest(tasks=[unknown]), timeout=30)
    spec = pb.TaskSpec(id="t" * 500_000, agent="echo", input_json="NaN")
    rejected(cl.SubmitRun, pb.SubmitRunRequest(tasks=[spec]), timeout=30)


def test_undecodable_request_bytes_are_invalid_argument(channel: grpc.Channel) -> None:
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    bad = [b"\xff\xff\xff", b"\x0a\x02\xff\xfe"]  # a truncated varint; a string field that is not UTF-8
    for method in ("/raftmesh.v1.Cluster/GetRun", "/raftmesh.v1.Kv/Put", "/raftmesh.v1.Locks/Acquire"):
        for data in bad:
            assert "not a valid message" in rejected(channel.unary_unary(method, **raw), data, timeout=30)
    for data in bad:
        rejected(channel.unary_stream("/raftmesh.v1.Cluster/WatchRun", **raw), data, timeout=30)


def test_names_and_keys_with_control_characters_are_refused(channel: grpc.Channel) -> None:
    cl = pb_grpc.ClusterStub(channel)
    for name in ("\x1b[2J\x1b[31mevil", "a\rb", "rtl\u202eexe"):
        assert "control characters" in rejected(submit, cl, "1", name=name)
        rejected(submit, cl, "1", key=name)
    assert submit(cl, "1", name="plain name, é ok").created


def test_cli_escapes_control_characters(node1: LocalCluster, channel: grpc.Channel) -> None:
    # A cancel reason is free text (like an agent's error) and reaches the run's error as sent.
    cl = pb_grpc.ClusterStub(channel)
    # A task that outlives the cancel: an echo could finish first, and a finished run keeps no reason.
    task = pb.TaskSpec(id="a", agent="sleep", input_json='{"seconds": 30}')
    run_id = cl.SubmitRun(pb.SubmitRunRequest(name="escapes", tasks=[task]), timeout=30).run_id
    hostile = "\x1b[2J\x1b]0;pwned\x07\u202eevil"
    cl.CancelRun(pb.CancelRunRequest(run_id=run_id, reason=hostile), timeout=30)
    assert hostile in cl.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).error
    env = {**os.environ, "RAFTMESH_ADDRESSES": ",".join(node1.addresses)}
    out = subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", "get", run_id],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out
    assert not any(c in out.stdout for c in "\x1b\x07\u202e"), out.stdout
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil" in out.stdout, out.stdout
    js = subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", "get", run_id, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert json.loads(js.stdout)["error"].endswith(hostile)  # --json carries it exactly, escaped by JSON


# ---- heartbeats --------------------------------------------------------------------


def forge(
    leader_grpc: str, stop: threading.Event, beats: list[tuple[str, str]], seen: dict[str, int]
) -> None:
    """Keep streaming ``beats`` (node id, incarnation) to the leader until ``stop``; count outcomes."""
    while not stop.is_set():

        def gen() -> Iterator[pb.HeartbeatRequest]:
            for node_id, inc in beats:
                if stop.is_set():
                    return
                yield pb.HeartbeatRequest(node_id=node_id, incarnation=inc, ts_ms=1)

        with grpc.insecure_channel(leader_grpc) as ch:
            try:
                for ack in pb_grpc.PeerStub(ch).Heartbeat(gen(), timeout=30):
                    seen["up" if ack.up else "not up"] = seen.get("up" if ack.up else "not up", 0) + 1
            except grpc.RpcError as exc:
                seen[exc.code().name] = seen.get(exc.code().name, 0) + 1
        stop.wait(0.05)  # pace the reconnects of a refused stream


def incarnation_of(c: LocalCluster, node_id: str) -> str:
    """The current incarnation, from the node's log (no API serves it: a heartbeat must know it)."""

    def read() -> str | None:
        with open(c.nodes[node_id].log_path, encoding="utf-8") as f:
            found = re.findall(rf"node {node_id} registered \(incarnation (\w+)\)", f.read())
        return found[-1] if found else None

    return str(wait_until(read, 30, f"{node_id} to log its incarnation"))


def test_forged_heartbeats_do_not_keep_a_dead_node_up(make_cluster: Callable[..., LocalCluster]) -> None:
    c = make_cluster(3, extra_args=["--node-down-after", "2"], slots=4)
    leader = c.wait_ready()
    victim = next(i for i in c.nodes if i != leader)
    old_incarnation = incarnation_of(c, victim)
    client = c.client([c.nodes[leader].grpc], retry_deadline_s=60)
    run_id = client.submit(sleepers(9, 3.0, "forged"))

    def victim_busy() -> list[str]:
        return [t.id for t in client.get(run_id).tasks.values() if t.status == "RUNNING" and t.node == victim]

    on_victim = wait_until(victim_busy, 30, f"tasks running on {victim}")
    c.kill(victim)
    rng = random.Random(14)
    randoms = [("x" + "".join(rng.choices("abcdefghij0123456789", k=30)), "inc") for _ in range(3000)]
    stop = threading.Event()
    streams = {
        "no incarnation": [(victim, "")] * 50,
        "wrong incarnation": [(victim, "0123456789ab")] * 50,
        "unknown id": [("n99", "0123456789ab")] * 50,
        "random ids": randoms,
    }
    seen: dict[str, dict[str, int]] = {k: {} for k in streams}
    threads = [
        threading.Thread(target=forge, args=(c.nodes[leader].grpc, stop, beats, seen[k]), daemon=True)
        for k, beats in streams.items()
    ]
    for t in threads:
        t.start()
    try:

        def marked_down() -> bool:
            return not next(m for m in c.status_of(leader).members if m.id == victim).up

        wait_until(marked_down, 30, f"{victim} to be marked down despite the forged heartbeats")
        run = client.wait(run_id, timeout_s=90)
        assert run.status == "SUCCEEDED", run.error
        for tid in on_victim:
            assert run.tasks[tid].node != victim and run.tasks[tid].attempt >= 2, run.tasks[tid]
        wait_until(lambda: all(seen[k] for k in streams), 30, "every forger to hear back")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    assert set(seen["no incarnation"]) == {"INVALID_ARGUMENT"}, seen
    assert set(seen["wrong incarnation"]) == {"FAILED_PRECONDITION"}, seen
    assert set(seen["unknown id"]) <= {"not up", "OK"} and seen["unknown id"].get("not up"), seen
    assert "up" not in seen["random ids"], seen

    # Restarted, the node registers a new incarnation; its old one is refused from then on.
    c.start_node(victim)

    def back_up() -> bool:
        return next(m for m in c.status_of(leader).members if m.id == victim).up

    wait_until(back_up, 30, f"{victim} to rejoin")
    assert incarnation_of(c, victim) != old_incarnation
    late: dict[str, int] = {}
    stop = threading.Event()
    t = threading.Thread(
        target=forge, args=(c.nodes[leader].grpc, stop, [(victim, old_incarnation)], late), daemon=True
    )
    t.start()
    try:
        wait_until(lambda: late, 30, "the old incarnation's heartbeat to be answered")
    finally:
        stop.set()
        t.join(timeout=35)
    assert set(late) == {"FAILED_PRECONDITION"}, late
