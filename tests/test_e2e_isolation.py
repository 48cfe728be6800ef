"""End to end: misbehaving agents on a real node do not stall it, and cancellation reaches them.

n1 runs in this process with the agents of ``tests.isolation_agents`` (see
tests/isolation_cluster.py); n2 and n3 are node processes and one of them leads, so n1's
heartbeats cross the network to a leader that would mark n1 down if they stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.localcluster import wait_until
from raftmesh.node.liveness import SUSPECT_AFTER_S

from . import isolation_agents
from .isolation_cluster import MixedCluster, gaps, os_pid_alive, read_text, worker_children

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixedCluster]:
    c = MixedCluster(str(tmp_path_factory.mktemp("isolation"))).start()
    try:
        yield c
    finally:
        c.close()
        # A stopping node stops its workers (by pid) before it returns.
        wait_until(lambda: not worker_children(), 10.0, "n1's agent workers to be gone")


def one_task(name: str, agent: str, inp: Any = None, **kw: Any) -> DAG:
    dag = DAG(name)
    dag.task("t", agent, input=inp, **kw)
    return dag


def task_status(mixed: MixedCluster, run_id: str) -> str:
    assert mixed.client is not None
    return mixed.client.get(run_id).tasks["t"].status


def test_a_plain_def_agent_runs_in_a_thread_and_succeeds(mixed: MixedCluster) -> None:
    assert mixed.client is not None
    run = mixed.client.run(one_task("plain", "plain_def", {"seconds": 0.05}), timeout_s=60)
    assert run.status == "SUCCEEDED", run.error
    assert run.tasks["t"].output == {"seconds": 0.05} and run.tasks["t"].attempt == 1


def test_busy_and_blocking_agents_do_not_delay_heartbeats_or_other_tasks(mixed: MixedCluster) -> None:
    """A thread spinning in Python, a process spinning and a thread blocked in a call, all at
    once: n1's heartbeats keep coming (no gap the leader would act on), n1 stays SERVING and up
    in the leader's view, and tasks on n1 keep completing meanwhile."""
    c = mixed.client
    assert c is not None
    member_before = mixed.n1_member()
    seconds = 4.0
    dag = DAG("bad-neighbours")
    dag.task("spin_thread", "spin_thread", input={"seconds": seconds})
    dag.task("spin_process", "spin_process", input={"seconds": seconds})
    dag.task("block_thread", "block_thread", input={"seconds": seconds})
    bad = c.submit(dag)
    wait_until(
        lambda: all(t.status == "RUNNING" for t in c.get(bad).tasks.values()), 30, "the bad agents to run"
    )
    acks_from = len(mixed.ack_times())
    echoes = 0
    deadline = time.monotonic() + 120
    while c.get(bad).status == "RUNNING":
        assert time.monotonic() < deadline, "the bad agents never finished"
        assert mixed.local.serving("n1"), "n1 stopped serving while agents misbehaved"
        assert {m.id: m.up for m in c.status().members}["n1"]
        run = c.run(one_task(f"echo-{echoes}", "echo_here", {"i": echoes}), timeout_s=30)
        assert run.status == "SUCCEEDED" and run.tasks["t"].node == "n1"
        if any(t.status == "RUNNING" for t in c.get(bad).tasks.values()):
            echoes += 1  # it completed while a bad agent was still running
    assert c.get(bad).status == "SUCCEEDED"
    assert echoes >= 2, "no echo ran while the bad agents were running"
    times = mixed.ack_times()[acks_from:]
    assert len(times) >= int(seconds / 0.5) - 2
    worst = max(gaps(times))
    assert worst < SUSPECT_AFTER_S, (
        f"a heartbeat gap of {worst:.2f} s: the leader would stop placing work on n1"
    )
    after = mixed.n1_member()
    assert after.up and (after.incarnation, after.registered_ms) == (
        member_before.incarnation,
        member_before.registered_ms,
    ), "n1 was marked down and registered again"


def test_a_segfault_fails_only_its_attempts_and_the_node_carries_on(mixed: MixedCluster) -> None:
    c = mixed.client
    assert c is not None
    member_before = mixed.n1_member()
    acks_from = len(mixed.ack_times())
    run = c.run(one_task("segv", "segfault", retries=1), timeout_s=60)
    assert run.status == "FAILED"
    t = run.tasks["t"]
    assert t.attempt == 2, "a crash is retryable: the retry ran"
    assert t.error == "worker exited with signal SIGSEGV"
    again = c.run(one_task("after-segv", "kv_usage_process", {"key": "after-segv"}), timeout_s=60)
    assert again.status == "SUCCEEDED", again.error
    assert again.tasks["t"].output["read"] == {"from": "worker", "attempt": 1}
    entry = c.kv.get("after-segv")
    assert entry is not None and entry.value == {"from": "worker", "attempt": 1}
    assert mixed.local.serving("n1")
    assert mixed.n1_member().registered_ms == member_before.registered_ms
    wait_until(lambda: len(mixed.ack_times()) >= acks_from + 3, 10.0, "more heartbeats")
    assert max(gaps(mixed.ack_times()[acks_from:])) < SUSPECT_AFTER_S


