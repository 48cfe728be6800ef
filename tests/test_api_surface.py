"""The SDK builder, the spec loader, ``ctx.spawn`` and the CLI agree on what a task may carry:
an out-of-range or wrong-typed key is InvalidArgument (CLI exit 2) at the call, never a bare
protobuf ValueError later, and no key is silently dropped or coerced."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.agents import AgentHost, AgentRegistry, SpawnError, TaskContext
from raftmesh.agents._spawn import Spawns, task_specs
from raftmesh.cli.main import main
from raftmesh.client import Task
from raftmesh.client._client import task_pb
from raftmesh.clock import ManualClock
from raftmesh.consensus import StateMachine, SubmitRun, TaskStatus
from raftmesh.consensus.commands import AgentOffer, Assign, Assignment, RegisterNode, TaskSpec
from raftmesh.errors import InvalidArgument
from tests.test_node_units import MachineWriter, reads_of

OUT_OF_RANGE: list[tuple[dict[str, Any], str]] = [
    ({"replicas": -1, "fusion": "vote"}, "replicas must be between 0 and"),
    ({"max_parallel": 2**40}, "max_parallel must be between 0 and"),
    ({"quorum": -1}, "quorum must be between 0 and"),
    ({"retries": -1}, "retries must be between 0 and"),
    ({"priority": 2**31}, "priority must be between"),
    ({"timeout_ms": 2**64}, "timeout_ms must be between 0 and"),
    ({"approval": {"timeout_ms": 2**64}}, "approval timeout_ms must be an integer"),
    ({"retry_backoff_ms": -1}, "retry_backoff_ms must be between 0 and"),
]
WRONG_TYPE: list[tuple[dict[str, Any], str]] = [
    ({"replicas": "3"}, "replicas must be a whole number"),
    ({"agents": [1]}, "agents must be a list of agent types"),
    ({"judge": 5}, "judge must be a string"),
    ({"weights": ["a"]}, "weights must be a list of numbers"),
    ({"max_parallel": 2.7}, "max_parallel must be a whole number"),
    ({"map": ["a"]}, "map must be the id of an upstream task"),
    ({"map": False}, "map must be the id of an upstream task"),
    ({"trigger": {"x": 1}}, "trigger must be a string"),
    ({"retries": 1.5}, "retries must be a whole number"),
    ({"deps": [True]}, "deps must be a list"),
]


@pytest.mark.parametrize(("keys", "message"), OUT_OF_RANGE + WRONG_TYPE)
def test_the_builder_refuses_a_key_that_does_not_fit(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        DAG().task("a", "echo", **keys)


@pytest.mark.parametrize(("keys", "message"), OUT_OF_RANGE + WRONG_TYPE)
def test_the_spec_loader_refuses_a_key_that_does_not_fit(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        DAG.from_dict({"tasks": [{"id": "a", "agent": "echo"} | keys]})


@pytest.mark.parametrize(("keys", "message"), OUT_OF_RANGE)
def test_ctx_spawn_refuses_an_out_of_range_key_at_the_call(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(SpawnError, match=message):
        Spawns().add("p", [{"id": "kid", "agent": "echo"} | keys], True)


def test_task_pb_names_the_task_and_key_of_a_value_the_wire_cannot_carry() -> None:
    with pytest.raises(InvalidArgument, match="task 'a': replicas does not fit the wire format"):
        task_pb(Task("a", "echo", replicas=-1))


def test_numeric_ids_read_as_their_digits_in_deps_and_map_too() -> None:
    dag = DAG.from_dict(
        {"tasks": [{"id": 1, "agent": "echo"}, {"id": 2, "agent": "echo", "deps": [1], "map": 1}]}
    )
    assert dag.tasks["2"].deps == ("1",) and dag.tasks["2"].map == "1"
    with pytest.raises(InvalidArgument, match="deps must be a list"):
        DAG.from_dict({"tasks": [{"id": "a", "agent": "echo", "deps": [["b"]]}]})


def test_the_run_priority_must_fit_too() -> None:
    with pytest.raises(InvalidArgument, match="priority must be between"):
        DAG.from_dict({"priority": 2**31, "tasks": [{"id": "a", "agent": "echo"}]})


def test_unknown_top_level_keys_are_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown top-level key\(s\) \['budgets', 'max_cost'\]"):
        DAG.from_dict({"max_cost": 5, "budgets": {"max_cost": 5}, "tasks": [{"id": "a", "agent": "echo"}]})
    dag = DAG.from_dict({"name": "n", "priority": 1, "budget": {"max_cost": 5}, "tasks": []})
    assert dag.budget == {"max_cost": 5.0}


@pytest.mark.parametrize("when", [False, {}, 0, []])
def test_a_falsy_condition_is_kept_by_the_builder_and_ctx_spawn(when: Any) -> None:
    assert DAG().task("a", "echo", when=when).to_dict()["when"] == when
    maps = Spawns()
    maps.add("p", [{"id": "a", "agent": "echo", "when": when}], True)
    assert maps.tasks[0]["when"] == when
    # it reaches the state machine, which judges it as it judges a submitted one
    (spec,) = task_specs(maps.tasks, 0, {})
    assert spec.when == when and type(spec.when) is type(when)


def test_replica_keys_without_replicas_reach_the_cluster_to_be_judged() -> None:
    d = DAG().task("a", "echo", quorum=2).to_dict()
    assert d["quorum"] == 2 and d["replicas"] == 0
    d = DAG().task("b", "echo", judge="j").to_dict()
    assert d["judge"] == "j"
    (spec,) = task_specs([DAG().task("a", "echo", quorum=2).to_dict()], 0, {})
    assert spec.quorum == 2


@pytest.mark.parametrize("line", ["replicas: -1", "max_parallel: 99999999999"])
def test_cli_submit_of_an_out_of_range_key_exits_2_with_a_message(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, line: str
) -> None:
    monkeypatch.setenv("RAFTMESH_ADDRESSES", "127.0.0.1:1")  # refused before any call
    f = tmp_path / "f.yaml"
    f.write_text(f"tasks:\n  - id: a\n    agent: echo\n    fusion: vote\n    {line}\n")
    assert main(["submit", str(f)]) == 2
    err = capsys.readouterr().err
    assert "invalid argument" in err and line.split(":")[0] in err and "Traceback" not in err


def test_the_host_reports_a_spawn_it_cannot_convert_instead_of_losing_the_attempt() -> None:
    """An agent may put a spec in ``ctx.spawns`` past ``ctx.spawn``'s checks: the attempt
    still ends (FAILED, not retryable) instead of staying RUNNING for ever."""
    sm = StateMachine()
    offers = (AgentOffer("planner"), AgentOffer("echo"))
    res, _ = sm.apply(RegisterNode("reg", 1, "n1", "g", "r", ("planner", "echo"), 8, "i1", offers))
    assert res.ok, res
    res, _ = sm.apply(SubmitRun("s1", 2, run_id="r1", tasks=(TaskSpec("p", "planner", retries=3),)))
    assert res.ok, res

    async def planner(ctx: TaskContext) -> Any:
        ctx.spawns.tasks.append({"id": "kid", "agent": "echo", "replicas": -1, "fusion": "vote", "deps": []})
        return "planned"

    async def scenario() -> None:
        registry = AgentRegistry()
        registry.register("planner", planner)
        host = AgentHost("n1", "i1", registry, reads_of(sm), MachineWriter(sm), ManualClock())
        reporter = asyncio.get_running_loop().create_task(host._report_loop())
        res, _ = sm.apply(Assign("a1", 3, (Assignment("r1", "p", "n1", 1),)))
        assert res.ok, res
        host._reconcile()
        for _ in range(200):
            if sm.state.runs["r1"].tasks["p"].status is not TaskStatus.RUNNING and host.running == 0:
                break
            await asyncio.sleep(0)
        reporter.cancel()
        p = sm.state.runs["r1"].tasks["p"]
        assert p.status is TaskStatus.FAILED, p.status
        assert "replicas must be between 0 and" in p.error and p.attempt == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("argv", [["pause", "R"], ["resume", "R"], ["rerun", "R", "T"]])
def test_every_control_write_takes_a_request_id(argv: list[str]) -> None:
    from raftmesh.cli.main import build_parser

    assert build_parser().parse_args([*argv, "--request-id", "fixed-1"]).request_id == "fixed-1"
    assert build_parser().parse_args(argv).request_id is None
