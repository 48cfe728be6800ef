"""Plain result types returned by the SDK (no protobuf in user code)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..proto.raftmesh.v1 import cluster_pb2 as pb

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "COMPENSATED", "COMPENSATION_FAILED"})
"""Run statuses that never change again."""


_TASK_STATUS = {v: name.removeprefix("TASK_STATUS_") for name, v in pb.TaskStatus.items()}


def _task_status(v: int) -> str:
    """The status's name (a value this SDK does not know raises, as ``Name`` does)."""
    name = _TASK_STATUS.get(v)
    return name if name is not None else pb.TaskStatus.Name(v).removeprefix("TASK_STATUS_")


def _run_status(v: int) -> str:
    return pb.RunStatus.Name(v).removeprefix("RUN_STATUS_")


def _json(text: str) -> Any:
    return json.loads(text) if text else None


@dataclass(frozen=True)
class UsageInfo:
    """What attempts reported (``TaskContext.report_usage``), summed."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    @classmethod
    def from_pb(cls, u: pb.Usage) -> UsageInfo:
        if not (u.tokens_in or u.tokens_out or u.cost):
            return _NO_USAGE  # most tasks report none: one shared (frozen, equal) value
        return cls(u.tokens_in, u.tokens_out, u.cost)

    def to_json(self) -> dict[str, Any]:
        return {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "cost": self.cost}


_NO_USAGE = UsageInfo()


@dataclass(frozen=True)
class PreemptionInfo:
    by_run_id: str
    by_task_id: str
    attempt: int
    """The attempt that was stopped (requeued without using a retry)."""
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "by_run_id": self.by_run_id,
            "by_task_id": self.by_task_id,
            "attempt": self.attempt,
            "at_ms": self.at_ms,
        }


@dataclass(frozen=True)
class DeadLetterInfo:
    """A task that failed for good (``Client.dead_letters``); ``Client.retry`` requeues it."""

    run_id: str
    task_id: str
    agent: str
    attempt: int
    error: str
    finished_ms: int

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``dead-letters --json`` item shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "agent": self.agent,
            "attempt": self.attempt,
            "error": self.error,
            "finished_ms": self.finished_ms,
        }


@dataclass(frozen=True)
class RetryInfo:
    """The answer of ``Client.retry``: ``requeued`` False means an earlier call already did."""

    run_id: str
    task_id: str
    requeued: bool
    attempt: int
    status: str

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``retry --json`` shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "requeued": self.requeued,
            "already_requeued": not self.requeued,
            "attempt": self.attempt,
            "status": self.status,
        }


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica of a replicated task and what it counts for."""

    id: str
    agent: str
    node: str
    status: str
    vote: int | None = None
    """vote: its answer's index in ``FusionInfo.tally`` (None: no usable answer)."""
    weight: float | None = None
    score: float | None = None
    error: str = ""

    def to_json(self, rule: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "agent": self.agent, "node": self.node, "status": self.status}
        key = {"vote": "vote", "weighted": "weight", "best": "score"}.get(rule)
        if key:
            out[key] = getattr(self, key)
        out["error"] = self.error
        return out


