"""``Client.audit``: a run's audit timeline, from the first node whose archive holds all of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..errors import RaftmeshError, RunNotFound
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ._core import Conn, Op, Rpc, translate


@dataclass(frozen=True)
class AuditEventInfo:
    """One change in a run's life: what (``kind``), when (``revision``, cluster ``time_ms``), and
    who caused it (``principal``, ``request_id``, ``trace_id``)."""

    revision: int
    time_ms: int
    kind: str
    task_id: str
    attempt: int
    node: str
    principal: str
    request_id: str
    trace_id: str
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pb(cls, e: pb.AuditEvent) -> AuditEventInfo:
        try:
            detail = json.loads(e.detail_json) if e.detail_json else {}
        except ValueError:
            detail = {"raw": e.detail_json}
        return cls(
            e.revision,
            e.time_ms,
            e.kind,
            e.task_id,
            e.attempt,
            e.node,
            e.principal,
            e.request_id,
            e.trace_id,
            detail,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "time_ms": self.time_ms,
            "kind": self.kind,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "node": self.node,
            "principal": self.principal,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AuditTrail:
    """A run's timeline as one node's archive holds it; iterate it for the events.

    ``complete`` False: no node answered with the whole history (this is the longest answer);
    ``node``: the node that answered."""

    run_id: str
    complete: bool
    node: str
    events: list[AuditEventInfo]

    def __iter__(self) -> Iterator[AuditEventInfo]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "complete": self.complete,
            "node": self.node,
            "events": [e.to_dict() for e in self.events],
        }


def audit(c: Conn, run_id: str, limit: int = 1000) -> Op[AuditTrail]:
    """The run's audit timeline (also for finished and evicted runs), oldest first, at most
    ``limit`` events: the first node whose archive holds the whole history answers; if none
    does, the longest answer with ``complete`` False. Raises ``RunNotFound`` if no node knows it."""
    # The nodes in turn (the current one first); a node that does not know the run, or cannot
    # answer, is skipped.
    req = pb.GetAuditRequest(run_id=run_id, limit=limit)
    best: AuditTrail | None = None
    error: RaftmeshError | None = None
    n = len(c.addresses)
    for i in range(n):
        addr = c.addresses[(c._current + i) % n]
        resp = yield Rpc("Cluster", "GetAudit", req, c.timeout_s, addr)
        if isinstance(resp, grpc.RpcError):
            code = resp.code()
            if code in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ):
                raise translate(resp) from None
            if error is None or code is grpc.StatusCode.NOT_FOUND:
                error = translate(resp)
            continue
        trail = AuditTrail(
            run_id, resp.complete, resp.node_id, [AuditEventInfo.from_pb(e) for e in resp.events]
        )
        if trail.complete:
            return trail
        if best is None or len(trail.events) > len(best.events):
            best = trail
    if best is not None:
        return best
    raise error if error is not None else RunNotFound(f"run {run_id!r} not found")
