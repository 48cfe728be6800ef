"""``ctx.spawn`` end to end: real node processes, agents that spawn sub-DAGs in every isolation mode."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.localcluster import wait_until
from tests import spawn_agents
from tests.test_cli import cli

pytestmark = pytest.mark.e2e


def planned(agent: str, items: list[int], wait: bool = True) -> DAG:
    dag = DAG(agent)
    plan = dag.task("plan", agent, input={"items": items, "wait": wait})
    dag.task("report", "upstream", deps=[plan])
    return dag


def test_agents_spawn_sub_dags_in_async_thread_and_process_mode(make_cluster: Any) -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cluster = make_cluster(3, agents_modules=[spawn_agents.SOURCE], env={"PYTHONPATH": repo})
    c = cluster.client()
    runs = {
        agent: c.submit(planned(agent, [1, 2, 3])) for agent in ("plan_async", "plan_thread", "plan_process")
    }
    no_wait = c.submit(planned("plan_async", [4], wait=False))
    bad = c.submit(planned("bad_spawn", []))
    slow_dag = DAG("slow")
    slow_dag.task("report", "upstream", deps=[slow_dag.task("plan", "plan_slow", input={"seconds": 3})])
    slow = c.submit(slow_dag)
    # While what it spawned runs, the spawner waits (its output already there) and so does its dependent.
    waiting = wait_until(
        lambda: (r := c.get(slow)).tasks.get("nap") is not None and r.tasks["nap"].status == "RUNNING" and r,
        60,
        "the spawned nap to run",
    )
    assert waiting.tasks["plan"].status == "WAITING_CHILDREN", waiting.tasks["plan"]
    assert waiting.tasks["plan"].output == {"spawned": ["nap"]}
    assert waiting.tasks["report"].status == "PENDING"
    for agent, run_id in runs.items():
        run = c.wait(run_id, timeout_s=120)
        assert run.status == "SUCCEEDED", (agent, run.error)
        assert set(run.tasks) == {"plan", "report", "sq-1", "sq-2", "sq-3", "total"}, agent
        plan, total, report = run.tasks["plan"], run.tasks["total"], run.tasks["report"]
        assert plan.output["spawned"] == ["sq-1", "sq-2", "sq-3", "total"], agent
        assert total.output == 1 + 4 + 9 + 3  # the squares and the planner's own output
        # wait=True: the planner's dependent ran after what it spawned, reading the planner's output.
        assert report.output == {"plan": plan.output}
        assert report.started_ms >= total.finished_ms >= plan.finished_ms, agent
    got = cli("get", runs["plan_async"], "--json", addresses=",".join(cluster.addresses))
    assert got.returncode == 0, got.stderr
    shown = json.loads(got.stdout)
    assert shown["tasks"]["total"]["status"] == "SUCCEEDED" and shown["tasks"]["total"]["output"] == 17
    assert shown["spawned_bytes"] > 0
    assert c.wait(slow, timeout_s=120).status == "SUCCEEDED"
    run = c.wait(no_wait, timeout_s=120)
    assert run.status == "SUCCEEDED", run.error
    assert run.tasks["total"].output == 16 + 1
    assert run.tasks["plan"].finished_ms <= run.tasks["sq-4"].started_ms
    run = c.wait(bad, timeout_s=120)
    assert run.status == "FAILED"
    assert "ghost" not in run.tasks and run.tasks["report"].status == "CANCELLED"
    err = run.tasks["plan"].error
    assert err.startswith("spawn refused: unknown agent type(s) 'no_such_agent'"), err
    assert run.tasks["plan"].attempt == 1  # not retried: the same fragment would be refused again
