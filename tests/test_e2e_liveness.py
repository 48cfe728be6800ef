"""End to end liveness: a paused node is marked down, its attempts move, and it rejoins fenced."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from raftmesh.consensus.commands import KvTxn, decode_batch
from raftmesh.consensus.machine import StateMachine
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

    c = make_cluster(3, extra_args=["--node-down-after", "2", "--log-level", "debug"])  # sees "started"
    leader = c.wait_ready()
    client = c.client([c.nodes[leader].grpc], retry_deadline_s=60)
    # One writer per node (placement spreads least-loaded first), so one runs on a follower:
    # pausing a follower keeps the leader, so the zombie's write is forwarded to it and committed
    # (rejected) rather than lost with a deposed leader's log. A leader places work only on
    # members it has heard from, so a run submitted right after the election may run wholly on
    # the leader: then submit another (each round writes keys of its own).
    rounds = 0

    def submit_round() -> str:
        nonlocal rounds
        rounds += 1
        dag = DAG(f"fenced-{rounds}")
        for i in range(3):
            dag.task(
                f"w{i}", "kv_put", input={"key": f"fenced/{rounds}/w{i}", "value": 42, "delay_seconds": 2.0}
            )
        return client.submit(dag)

    run_id = submit_round()

    def on_a_follower() -> tuple[str, str, int, int] | None:
        nonlocal run_id
        run = client.get(run_id)
        for t in run.tasks.values():
            if t.status == "RUNNING" and t.node and t.node != leader:
                return t.id, t.node, t.attempt, t.token
        if run.status != "RUNNING" and rounds < 10:
            run_id = submit_round()
        return None

    tid, zombie_node, zombie_attempt, zombie_token = wait_until(
        on_a_follower, 60, "a kv_put task to start on a follower"
    )
    attempt_line = f"attempt {zombie_attempt} of {run_id}/{tid} "

    def zombie_says(*hows: str) -> str | None:
        """The first line of the zombie node's log about this attempt that starts with one of ``hows``."""
        with open(c.nodes[zombie_node].log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    msg = json.loads(line).get("msg", "")
                except ValueError:
                    continue  # a line being written
                if msg.startswith(attempt_line) and msg[len(attempt_line) :].startswith(hows):
                    return str(msg[len(attempt_line) :])
        return None

    # The leader's state says RUNNING once the assignment commits on a majority; the follower
    # may not have applied it yet, and paused before that it never runs the attempt at all.
    wait_until(lambda: zombie_says("started"), 30, f"{zombie_node} to start {attempt_line}")
    c.pause(zombie_node)
    run = client.wait(run_id, timeout_s=60)
    assert run.status == "SUCCEEDED" and run.tasks[tid].node != zombie_node and run.tasks[tid].attempt >= 2
    c.resume(zombie_node)  # the zombie attempt wakes up and writes with its old token

    def zombie_write_outcome() -> str | None:
        """The result code the leader's log gave the zombie's fenced write, once it is there."""
        entries, _ = read_journal(c.nodes[leader].data_dir + "/raft.journal")
        machine = StateMachine()
        for _, _, payload in entries:
            results, _ = machine.apply_batch(payload)
            for cmd, res in zip(decode_batch(payload), results, strict=True):
                fence = getattr(cmd, "fence", None)
                if (
                    isinstance(cmd, KvTxn)
                    and fence is not None
                    and (fence.run_id, fence.task_id, fence.token) == (run_id, tid, zombie_token)
                ):
                    return str(res.code)
        return None

    # Which comes first on waking is a race (the sleep's timer or the news from the leader):
    # the attempt is stopped, or it runs on and its write is rejected (StaleToken, and then its
    # failure report is fenced too), or its write's outcome is unknown (the links are still
    # coming back) and its report is dropped once the node sees the task finished elsewhere.
    ended = wait_until(
        lambda: zombie_says("stopped", "succeeded", "failed"), 30, f"{attempt_line}to end on {zombie_node}"
    )
    assert not ended.startswith("succeeded"), f"the zombie attempt's write was accepted: {ended}"
    assert ended.startswith("stopped") or " rejected as fenced" in ended or " not delivered" in ended, ended
    if ended.startswith("failed: StaleToken"):  # its write was applied (rejected): the log has it
        outcome = wait_until(zombie_write_outcome, 30, "the zombie's write in the leader's journal")
        assert outcome == "ABORTED", f"the zombie attempt's write was not rejected: {outcome}"
    else:
        outcome = zombie_write_outcome()
        assert outcome in (None, "ABORTED"), f"the zombie attempt's write was not rejected: {outcome}"
    c.wait_converged(timeout_s=30)
    e = client.kv.get(f"fenced/{rounds}/{tid}")
    assert e is not None and e.version == 1, "the zombie attempt's write was accepted"
    assert e.value == {"value": 42, "attempt": run.tasks[tid].attempt, "node": run.tasks[tid].node}
