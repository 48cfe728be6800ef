"""Approval gates in the pure state machine: open, decide once, time out, list, survive restore."""

from __future__ import annotations

from typing import Any

import pytest

from raftmesh.consensus import Code, RunStatus, TaskStatus, limits
from raftmesh.consensus.approvals import list_approvals
from raftmesh.consensus.commands import Approval, ApproveTask, CancelRun, RetryTask
from raftmesh.consensus.dag import DagError, validate
from raftmesh.consensus.results import ApproveTaskResult, RerunTaskResult
from raftmesh.consensus.state import ClusterState
from tests.test_machine import Cluster, check_indexes, spec, status


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1"))
    return cluster


def gated(task_id: str, *deps: str, **kw: Any) -> Any:
    approval = Approval(kw.pop("prompt", "ok?"), kw.pop("timeout_ms", 0), kw.pop("on_timeout", "reject"))
    return spec(task_id, *deps, approval=approval, **kw)


def approve(
    c: Cluster, run_id: str, task_id: str, ok: bool = True, by: str = "ana", **kw: Any
) -> ApproveTask:
    gate = kw.pop("gate", None)
    if gate is None:
        g = c.task(run_id, task_id).gate
        assert g is not None
        gate = g.id
    return ApproveTask(
        kw.pop("rid", None) or c.rid(), c.ts, run_id, task_id, gate, ok, by, kw.pop("comment", "")
    )


def test_validate_bounds_the_approval_at_submit() -> None:
    validate(
        [gated("a", prompt="Deploy?\nIt touches prod.", timeout_ms=1000, on_timeout="approve")], {"echo"}
    )
    for kw, fix in [
        ({"prompt": "x" * (limits.MAX_APPROVAL_PROMPT_CHARS + 1)}, "prompt is"),
        ({"prompt": "\x1b[2J"}, "control characters"),
        ({"timeout_ms": -1}, "timeout_ms must be between"),
        ({"timeout_ms": limits.MAX_APPROVAL_TIMEOUT_MS + 1}, "timeout_ms must be between"),
        ({"on_timeout": "maybe"}, "reject or approve"),
    ]:
        with pytest.raises(DagError, match=fix):
            validate([gated("a", **kw)], {"echo"})


def test_gate_opens_when_the_task_could_start_and_approval_lets_it_run(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), gated("g", "a"), spec("b", "g")]))
    assert c.task("r", "g").status is TaskStatus.PENDING and c.task("r", "g").gate is None
    c.run_task("r", "a")
    g = c.task("r", "g")
    assert g.status is TaskStatus.WAITING_APPROVAL
    assert g.gate is not None and g.gate.decision == "" and g.gate.opened_ms == c.st.time_ms
    assert [(v.run_id, v.task_id, v.gate) for v in list_approvals(c.st)] == [("r", "g", g.gate.id)]
    # an assignment of a gated task is refused: it is not READY
    c.unchanged(c.assign(("r", "g", "n1")), Code.FAILED_PRECONDITION)
    c.ts += 5
    res = c.ok(approve(c, "r", "g", comment="looks fine"))
    assert isinstance(res, ApproveTaskResult) and res.applied and res.decision == "approved"
    assert res.status is TaskStatus.READY and res.by == "ana" and res.decided_ms == c.ts
    assert list_approvals(c.st) == []
    c.run_task("r", "g")
    c.run_task("r", "b")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    assert c.task("r", "g").gate.comment == "looks fine"  # type: ignore[union-attr]


def test_reject_fails_the_task_and_the_run_not_retryable(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("g", retries=3), spec("b", "g")]))
    res = c.ok(approve(c, "r", "g", ok=False, by="bob", comment="too risky"))
    assert isinstance(res, ApproveTaskResult) and res.status is TaskStatus.FAILED
    g = c.task("r", "g")
    assert g.status is TaskStatus.FAILED and g.retries_left == 3
    assert g.error == "approval rejected by 'bob': too risky"
    run = c.st.runs["r"]
    assert run.status is RunStatus.FAILED and run.reason == "APPROVAL_REJECTED"
    assert "bob" in run.error and status(c, "r")["b"] is TaskStatus.CANCELLED
    assert c.st.dead_letters == [(g.finished_ms, "r", "g")]


