"""The run operations of both clients (submit, get, watch, approve, ...), as ``_core.Op``s.

Each function builds its request (idempotency key and request id made once, so every
attempt of the call carries the same one), runs it through ``Conn._failover`` (failover and
retries) and parses the answer into the SDK's info types; ``raftmesh.Client`` and
``raftmesh.aio.Client`` expose them as methods (``_core.sync_op`` and its async twin).
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import time
import uuid
from typing import Any

import grpc

from .. import calls, tracing
from ..errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ._core import RETRYABLE, SKIP, Conn, Op, Rpc, Sleep, StreamPlan, backoff, translate
from ._dag import DAG, Task, check_budget
from ._types import (
    TERMINAL,
    ApprovalInfo,
    ClusterInfo,
    DeadLetterInfo,
    DecisionInfo,
    RerunInfo,
    RetryInfo,
    RunControlInfo,
    RunEvent,
    RunInfo,
    run_summary_json,
    whoami_json,
)


def task_pb(t: Task) -> pb.TaskSpec:
    """A task as the wire carries it (a submit's tasks, and what ``ctx.spawn`` adds to a run).

    InvalidArgument naming the task and the key if a value does not fit its wire type (the
    builder checks them; this keeps a Task made by hand from escaping as a bare ValueError).
    """
    try:
        return _task_pb(t)
    except (ValueError, TypeError) as exc:
        key = next((k for k, v in vars(t).items() if not _fits(k, v)), "")
        named = f"{key} " if key else ""
        raise InvalidArgument(f"task {t.id!r}: {named}does not fit the wire format: {exc}") from None


def _fits(key: str, value: Any) -> bool:
    """Whether one Task field converts alone (only to name the culprit of a failed conversion)."""
    try:
        _task_pb(dataclasses.replace(Task("x", "x"), **{key: value}))
    except (ValueError, TypeError, KeyError):
        return False
    return True


def _task_pb(t: Task) -> pb.TaskSpec:
    return pb.TaskSpec(
        id=t.id,
        agent=t.agent,
        input_json="" if t.input is None else _dumps(t.input),
        deps=list(t.deps),
        retries=t.retries,  # None leaves the field unset: the agent's default
        priority=t.priority,
        timeout_ms=t.timeout_ms,
        retry_backoff_ms=t.retry_backoff_ms,
        locks=[pb.LockItem(name=n, mode=m) for n, m in t.locks],
        requires=list(t.requires),
        replicas=t.replicas,
        fusion=t.fusion,
        quorum=t.quorum,
        weights=list(t.weights),
        agents=list(t.agents),
        judge=t.judge,
        compensate=pb.Compensation(
            agent=t.compensate["agent"],
            input_json="" if t.compensate["input"] is None else _dumps(t.compensate["input"]),
        )
        if t.compensate is not None
        else None,
        approval=pb.ApprovalSpec(**t.approval) if t.approval is not None else None,
        when_json="" if t.when is None else _dumps(t.when),
        trigger=t.trigger,
        map=t.map,
        max_parallel=t.max_parallel,
    )


def submit(
    c: Conn,
    dag: DAG | dict[str, Any],
    *,
    idempotency_key: str | None = None,
    name: str | None = None,
    budget: dict[str, float] | None = None,
    namespace: str = "",
    trace_id: str | None = None,
) -> Op[str]:
    """Submit a run; returns its id. The same ``idempotency_key`` always returns the same id.

    ``budget`` (any of ``max_tasks``, ``max_seconds``, ``max_cost``, ``max_tokens``) replaces
    the DAG's budget figure by figure. ``namespace``: the run's ("" the default one); a token
    limited to namespaces may submit only into its own. ``trace_id`` (32 hex digits) is the run's trace
    (``RunInfo.trace_id``); without it the caller's active OpenTelemetry span's trace, else
    a new one (README Tracing)."""
    req = submit_request(
        dag, idempotency_key=idempotency_key, name=name, budget=budget, namespace=namespace, trace_id=trace_id
    )
    with tracing.pinned(trace_id or ""):
        resp: pb.SubmitRunResponse = yield from c._failover("Cluster", "SubmitRun", req)
    return resp.run_id


def submit_request(
    dag: DAG | dict[str, Any],
    *,
    idempotency_key: str | None = None,
    name: str | None = None,
    budget: dict[str, float] | None = None,
    namespace: str = "",
    trace_id: str | None = None,
) -> pb.SubmitRunRequest:
    """``submit``'s request (an idempotency key made here when none is given: every attempt,
    and a fallback to ``submit`` after ``SubmitAndWatchRun``, is the same run)."""
    if trace_id is not None and not calls.valid_trace_id(trace_id):
        raise InvalidArgument(
            f"trace_id {trace_id[:40]!r}: a W3C trace id is 32 lowercase hex digits, not all 0"
        )
    if isinstance(dag, dict):
        dag = DAG.from_dict(dag)
    figures = (dag.budget or {}) | (check_budget(budget) or {})
    key = idempotency_key or uuid.uuid4().hex  # one key for every attempt: a retry is the same run
    return pb.SubmitRunRequest(
        idempotency_key=key,
        name=name if name is not None else dag.name,
        priority=dag.priority,
        tasks=[task_pb(t) for t in dag.tasks.values()],
        budget=_budget_pb(figures),
        namespace=namespace,
    )


def get(c: Conn, run_id: str, *, stale_ok: bool = False) -> Op[RunInfo]:
    resp = yield from c._failover("Cluster", "GetRun", pb.GetRunRequest(run_id=run_id, stale_ok=stale_ok))
    return RunInfo.from_pb(resp)


def list_runs(
    c: Conn, limit: int = 100, status: str | None = None, offset: int = 0, namespace: str = ""
) -> Op[list[dict[str, Any]]]:
    """Run summaries, newest first (``offset`` pages further back); ``namespace``: only its runs
    (a token limited to namespaces sees only runs in them either way)."""
    req = pb.ListRunsRequest(
        limit=limit,
        offset=offset,
        namespace=namespace,
        status=pb.RunStatus.Name(pb.RunStatus.Value(f"RUN_STATUS_{status}")) if status else None,
    )
    resp: pb.ListRunsResponse = yield from c._failover("Cluster", "ListRuns", req)
    return [run_summary_json(r) for r in resp.runs]


def cancel(c: Conn, run_id: str, reason: str = "") -> Op[str]:
    """Cancel a run; returns its status afterwards (idempotent)."""
    req = pb.CancelRunRequest(run_id=run_id, reason=reason)
    resp: pb.CancelRunResponse = yield from c._failover("Cluster", "CancelRun", req)
    return pb.RunStatus.Name(resp.status).removeprefix("RUN_STATUS_")


def dead_letters(c: Conn, limit: int = 100) -> Op[list[DeadLetterInfo]]:
    """Tasks that failed for good in retained runs, newest first (at most 1000)."""
    if limit < 0:
        raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
    req = pb.ListDeadLettersRequest(limit=limit)
    resp: pb.ListDeadLettersResponse = yield from c._failover("Cluster", "ListDeadLetters", req)
    return [
        DeadLetterInfo(d.run_id, d.task_id, d.agent, d.attempt, d.error, d.finished_ms)
        for d in resp.dead_letters
    ]


def retry(
    c: Conn, run_id: str, task_id: str, *, attempt: int = 0, request_id: str | None = None
) -> Op[RetryInfo]:
    """Requeue a dead letter (its run goes back to RUNNING), exactly once.

    ``attempt``: the dead attempt to requeue (0: the task's current one). Asked again,
    by a retry of this call or a new one, the answer is ``requeued=False`` (already
    requeued). Raises ``NotFound`` for an unknown run or task and ``FailedPrecondition``
    for a task that is not a dead letter.
    """
    if attempt < 0:
        raise InvalidArgument(f"attempt must be >= 0 (0: the task's current dead attempt), got {attempt}")
    req = pb.RetryTaskRequest(
        run_id=run_id, task_id=task_id, attempt=attempt, request_id=request_id or uuid.uuid4().hex
    )
    resp: pb.RetryTaskResponse = yield from c._failover("Cluster", "RetryTask", req)
    return RetryInfo(
        run_id,
        task_id,
        resp.requeued,
        resp.attempt,
        pb.TaskStatus.Name(resp.status).removeprefix("TASK_STATUS_"),
    )


def approve(
    c: Conn,
    run_id: str,
    task_id: str,
    reject: bool = False,
    comment: str = "",
    by: str | None = None,
    *,
    request_id: str | None = None,
) -> Op[DecisionInfo]:
    """Approve (or ``reject``) the task's open approval gate, exactly once.

    The gate's id is read first and sent with the decision, so the call (and its retries)
    can only decide that gate, never one a later rerun opens. Deciding a decided gate the
    same way again answers with the first decision (``applied=False``); the other way
    raises ``FailedPrecondition`` naming who decided. ``by`` defaults to the OS user.
    """
    run = yield from get(c, run_id)
    t = run.tasks.get(task_id)
    if t is None:
        raise NotFound(f"run {run_id!r} has no task {task_id!r}")
    if t.gate is None:
        raise FailedPrecondition(
            f"task {task_id!r} of run {run_id!r} has no approval gate open (it is {t.status})"
            + ("" if t.approval else "; it has no approval")
        )
    req = pb.ApproveTaskRequest(
        run_id=run_id,
        task_id=task_id,
        gate=t.gate.id,
        reject=reject,
        by=_principal() if by is None else by,
        comment=comment,
        request_id=request_id or uuid.uuid4().hex,
    )
    resp: pb.ApproveTaskResponse = yield from c._failover("Cluster", "ApproveTask", req)
    if resp.gate != req.gate:  # a node answering for another gate (a reused request id)
        raise InvalidArgument(
            f"request id {req.request_id!r} was answered for gate {resp.gate}, not gate {req.gate} "
            f"of task {task_id!r}; use a new request id for each operation"
        )
    return DecisionInfo(
        run_id,
        task_id,
        resp.applied,
        resp.gate,
        resp.decision,
        resp.by,
        resp.comment,
        resp.decided_ms,
        pb.TaskStatus.Name(resp.status).removeprefix("TASK_STATUS_"),
    )


def approvals(
    c: Conn, run_id: str | None = None, limit: int = 100, after: ApprovalInfo | None = None
) -> Op[list[ApprovalInfo]]:
    """Open approval gates, oldest first, cluster-wide or of one run (at most 1000 a call;
    pass the last one as ``after`` for the next page)."""
    if limit < 0:
        raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
    req = pb.ListApprovalsRequest(run_id=run_id or "", limit=limit)
    if after is not None:
        req.after_gate, req.after_run_id, req.after_task_id = after.gate, after.run_id, after.task_id
    resp: pb.ListApprovalsResponse = yield from c._failover("Cluster", "ListApprovals", req)
    return [
        ApprovalInfo(a.run_id, a.task_id, a.gate, a.agent, a.prompt, a.opened_ms, a.deadline_ms, a.on_timeout)
        for a in resp.approvals
    ]


def pause(
    c: Conn, run_id: str, cancel_running: bool = False, *, request_id: str | None = None
) -> Op[RunControlInfo]:
    """Pause a run: nothing new starts; running attempts finish, or with ``cancel_running``
    are stopped and requeued (no retry used). Idempotent."""
    req = pb.PauseRunRequest(
        run_id=run_id, cancel_running=cancel_running, request_id=request_id or uuid.uuid4().hex
    )
    return _control_info(run_id, (yield from c._failover("Cluster", "PauseRun", req)))


def resume(c: Conn, run_id: str, *, request_id: str | None = None) -> Op[RunControlInfo]:
    """Resume a paused run (its READY tasks queue again). Idempotent."""
    req = pb.ResumeRunRequest(run_id=run_id, request_id=request_id or uuid.uuid4().hex)
    return _control_info(run_id, (yield from c._failover("Cluster", "ResumeRun", req)))


def rerun(c: Conn, run_id: str, task_id: str, *, request_id: str | None = None) -> Op[RerunInfo]:
    """Run an ended task and everything downstream of it again (new attempts; upstream outputs
    kept; earlier attempts stay in each task's ``history``). A finished run reopens."""
    req = pb.RerunTaskRequest(run_id=run_id, task_id=task_id, request_id=request_id or uuid.uuid4().hex)
    resp: pb.RerunTaskResponse = yield from c._failover("Cluster", "RerunTask", req)
    return RerunInfo(
        run_id,
        task_id,
        resp.reset,
        resp.dropped,
        resp.reopened,
        pb.TaskStatus.Name(resp.status).removeprefix("TASK_STATUS_"),
        pb.RunStatus.Name(resp.run_status).removeprefix("RUN_STATUS_"),
    )


def ended(c: Conn, run_id: str) -> Op[RunInfo]:
    """The run a watch saw end: read where it was streamed (that node has applied the end, so
    no barrier is needed), else anywhere."""
    reply = yield Rpc(
        "Cluster", "GetRun", pb.GetRunRequest(run_id=run_id, stale_ok=True), c.timeout_s, c._last_watch_addr
    )
    if isinstance(reply, grpc.RpcError):
        return (yield from get(c, run_id))
    return RunInfo.from_pb(reply)


def status(c: Conn, *, include_digest: bool = False) -> Op[ClusterInfo]:
    req = pb.ClusterStatusRequest(include_digest=include_digest)
    return ClusterInfo.from_pb((yield from c._failover("Cluster", "ClusterStatus", req)))


def whoami(c: Conn) -> Op[dict[str, Any]]:
    """Who this client is to the cluster: ``principal``, ``role``, ``namespaces``, ``auth``
    (whether the nodes check tokens), ``node_id`` (the node that answered) and ``methods``
    (the full gRPC method names the role may call)."""
    return whoami_json((yield from c._failover("Cluster", "WhoAmI", pb.WhoAmIRequest())))


def status_of(
    c: Conn, address: str, *, include_digest: bool = False, timeout_s: float = 2.0
) -> Op[ClusterInfo]:
    """Status as one specific node sees it (no failover)."""
    req = pb.ClusterStatusRequest(include_digest=include_digest)
    return ClusterInfo.from_pb((yield from c._once(address, "Cluster", "ClusterStatus", req, timeout_s)))


RUN_WAIT_SLICE_S = 30.0
"""The longest one ``RunToEnd`` call waits: a node that hangs without breaking the connection (its
keepalive answered, its event loop stuck) holds ``run`` at most this long before it asks again
(the same idempotency key: the same run). A stream's watchdog caught that after 5 s of silence."""
RUN_RPC_MARGIN_S = 2.0
"""The call's deadline past its ``wait_ms``: the node answers a run still going before it."""
RUN_ID_METADATA = "raftmesh-run-id"
"""The trailing metadata key naming the run of a ``RunToEnd`` that answered DEADLINE_EXCEEDED."""


def run_to_end(c: Conn, submit: pb.SubmitRunRequest, timeout_s: float | None) -> Op[RunInfo | None]:
    """``run``: ``RunToEnd``, one unary call that submits and answers the ended run (a sync client
    reads no stream: grpc starts a channel spin thread per server stream). Asked again while the run
    goes on (each call waits ``RUN_WAIT_SLICE_S`` at most) and after a dropped connection, on the
    next node after a backoff, with the same request: its idempotency key names the same run. None
    if the node does not have ``RunToEnd`` (UNIMPLEMENTED, remembered per address): the caller
    falls back to the stream."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    run_id = ""
    attempt = 0
    while True:
        left = RUN_WAIT_SLICE_S if deadline is None else min(RUN_WAIT_SLICE_S, deadline - time.monotonic())
        if left <= 0:
            named = f"run {run_id}" if run_id else "the run"
            raise DeadlineExceeded(
                f"{named} did not finish within {timeout_s} s"
                + (f"; it is still going: client.wait({run_id!r})" if run_id else "")
            )
        req = pb.RunToEndRequest(submit=submit, wait_ms=max(1, math.ceil(left * 1000)))
        addr = c.addresses[c._current]
        if addr in c._without_run_to_end:
            return None
        reply = yield Rpc("Cluster", "RunToEnd", req, left + RUN_RPC_MARGIN_S, addr)
        if not isinstance(reply, grpc.RpcError):
            c._last_watch_addr = addr
            return RunInfo.from_pb(reply)
        code = reply.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            c._without_run_to_end.add(addr)
            return None
        going = _run_going(reply)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and going:
            run_id, attempt = str(going), 0  # the node answered in time: the run is still going
            continue
        if code not in RETRYABLE:
            raise translate(reply) from None
        c._rotate()
        attempt += 1
        yield Sleep(backoff(attempt))


def _run_going(exc: grpc.RpcError) -> str:
    """The run a RunToEnd that answered DEADLINE_EXCEEDED names ("" none): (key, value) pairs
    from either driver (sync: ``_Metadatum`` tuples, aio: ``grpc.aio.Metadata``)."""
    pairs: Any = exc.trailing_metadata() or ()
    return next((str(v) for k, v in pairs if k == RUN_ID_METADATA), "")


class RunWatch(StreamPlan):
    """``watch``: a snapshot first (again after any reconnect), then changes, until the run ends.

    ``status_only`` streams just the run's status (a snapshot without tasks, then run events).
    ``final_run`` (``wait``): the node sends the whole ended run on the last event (``final``),
    so no read follows; a node that does not (an older one) leaves ``final`` None."""

    service = "Cluster"
    method = "WatchRun"

    def __init__(
        self, c: Conn, run_id: str, timeout_s: float | None, status_only: bool, final_run: bool = False
    ) -> None:
        super().__init__(c, timeout_s)
        self.run_id = run_id
        self.status_only = status_only
        self.final_run = final_run
        self.final: RunInfo | None = None

    def start(self) -> tuple[str, Any, float | None] | None:
        opened = super().start()
        if opened is not None:
            self.conn._last_watch_addr = opened[0]
        return opened

    def request(self) -> Any:
        return pb.WatchRunRequest(run_id=self.run_id, status_only=self.status_only, final_run=self.final_run)

    def parse(self, msg: pb.RunEvent) -> Any:
        ev = RunEvent.from_pb(msg)
        if ev.kind == "heartbeat":
            return SKIP
        self.done = ev.status in TERMINAL and ev.kind in ("run", "snapshot")
        if self.done and msg.HasField("final"):
            self.final = RunInfo.from_pb(msg.final)
        return ev

    def check(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> None:
        if self.deadline is not None and self.remaining() == 0:
            raise DeadlineExceeded(f"run {self.run_id} did not finish within {self.timeout_s} s") from None
        super().check(code, exc, silent)


class SubmitWatch(RunWatch):
    """``run``: ``SubmitAndWatchRun`` (one call: the submit, then the run's status until it ends,
    the last event with the whole run). A reconnect before the run's id is known submits again
    (the same idempotency key: the same run); after, it watches that run (``WatchRun``).

    A node without ``SubmitAndWatchRun`` (an older one) sets ``unsupported`` before anything was
    submitted: the caller then submits and waits with the same request."""

    def __init__(self, c: Conn, submit: pb.SubmitRunRequest, timeout_s: float | None) -> None:
        super().__init__(c, "", timeout_s, status_only=True, final_run=True)
        self.submit = submit
        self.unsupported = False

    def request(self) -> Any:
        if self.run_id:
            self.method = "WatchRun"
            return super().request()
        self.method = "SubmitAndWatchRun"
        return pb.SubmitAndWatchRunRequest(submit=self.submit, status_only=True)

    def parse(self, msg: pb.RunEvent) -> Any:
        if msg.HasField("snapshot") and not self.run_id:
            self.run_id = msg.snapshot.run_id
        return super().parse(msg)

    def failed(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> float | None:
        if code == grpc.StatusCode.UNIMPLEMENTED and not self.run_id:
            self.unsupported = True
            return None
        return super().failed(code, exc, silent)


class RunsWatch(StreamPlan):
    """``watch_runs``: a snapshot of the newest runs (again after any reconnect or resync), then
    changed summaries. Endless: a node that ends the stream (it is stopping) is left for the
    next one like a failed one; ``timeout_s`` ends it quietly."""

    service = "Cluster"
    method = "WatchRuns"

    def __init__(
        self, c: Conn, limit: int, status: str | None, namespace: str, timeout_s: float | None
    ) -> None:
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
        super().__init__(c, timeout_s)
        self.req = pb.WatchRunsRequest(
            limit=limit,
            namespace=namespace,
            status=pb.RunStatus.Name(pb.RunStatus.Value(f"RUN_STATUS_{status}")) if status else None,
        )

    def request(self) -> pb.WatchRunsRequest:
        return self.req

    def parse(self, msg: pb.RunsEvent) -> Any:
        if msg.is_snapshot:
            return {"snapshot": [run_summary_json(r) for r in msg.snapshot]}
        if msg.HasField("changed"):
            return {"run": run_summary_json(msg.changed)}
        return SKIP  # a heartbeat

    def failed(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> float | None:
        if self.deadline is not None and self.remaining() == 0:
            return None  # timeout_s passed: the watch ends quietly
        return super().failed(code, exc, silent)

    def ended(self) -> float | None:
        return self.failed(grpc.StatusCode.UNAVAILABLE, None, False)


def _dumps(value: Any) -> str:
    import json

    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"task input is not JSON-serializable: {exc}") from exc


def _budget_pb(figures: dict[str, float]) -> pb.Budget | None:
    if not figures:
        return None
    try:
        return pb.Budget(
            max_tasks=int(figures.get("max_tasks", 0)),
            max_seconds=figures.get("max_seconds", 0.0),
            max_cost=figures.get("max_cost", 0.0),
            max_tokens=int(figures.get("max_tokens", 0)),
        )
    except ValueError as exc:  # an integer past uint64
        raise InvalidArgument(f"budget: {exc}") from exc


def _principal() -> str:
    """Who decides by default: the OS user ("" lets the node name the caller's address)."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (getuser raises OSError or KeyError)
        return ""


def _control_info(run_id: str, resp: pb.RunControlResponse) -> RunControlInfo:
    return RunControlInfo(
        run_id, pb.RunStatus.Name(resp.status).removeprefix("RUN_STATUS_"), resp.changed, resp.stopped
    )