@dataclass(frozen=True)
class FusionInfo:
    """A replicated task's rule (``replicas`` + ``fusion``) and where its replicas stand."""

    rule: str
    replicas: int
    quorum: int
    weights: tuple[float, ...]
    agents: tuple[str, ...]
    judge: str
    standings: tuple[ReplicaInfo, ...]
    tally: tuple[Any, ...] = ()
    """vote: [{"answer", "votes", "replicas"}] so far."""

    @classmethod
    def from_pb(cls, f: pb.Fusion) -> FusionInfo:
        return cls(
            f.rule,
            f.replicas,
            f.quorum,
            tuple(f.weights),
            tuple(f.agents),
            f.judge,
            tuple(
                ReplicaInfo(
                    r.id,
                    r.agent,
                    r.node,
                    _task_status(r.status),
                    r.vote if r.HasField("vote") else None,
                    r.weight if r.HasField("weight") else None,
                    r.score if r.HasField("score") else None,
                    r.error,
                )
                for r in f.standings
            ),
            tuple(_json(f.tally_json) or ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "count": self.replicas,
            "quorum": self.quorum,
            "weights": list(self.weights),
            "agents": list(self.agents),
            "judge": self.judge,
            "replicas": [r.to_json(self.rule) for r in self.standings],
            "tally": list(self.tally),
        }


@dataclass(frozen=True)
class CompensationInfo:
    """One compensation of a saga (``RunInfo.compensations``): its task is also in ``tasks``."""

    task_id: str
    """The compensated task."""
    compensation_id: str
    agent: str
    status: str
    attempt: int
    node: str
    error: str
    output: Any
    started_ms: int
    finished_ms: int
    after: tuple[str, ...]
    """The compensations it waited for (reverse dependency order)."""

    @classmethod
    def from_pb(cls, c: pb.CompensationStep) -> CompensationInfo:
        return cls(
            c.task_id,
            c.compensation_id,
            c.agent,
            _task_status(c.status),
            c.attempt,
            c.node,
            c.error,
            _json(c.output_json),
            c.started_ms,
            c.finished_ms,
            tuple(c.after),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "compensation_id": self.compensation_id,
            "agent": self.agent,
            "status": self.status,
            "attempt": self.attempt,
            "node": self.node,
            "error": self.error,
            "output": self.output,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "after": list(self.after),
        }


@dataclass(frozen=True)
class GateInfo:
    """A task's approval gate (``TaskInfo.gate``): ``decision`` is "" while it is open."""

    id: int
    opened_ms: int
    deadline_ms: int
    decision: str
    by: str
    comment: str
    decided_ms: int

    @classmethod
    def from_pb(cls, g: pb.ApprovalGate) -> GateInfo:
        return cls(g.id, g.opened_ms, g.deadline_ms, g.decision, g.by, g.comment, g.decided_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "opened_ms": self.opened_ms,
            "deadline_ms": self.deadline_ms,
            "decision": self.decision,
            "by": self.by,
            "comment": self.comment,
            "decided_ms": self.decided_ms,
        }


@dataclass(frozen=True)
class AttemptInfo:
    """An ended attempt (``TaskInfo.history``); ``output`` is kept for an output a rerun replaced."""

    attempt: int
    node: str
    started_ms: int
    finished_ms: int
    outcome: str
    error: str
    output: Any = None

    @classmethod
    def from_pb(cls, a: pb.TaskAttempt) -> AttemptInfo:
        return cls(a.attempt, a.node, a.started_ms, a.finished_ms, a.outcome, a.error, _json(a.output_json))

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "node": self.node,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "outcome": self.outcome,
            "error": self.error,
            "output": self.output,
        }


@dataclass(frozen=True)
class ApprovalInfo:
    """An open approval gate (``Client.approvals``)."""

    run_id: str
    task_id: str
    gate: int
    agent: str
    prompt: str
    opened_ms: int
    deadline_ms: int
    on_timeout: str

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``approvals --json`` item shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "gate": self.gate,
            "agent": self.agent,
            "prompt": self.prompt,
            "opened_ms": self.opened_ms,
            "deadline_ms": self.deadline_ms,
            "on_timeout": self.on_timeout,
        }


@dataclass(frozen=True)
class DecisionInfo:
    """The answer of ``Client.approve``: ``applied`` False means the gate was already decided so."""

    run_id: str
    task_id: str
    applied: bool
    gate: int
    decision: str
    by: str
    comment: str
    decided_ms: int
    status: str

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``approve --json`` shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "applied": self.applied,
            "already_decided": not self.applied,
            "gate": self.gate,
            "decision": self.decision,
            "by": self.by,
            "comment": self.comment,
            "decided_ms": self.decided_ms,
            "status": self.status,
        }


@dataclass(frozen=True)
class RunControlInfo:
    """The answer of ``Client.pause`` / ``resume``: ``changed`` False means it already was so."""

    run_id: str
    status: str
    changed: bool
    stopped: int = 0

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``pause --json`` / ``resume --json`` shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "changed": self.changed,
            "stopped": self.stopped,
        }


@dataclass(frozen=True)
class RerunInfo:
    """The answer of ``Client.rerun``."""

    run_id: str
    task_id: str
    reset: int
    dropped: int
    reopened: bool
    status: str
    run_status: str

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``rerun --json`` shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "reset": self.reset,
            "dropped": self.dropped,
            "reopened": self.reopened,
            "status": self.status,
            "run_status": self.run_status,
        }