def test_a_decision_is_applied_once_per_gate(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("g"), spec("b", "g")]))
    first = approve(c, "r", "g", comment="first")
    res1 = c.ok(first)
    # the same request again: the recorded result, nothing changes
    assert c.unchanged(first) == res1
    # the same decision under a new request id (a client retry after a lost answer): the first stands
    again = c.unchanged(approve(c, "r", "g", by="carol", comment="second"))
    assert isinstance(again, ApproveTaskResult) and not again.applied
    assert (again.by, again.comment, again.gate) == ("ana", "first", res1.gate)  # type: ignore[attr-defined]
    # a conflicting decision names who decided
    res = c.unchanged(approve(c, "r", "g", ok=False, by="bob"), Code.FAILED_PRECONDITION)
    assert "already approved by 'ana'" in res.message
    assert c.task("r", "g").status is TaskStatus.READY


def test_gate_ids_old_new_and_unknown(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("g")]))
    old = c.task("r", "g").gate.id  # type: ignore[union-attr]
    c.ok(approve(c, "r", "g"))
    c.run_task("r", "g")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
    c.ok(c.rerun("r", "g"))
    new = c.task("r", "g").gate.id  # type: ignore[union-attr]
    assert new > old and c.task("r", "g").status is TaskStatus.WAITING_APPROVAL
    # a decision for the older gate (a late retry) changes nothing and names the open one
    res = c.unchanged(approve(c, "r", "g", ok=False, gate=old), Code.FAILED_PRECONDITION)
    assert f"superseded by gate {new}" in res.message
    res = c.unchanged(approve(c, "r", "g", gate=new + 10), Code.FAILED_PRECONDITION)
    assert f"no gate {new + 10}" in res.message
    c.ok(approve(c, "r", "g", gate=new))
    assert c.task("r", "g").status is TaskStatus.READY


def test_parallel_gates_of_one_run_are_independent(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), gated("x", "a"), gated("y", "a"), gated("z", "a"), spec("j", "x", "z")]))
    c.run_task("r", "a")
    gates = [(v.task_id, v.gate) for v in list_approvals(c.st, "r")]
    # opened by one command, each with its own id
    assert [t for t, _ in gates] == ["x", "y", "z"] and len({g for _, g in gates}) == 3
    c.ok(approve(c, "r", "z"))
    assert status(c, "r")["z"] is TaskStatus.READY
    assert status(c, "r")["x"] is status(c, "r")["y"] is TaskStatus.WAITING_APPROVAL
    c.ok(approve(c, "r", "x", by="bob"))
    assert [v.task_id for v in list_approvals(c.st)] == ["y"]
    # deciding one gate again does not touch the others
    c.unchanged(approve(c, "r", "x", by="bob"))
    assert status(c, "r")["y"] is TaskStatus.WAITING_APPROVAL
    c.ok(approve(c, "r", "y", ok=False))
    assert c.st.runs["r"].status is RunStatus.FAILED
    assert status(c, "r")["x"] is TaskStatus.CANCELLED
    assert list_approvals(c.st) == []


@pytest.mark.parametrize("on_timeout", ["approve", "reject"])
def test_timeout_decides_as_on_timeout_says(c: Cluster, on_timeout: str) -> None:
    c.ok(c.submit("r", [gated("g", timeout_ms=1000, on_timeout=on_timeout), gated("h")]))
    gate = c.task("r", "g").gate
    assert gate is not None and gate.deadline_ms == c.ts + 1000
    assert c.st.next_deadline_ms() == gate.deadline_ms
    c.ok(c.tick(c.ts + 999))
    assert c.task("r", "g").status is TaskStatus.WAITING_APPROVAL
    c.ok(c.tick(c.ts + 1000))
    g = c.task("r", "g")
    assert g.gate is not None and g.gate.by == "timeout" and g.gate.decided_ms == c.ts + 1000
    assert "no decision within 1000 ms" in g.gate.comment
    if on_timeout == "approve":
        assert g.gate.decision == "approved" and g.status is TaskStatus.READY
        assert c.task("r", "h").status is TaskStatus.WAITING_APPROVAL  # no timeout: waits on
        assert c.st.next_deadline_ms() is None
    else:
        assert g.gate.decision == "rejected" and g.status is TaskStatus.FAILED
        assert "approval rejected by 'timeout'" in g.error
        assert c.st.runs["r"].status is RunStatus.FAILED
    # a client deciding the same way after the timeout gets the timeout's decision
    res = c.unchanged(approve(c, "r", "g", ok=on_timeout == "approve"))
    assert isinstance(res, ApproveTaskResult) and res.by == "timeout" and not res.applied