def _wait_running(mixed: MixedCluster, run_id: str) -> None:
    wait_until(lambda: task_status(mixed, run_id) == "RUNNING", 30, f"{run_id} to run")


def test_cancelling_a_run_stops_a_thread_attempt_and_its_late_write_is_fenced(
    mixed: MixedCluster, tmp_path: Any
) -> None:
    c = mixed.client
    assert c is not None
    marker = os.path.join(str(tmp_path), "zombie")
    run_id = c.submit(one_task("zombie", "zombie_put_thread", {"key": "zombie-key", "marker": marker}))
    _wait_running(mixed, run_id)
    # RUNNING is committed before n1's host starts the attempt: wait for its thread.
    wait_until(lambda: mixed.on_loop(lambda: mixed.runtime.host.threads.busy) >= 1, 30, "the agent's thread")
    c.cancel(run_id, reason="test")
    # The agent waits on ctx.cancelled, then writes: the write must be rejected as fenced.
    wait_until(lambda: read_text(marker), 5.0, "the thread agent to see ctx.cancelled and try its write")
    assert read_text(marker).startswith("StaleToken: fenced")
    assert c.kv.get("zombie-key") is None
    assert c.get(run_id).status == "CANCELLED"


def test_cancelling_a_run_kills_a_process_attempt(mixed: MixedCluster, tmp_path: Any) -> None:
    c = mixed.client
    assert c is not None
    pid_file = os.path.join(str(tmp_path), "pid")
    run_id = c.submit(one_task("kill-me", "wait_process", {"pid_file": pid_file}))
    wait_until(lambda: read_text(pid_file), 30, "the worker to start the attempt")
    pid = int(read_text(pid_file))
    assert os_pid_alive(pid)
    c.cancel(run_id)
    wait_until(lambda: not os_pid_alive(pid), 5.0, f"worker {pid} to be killed")
    assert pid not in mixed.on_loop(lambda: mixed.runtime.host.processes.pids)


def test_a_task_timeout_kills_a_process_attempt_and_fails_it(mixed: MixedCluster, tmp_path: Any) -> None:
    c = mixed.client
    assert c is not None
    pid_file = os.path.join(str(tmp_path), "pid")
    # A worker that is up already: the test before killed one, and starting a new interpreter on
    # a loaded machine can take longer than the timeout, which would then expire before the
    # attempt ever ran (and so before the pid file this test waits for is written).
    warm = c.run(one_task("warm", "kv_usage_process", {"key": "warm-before-timeout"}), timeout_s=60)
    assert warm.status == "SUCCEEDED", warm.error
    run_id = c.submit(one_task("slow", "wait_process", {"pid_file": pid_file}, timeout_ms=3000))
    wait_until(lambda: read_text(pid_file), 30, "the worker to start the attempt")
    pid = int(read_text(pid_file))
    wait_until(lambda: c.get(run_id).status == "FAILED", 30, "the attempt to time out")
    assert c.get(run_id).tasks["t"].error == "attempt 1 timed out after 3000 ms"
    wait_until(lambda: not os_pid_alive(pid), 5.0, f"worker {pid} to be killed")


def test_a_task_timeout_sets_ctx_cancelled_for_a_thread_attempt(mixed: MixedCluster) -> None:
    c = mixed.client
    assert c is not None
    run = c.run(one_task("spin-timeout", "spin_thread", {"seconds": 120}, timeout_ms=1000), timeout_s=60)
    assert run.status == "FAILED" and run.tasks["t"].error == "attempt 1 timed out after 1000 ms"
    # The spinning function polls ctx.cancelled: its pool thread is free again.
    wait_until(
        lambda: mixed.on_loop(lambda: mixed.runtime.host.threads.busy) == 0, 5.0, "the thread to return"
    )


def test_process_agents_in_node_processes_loaded_with_agents_module(make_cluster: Any) -> None:
    """Real node processes (``--agents-module``): a process agent's worker loads the module the
    node loaded, sets a class agent up once per worker with the node's AgentNode, proxies
    ctx.kv to its node, and a segfault fails only its attempt."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cluster = make_cluster(3, agents_modules=[isolation_agents.SOURCE], env={"PYTHONPATH": repo}, slots=4)
    c = cluster.client()
    counts = [c.run(one_task(f"count-{i}", "counter_process"), timeout_s=60) for i in range(3)]
    assert all(r.status == "SUCCEEDED" for r in counts), [r.error for r in counts]
    for r in counts:
        out = r.tasks["t"].output
        assert out["setups"] == 1 and out["data_dir"].endswith(os.path.join("agents", "counter_process"))
    segv = c.run(one_task("segv", "segfault"), timeout_s=60)
    assert segv.status == "FAILED" and segv.tasks["t"].error == "worker exited with signal SIGSEGV"
    kv = c.run(one_task("kv", "kv_usage_process", {"key": "from-node-process"}), timeout_s=60)
    assert kv.status == "SUCCEEDED", kv.error
    entry = c.kv.get("from-node-process")
    assert entry is not None and entry.value == {"from": "worker", "attempt": 1}
    assert all(cluster.serving(n) for n in cluster.nodes)
