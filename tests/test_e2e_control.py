"""End to end: approvals from the CLI, pause/resume and rerun from the SDK, on a real 3-node cluster."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from raftmesh import DAG
from raftmesh.errors import FailedPrecondition, InvalidArgument
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

from .test_cli import cli

pytestmark = pytest.mark.e2e


def test_parallel_approvals_resolved_independently_from_the_cli(cluster3: LocalCluster) -> None:
    addrs = ",".join(cluster3.addresses)
    client = cluster3.client()
    dag = DAG("gated")
    a = dag.task("a", "echo", input="go")
    x = dag.task("x", "echo", input="x", deps=[a], approval={"prompt": "Ship x?"})
    dag.task(
        "y",
        "echo",
        input="y",
        deps=[a],
        approval={"prompt": "Ship y?\nIt touches prod.", "on_timeout": "reject"},
    )
    dag.task("after_x", "echo", deps=[x])
    run_id = client.submit(dag)

    def open_gates() -> list[dict[str, object]]:
        res = cli("approvals", "--run", run_id, "--json", addresses=addrs)
        assert res.returncode == 0, res.stderr
        gates: list[dict[str, object]] = json.loads(res.stdout)["approvals"]
        return gates

    gates = wait_until(lambda: (g := open_gates()) and len(g) == 2 and g, 30, "both gates open")
    assert {g["task_id"]: g["prompt"] for g in gates} == {"x": "Ship x?", "y": "Ship y?\nIt touches prod."}
    listing = cli("approvals", "--run", run_id, addresses=addrs)
    assert listing.returncode == 0 and listing.stdout.count("\n") == 2  # one line a gate
    assert "Ship y?\\nIt touches prod." in listing.stdout
    everywhere = json.loads(cli("approvals", "--json", addresses=addrs).stdout)["approvals"]
    assert {(g["run_id"], g["task_id"]) for g in everywhere} >= {(run_id, "x"), (run_id, "y")}

    ok = cli("approve", run_id, "x", "--by", "ana", "--comment", "fine", "--json", addresses=addrs)
    assert ok.returncode == 0, ok.stderr
    decided = json.loads(ok.stdout)
    assert decided["applied"] and decided["decision"] == "approved" and decided["by"] == "ana"
    # y is untouched by x's decision; x and what follows it run
    assert [g["task_id"] for g in open_gates()] == ["y"]
    wait_until(lambda: client.get(run_id).tasks["after_x"].status == "SUCCEEDED", 30, "x's branch done")
    assert client.get(run_id).tasks["y"].status == "WAITING_APPROVAL"

    rid = uuid.uuid4().hex
    args = ("approve", run_id, "y", "--reject", "--by", "bob", "--comment", "not today", "--json")
    first = cli(*args, "--request-id", rid, addresses=addrs)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["decision"] == "rejected"
    # the same call retried once (same request id): the recorded answer, applied once
    again = cli(*args, "--request-id", rid, addresses=addrs)
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(first.stdout)
    # a new call deciding the same way: the first decision stands
    later = json.loads(cli(*args, addresses=addrs).stdout)
    assert later["already_decided"] and later["comment"] == "not today"
    # deciding it the other way is refused (exit 5), naming who decided
    other = cli("approve", run_id, "y", "--json", addresses=addrs)
    assert other.returncode == 5 and "already rejected by 'bob'" in other.stderr
    assert cli("approve", run_id, "nope", addresses=addrs).returncode == 3
    assert cli("approve", run_id, "a", addresses=addrs).returncode == 5  # no gate

    got = json.loads(cli("get", run_id, "--json", addresses=addrs).stdout)
    assert got["status"] == "FAILED"
    gx, gy = got["tasks"]["x"]["gate"], got["tasks"]["y"]["gate"]
    assert (gx["decision"], gx["by"], gx["comment"]) == ("approved", "ana", "fine")
    assert (gy["decision"], gy["by"], gy["comment"]) == ("rejected", "bob", "not today")
    assert gx["decided_ms"] >= gx["opened_ms"] > 0 and gx["id"] > 0
    assert got["tasks"]["y"]["status"] == "FAILED" and "rejected by 'bob'" in got["tasks"]["y"]["error"]
    assert got["tasks"]["x"]["approval"] == {"prompt": "Ship x?", "timeout_ms": 0, "on_timeout": "reject"}
    assert open_gates() == []
    assert cli("approvals", "--limit", "5000", "--json", addresses=addrs).returncode == 2
    assert cli("pause", "no-such-run", "--json", addresses=addrs).returncode == 3
    refused = cli("pause", run_id, "--json", addresses=addrs)  # the run has failed
    assert refused.returncode == 5 and "only a RUNNING run can be paused" in refused.stderr
    rerun_rid = uuid.uuid4().hex
    rerun = cli("rerun", run_id, "y", "--request-id", rerun_rid, "--json", addresses=addrs)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["reopened"] and json.loads(rerun.stdout)["status"] == "WAITING_APPROVAL"
    # repeated with its request id: the first answer, not a second rerun
    rerun_again = cli("rerun", run_id, "y", "--request-id", rerun_rid, "--json", addresses=addrs)
    assert rerun_again.returncode == 0 and json.loads(rerun_again.stdout) == json.loads(rerun.stdout)
    gates = wait_until(lambda: open_gates(), 30, "y's new gate")
    assert [g["task_id"] for g in gates] == ["y"] and gates[0]["gate"] > gy["id"]
    # the request id of the decision of y's first gate does not decide its new one
    reused = cli(*args, "--request-id", rid, addresses=addrs)
    assert reused.returncode == 2 and f"request id {rid!r} was already used for" in reused.stderr
    assert [g["task_id"] for g in open_gates()] == ["y"]
    cluster3.wait_converged()


def test_pause_resume_and_rerun_through_the_sdk(cluster3: LocalCluster) -> None:
    client = cluster3.client()
    dag = DAG("control")
    s = dag.task("s", "sleep", input={"seconds": 2})
    t = dag.task("t", "sum", input={"value": 1})
    dag.task("u", "sum", input={"value": 10}, deps=[t, s])
    run_id = client.submit(dag)

    def s_running_t_done() -> bool:
        tasks = client.get(run_id).tasks
        return tasks["s"].status == "RUNNING" and tasks["t"].status == "SUCCEEDED"

    # t starts beside s and ends in milliseconds, but on a loaded machine the pause could land
    # before its result: it would be paused too, and every attempt count below off by one.
    wait_until(s_running_t_done, 30, "s running and t done")

    paused = client.pause(run_id, cancel_running=True)
    assert paused.status == "PAUSED" and paused.changed and paused.stopped >= 1
    run = client.get(run_id)
    assert run.status == "PAUSED" and run.tasks["s"].status == "READY"
    assert [h.outcome for h in run.tasks["s"].history] == ["paused"]
    assert "run paused" in run.tasks["s"].error
    again = client.pause(run_id)
    assert not again.changed and again.status == "PAUSED"

    assert client.resume(run_id).changed
    done = client.wait(run_id, timeout_s=60)
    assert done.status == "SUCCEEDED", done.error
    assert done.tasks["s"].attempt == 2 and done.tasks["u"].output == 11  # 10 + t (s outputs a map)

    rr = client.rerun(run_id, "t")
    assert rr.reopened and rr.reset == 2 and rr.status in ("READY", "RUNNING", "SUCCEEDED")
    done = client.wait(run_id, timeout_s=60)
    assert done.status == "SUCCEEDED", done.error
    tt = done.tasks["t"]
    assert tt.attempt == 2 and [(h.attempt, h.outcome, h.output) for h in tt.history] == [
        (1, "SUCCEEDED", 1),
        (2, "SUCCEEDED", None),
    ]
    assert done.tasks["s"].attempt == 2  # upstream of nothing rerun: kept
    assert [h.attempt for h in done.tasks["u"].history] == [1, 2]

    with pytest.raises(FailedPrecondition, match="only a task that has ended"):
        running = client.submit({"tasks": [{"id": "z", "agent": "sleep", "input": {"seconds": 30}}]})
        wait_until(lambda: client.get(running).tasks["z"].status == "RUNNING", 30, "z running")
        client.rerun(running, "z")
    client.cancel(running)
    with pytest.raises(FailedPrecondition, match="only a RUNNING run can be paused"):
        client.pause(running)
    # the boundary refuses a decision without a gate id, and bad ids
    stub = client._stub(cluster3.addresses[0])
    with pytest.raises(grpc.RpcError) as exc:
        stub.ApproveTask(pb.ApproveTaskRequest(run_id=run_id, task_id="t"), timeout=10)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "gate is required" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.RerunTask(pb.RerunTaskRequest(run_id=run_id, task_id="t", request_id="x" * 300), timeout=10)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "request_id" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.PauseRun(pb.PauseRunRequest(run_id="no-such-run"), timeout=10)
    assert exc.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(InvalidArgument):
        client.approvals(limit=5000)
    cluster3.wait_converged()