def test_a_decided_gate_leaves_no_live_deadline(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("g", timeout_ms=1000)]))
    c.ok(approve(c, "r", "g"))
    assert c.st.next_deadline_ms() is None
    c.ok(c.tick(c.ts + 5000))
    assert c.task("r", "g").status is TaskStatus.READY and c.task("r", "g").gate.by == "ana"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kw", "code", "fix"),
    [
        ({"by": ""}, Code.INVALID_ARGUMENT, "by must name"),
        ({"by": "timeout"}, Code.INVALID_ARGUMENT, "reserved"),
        ({"by": "x" * (limits.MAX_PRINCIPAL_CHARS + 1)}, Code.INVALID_ARGUMENT, "longer than"),
        ({"comment": "c" * (limits.MAX_COMMENT_CHARS + 1)}, Code.INVALID_ARGUMENT, "comment is"),
        ({"comment": "a\x07b"}, Code.INVALID_ARGUMENT, "control characters"),
        ({"gate": 0}, Code.INVALID_ARGUMENT, "gate must be"),
    ],
)
def test_bad_decisions_are_refused_and_change_nothing(
    c: Cluster, kw: dict[str, Any], code: Code, fix: str
) -> None:
    c.ok(c.submit("r", [gated("g")]))
    res = c.unchanged(approve(c, "r", "g", **kw), code)
    assert fix in res.message


def test_decisions_on_missing_or_ungated_tasks(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), gated("g", "a")]))
    c.unchanged(ApproveTask(c.rid(), c.ts, "nope", "g", 1, True, "ana"), Code.NOT_FOUND)
    c.unchanged(ApproveTask(c.rid(), c.ts, "r", "nope", 1, True, "ana"), Code.NOT_FOUND)
    res = c.unchanged(ApproveTask(c.rid(), c.ts, "r", "a", 1, True, "ana"), Code.FAILED_PRECONDITION)
    assert "no approval gate" in res.message
    res = c.unchanged(ApproveTask(c.rid(), c.ts, "r", "g", 1, True, "ana"), Code.FAILED_PRECONDITION)
    assert "no gate open yet" in res.message
    c.ok(CancelRun(c.rid(), c.ts, "r", "stop"))
    assert list_approvals(c.st) == []


def test_list_approvals_pages_with_a_cursor(c: Cluster) -> None:
    for i in range(5):
        c.ok(c.submit(f"r{i}", [gated("g"), gated("h")]))
    views = list_approvals(c.st, limit=3)
    assert [(v.run_id, v.task_id) for v in views] == [("r0", "g"), ("r0", "h"), ("r1", "g")]
    last = views[-1]
    more = list_approvals(c.st, limit=100, after=(last.gate, last.run_id, last.task_id))
    assert len(more) == 7 and more[0].run_id == "r1" and more[0].task_id == "h"
    assert [v.task_id for v in list_approvals(c.st, "r3")] == ["g", "h"]
    assert list_approvals(c.st, "missing") == []
    assert views[0].prompt == "ok?" and views[0].on_timeout == "reject" and views[0].agent == "echo"