@dataclass(frozen=True)
class TaskInfo:
    id: str
    agent: str
    status: str
    attempt: int
    node: str
    output: Any
    error: str
    deps: tuple[str, ...]
    token: int
    started_ms: int
    finished_ms: int
    usage: UsageInfo = UsageInfo()
    preempted_by: tuple[PreemptionInfo, ...] = ()
    waiting_reason: str = ""
    """Why a READY task is not running yet (derived when read; "" otherwise)."""
    requires: tuple[str, ...] = ()
    requeued_attempt: int = 0
    """The last dead attempt ``retry`` requeued (0: never)."""
    suspect_moves: int = 0
    """Attempts moved off a member the leader suspected (not down); at most ``MAX_SUSPECT_MOVES`` (2)."""
    fusion: FusionInfo | None = None
    """Set for a task submitted with ``replicas``: its rule and its replicas' standing."""
    compensate: dict[str, Any] | None = None
    """Its saga step ``{"agent", "input"}``, if it declares one."""
    gate: GateInfo | None = None
    """Its approval gate, once opened."""
    history: tuple[AttemptInfo, ...] = ()
    """Its ended attempts, oldest first (the newest 16)."""
    approval: dict[str, Any] | None = None
    """Its ``approval`` spec (prompt, timeout_ms, on_timeout), if it has one."""
    parent: str = ""
    """The task this one is a child of (a map instance's map task, ...); "" if submitted."""
    origin: str = ""
    """"" (submitted), "map", "replica", "judge", "spawn" or "compensation"."""
    index: int = 0
    """A map instance's (or replica's) position among its siblings."""
    item: Any = None
    """A map instance's item."""
    children: tuple[str, ...] = ()
    children_waiting: int = 0
    depth: int = 0
    """Spawn depth (0: submitted)."""
    when: Any = None
    trigger: str = ""
    map: str = ""
    max_parallel: int = 0

    @classmethod
    def from_pb(cls, t: pb.Task) -> TaskInfo:
        # The fields are set in one step rather than by the generated __init__, which sets each
        # of the 33 through object.__setattr__ (frozen): half the parse of a run's final state,
        # 9 of 19 us a task. The same fields, in the same order, as ``cls(...)`` would set.
        info = object.__new__(cls)
        object.__setattr__(
            info,
            "__dict__",
            {
                "id": t.id,
                "agent": t.agent,
                "status": _task_status(t.status),
                "attempt": t.attempt,
                "node": t.node,
                "output": _json(t.output_json),
                "error": t.error,
                "deps": tuple(t.deps),
                "token": t.token,
                "started_ms": t.started_ms,
                "finished_ms": t.finished_ms,
                "usage": UsageInfo.from_pb(t.usage),
                "preempted_by": tuple(
                    PreemptionInfo(p.by_run_id, p.by_task_id, p.attempt, p.at_ms) for p in t.preempted_by
                )
                if t.preempted_by
                else (),
                "waiting_reason": t.waiting_reason,
                "requires": tuple(t.requires) if t.requires else (),
                "requeued_attempt": t.requeued_attempt,
                "suspect_moves": t.suspect_moves,
                "fusion": FusionInfo.from_pb(t.fusion) if t.HasField("fusion") else None,
                "compensate": {"agent": t.compensate.agent, "input": _json(t.compensate.input_json)}
                if t.HasField("compensate")
                else None,
                "gate": GateInfo.from_pb(t.gate) if t.HasField("gate") else None,
                "history": tuple(AttemptInfo.from_pb(a) for a in t.history) if t.history else (),
                "approval": {
                    "prompt": t.approval.prompt,
                    "timeout_ms": t.approval.timeout_ms,
                    "on_timeout": t.approval.on_timeout,
                }
                if t.HasField("approval")
                else None,
                "parent": t.parent,
                "origin": t.origin,
                "index": t.index,
                "item": _json(t.item_json),
                "children": tuple(t.children) if t.children else (),
                "children_waiting": t.children_waiting,
                "depth": t.depth,
                "when": _json(t.when_json),
                "trigger": t.trigger,
                "map": t.map,
                "max_parallel": t.max_parallel,
            },
        )
        return info


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str
    tasks: dict[str, TaskInfo]
    error: str = ""
    name: str = ""
    created_ms: int = 0
    finished_ms: int = 0
    revision: int = 0
    usage: UsageInfo = UsageInfo()
    spawned_bytes: int = 0
    """Encoded size of the task specs its attempts spawned (``ctx.spawn``; limited per run)."""
    reason: str = ""
    """Why it ended as it did: TASK_FAILED, CANCELLED, BUDGET_EXCEEDED, ... ("" succeeded or running)."""
    budget: dict[str, float] | None = None
    """``max_tasks``, ``max_seconds``, ``max_cost``, ``max_tokens`` (0: no limit), or None."""
    budget_deadline_ms: int = 0
    """When ``max_seconds`` runs out (0: no such limit)."""
    compensations: tuple[CompensationInfo, ...] = ()
    namespace: str = ""
    """The namespace it was submitted into ("" the default one)."""
    submitter: str = ""
    """Who submitted it: ``token:SUBJECT`` on a cluster with tokens (the peer address on an open one)."""
    trace_id: str = ""
    """The W3C trace id the run was submitted under: its attempts, messages and log lines carry it."""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_pb(cls, r: pb.Run) -> RunInfo:
        return cls(
            r.run_id,
            _run_status(r.status),
            {t.id: TaskInfo.from_pb(t) for t in r.tasks},
            r.error,
            r.name,
            r.created_ms,
            r.finished_ms,
            r.revision,
            UsageInfo.from_pb(r.usage),
            r.spawned_bytes,
            r.reason,
            {
                "max_tasks": r.budget.max_tasks,
                "max_seconds": r.budget.max_seconds,
                "max_cost": r.budget.max_cost,
                "max_tokens": r.budget.max_tokens,
            }
            if r.HasField("budget")
            else None,
            r.budget_deadline_ms,
            tuple(CompensationInfo.from_pb(c) for c in r.compensations),
            namespace=r.namespace,
            submitter=r.submitter,
            trace_id=r.trace_id,
        )

    def budget_json(self) -> dict[str, Any] | None:
        """The budget with the usage against it (``used``); seconds only once the run ended."""
        if self.budget is None:
            return None
        ended = self.finished_ms and self.status in TERMINAL
        return self.budget | {
            "deadline_ms": self.budget_deadline_ms,
            "used": {
                "tasks": len(self.tasks) - len(self.compensations),
                "seconds": (self.finished_ms - self.created_ms) / 1000 if ended else None,
                "cost": self.usage.cost,
                "tokens": self.usage.tokens_in + self.usage.tokens_out,
            },
        }

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``--json`` shape (a stable contract)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "tasks": {
                t.id: {
                    "status": t.status,
                    "output": t.output,
                    "node": t.node,
                    "attempt": t.attempt,
                    "error": t.error,
                    "usage": t.usage.to_json(),
                    "preempted_by": [p.to_json() for p in t.preempted_by],
                    "waiting_reason": t.waiting_reason,
                    "requires": list(t.requires),
                    "requeued_attempt": t.requeued_attempt,
                    "suspect_moves": t.suspect_moves,
                    "fusion": t.fusion.to_json() if t.fusion is not None else None,
                    "compensate": t.compensate,
                    "approval": t.approval,
                    "gate": t.gate.to_json() if t.gate else None,
                    "history": [a.to_json() for a in t.history],
                    "parent": t.parent,
                    "origin": t.origin,
                    "index": t.index,
                    "item": t.item,
                    "children": list(t.children),
                    "children_waiting": t.children_waiting,
                    "depth": t.depth,
                    "when": t.when,
                    "trigger": t.trigger,
                    "map": t.map,
                    "max_parallel": t.max_parallel,
                    "agent": t.agent,
                    "deps": list(t.deps),
                    "started_ms": t.started_ms,
                    "finished_ms": t.finished_ms,
                }
                for t in self.tasks.values()
            },
            "usage": self.usage.to_json(),
            "spawned_bytes": self.spawned_bytes,
            "reason": self.reason,
            "budget": self.budget_json(),
            "compensations": [c.to_json() for c in self.compensations],
            "namespace": self.namespace,
            "submitter": self.submitter,
            "trace_id": self.trace_id,
            "name": self.name,
            "created_ms": self.created_ms,
            "finished_ms": self.finished_ms,
        }


