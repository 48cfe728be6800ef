"""The SDK's parse of a run (``RunInfo``/``TaskInfo.from_pb``): every field of the wire's task
lands on its own field, and the result is the value its constructor makes (equal, hashable,
``replace``-able, the same ``vars``)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from raftmesh.client._types import (
    AttemptInfo,
    FusionInfo,
    GateInfo,
    PreemptionInfo,
    RunInfo,
    TaskInfo,
    UsageInfo,
)
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

FULL = pb.Task(
    id="t",
    agent="llm",
    status=pb.TASK_STATUS_WAITING_CHILDREN,
    attempt=3,
    node="n2",
    output_json='{"a": [1, null]}',
    error="boom",
    deps=["x", "y"],
    token=44,
    started_ms=5,
    finished_ms=9,
    input_json="1",
    waiting_reason="no slot",
    requires=["gpu"],
    usage=pb.Usage(tokens_in=1, tokens_out=2, cost=0.5),
    preempted_by=[pb.Preemption(by_run_id="r-2", by_task_id="k", attempt=2, at_ms=7)],
    requeued_attempt=2,
    suspect_moves=1,
    fusion=pb.Fusion(rule="vote", replicas=3, quorum=2, agents=["llm"], tally_json="[]"),
    compensate=pb.Compensation(agent="undo", input_json="[2]"),
    approval=pb.ApprovalSpec(prompt="ok?", timeout_ms=8, on_timeout="approve"),
    gate=pb.ApprovalGate(id=4, opened_ms=1, deadline_ms=9, decision="approved", by="me"),
    history=[pb.TaskAttempt(attempt=1, node="n1", outcome="failed", error="e", output_json="3")],
    parent="p",
    origin="map",
    index=6,
    item_json='"it"',
    children=["t[0]", "t[1]"],
    children_waiting=1,
    depth=2,
    when_json="true",
    trigger="all_done",
    map="src",
    max_parallel=4,
)


def test_every_field_of_a_task_is_parsed() -> None:
    got = TaskInfo.from_pb(FULL)
    want = TaskInfo(
        id="t",
        agent="llm",
        status="WAITING_CHILDREN",
        attempt=3,
        node="n2",
        output={"a": [1, None]},
        error="boom",
        deps=("x", "y"),
        token=44,
        started_ms=5,
        finished_ms=9,
        usage=UsageInfo(1, 2, 0.5),
        preempted_by=(PreemptionInfo("r-2", "k", 2, 7),),
        waiting_reason="no slot",
        requires=("gpu",),
        requeued_attempt=2,
        suspect_moves=1,
        fusion=FusionInfo.from_pb(FULL.fusion),
        compensate={"agent": "undo", "input": [2]},
        gate=GateInfo.from_pb(FULL.gate),
        history=(AttemptInfo.from_pb(FULL.history[0]),),
        approval={"prompt": "ok?", "timeout_ms": 8, "on_timeout": "approve"},
        parent="p",
        origin="map",
        index=6,
        item="it",
        children=("t[0]", "t[1]"),
        children_waiting=1,
        depth=2,
        when=True,
        trigger="all_done",
        map="src",
        max_parallel=4,
    )
    assert got == want and vars(got) == vars(want)
    assert list(vars(got)) == [f.name for f in dataclasses.fields(TaskInfo)]
    assert got.fusion is not None and got.fusion.rule == "vote" and got.gate is not None and got.gate.id == 4


def test_a_bare_task_is_what_the_constructor_makes() -> None:
    got = TaskInfo.from_pb(pb.Task(id="a", agent="echo", status=pb.TASK_STATUS_READY, usage=pb.Usage()))
    want = TaskInfo("a", "echo", "READY", 0, "", None, "", (), 0, 0, 0)
    assert got == want and vars(got) == vars(want) and hash(got.usage) == hash(UsageInfo())
    assert pickle.loads(pickle.dumps(got)) == got
    assert dataclasses.replace(got, node="n1") == TaskInfo(
        "a", "echo", "READY", 0, "n1", None, "", (), 0, 0, 0
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.node = "n9"  # type: ignore[misc]
    assert all(
        type(getattr(got, f)) is tuple for f in ("deps", "requires", "preempted_by", "history", "children")
    )


def test_a_status_this_sdk_does_not_know_raises_as_before() -> None:
    with pytest.raises(ValueError):
        TaskInfo.from_pb(pb.Task(id="a", status=99))


def test_a_run_parses_its_tasks_by_id() -> None:
    run = RunInfo.from_pb(
        pb.Run(run_id="r-1", status=pb.RUN_STATUS_SUCCEEDED, tasks=[FULL, pb.Task(id="b", status=4)])
    )
    assert run.done and list(run.tasks) == ["t", "b"] and run.tasks["t"] == TaskInfo.from_pb(FULL)
    assert run.tasks["b"].status == "SUCCEEDED" and run.tasks["b"].usage == UsageInfo()


def test_suspect_moves_reaches_the_cli_text_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    """How often suspicion moved a task's attempt shows wherever a user reads the task."""
    from rich.console import Console

    from raftmesh.cli import main, render

    run = RunInfo.from_pb(pb.Run(run_id="r-1", status=pb.RUN_STATUS_RUNNING, tasks=[FULL]))
    assert run.to_json()["tasks"]["t"]["suspect_moves"] == 1
    main._print_task(run.tasks["t"], 0, run.tasks)
    assert " suspect_moves=1" in capsys.readouterr().out
    console = Console(record=True, width=200)
    render.run_summary(console, run)
    assert "3 (1 moved)" in console.export_text()
    bare = RunInfo.from_pb(pb.Run(run_id="r-2", status=pb.RUN_STATUS_RUNNING, tasks=[pb.Task(id="b")]))
    assert bare.to_json()["tasks"]["b"]["suspect_moves"] == 0
    main._print_task(bare.tasks["b"], 0, bare.tasks)
    assert "suspect_moves" not in capsys.readouterr().out
