"""The ``planner`` built-in end to end: real node processes and the fake model as a real server."""

from __future__ import annotations

from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.testing import FakeLLM, plan_rules

pytestmark = pytest.mark.e2e

BAD = [{"id": "x", "agent": "echo", "deps": ["y"]}, {"id": "y", "agent": "echo", "deps": ["x"]}]
GOOD = {
    "tasks": [
        {"id": "one", "agent": "echo", "input": 1},
        {"id": "two", "agent": "sum", "input": {"value": 2}},
        {"id": "total", "agent": "sum", "input": {"value": 0}, "deps": ["one", "two", "seed"]},
    ]
}


def test_a_planner_run_spawns_its_repaired_plan_and_finishes(make_cluster: Any) -> None:
    with FakeLLM() as fake:
        rules = plan_rules(BAD, GOOD, goal_contains="add the numbers", fenced=True)
        rules[0]["usage"] = {"prompt_tokens": 50, "completion_tokens": 5}
        rules[1]["usage"] = {"prompt_tokens": 80, "completion_tokens": 20}
        fake.set_script(rules)
        cluster = make_cluster(3, env={"RAFTMESH_LLM_BASE_URL": fake.base_url, "RAFTMESH_LLM_MODEL": "fake"})
        c = cluster.client()
        dag = DAG("planned")
        seed = dag.task("seed", "echo", input=10)
        plan = dag.task("plan", "planner", input={"goal": "add the numbers"}, deps=[seed])
        dag.task("report", "echo", input="reported", deps=[plan])
        run = c.wait(c.submit(dag), timeout_s=120)
        assert run.status == "SUCCEEDED", run.error
        assert set(run.tasks) == {"seed", "plan", "report", "one", "two", "total"}
        p = run.tasks["plan"]
        assert p.output == {"goal": "add the numbers", "plan": ["one", "two", "total"], "repairs": 1}
        assert p.attempt == 1
        assert (p.usage.tokens_in, p.usage.tokens_out) == (130, 25)
        assert run.tasks["total"].output == 1 + 2 + 10
        # wait (the default): the planner's dependent ran after the plan's tasks
        assert run.tasks["report"].started_ms >= run.tasks["total"].finished_ms
        first, second = (r["body"]["messages"] for r in fake.requests())
        assert "cycle" in second[-1]["content"] and len(second) == len(first) + 2