def test_dead_letter_retry_of_a_run_failed_while_a_gate_was_open_reopens_the_gate(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a"), gated("g")]))
    c.ok(c.assign(("r", "a", "n1")))
    c.ok(c.fail("r", "a", retryable=False))
    assert status(c, "r")["g"] is TaskStatus.CANCELLED
    c.ok(RetryTask(c.rid(), c.ts, "r", "a", 1))
    g = c.task("r", "g")
    assert g.status is TaskStatus.WAITING_APPROVAL and g.gate is not None and g.gate.decision == ""
    assert [v.task_id for v in list_approvals(c.st)] == ["g"]


def test_snapshot_restore_keeps_gates_and_deadlines(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("g", timeout_ms=500, on_timeout="approve"), gated("h", timeout_ms=900)]))
    c.ok(approve(c, "r", "h"))
    check_indexes(c.sm)
    restored = ClusterState.decode(c.st.encode())
    assert restored.open_gates == c.st.open_gates and restored.next_deadline_ms() == c.ts + 500
    c.sm.restore(c.st.encode())
    c.ok(c.tick(c.ts + 500))
    assert c.task("r", "g").status is TaskStatus.READY and c.task("r", "g").gate.by == "timeout"  # type: ignore[union-attr]


def test_rerun_of_a_rejected_task_opens_a_new_gate(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("g")]))
    c.ok(approve(c, "r", "g", ok=False))
    res = c.ok(c.rerun("r", "g"))
    assert isinstance(res, RerunTaskResult) and res.reopened and res.status is TaskStatus.WAITING_APPROVAL
    assert c.st.runs["r"].status is RunStatus.RUNNING and c.st.dead_letters == []
    c.ok(approve(c, "r", "g"))
    c.run_task("r", "g")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED


def test_the_sdk_builder_and_spec_files_carry_the_approval(tmp_path: Any) -> None:
    from raftmesh import DAG
    from raftmesh.errors import InvalidArgument
    from raftmesh.node import convert
    from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

    path = tmp_path / "gated.yaml"
    path.write_text(
        "tasks:\n"
        "  - {id: a, agent: echo}\n"
        "  - id: g\n"
        "    agent: echo\n"
        "    deps: [a]\n"
        "    approval: {prompt: 'Ship it?', timeout_ms: 60000, on_timeout: approve}\n"
    )
    dag = DAG.from_file(str(path))
    want = {"prompt": "Ship it?", "timeout_ms": 60000, "on_timeout": "approve"}
    assert dag.tasks["g"].approval == want and dag.tasks["a"].approval is None
    assert dag.to_dict()["tasks"][1]["approval"] == want and "approval" not in dag.to_dict()["tasks"][0]
    built = DAG().task("g", "echo", approval={"prompt": "ok?"})
    assert built.approval == {"prompt": "ok?", "timeout_ms": 0, "on_timeout": "reject"}
    for bad in ("yes", {"prompt": "x", "when": 1}, {"timeout_ms": -1}, {"timeout_ms": True}, {"prompt": 3}):
        with pytest.raises(InvalidArgument, match="approval"):
            DAG.from_dict({"tasks": [{"id": "g", "agent": "echo", "approval": bad}]})
    # what the SDK sends is what the state machine gets
    req = pb.SubmitRunRequest(
        tasks=[pb.TaskSpec(id="g", agent="echo", approval=pb.ApprovalSpec(prompt="Ship it?", timeout_ms=5))]
    )
    (got,) = convert.task_specs_from_pb(req)
    assert got.approval == Approval("Ship it?", 5, "reject")


def test_a_spawned_task_may_wait_for_approval(c: Cluster) -> None:
    from tests.test_spawn import spawning

    c.ok(c.submit("r", [spec("plan"), spec("after", "plan")]))
    c.ok(c.assign(("r", "plan", "n1")))
    c.ok(spawning(c, "r", "plan", [spec("deploy", approval=Approval("Deploy?"))], wait=True))
    assert c.task("r", "deploy").status is TaskStatus.WAITING_APPROVAL
    assert [(v.task_id, v.prompt) for v in list_approvals(c.st, "r")] == [("deploy", "Deploy?")]
    c.ok(approve(c, "r", "deploy"))
    c.run_task("r", "deploy")
    c.run_task("r", "after")
    assert c.st.runs["r"].status is RunStatus.SUCCEEDED
