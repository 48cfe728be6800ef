"""Conversions between the wire (protobuf) and the state machine's types."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..consensus import budgets, fusion, sagas, values
from ..consensus.approvals import ApprovalView
from ..consensus.breakers import state_of
from ..consensus.commands import AgentOffer, Approval, Budget, Compensation, TaskSpec, Usage
from ..consensus.dead_letters import DeadLetterView
from ..consensus.state import ClusterState, Member, RunState, RunStatus, TaskState, TaskStatus
from ..errors import InvalidArgument
from ..proto.raftmesh.v1 import cluster_pb2 as pb

if TYPE_CHECKING:
    from ..storage.audit import AuditRow

TASK_STATUS = {s: getattr(pb, f"TASK_STATUS_{s.value}") for s in TaskStatus}
RUN_STATUS = {s: getattr(pb, f"RUN_STATUS_{s.value}") for s in RunStatus}
RUN_STATUS_FROM_PB = {v: k for k, v in RUN_STATUS.items()}


_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
"""``json.dumps(value, separators=(",", ":"), allow_nan=False)`` without building an encoder a call."""


def dump_json(value: Any) -> str:
    return "" if value is None else _ENCODE(value)


def load_json(what: str, text: str) -> Any:
    try:
        return values.parse(text)
    except values.BadValue as exc:
        if exc.syntax:
            raise InvalidArgument(
                f'{what} is not valid JSON ({exc}); send a JSON value, e.g. {{"x": 1}}'
            ) from exc
        raise InvalidArgument(f"{what}: {exc}") from exc


def task_specs_from_pb(
    req: pb.SubmitRunRequest, defaults: Mapping[str, AgentOffer] | None = None
) -> tuple[TaskSpec, ...]:
    """The request's tasks; unset ``retries``/``timeout_ms`` take the agent type's offer in
    ``defaults`` (``members.task_defaults``, as ``with_defaults`` does), else 0.

    Per task, only what the task sets is decoded (the leader runs this for every submitted
    task: 19 us a task, a tenth of SubmitRun's CPU, before the label and empty fields were
    skipped and the defaults folded in instead of a ``dataclasses.replace`` per task).
    """
    specs = []
    run_priority = req.priority
    for i, t in enumerate(req.tasks):
        deps = tuple(t.deps)
        if t.map and t.map not in deps:  # a map's source is a dependency whether listed or not
            deps += (t.map,)
        retries, timeout_ms = t.retries, t.timeout_ms
        offer = defaults.get(t.agent) if defaults else None
        if offer is not None:
            if not t.HasField("retries"):
                retries = offer.retries
            if not t.HasField("timeout_ms"):
                timeout_ms = offer.timeout_ms
        specs.append(
            TaskSpec(
                id=t.id,
                agent=t.agent,
                input=_task_json(t, i, "input_json", t.input_json),
                deps=deps,
                retries=retries,
                priority=t.priority or run_priority,
                timeout_ms=timeout_ms,
                retry_backoff_ms=t.retry_backoff_ms,
                locks=tuple((lk.name, lk.mode or "exclusive") for lk in t.locks) if t.locks else (),
                requires=tuple(t.requires) if t.requires else (),
                replicas=t.replicas,
                fusion=t.fusion,
                quorum=t.quorum,
                weights=tuple(t.weights) if t.weights else (),
                agents=tuple(t.agents) if t.agents else (),
                judge=t.judge,
                compensate=Compensation(
                    t.compensate.agent, _task_json(t, i, "compensate.input_json", t.compensate.input_json)
                )
                if t.HasField("compensate")
                else None,
                approval=approval_from_pb(t.approval) if t.HasField("approval") else None,
                when=_task_json(t, i, "when_json", t.when_json),
                trigger=t.trigger,
                map=t.map,
                max_parallel=t.max_parallel,
            )
        )
    return tuple(specs)


def _task_json(t: pb.TaskSpec, i: int, field: str, text: str) -> Any:
    """``load_json`` of a task's field; its label is made only for the error."""
    if not text:
        return None
    try:
        return values.parse(text)
    except values.BadValue:
        label = f"task {t.id[:40]!r}" if t.id else f"task #{i + 1}"
        return load_json(f"{label}: {field}", text)  # raises the same error, with the label


def budget_from_pb(req: pb.SubmitRunRequest) -> Budget | None:
    """The request's budget (None: unset, or every figure 0), checked as ``apply`` checks it."""
    if not req.HasField("budget"):
        return None
    b = req.budget
    budget = Budget(b.max_tasks, b.max_seconds, b.max_cost, b.max_tokens)
    why = budgets.problem(budget, budgets.fixed_tasks(req.tasks))
    if why:
        raise InvalidArgument(why)
    return budgets.normal(budget)


