"""A request id reused for another run, task or gate is refused, not answered with the first
command's result (which would leave the second operation undone while reporting it applied)."""

from __future__ import annotations

import pytest

from raftmesh.consensus import Code, RunStatus, TaskStatus
from raftmesh.consensus.commands import PauseRun, RerunTask, ResumeRun, RetryTask
from raftmesh.consensus.results import (
    ApproveTaskResult,
    RerunTaskResult,
    RunControlResult,
    decode_result,
    encode_result,
)
from tests.test_approvals import approve, gated
from tests.test_machine import Cluster, spec


@pytest.fixture
def c() -> Cluster:
    cluster = Cluster()
    cluster.ok(cluster.register("n1"))
    return cluster


def refused(c: Cluster, cmd: object, names: str) -> None:
    res = c.unchanged(cmd, Code.INVALID_ARGUMENT)  # type: ignore[arg-type]
    assert "request id 'fixed-1' was already used for" in res.message, res
    assert names in res.message and "use a new request id for each operation" in res.message


def test_a_reused_request_id_does_not_decide_another_gate(c: Cluster) -> None:
    c.ok(c.submit("r", [gated("deploy"), gated("deploy2")]))
    first = c.ok(approve(c, "r", "deploy", rid="fixed-1"))
    assert isinstance(first, ApproveTaskResult) and first.applied
    # the retry of the same command still gets the first answer
    again = c.unchanged(approve(c, "r", "deploy", rid="fixed-1"))
    assert isinstance(again, ApproveTaskResult) and again.gate == first.gate
    refused(c, approve(c, "r", "deploy2", rid="fixed-1"), "task 'deploy'")
    assert c.task("r", "deploy2").status is TaskStatus.WAITING_APPROVAL
    # the same gate decided the other way under the same id is another operation too
    refused(c, approve(c, "r", "deploy", ok=False, rid="fixed-1", gate=first.gate), "decision 'approve'")


def test_a_reused_request_id_does_not_pause_resume_or_rerun_another_run(c: Cluster) -> None:
    c.ok(c.submit("r", [spec("a")]))
    c.ok(c.submit("s", [spec("a")]))
    c.ok(PauseRun("fixed-1", c.ts, "r"))
    assert c.unchanged(PauseRun("fixed-1", c.ts, "r")) == RunControlResult(
        RunStatus.PAUSED, changed=True, target=("r",)
    )
    refused(c, PauseRun("fixed-1", c.ts, "s"), "run 'r'")
    assert c.st.runs["s"].status is RunStatus.RUNNING
    c.ok(ResumeRun("fixed-2", c.ts, "r"))
    res = c.unchanged(ResumeRun("fixed-2", c.ts, "s"), Code.INVALID_ARGUMENT)
    assert "already used for resume_run of run 'r', not resume_run of run 's'" in res.message
    c.run_task("r", "a")
    c.run_task("s", "a")
    c.ok(RerunTask("fixed-3", c.ts, "r", "a"))
    res = c.unchanged(RerunTask("fixed-3", c.ts, "s", "a"), Code.INVALID_ARGUMENT)
    assert "rerun_task of run 'r', task 'a'" in res.message
    assert c.st.runs["s"].status is RunStatus.SUCCEEDED


def test_results_recorded_before_targets_still_decode() -> None:
    old = ["rerun_task", 1, 0, False, TaskStatus.READY.value, RunStatus.RUNNING.value]
    res = decode_result(old)
    assert res == RerunTaskResult(1, 0, False, TaskStatus.READY, RunStatus.RUNNING)
    assert res.target == ()
    back = decode_result(encode_result(RunControlResult(RunStatus.PAUSED, True, 0, ("r",))))
    assert isinstance(back, RunControlResult) and back.target == ("r",)


def test_a_reused_request_id_does_not_retry_another_dead_task(c: Cluster) -> None:
    for run_id in ("r", "s"):
        c.ok(c.submit(run_id, [spec("a")]))
        c.ok(c.assign((run_id, "a", "n1")))
        c.ok(c.fail(run_id, "a", retryable=False))
    c.ok(RetryTask("fixed-1", c.ts, "r", "a", 1))
    refused(c, RetryTask("fixed-1", c.ts, "s", "a", 1), "retry_task of run 'r', task 'a', attempt '1'")
    assert c.task("s", "a").status is TaskStatus.FAILED
