"""Protobuf answers as the dashboard's JSON: the SDK's ``to_json`` / ``list_runs`` shapes (the CLI's
``--json`` contract), so the page, the CLI and scripts read the same fields."""

from __future__ import annotations

from typing import Any

from ..client._coord import KvEntry
from ..client._messages import MessageDeadLetterInfo
from ..client._types import (
    ApprovalInfo,
    ClusterInfo,
    DeadLetterInfo,
    DecisionInfo,
    RerunInfo,
    RunControlInfo,
    RunInfo,
    run_summary_json,
    whoami_json,
)
from ..messaging.wire import message_from_pb
from ..proto.raftmesh.v1 import cluster_pb2 as pb


def _task_status(v: int) -> str:
    return pb.TaskStatus.Name(v).removeprefix("TASK_STATUS_")


def run_status(v: int) -> str:
    return pb.RunStatus.Name(v).removeprefix("RUN_STATUS_")


_run_status = run_status


def run(r: pb.Run) -> dict[str, Any]:
    return RunInfo.from_pb(r).to_json()


def summary(r: pb.RunSummary) -> dict[str, Any]:
    return run_summary_json(r)


def cluster(s: pb.ClusterStatusResponse) -> dict[str, Any]:
    return ClusterInfo.from_pb(s).to_json()


def task_event(revision: int, t: pb.TaskEvent) -> dict[str, Any]:
    return {
        "task_id": t.task_id,
        "status": _task_status(t.status),
        "attempt": t.attempt,
        "node": t.node,
        "revision": revision,
    }


def run_event(e: pb.RunStatusEvent) -> dict[str, Any]:
    return {"status": _run_status(e.status), "error": e.error}


def whoami(w: pb.WhoAmIResponse) -> dict[str, Any]:
    return whoami_json(w)


def cancel(run_id: str, r: pb.CancelRunResponse) -> dict[str, Any]:
    return {"run_id": run_id, "status": _run_status(r.status), "cancelled": r.cancelled}


def control(run_id: str, r: pb.RunControlResponse) -> dict[str, Any]:
    return RunControlInfo(run_id, _run_status(r.status), r.changed, r.stopped).to_json()


def rerun(run_id: str, task_id: str, r: pb.RerunTaskResponse) -> dict[str, Any]:
    return RerunInfo(
        run_id, task_id, r.reset, r.dropped, r.reopened, _task_status(r.status), _run_status(r.run_status)
    ).to_json()


def decision(run_id: str, task_id: str, r: pb.ApproveTaskResponse) -> dict[str, Any]:
    return DecisionInfo(
        run_id, task_id, r.applied, r.gate, r.decision, r.by, r.comment, r.decided_ms, _task_status(r.status)
    ).to_json()


def approval(a: pb.PendingApproval) -> dict[str, Any]:
    return ApprovalInfo(
        a.run_id, a.task_id, a.gate, a.agent, a.prompt, a.opened_ms, a.deadline_ms, a.on_timeout
    ).to_json()


def lock(lk: pb.LockInfo) -> dict[str, Any]:
    """As ``LockClient.list`` (``raftmesh locks --json``)."""
    return {
        "name": lk.name,
        "holders": [
            {"owner": h.owner, "mode": h.mode, "token": h.token, "deadline_ms": h.deadline_ms}
            for h in lk.holders
        ],
        "waiters": list(lk.waiters),
        "last_token": lk.last_token,
    }


def kv_entry(e: pb.KvEntry) -> dict[str, Any] | None:
    entry = KvEntry.from_pb(e)
    return entry.to_json() if entry is not None else None


def dead_letter(d: pb.DeadLetter) -> dict[str, Any]:
    return DeadLetterInfo(d.run_id, d.task_id, d.agent, d.attempt, d.error, d.finished_ms).to_json()


def dead_message(d: pb.MessageDeadLetter) -> dict[str, Any]:
    return MessageDeadLetterInfo(message_from_pb(d.message), d.reason, d.node, d.recorded_ms, d.seq).to_json()
