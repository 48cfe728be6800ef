"""Sagas and budgets at the surface: the SDK builder and spec files, and the gRPC boundary
(one in-process node, real gRPC on 127.0.0.1)."""

from __future__ import annotations

import math
import pathlib

import grpc
import pytest

from raftmesh import DAG
from raftmesh.errors import InvalidArgument
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from tests.test_node_inprocess import InProcessNode, node  # noqa: F401  (the fixture)


def test_spec_file_budget_and_compensate(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "saga.yaml"
    path.write_text(
        "budget: {max_cost: 2, max_tasks: 5}\n"
        "tasks:\n"
        "  - {id: a, agent: echo, compensate: {agent: undo, input: {k: 1}}}\n"
        "  - {id: b, agent: echo, deps: [a], compensate: {agent: undo}}\n"
    )
    dag = DAG.from_file(str(path))
    assert dag.budget == {"max_cost": 2.0, "max_tasks": 5}
    assert dag.tasks["a"].compensate == {"agent": "undo", "input": {"k": 1}}
    assert dag.tasks["b"].compensate == {"agent": "undo", "input": None}
    again = DAG.from_dict(dag.to_dict())
    assert again.budget == dag.budget and again.tasks == dag.tasks


@pytest.mark.parametrize(
    ("data", "fix"),
    [
        ({"budget": [1], "tasks": []}, "budget must be a map"),
        ({"budget": {"max_dollars": 1}, "tasks": []}, "unknown key(s) ['max_dollars']"),
        ({"budget": {"max_cost": True}, "tasks": []}, "max_cost must be a number"),
        ({"budget": {"max_tokens": 1.5}, "tasks": []}, "max_tokens must be a whole number"),
        ({"budget": {"max_seconds": -1}, "tasks": []}, "max_seconds must be >= 0"),
        ({"tasks": [{"id": "a", "agent": "echo", "compensate": "undo"}]}, "compensate must be a map"),
        ({"tasks": [{"id": "a", "agent": "echo", "compensate": {"input": 1}}]}, "compensate must be a map"),
        (
            {"tasks": [{"id": "a", "agent": "echo", "compensate": {"agent": "u", "x": 1}}]},
            "compensate must be",
        ),
    ],
)
def test_spec_mistakes_say_what_to_fix(data: dict[str, object], fix: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        DAG.from_dict(data)
    assert fix in str(err.value)


def test_sagas_and_budgets_over_grpc(node: InProcessNode) -> None:  # noqa: F811
    c = node.client
    dag = DAG("saga")
    a = dag.task("a", "sum", input={"value": 1}, compensate={"agent": "echo", "input": {"undo": 1}})
    dag.task("b", "fail", input={"times": 9}, deps=[a])
    run = c.run(dag, timeout_s=30)
    assert run.status == "COMPENSATED" and run.reason == "TASK_FAILED"
    [step] = run.compensations
    assert (step.task_id, step.compensation_id, step.agent, step.status) == (
        "a",
        "a~compensate",
        "echo",
        "SUCCEEDED",
    )
    # echo returns its input: what a compensating agent receives
    assert step.output == {"task": "a", "input": {"value": 1}, "compensate": {"undo": 1}}
    assert run.tasks["a~compensate"].deps == ("a",)
    assert [r["reason"] for r in c.list_runs()] == ["TASK_FAILED"]

    with pytest.raises(InvalidArgument, match=r"unknown agent type\(s\) 'nobody'"):
        bad = DAG()
        bad.task("a", "echo", compensate={"agent": "nobody"})
        c.submit(bad)
    tiny = DAG()
    tiny.task("a", "echo")
    tiny.task("b", "echo")
    with pytest.raises(InvalidArgument, match="max_tasks is 1 but the run has 2 tasks"):
        c.submit(tiny, budget={"max_tasks": 1})
    run = c.run(tiny, budget={"max_tasks": 2, "max_seconds": 30}, timeout_s=30)
    assert run.status == "SUCCEEDED" and run.budget == {
        "max_tasks": 2,
        "max_seconds": 30.0,
        "max_cost": 0.0,
        "max_tokens": 0,
    }
    assert run.budget_deadline_ms == run.created_ms + 30_000
    assert run.to_json()["budget"]["used"]["tasks"] == 2
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.ClusterStub(ch)
        for budget, fix in [
            (pb.Budget(max_cost=math.nan), "max_cost must be a finite number"),
            (pb.Budget(max_seconds=math.inf), "max_seconds must be a finite number"),
            (pb.Budget(max_tasks=2**64 - 1), "max_tasks must be"),
        ]:
            req = pb.SubmitRunRequest(tasks=[pb.TaskSpec(id="a", agent="echo")], budget=budget)
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitRun(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fix in (err.value.details() or "")
        bad_input = pb.TaskSpec(
            id="a", agent="echo", compensate=pb.Compensation(agent="echo", input_json="{")
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitRun(pb.SubmitRunRequest(tasks=[bad_input]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "compensate.input_json is not valid JSON" in (err.value.details() or "")
