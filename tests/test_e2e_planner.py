"""The ``planner`` built-in end to end: real node processes and the fake model as a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.client._dag import _TASK_KEYS
from raftmesh.localcluster import wait_until
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


WORKFLOW_KEYS = {"map", "replicas", "approval"}
SHIP = {
    "tasks": [
        {"id": "regions", "agent": "echo", "input": ["north", "south", "west"]},
        {"id": "check", "agent": "echo", "input": {"ok": True}, "map": "regions", "deps": ["regions"]},
        {"id": "verdict", "agent": "echo", "input": "ship it", "replicas": 3, "fusion": "vote"},
        {
            "id": "deploy",
            "agent": "echo",
            "input": {"deployed": True},
            "deps": ["check", "verdict"],
            "approval": {"prompt": "Deploy the planned rollout?"},
        },
    ]
}


@pytest.mark.skipif(
    not WORKFLOW_KEYS <= _TASK_KEYS,
    reason="needs the map, replicas and approval keys of issue 9 (their branches merge on main)",
)
@pytest.mark.parametrize("kill_leader", [False, True], ids=["leader_kept", "leader_killed"])
def test_a_planned_map_vote_and_approval_from_the_cli_finish(make_cluster: Any, kill_leader: bool) -> None:
    """The issue's planner run: the plan maps over a list, votes among 3 replicas and waits for an
    approval given from the CLI; with the leader killed between the spawn and the approval."""
    with FakeLLM() as fake:
        fake.set_script(plan_rules([{"id": "deploy", "agent": "nope"}], SHIP, goal_contains="roll out"))
        cluster = make_cluster(3, env={"RAFTMESH_LLM_BASE_URL": fake.base_url, "RAFTMESH_LLM_MODEL": "fake"})
        c = cluster.client()
        dag = DAG("planned rollout")
        dag.task("plan", "planner", input={"goal": "roll out to every region once checked"})
        run_id = c.submit(dag)

        def gate_open() -> bool:
            t = c.get(run_id).tasks.get("deploy")
            return t is not None and t.status == "WAITING_APPROVAL"

        wait_until(gate_open, 120, "the planned deploy to wait for its approval")
        survivors = list(cluster.nodes)
        if kill_leader:
            leader = cluster.leader()
            assert leader is not None
            cluster.kill(leader)
            survivors.remove(leader)
            cluster.wait_ready(among=survivors)
        addresses = ",".join(cluster.nodes[n].grpc for n in survivors)
        env = {k: v for k, v in os.environ.items() if k != "RAFTMESH_ADDRESSES"}
        approve = subprocess.run(
            [sys.executable, "-m", "raftmesh.cli.main", "approve", run_id, "deploy", "--by", "ops", "--json"],
            env=env | {"RAFTMESH_ADDRESSES": addresses},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert approve.returncode == 0, approve.stderr
        assert json.loads(approve.stdout)["decision"] == "approved"
        run = cluster.client([cluster.nodes[n].grpc for n in survivors]).wait(run_id, timeout_s=120)
        assert run.status == "SUCCEEDED", run.error
        assert run.tasks["plan"].output["repairs"] == 1
        assert run.tasks["plan"].output["plan"] == ["regions", "check", "verdict", "deploy"]
        assert run.tasks["check"].output == [{"ok": True}] * 3
        assert run.tasks["verdict"].output["answer"] == "ship it"
        assert run.tasks["deploy"].output == {"deployed": True}
        # Spawned once: the plan's tasks and their map instances and replicas, none twice.
        planned = {"regions", "check", "verdict", "deploy"}
        children = {f"check[{i}]" for i in range(3)} | {f"verdict#{i}" for i in range(3)}
        assert set(run.tasks) == {"plan"} | planned | children
