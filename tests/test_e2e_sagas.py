"""End to end (real 3-node cluster): a saga's compensations run once each, in reverse order;
budgets stop a run by cost (through the CLI's spec file) and by time (through the tick)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest

from raftmesh import DAG
from raftmesh.localcluster import LocalCluster

from . import saga_agents
from .test_cli import cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def saga_cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster(3, agents_modules=(saga_agents.SOURCE,))


def test_a_saga_whose_third_step_fails_compensates_its_two_steps_once(saga_cluster: LocalCluster) -> None:
    dag = DAG("trip")
    undo = {"agent": "undo", "input": {"cancel": True}}
    flight = dag.task("flight", "sum", input={"value": 1}, compensate=undo)
    hotel = dag.task("hotel", "sum", input={"value": 2}, deps=[flight], compensate=undo)
    dag.task("car", "fail", input={"times": 99}, deps=[hotel])
    client = saga_cluster.client()
    run = client.run(dag, timeout_s=90)
    assert run.status == "COMPENSATED", run
    assert run.reason == "TASK_FAILED" and "task 'car' failed" in run.error
    steps = {s.task_id: s for s in run.compensations}
    assert set(steps) == {"flight", "hotel"}
    assert all(s.status == "SUCCEEDED" and s.attempt == 1 for s in steps.values())
    assert steps["flight"].after == ("hotel~compensate",) and steps["hotel"].after == ()
    # Each compensation ran once: one fenced write per attempt, and only attempt 1 wrote.
    entries = client.kv.list(f"saga/{run.run_id}/")
    assert sorted(e.key for e in entries) == [f"saga/{run.run_id}/flight/1", f"saga/{run.run_id}/hotel/1"]
    by_task = {e.key.split("/")[2]: e for e in entries}
    # Reverse order: the hotel (booked last) was undone first.
    assert by_task["hotel"].mod_revision < by_task["flight"].mod_revision
    # The compensating agent saw the compensated task's input and output.
    assert by_task["hotel"].value["input"] == {
        "task": "hotel",
        "input": {"value": 2},
        "compensate": {"cancel": True},
    }
    assert by_task["hotel"].value["output"] == 3
    as_json = run.to_json()
    assert [c["compensation_id"] for c in as_json["compensations"]] == [
        "hotel~compensate",
        "flight~compensate",
    ]
    assert as_json["tasks"]["flight"]["compensate"] == undo
    saga_cluster.wait_converged()


def test_a_budget_stops_a_run(saga_cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "costly.yaml"
    spec.write_text(
        "name: costly\n"
        "budget: {max_cost: 1.0}\n"
        "tasks:\n"
        "  - {id: a, agent: sum, input: {value: 1, usage: {cost: 0.6}}}\n"
        "  - {id: b, agent: sum, input: {value: 2, usage: {cost: 0.6}}, deps: [a]}\n"
        "  - {id: c, agent: sum, input: {value: 3}, deps: [b]}\n"
    )
    addrs = ",".join(saga_cluster.addresses)
    res = cli("submit", str(spec), "--wait", "--wait-timeout", "60", "--json", addresses=addrs)
    assert res.returncode == 1, res.stderr  # the run did not succeed
    out = json.loads(res.stdout)
    assert out["status"] == "FAILED" and out["reason"] == "BUDGET_EXCEEDED"
    assert out["error"] == "BUDGET_EXCEEDED: cost 1.20 reached max_cost 1.00"
    assert {k: t["status"] for k, t in out["tasks"].items()} == {
        "a": "SUCCEEDED",
        "b": "SUCCEEDED",
        "c": "CANCELLED",
    }
    assert out["tasks"]["c"]["attempt"] == 0  # nothing more started
    budget = out["budget"]
    assert budget["max_cost"] == 1.0 and budget["used"]["cost"] == pytest.approx(1.2)
    assert budget["used"]["tasks"] == 3 and budget["used"]["seconds"] is not None
    got = cli("get", out["run_id"], "--json", addresses=addrs)
    assert got.returncode == 0 and json.loads(got.stdout)["budget"] == budget

    # A flag replaces the file's figure: a smaller max_cost stops it after a.
    res = cli("submit", str(spec), "--max-cost", "0.5", "--wait", "--json", addresses=addrs)
    out = json.loads(res.stdout)
    assert out["error"] == "BUDGET_EXCEEDED: cost 0.60 reached max_cost 0.50", out
    assert out["tasks"]["b"]["status"] == "CANCELLED"
    bad = cli("submit", str(spec), "--max-cost", "-1", addresses=addrs)
    assert bad.returncode == 2 and "max_cost must be >= 0" in bad.stderr

    # max_seconds: the leader's tick ends the run and cancels its running attempt.
    client = saga_cluster.client()
    dag = DAG("slow")
    dag.task("nap", "sleep", input={"seconds": 60})
    run = client.run(dag, budget={"max_seconds": 1.5}, timeout_s=60)
    assert run.status == "FAILED" and run.reason == "BUDGET_EXCEEDED"
    assert run.error.startswith("BUDGET_EXCEEDED: ran ") and "reached max_seconds 1.5" in run.error
    assert run.tasks["nap"].status == "CANCELLED" and run.tasks["nap"].attempt == 1
    saga_cluster.wait_converged()
