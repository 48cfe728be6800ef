"""End to end durability: kill -9 and restart, whole-cluster crash, catch-up from a snapshot."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from raftmesh import DAG
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.verify.audit import Audit

pytestmark = pytest.mark.e2e


def sleepers(n: int, seconds: float, name: str = "sleepers") -> DAG:
    dag = DAG(name)
    for i in range(n):
        dag.task(f"s{i}", "sleep", input={"seconds": seconds})
    dag.task("join", "sum", input={"value": 1}, deps=[f"s{i}" for i in range(n)])
    return dag


@pytest.fixture
def cluster_small_snapshots(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    # Snapshot every 50 log entries, so restarts and catch-up go through LMDB snapshot files.
    return make_cluster(3, extra_args=["--snapshot-entries", "50", "--node-down-after", "3"])


def test_follower_kill_and_restart_rebuilds_the_same_state(cluster_small_snapshots: LocalCluster) -> None:
    c = cluster_small_snapshots
    leader = c.wait_ready()
    victim = next(i for i in c.nodes if i != leader)
    client = c.client(retry_deadline_s=60)
    run_id = client.submit(sleepers(8, 1.0))
    wait_until(
        lambda: any(t.status == "RUNNING" for t in client.get(run_id).tasks.values()), 30, "tasks to start"
    )
    c.kill(victim)
    # more work while it is down, enough to take snapshots on the survivors
    for i in range(5):
        client.run(_chain(20, f"while-down-{i}"), timeout_s=60)
    c.start_node(victim)
    c.wait_ready(timeout_s=60)
    assert client.wait(run_id, timeout_s=90).status == "SUCCEEDED"
    c.wait_converged(timeout_s=60)
    assert os.path.exists(os.path.join(c.nodes[victim].data_dir, "snapshot.lmdb"))
    # it restarted from its own LMDB snapshot plus the journal after it
    assert c.status_of(victim).snapshots_loaded >= 1


def test_whole_cluster_crash_resumes_unfinished_runs(make_cluster: Callable[..., LocalCluster]) -> None:
    c = make_cluster(3, extra_args=["--node-down-after", "3"])
    client = c.client(retry_deadline_s=120)
    run_id = client.submit(sleepers(10, 2.0, "crash"))
    other = client.submit(_chain(5, "queued"))
    wait_until(
        lambda: any(t.status == "RUNNING" for t in client.get(run_id).tasks.values()),
        30,
        "tasks to start",
    )
    before = client.get(run_id)
    for i in c.nodes:  # all at once
        c.kill(i)
    for i in c.nodes:
        c.start_node(i)
    c.wait_ready(timeout_s=60)
    after_restart = client.get(run_id)
    assert after_restart.status == "RUNNING"
    assert set(after_restart.tasks) == set(before.tasks)
    done = client.wait(run_id, timeout_s=120)
    assert done.status == "SUCCEEDED", done.error
    assert client.wait(other, timeout_s=60).status == "SUCCEEDED"
    c.wait_converged(timeout_s=60)


def test_wiped_node_catches_up_from_a_snapshot(cluster_small_snapshots: LocalCluster) -> None:
    c = cluster_small_snapshots
    leader = c.wait_ready()
    victim = next(i for i in c.nodes if i != leader)
    client = c.client(retry_deadline_s=60)
    for i in range(4):
        client.run(_chain(25, f"before-{i}"), timeout_s=60)
    c.stop_node(victim)
    c.wipe(victim)
    for i in range(4):
        client.run(_chain(25, f"after-{i}"), timeout_s=60)
    # the leader's log no longer starts at 1: the wiped node can only catch up from a snapshot
    lst = c.status_of(leader)
    assert lst.log_entries < lst.commit_index, "no snapshot was taken on the leader"
    c.start_node(victim)
    c.wait_ready(timeout_s=60)  # the victim SERVING: its new incarnation's registration is applied
    # Converged means the victim's digest equals the others' in one poll; a later read of it
    # could be a revision further on (a tick, a registration), equal everywhere again.
    converged = c.wait_converged_statuses(timeout_s=60)
    assert victim in converged
    assert os.path.exists(os.path.join(c.nodes[victim].data_dir, "snapshot.lmdb"))
    assert converged[victim].snapshots_loaded >= 1, "the wiped node caught up without a snapshot install"
    # and it is a full member again: it answers linearizable reads of runs it never saw in its log
    with c.client([c.nodes[victim].grpc]) as only_victim:
        assert len(only_victim.list_runs(limit=1000)) >= 8


def audit_through(payloads: list[bytes], revision: int, digest: str) -> Audit:
    """Audit a stopped node's journal, asserting that its replay passes through the converged
    state (``revision``, ``digest``). Not "ends at": entries may commit after convergence
    (a tick, a node marked down), so the journal may go on past that state."""
    audit = Audit()
    seen = audit.machine.state.revision == revision and audit.machine.digest() == digest
    for p in payloads:
        audit.feed(p)
        if not seen and audit.machine.state.revision == revision:
            seen = audit.machine.digest() == digest
    assert seen, f"the journal's replay never reached the converged state at revision {revision}"
    return audit


def _chain(n: int, name: str) -> DAG:
    dag = DAG(name)
    prev = None
    for i in range(n):
        prev = dag.task(f"t{i}", "sum", input={"value": i}, deps=[prev] if prev else [])
    return dag