def budget_to_pb(b: Budget) -> pb.Budget:
    return pb.Budget(
        max_tasks=b.max_tasks, max_seconds=b.max_seconds, max_cost=b.max_cost, max_tokens=b.max_tokens
    )


def compensations_to_pb(run: RunState) -> list[pb.CompensationStep]:
    """The saga record: each compensation task, with the compensated task and what it waited for."""
    return [
        pb.CompensationStep(
            task_id=t.parent,
            compensation_id=t.spec.id,
            agent=t.spec.agent,
            status=TASK_STATUS[t.status],
            attempt=t.attempt,
            node=t.node,
            error=t.error,
            output_json=dump_json(t.output),
            started_ms=t.started_ms,
            finished_ms=t.finished_ms,
            after=list(t.spec.deps[1:]),
        )
        for t in sagas.steps(run)
    ]


def approval_from_pb(a: pb.ApprovalSpec) -> Approval:
    return Approval(a.prompt, a.timeout_ms, a.on_timeout or "reject")


def approval_to_pb(a: Approval) -> pb.ApprovalSpec:
    return pb.ApprovalSpec(prompt=a.prompt, timeout_ms=a.timeout_ms, on_timeout=a.on_timeout)


def control_fields(t: TaskState) -> dict[str, Any]:
    """The approval, gate and attempt history of a ``Task`` message."""
    out: dict[str, Any] = {
        "history": [
            pb.TaskAttempt(
                attempt=a.attempt,
                node=a.node,
                started_ms=a.started_ms,
                finished_ms=a.finished_ms,
                outcome=a.outcome,
                error=a.error,
                output_json=dump_json(a.output),
            )
            for a in t.history
        ]
    }
    if t.spec.approval is not None:
        out["approval"] = approval_to_pb(t.spec.approval)
    g = t.gate
    if g is not None:
        out["gate"] = pb.ApprovalGate(
            id=g.id,
            opened_ms=g.opened_ms,
            deadline_ms=g.deadline_ms,
            decision=g.decision,
            by=g.by,
            comment=g.comment,
            decided_ms=g.decided_ms,
        )
    return out


def approval_view_to_pb(v: ApprovalView) -> pb.PendingApproval:
    return pb.PendingApproval(
        run_id=v.run_id,
        task_id=v.task_id,
        gate=v.gate,
        agent=v.agent,
        prompt=v.prompt,
        opened_ms=v.opened_ms,
        deadline_ms=v.deadline_ms,
        on_timeout=v.on_timeout,
    )


def with_defaults(
    req: pb.SubmitRunRequest, specs: tuple[TaskSpec, ...], defaults: Mapping[str, AgentOffer]
) -> tuple[TaskSpec, ...]:
    """``specs`` (from ``req``) with each unset ``retries``/``timeout_ms`` taken from the
    agent type's offer (``members.task_defaults``); a type with no offer keeps 0."""
    out = []
    for t, spec in zip(req.tasks, specs, strict=True):
        offer = defaults.get(spec.agent)
        if offer is not None and not (t.HasField("retries") and t.HasField("timeout_ms")):
            spec = replace(
                spec,
                retries=t.retries if t.HasField("retries") else offer.retries,
                timeout_ms=t.timeout_ms if t.HasField("timeout_ms") else offer.timeout_ms,
            )
        out.append(spec)
    return tuple(out)


def task_to_pb(t: TaskState, run: RunState | None = None) -> pb.Task:
    """``run``: the task's run, to show where a replicated task's replicas stand.

    The fields most tasks leave at their default are set only when set (the same message: an
    unset field and a default one encode alike): the leader encodes every task of a run it
    serves whole (the final run of a wait), and passing every field cost 20 us a task.
    """
    spec = t.spec
    msg = pb.Task(
        id=spec.id,
        agent=spec.agent,
        status=TASK_STATUS[t.status],
        attempt=t.attempt,
        node=t.node,
        output_json=dump_json(t.output),
        error=t.error,
        deps=spec.deps,
        token=t.token,
        retries_left=t.retries_left,
        started_ms=t.started_ms,
        finished_ms=t.finished_ms,
        input_json=dump_json(spec.input),
        usage=usage_to_pb(t.usage),
        requeued_attempt=t.requeued_attempt,
        suspect_moves=t.suspect_moves,
        parent=t.parent,
        origin=t.origin,
        index=t.index,
        children_waiting=t.children_waiting,
        depth=t.depth,
        trigger=spec.trigger,
        map=spec.map,
        max_parallel=spec.max_parallel,
    )
    if run is not None and spec.replicas:
        msg.fusion.CopyFrom(fusion_to_pb(run, t))
    if spec.requires:
        msg.requires.extend(spec.requires)
    if t.preempted_by:
        msg.preempted_by.extend(
            pb.Preemption(by_run_id=r, by_task_id=k, attempt=a, at_ms=at) for r, k, a, at in t.preempted_by
        )
    if spec.compensate is not None:
        msg.compensate.CopyFrom(
            pb.Compensation(agent=spec.compensate.agent, input_json=dump_json(spec.compensate.input))
        )
    if t.history or spec.approval is not None or t.gate is not None:
        for name, value in control_fields(t).items():
            if name == "history":
                getattr(msg, name).extend(value)
            else:
                getattr(msg, name).CopyFrom(value)
    if t.item is not None:
        msg.item_json = dump_json(t.item)
    if t.children:
        msg.children.extend(t.children)
    if spec.when is not None:
        msg.when_json = dump_json(spec.when)
    return msg


