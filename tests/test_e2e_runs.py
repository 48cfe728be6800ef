"""End to end: a real 3-node cluster (separate processes, real pysyncobj log, real gRPC)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftmesh import DAG, Client
from raftmesh.consensus.raft import read_journal
from raftmesh.errors import InvalidArgument
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

from .test_e2e_durability import audit_through

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster3(module_cluster3: LocalCluster) -> LocalCluster:
    """The module's shared cluster: the tests that take it leave its nodes running."""
    return module_cluster3


def build_sum_dag(width: int, depth: int) -> tuple[DAG, dict[str, float]]:
    """Layers of sum tasks with fan-out and fan-in, and the outputs computed independently."""
    dag = DAG("sum-layers")
    expected: dict[str, float] = {}
    dag.task("root", "sum", input={"value": 1})
    expected["root"] = 1
    prev = ["root"]
    for layer in range(depth):
        cur = []
        for w in range(width):
            tid = f"l{layer}w{w}"
            # each task depends on two tasks of the previous layer (fan-out and partial fan-in)
            deps = sorted({prev[w % len(prev)], prev[(w + 1) % len(prev)]})
            value = layer * 100 + w
            dag.task(tid, "sum", input={"value": value}, deps=deps)
            expected[tid] = value + sum(expected[d] for d in deps)
            cur.append(tid)
        prev = cur
    dag.task("total", "sum", input={"value": 0.5}, deps=prev)
    expected["total"] = 0.5 + sum(expected[d] for d in prev)
    return dag, expected


def test_sum_dag_with_fan_out_and_fan_in(cluster3: LocalCluster) -> None:
    dag, expected = build_sum_dag(width=8, depth=4)
    assert len(dag.tasks) >= 30
    client = cluster3.client()
    run = client.run(dag, timeout_s=60)
    assert run.status == "SUCCEEDED", run.error
    outputs = {tid: t.output for tid, t in run.tasks.items()}
    assert outputs == expected
    nodes = {t.node for t in run.tasks.values()}
    assert len(nodes) >= 2, f"all tasks ran on {nodes}"
    # every replica ends with the same state
    cluster3.wait_converged()


def test_follower_accepts_writes_and_reads(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_ready()
    follower = next(i for i in cluster3.nodes if i != leader)
    client = cluster3.client([cluster3.nodes[follower].grpc], retry_deadline_s=5)
    dag = DAG()
    dag.task("a", "echo", input={"x": 1})
    run_id = client.submit(dag)
    # a linearizable read on the same follower sees the run at once
    assert client.get(run_id).run_id == run_id
    assert client.wait(run_id, timeout_s=30).tasks["a"].output == {"x": 1}


def test_invalid_dags_are_rejected_and_change_nothing(cluster3: LocalCluster) -> None:
    client = cluster3.client()
    before = cluster3.status_of("n1", include_digest=True)
    bad = [
        (
            {
                "tasks": [
                    {"id": "a", "agent": "echo", "deps": ["b"]},
                    {"id": "b", "agent": "echo", "deps": ["a"]},
                ]
            },
            "cycle",
        ),
        ({"tasks": [{"id": "a", "agent": "no-such-agent"}]}, "unknown agent"),
        ({"tasks": [{"id": "a", "agent": "echo", "deps": ["ghost"]}]}, "ghost"),
    ]
    channel = grpc.insecure_channel(cluster3.addresses[0])
    stub = pb_grpc.ClusterStub(channel)
    for spec, needle in bad:
        with pytest.raises(InvalidArgument) as err:
            client.submit(spec)
        assert needle in err.value.message
        # the raw status code on the wire is INVALID_ARGUMENT
        req = pb.SubmitRunRequest(
            tasks=[pb.TaskSpec(id=t["id"], agent=t["agent"], deps=t.get("deps", [])) for t in spec["tasks"]]
        )
        with pytest.raises(grpc.RpcError) as rpc_err:
            stub.SubmitRun(req, timeout=10)
        assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_json = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="a", agent="echo", input_json="{nope")])
    with pytest.raises(grpc.RpcError) as rpc_err:
        stub.SubmitRun(bad_json, timeout=10)
    assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input_json is not valid JSON" in (rpc_err.value.details() or "")
    channel.close()
    after = cluster3.status_of("n1", include_digest=True)
    assert (after.revision, after.digest) == (before.revision, before.digest)


def test_same_idempotency_key_yields_one_run(cluster3: LocalCluster) -> None:
    dag = DAG()
    dag.task("a", "echo", input=1)
    ids = set()
    for addr in cluster3.addresses * 2:
        with cluster3.client([addr]) as c:
            ids.add(c.submit(dag, idempotency_key="the-one-key"))
    assert len(ids) == 1
    client = cluster3.client()
    assert len([r for r in client.list_runs() if r["run_id"] in ids]) == 1


