"""End to end liveness: a paused node is marked down, its attempts move, and it rejoins fenced."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from raftmesh.consensus.raft import read_journal
from raftmesh.localcluster import LocalCluster, wait_until

from .test_e2e_durability import audit_through, sleepers

pytestmark = pytest.mark.e2e


def test_paused_node_is_marked_down_and_rejoins_fenced(make_cluster: Callable[..., LocalCluster]) -> None:
    c = make_cluster(3, extra_args=["--node-down-after", "2"], slots=4)
    leader = c.wait_ready()
    victim = next(i for i in c.nodes if i != leader)
    client = c.client([c.nodes[leader].grpc], retry_deadline_s=60)
    run_id = client.submit(sleepers(9, 3.0, "pause"))

    def victim_busy() -> list[str]:
        return [t.id for t in client.get(run_id).tasks.values() if t.status == "RUNNING" and t.node == victim]

    on_victim = wait_until(victim_busy, 30, f"tasks running on {victim}")
    c.pause(victim)  # SIGSTOP: longer than the node-down timeout

    def marked_down() -> bool:
        return not next(m for m in c.status_of(leader).members if m.id == victim).up

    wait_until(marked_down, 30, f"{victim} to be marked down")
    run = client.wait(run_id, timeout_s=90)
    assert run.status == "SUCCEEDED", run.error
    for tid in on_victim:
        t = run.tasks[tid]
        assert t.node != victim and t.attempt >= 2, (tid, t)
    revision_before = c.status_of(leader).revision

    c.resume(victim)  # its old attempts finish locally and report with stale tokens

    def back_up() -> bool:
        return next(m for m in c.status_of(leader).members if m.id == victim).up

    wait_until(back_up, 30, f"{victim} to rejoin")
    c.wait_ready(timeout_s=30)  # the victim SERVING again: it has applied its re-registration
    converged = c.wait_converged_statuses(timeout_s=30)[leader]
    final = client.get(run_id)
    assert {t.id: (t.node, t.attempt) for t in final.tasks.values()} == {
        t.id: (t.node, t.attempt) for t in run.tasks.values()
    }, "a fenced attempt changed a finished run"
    assert converged.revision > revision_before  # the rejoin itself went through the log
    c.stop_node(leader)
    entries, _ = read_journal(c.nodes[leader].data_dir + "/raft.journal")
    audit = audit_through([p for _, _, p in entries], converged.revision, converged.digest)
    assert audit.duplicated == []
    assert all(audit.results[(run_id, t)] == 1 for t in run.tasks)


def test_zombie_attempt_kv_write_is_fenced(make_cluster: Callable[..., LocalCluster]) -> None:
    """A paused attempt is replaced; when it wakes, its fenced KV write is rejected."""
    from raftmesh import DAG

    c = make_cluster(3, extra_args=["--node-down-after", "2"])
    c.wait_ready()
    client = c.client(retry_deadline_s=60)
    dag = DAG("fenced")
    dag.task("w", "kv_put", input={"key": "fenced/result", "value": 42, "delay_seconds": 2.0})
    run_id = client.submit(dag)

    def running_on() -> str:
        t = client.get(run_id).tasks["w"]
        return t.node if t.status == "RUNNING" else ""

    first = wait_until(running_on, 30, "the kv_put task to start")
    c.pause(first)  # (if it is the leader, a new one is elected and requeues the task just the same)
    run = client.wait(run_id, timeout_s=60)
    assert run.status == "SUCCEEDED" and run.tasks["w"].node != first and run.tasks["w"].attempt >= 2
    c.resume(first)  # the zombie attempt wakes up and tries to write
    c.wait_ready(timeout_s=30)
    c.wait_converged(timeout_s=30)
    e = client.kv.get("fenced/result")
    assert e is not None and e.version == 1, "the zombie attempt's write was accepted"
    # Either the woken attempt was stopped (it learned it is fenced) or its write was rejected:
    # which comes first is a race; that only the successor's write exists is the guarantee.
    assert e.value == {"value": 42, "attempt": run.tasks["w"].attempt, "node": run.tasks["w"].node}
