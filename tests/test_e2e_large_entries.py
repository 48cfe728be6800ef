"""End to end: large log entries replicate (a real 3-node cluster, real pysyncobj, real gRPC).

pysyncobj 0.3.17 could not send an entry larger than its batch size when its pickle was longer
than the raw command (bytes >= 0x80: non-ASCII text): followers failed to unpickle it, the
leader lost its term over and over and nothing committed (a 7.7 MB SubmitRun wedged the
cluster until its leader was killed). raftmesh streams such entries itself
(``consensus/raft/replication.py``); these tests use inputs at our limits.
"""

from __future__ import annotations

import glob
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.consensus import limits
from raftmesh.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster3(module_cluster3: LocalCluster) -> LocalCluster:
    """The module's shared cluster: no test here stops a node."""
    return module_cluster3


def cjk_text(rng: random.Random, chars: int) -> str:
    """Non-ASCII text (3 bytes a character in UTF-8), random so that it compresses poorly."""
    return "".join(chr(rng.randrange(0x4E00, 0x9FA0)) for _ in range(chars))


def tick_failures(cluster: LocalCluster) -> int:
    """pysyncobj logs 'failed _onTick' for every exception in its tick thread (the EOFError seen)."""
    n = 0
    for path in glob.glob(f"{cluster.base_dir}/*/node.log"):
        with open(path, encoding="utf-8", errors="replace") as f:
            n += f.read().count("failed _onTick")
    return n


def run_status(client: Any, run_id: str) -> str | None:
    # GetRun would answer with every input and output (> 16 MiB here); the summary suffices.
    for r in client.list_runs(limit=1000):
        if r["run_id"] == run_id:
            return str(r["status"])
    return None


def test_a_run_of_the_largest_non_ascii_inputs_commits_through_leader_and_follower(
    cluster3: LocalCluster,
) -> None:
    leader = cluster3.wait_ready()
    follower = next(n for n in cluster3.nodes if n != leader)
    term = cluster3.status_of(leader).term
    rng = random.Random(13)
    chars = (limits.MAX_TASK_INPUT_BYTES - 4096) // 3  # ~252 KiB encoded per input, just under the limit
    for node in (leader, follower):
        dag = DAG(f"large-via-{node}")
        for i in range(limits.MAX_RUN_SPEC_BYTES // limits.MAX_TASK_INPUT_BYTES - 1):  # 31 inputs: ~7.8 MB
            dag.task(f"t{i}", "echo", input={"text": cjk_text(rng, chars)})
        client = cluster3.client([cluster3.nodes[node].grpc], timeout_s=60, retry_deadline_s=60)
        run_id = client.submit(dag)  # before the fix it never committed (the client's 60 s deadline)
        wait_until(
            lambda c=client, r=run_id: run_status(c, r) == "SUCCEEDED", 120, f"the run via {node} to succeed"
        )
    cluster3.wait_converged(timeout_s=60)
    assert tick_failures(cluster3) == 0
    assert cluster3.status_of(leader).term <= term + 1, "the leader kept losing its term"


def test_large_non_ascii_kv_values_and_a_large_transaction_replicate(cluster3: LocalCluster) -> None:
    cluster3.wait_ready()
    rng = random.Random(7)
    chars = (limits.MAX_KV_VALUE_BYTES - 1024) // 3
    values = {f"big/{i}": cjk_text(rng, chars) for i in range(12)}
    clients = [cluster3.client([n.grpc], timeout_s=60, retry_deadline_s=60) for n in cluster3.nodes.values()]
    with ThreadPoolExecutor(len(values)) as pool:  # concurrent puts batch into one ~3 MB entry
        list(pool.map(lambda kv: clients[hash(kv[0]) % 3].kv.put(kv[0], kv[1]), values.items()))
    txn = {f"txn/{i}": cjk_text(rng, chars) for i in range(30)}  # one ~7.5 MB command
    result = clients[1].kv.txn([], [("put", k, v) for k, v in txn.items()])
    assert result.succeeded
    for key, value in {**values, **txn}.items():
        entry = clients[2].kv.get(key)
        assert entry is not None and entry.value == value, key
    cluster3.wait_converged(timeout_s=60)
    assert tick_failures(cluster3) == 0


def test_400_concurrent_small_submits_commit(cluster3: LocalCluster) -> None:
    """Proposals batch into entries larger than pysyncobj's 64 KiB batch: the other way it broke."""
    leader = cluster3.wait_ready()
    term = cluster3.status_of(leader).term
    rng = random.Random(400)
    clients = [cluster3.client([n.grpc], timeout_s=60, retry_deadline_s=60) for n in cluster3.nodes.values()]

    def submit(i: int) -> str:
        dag = DAG(f"small-{i}")
        dag.task("a", "echo", input={"text": cjk_text(rng, 200)})
        dag.task("b", "echo", input={"n": i}, deps=["a"])
        return clients[i % 3].submit(dag, idempotency_key=f"small-{i}")

    with ThreadPoolExecutor(100) as pool:
        run_ids = list(pool.map(submit, range(400)))
    assert len(set(run_ids)) == 400

    def all_succeeded() -> bool:
        done = {r["run_id"] for r in clients[0].list_runs(limit=1000, status="SUCCEEDED")}
        return set(run_ids) <= done

    wait_until(all_succeeded, 180, "400 runs to succeed", interval_s=0.5)
    cluster3.wait_converged(timeout_s=60)
    assert tick_failures(cluster3) == 0
    assert cluster3.status_of(leader).term <= term + 1, "the leader kept losing its term"