@dataclass(frozen=True)
class RunEvent:
    """One event of ``Client.watch``: a snapshot, a task change or a run status change."""

    revision: int
    kind: str
    """"snapshot", "task" or "run"."""
    run: RunInfo | None = None
    task_id: str = ""
    status: str = ""
    attempt: int = 0
    node: str = ""
    error: str = ""

    @classmethod
    def from_pb(cls, e: pb.RunEvent) -> RunEvent:
        which = e.WhichOneof("event")
        if which == "snapshot":
            run = RunInfo.from_pb(e.snapshot)
            return cls(e.revision, "snapshot", run=run, status=run.status)
        if which is None:
            return cls(e.revision, "heartbeat")
        if which == "task":
            return cls(
                e.revision,
                "task",
                task_id=e.task.task_id,
                status=_task_status(e.task.status),
                attempt=e.task.attempt,
                node=e.task.node,
            )
        return cls(e.revision, "run", status=_run_status(e.run.status), error=e.run.error)


@dataclass(frozen=True)
class OfferInfo:
    """An agent type as a member offers it."""

    agent: str
    capabilities: tuple[str, ...]
    concurrency: int
    running: int
    breaker_failures: int
    breaker_cooldown_ms: int
    timeout_ms: int
    retries: int

    @classmethod
    def from_pb(cls, o: pb.AgentOffer) -> OfferInfo:
        return cls(
            o.agent,
            tuple(o.capabilities),
            o.concurrency,
            o.running,
            o.breaker_failures,
            o.breaker_cooldown_ms,
            o.timeout_ms,
            o.retries,
        )