def fusion_to_pb(run: RunState, t: TaskState) -> pb.Fusion:
    spec = t.spec
    standings = [
        pb.ReplicaStanding(
            id=e["id"],
            agent=e["agent"],
            node=e["node"],
            status=TASK_STATUS[TaskStatus(e["status"])],
            vote=e.get("vote"),
            weight=e.get("weight"),
            score=e.get("score"),
            error=e["error"],
        )
        for e in fusion.standings(run, t)
    ]
    tally = fusion.vote_tally(run, t) if spec.fusion == "vote" else []
    return pb.Fusion(
        rule=spec.fusion,
        replicas=spec.replicas,
        quorum=fusion.quorum_of(spec),
        weights=list(spec.weights),
        agents=list(spec.agents),
        judge=spec.judge,
        standings=standings,
        tally_json=dump_json(tally) if tally else "",
    )


def usage_to_pb(u: Usage) -> pb.Usage:
    return pb.Usage(tokens_in=u.tokens_in, tokens_out=u.tokens_out, cost=u.cost)


def dead_letter_to_pb(d: DeadLetterView) -> pb.DeadLetter:
    return pb.DeadLetter(
        run_id=d.run_id,
        task_id=d.task_id,
        agent=d.agent,
        attempt=d.attempt,
        error=d.error,
        finished_ms=d.finished_ms,
    )


def run_to_pb(run: RunState, with_tasks: bool = True) -> pb.Run:
    return pb.Run(
        run_id=run.run_id,
        status=RUN_STATUS[run.status],
        tasks=[task_to_pb(t, run) for t in run.tasks.values()] if with_tasks else [],
        error=run.error,
        created_ms=run.created_ms,
        finished_ms=run.finished_ms,
        idempotency_key=run.idempotency_key,
        name=run.name,
        priority=run.priority,
        revision=run.revision,
        usage=usage_to_pb(run.usage),
        spawned_bytes=run.spawned_bytes,
        budget=budget_to_pb(run.budget) if run.budget is not None else None,
        reason=run.reason,
        compensations=compensations_to_pb(run) if with_tasks else [],
        budget_deadline_ms=run.budget_deadline_ms(),
        namespace=run.namespace,
        submitter=run.submitter,
        trace_id=run.trace_id,
    )


def member_extras_to_pb(st: ClusterState, m: Member, now_ms: int) -> dict[str, Any]:
    """The ``offers`` and ``breakers`` fields of a status ``Member`` (breaker state at ``now_ms``)."""
    offers = [
        pb.AgentOffer(
            agent=o.name,
            capabilities=list(o.capabilities),
            concurrency=o.concurrency,
            breaker_failures=o.breaker_failures,
            breaker_cooldown_ms=o.breaker_cooldown_ms,
            timeout_ms=o.timeout_ms,
            retries=o.retries,
            running=st.running_agent.get((m.node_id, o.name), 0),
        )
        for _, o in sorted(m.offers.items())
    ]
    breakers = [
        pb.AgentBreaker(
            agent=a,
            state=state_of(b, now_ms).value,
            failures=b.failures,
            open_until_ms=b.open_until_ms,
        )
        for a, b in sorted(m.breakers.items())
    ]
    return {"offers": offers, "breakers": breakers}


def run_summary_to_pb(run: RunState) -> pb.RunSummary:
    return pb.RunSummary(
        run_id=run.run_id,
        status=RUN_STATUS[run.status],
        name=run.name,
        tasks=len(run.tasks),
        unfinished=run.unfinished,
        created_ms=run.created_ms,
        finished_ms=run.finished_ms,
        error=run.error,
        idempotency_key=run.idempotency_key,
        reason=run.reason,
        namespace=run.namespace,
    )


def audit_event_to_pb(r: AuditRow) -> pb.AuditEvent:
    return pb.AuditEvent(
        revision=r.revision,
        time_ms=r.time_ms,
        kind=r.kind,
        task_id=r.task_id,
        attempt=r.attempt,
        node=r.node,
        principal=r.principal,
        request_id=r.request_id,
        trace_id=r.trace_id,
        detail_json=json.dumps(r.detail, separators=(",", ":"), sort_keys=True),
    )