def test_kill_leader_mid_run(make_cluster: Callable[..., LocalCluster]) -> None:
    # its nodes die: not the shared cluster. Down after 2 s (default 5): the dead leader's attempts
    # are requeued sooner; exactly-once below does not depend on when that happens.
    cluster3 = make_cluster(3, extra_args=["--node-down-after", "2"])
    leader = cluster3.wait_ready()
    client = cluster3.client(retry_deadline_s=60)
    dag = DAG("sleepers")
    for i in range(12):
        dag.task(f"s{i}", "sleep", input={"seconds": 1.5})
    dag.task("join", "sum", deps=[f"s{i}" for i in range(12)])
    run_id = client.submit(dag)

    def some_running() -> bool:
        run = client.get(run_id)
        return any(t.status == "RUNNING" for t in run.tasks.values())

    wait_until(some_running, 30, "sleep tasks to start")
    # A Client.run waiting on the leader (one RunToEnd call) when it dies: sent again to the next
    # node with the same idempotency key, it answers the same run, ended.
    survivors = [i for i in cluster3.nodes if i != leader]
    runner = cluster3.client([cluster3.nodes[i].grpc for i in [leader, *survivors]], retry_deadline_s=60)
    runner._current = 0  # the call goes to the leader
    one = DAG("through-the-kill")
    one.task("a", "sleep", input={"seconds": 2})
    ran: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: ran.update(run=runner.run(one, idempotency_key="through-kill", timeout_s=90))
    )
    waiter.start()
    wait_until(lambda: _runs_keyed(client, "through-kill"), 30, "the run's submit to apply")
    cluster3.kill(leader)
    new_leader = cluster3.wait_ready(timeout_s=30, among=survivors)
    assert new_leader != leader
    run = client.wait(run_id, timeout_s=90)
    waiter.join(timeout=90)
    assert ran["run"].status == "SUCCEEDED" and _runs_keyed(client, "through-kill") == [ran["run"].run_id]
    assert run.status == "SUCCEEDED", run.error
    assert all(t.status == "SUCCEEDED" for t in run.tasks.values())
    # Every task has exactly one committed result: replay the committed log of a survivor.
    converged = cluster3.wait_converged_statuses(among=survivors)[survivors[0]]
    cluster3.stop_node(survivors[0])
    entries, _ = read_journal(cluster3.nodes[survivors[0]].data_dir + "/raft.journal")
    # the journal replays through exactly the converged state: it is the whole committed log
    # (and may go on past it: the dead leader is marked down, ticks commit)
    audit = audit_through([p for _, _, p in entries], converged.revision, converged.digest)
    keys = {(run_id, t) for t in run.tasks}
    assert {k: audit.results[k] for k in keys} == dict.fromkeys(keys, 1)
    assert audit.early_starts == []


def _runs_keyed(client: Client, key: str) -> list[str]:
    return [r["run_id"] for r in client.list_runs() if r["idempotency_key"] == key]


def test_no_leader_is_unavailable(make_cluster: Callable[..., LocalCluster]) -> None:
    c = make_cluster(3, start=False)
    c.start_node("n1")  # one of three: no quorum, no leader
    channel = grpc.insecure_channel(c.nodes["n1"].grpc)
    stub = pb_grpc.ClusterStub(channel)
    health = health_pb2_grpc.HealthStub(channel)

    def answers_health() -> bool:
        # the node's gRPC server is up (it reports NOT_SERVING: it knows no leader)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return resp.status == health_pb2.HealthCheckResponse.NOT_SERVING

    wait_until(answers_health, 30, "n1 to answer the health check")
    req = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="a", agent="echo")], idempotency_key="k")
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitRun(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no Raft leader" in (err.value.details() or "")
    channel.close()


def test_a_node_whose_every_peer_died_answers_no_leader_at_once(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Its peers killed, every Raft link of the survivor closed and reconnects are refused: it
    starts no election (no link is up), and pysyncobj keeps naming the dead leader. A write must
    still be answered UNAVAILABLE "knows no Raft leader" at once, as in a silent partition, and not
    held to its deadline (``RaftMember.leader_known``, ``LEADERLESS_FAIL_S``)."""
    c = make_cluster(3)
    leader = c.wait_ready()
    survivor = next(n for n in c.nodes if n != leader)
    for n in [n for n in c.nodes if n != survivor]:
        c.kill(n)
    channel = grpc.insecure_channel(c.nodes[survivor].grpc)
    stub = pb_grpc.ClusterStub(channel)
    req = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="a", agent="echo")], idempotency_key="alone")
    answers: list[tuple[grpc.StatusCode, str]] = []

    def no_leader() -> bool:
        # Each try is bounded by its own 5 s deadline; without the fix every one of them ran out
        # (the command went to pysyncobj, to be forwarded to the dead leader).
        try:
            stub.SubmitRun(req, timeout=5)
        except grpc.RpcError as err:
            answers.append((err.code(), err.details() or ""))
            return err.code() == grpc.StatusCode.UNAVAILABLE and "knows no Raft leader" in answers[-1][1]
        raise AssertionError("a write committed without a majority")

    kv = pb_grpc.KvStub(channel)
    health = health_pb2_grpc.HealthStub(channel)

    def read_refused() -> bool:
        # A linearizable read needs the leader too: refused at once, not held to its deadline.
        try:
            kv.Get(pb.KvGetRequest(key="k"), timeout=5)
        except grpc.RpcError as err:
            return err.code() == grpc.StatusCode.UNAVAILABLE
        raise AssertionError("a linearizable read answered without a majority")

    def not_serving() -> bool:
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return resp.status == health_pb2.HealthCheckResponse.NOT_SERVING

    try:
        wait_until(no_leader, 30, "the survivor to answer that it knows no leader")
        wait_until(read_refused, 15, "the survivor to refuse a linearizable read with UNAVAILABLE")
        wait_until(not_serving, 15, "the survivor's health to say NOT_SERVING")
    finally:
        channel.close()
    assert c.status_of(survivor).leader == leader, "pysyncobj still names the dead leader"