@dataclass(frozen=True)
class BreakerInfo:
    """The circuit breaker of one agent type on one member (closed ones with no failures are left out)."""

    agent: str
    state: str
    """"closed", "open" or "half_open"."""
    failures: int
    open_until_ms: int


@dataclass(frozen=True)
class MemberInfo:
    id: str
    grpc: str
    raft: str
    up: bool
    connected: bool
    agents: tuple[str, ...]
    slots: int
    running: int
    offers: tuple[OfferInfo, ...] = ()
    breakers: tuple[BreakerInfo, ...] = ()
    suspect: bool = False
    """The leader lost touch with it lately (no Raft answers or heartbeats): no new work goes
    there until it is heard again for a second; a member silent on Raft for a second also has
    its running attempts moved (README "Failure handling")."""


@dataclass(frozen=True)
class ClusterInfo:
    leader: str
    term: int
    members: list[MemberInfo] = field(default_factory=list)
    node_id: str = ""
    commit_index: int = 0
    last_applied: int = 0
    revision: int = 0
    has_quorum: bool = False
    digest: str = ""
    snapshots_loaded: int = 0
    log_entries: int = 0
    messaging: dict[str, int] = field(default_factory=dict)
    """The answering node's fast-path message counters (README "Messages")."""

    @classmethod
    def from_pb(cls, s: pb.ClusterStatusResponse) -> ClusterInfo:
        return cls(
            s.leader,
            s.term,
            [
                MemberInfo(
                    m.id,
                    m.grpc,
                    m.raft,
                    m.up,
                    m.connected,
                    tuple(m.agents),
                    m.slots,
                    m.running,
                    tuple(OfferInfo.from_pb(o) for o in m.offers),
                    tuple(BreakerInfo(b.agent, b.state, b.failures, b.open_until_ms) for b in m.breakers),
                    m.suspect,
                )
                for m in s.members
            ],
            s.node_id,
            s.commit_index,
            s.last_applied,
            s.revision,
            s.has_quorum,
            s.digest,
            s.snapshots_loaded,
            s.log_entries,
            dict(sorted(s.messaging.items())),
        )

    def to_json(self) -> dict[str, Any]:
        """The CLI's ``status --json`` shape (a stable contract)."""
        return {
            "leader": self.leader or None,
            "term": self.term,
            "node_id": self.node_id,
            "commit_index": self.commit_index,
            "revision": self.revision,
            "members": [
                {
                    "id": m.id,
                    "grpc": m.grpc,
                    "raft": m.raft,
                    "up": m.up,
                    "connected": m.connected,
                    "suspect": m.suspect,
                    "agents": list(m.agents),
                    "slots": m.slots,
                    "running": m.running,
                    "offers": [
                        {
                            "agent": o.agent,
                            "capabilities": list(o.capabilities),
                            "concurrency": o.concurrency,
                            "running": o.running,
                            "timeout_ms": o.timeout_ms,
                            "retries": o.retries,
                            "breaker_failures": o.breaker_failures,
                            "breaker_cooldown_ms": o.breaker_cooldown_ms,
                        }
                        for o in m.offers
                    ],
                    "breakers": [
                        {
                            "agent": b.agent,
                            "state": b.state,
                            "failures": b.failures,
                            "open_until_ms": b.open_until_ms,
                        }
                        for b in m.breakers
                    ],
                }
                for m in self.members
            ],
            "messaging": dict(self.messaging),
        }


def run_summary_json(r: pb.RunSummary) -> dict[str, Any]:
    """A run summary as ``Client.list_runs`` and ``raftmesh runs --json`` give it (a stable contract)."""
    return {
        "run_id": r.run_id,
        "status": _run_status(r.status),
        "name": r.name,
        "tasks": r.tasks,
        "unfinished": r.unfinished,
        "created_ms": r.created_ms,
        "finished_ms": r.finished_ms,
        "error": r.error,
        "reason": r.reason,
        "idempotency_key": r.idempotency_key,
        "namespace": r.namespace,
    }


def whoami_json(w: pb.WhoAmIResponse) -> dict[str, Any]:
    """``Client.whoami`` and ``raftmesh whoami --json``."""
    return {
        "principal": w.principal,
        "role": w.role,
        "namespaces": list(w.namespaces),
        "auth": w.auth,
        "node_id": w.node_id,
        "methods": list(w.methods),
    }
