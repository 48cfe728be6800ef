"""The synchronous Python client: fails over between nodes and retries safely.

Every call may be retried: writes carry an idempotency key (submit) or are
idempotent by nature (cancel), so UNAVAILABLE and DEADLINE_EXCEEDED are retried
on the next node with exponential backoff and jitter until ``retry_deadline_s``.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from .. import calls, tracing
from ..errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RaftmeshError,
    error_for_code,
)
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ._dag import DAG, Task, check_budget
from ._security import Credentials
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

if TYPE_CHECKING:
    from ._audit import AuditTrail
    from ._messages import MessagesClient

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
STREAM_SILENCE_S = 5.0
"""Servers send a heartbeat every second on idle streams; this much silence means the node stalled."""


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


class Watchdog:
    """Cancels a streaming call that receives nothing for ``silence_s`` (a paused or cut-off node)."""

    def __init__(self, call: Any, silence_s: float = STREAM_SILENCE_S) -> None:
        import threading

        self._call = call
        self._silence_s = silence_s
        self._last = time.monotonic()
        self._stop = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._watch, daemon=True, name="stream-watchdog")
        self._thread.start()

    def feed(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if time.monotonic() - self._last > self._silence_s:
                self.fired = True
                self._call.cancel()
                return

    def close(self) -> None:
        self._stop.set()


MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def parse_addresses(addresses: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A list, or a comma-separated string; None reads ``RAFTMESH_ADDRESSES``."""
    if addresses is None:
        addresses = os.environ.get("RAFTMESH_ADDRESSES", "")
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    out = [a.strip() for a in addresses if a and a.strip()]
    if not out:
        raise InvalidArgument("no node addresses: pass host:port,... or set RAFTMESH_ADDRESSES")
    return out


_TLS_FAILURES = ("handshake failed", "CERTIFICATE_VERIFY_FAILED", "Hostname Verification")
"""What grpc's connection errors say when the TLS handshake, not the node, failed."""


def _translate(exc: grpc.RpcError) -> RaftmeshError:
    code = exc.code()
    details = exc.details() or str(code)
    if code == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _TLS_FAILURES):
        details += (
            " (TLS: --ca / RAFTMESH_CA must be the CA that signed the nodes' certificates, and they "
            "must cover the address's host, or set RAFTMESH_SERVER_NAME)"
        )
    return error_for_code(code.name if code else "UNKNOWN", details)


class Client:
    """``Client(["127.0.0.1:7001", ...])`` or ``Client()`` with ``RAFTMESH_ADDRESSES`` set."""

    def __init__(
        self,
        addresses: str | list[str] | tuple[str, ...] | None = None,
        *,
        timeout_s: float = 10.0,
        retry_deadline_s: float = 30.0,
        token: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """``token``/``ca``/``cert``/``key`` (or a ``Credentials``) secure the calls; each one not
        given is read from ``RAFTMESH_TOKEN`` / ``RAFTMESH_CA`` / ``RAFTMESH_CERT`` / ``RAFTMESH_KEY``."""
        self.addresses = parse_addresses(addresses)
        self.credentials = credentials or Credentials.resolve(token, ca, cert, key)
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        self._channels: dict[str, grpc.Channel] = {}
        self._current = random.randrange(len(self.addresses))
        self.client_id = uuid.uuid4().hex[:12]
        self._last_watch_addr = self.addresses[self._current]
        from ._coord import KvClient, LockClient

        self.kv = KvClient(self)
        """Versioned KV store: get/put/delete/cas/txn/list/watch/leases."""
        self.locks = LockClient(self)
        """The raw lock API; prefer ``lock(...)``."""
        self._messages: MessagesClient | None = None

    @property
    def messages(self) -> MessagesClient:
        """Agent messaging: send/request/publish/subscribe, dead letters, activations."""
        if self._messages is None:  # imported on first use: it loads the message codec
            from ._messages import MessagesClient

            self._messages = MessagesClient(self)
        return self._messages

    # ---- plumbing --------------------------------------------------------------

    def _stub(self, addr: str) -> pb_grpc.ClusterStub:
        return pb_grpc.ClusterStub(self._channel(addr))

    def _channel(self, addr: str) -> grpc.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self.credentials.channel(
                addr,
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # A node that stops answering (paused, partitioned) breaks the connection within
                    # ~4 s instead of leaving a stream hanging until its deadline.
                    ("grpc.keepalive_time_ms", 2000),
                    ("grpc.keepalive_timeout_ms", 2000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.http2.min_time_between_pings_ms", 1000),
                ],
                extra=tracing.client_metadata,  # every call carries its trace (raftmesh.tracing)
            )
            self._channels[addr] = ch
        return ch

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self.addresses)

    def _call(self, method: str, request: Any, timeout_s: float | None = None, stub: Any = None) -> Any:
        deadline = time.monotonic() + self.retry_deadline_s
        attempt = 0
        make_stub = stub or self._stub
        while True:
            addr = self.addresses[self._current]
            try:
                return getattr(make_stub(addr), method)(request, timeout=timeout_s or self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE or time.monotonic() >= deadline:
                    raise _translate(exc) from None
            self._rotate()
            attempt += 1
            time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- runs ----------------------------------------------------------------------

    def submit(
        self,
        dag: DAG | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        name: str | None = None,
        budget: dict[str, float] | None = None,
        namespace: str = "",
        trace_id: str | None = None,
    ) -> str:
        """Submit a run; returns its id. The same ``idempotency_key`` always returns the same id.

        ``budget`` (any of ``max_tasks``, ``max_seconds``, ``max_cost``, ``max_tokens``) replaces
        the DAG's budget figure by figure. ``namespace``: the run's ("" the default one); a token
        limited to namespaces may submit only into its own. ``trace_id`` (32 hex digits) is the run's trace
        (``RunInfo.trace_id``); without it the caller's active OpenTelemetry span's trace, else
        a new one (README Tracing)."""
        if trace_id is not None and not calls.valid_trace_id(trace_id):
            raise InvalidArgument(
                f"trace_id {trace_id[:40]!r}: a W3C trace id is 32 lowercase hex digits, not all 0"
            )
        if isinstance(dag, dict):
            dag = DAG.from_dict(dag)
        figures = (dag.budget or {}) | (check_budget(budget) or {})
        key = idempotency_key or uuid.uuid4().hex
        req = pb.SubmitRunRequest(
            idempotency_key=key,
            name=name if name is not None else dag.name,
            priority=dag.priority,
            tasks=[task_pb(t) for t in dag.tasks.values()],
            budget=_budget_pb(figures),
            namespace=namespace,
        )
        with tracing.pinned(trace_id or ""):
            resp: pb.SubmitRunResponse = self._call("SubmitRun", req)
        return resp.run_id

    def get(self, run_id: str, *, stale_ok: bool = False) -> RunInfo:
        return RunInfo.from_pb(self._call("GetRun", pb.GetRunRequest(run_id=run_id, stale_ok=stale_ok)))

    def list_runs(
        self, limit: int = 100, status: str | None = None, offset: int = 0, namespace: str = ""
    ) -> list[dict[str, Any]]:
        """Run summaries, newest first (``offset`` pages further back); ``namespace``: only its runs
        (a token limited to namespaces sees only runs in them either way)."""
        req = pb.ListRunsRequest(
            limit=limit,
            offset=offset,
            namespace=namespace,
            status=pb.RunStatus.Name(pb.RunStatus.Value(f"RUN_STATUS_{status}")) if status else None,
        )
        resp: pb.ListRunsResponse = self._call("ListRuns", req)
        return [
            {
                "run_id": r.run_id,
                "status": pb.RunStatus.Name(r.status).removeprefix("RUN_STATUS_"),
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
            for r in resp.runs
        ]

    def audit(self, run_id: str, limit: int = 1000) -> AuditTrail:
        """The run's audit timeline (also for finished and evicted runs), oldest first, at most
        ``limit`` events: the first node whose archive holds the whole history answers; if none
        does, the longest answer with ``complete`` False. Raises ``RunNotFound`` if no node knows it."""
        from ._audit import fetch_audit

        return fetch_audit(self, run_id, limit)

    def cancel(self, run_id: str, reason: str = "") -> str:
        """Cancel a run; returns its status afterwards (idempotent)."""
        resp: pb.CancelRunResponse = self._call(
            "CancelRun", pb.CancelRunRequest(run_id=run_id, reason=reason)
        )
        return pb.RunStatus.Name(resp.status).removeprefix("RUN_STATUS_")

    def dead_letters(self, limit: int = 100) -> list[DeadLetterInfo]:
        """Tasks that failed for good in retained runs, newest first (at most 1000)."""
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
        resp: pb.ListDeadLettersResponse = self._call(
            "ListDeadLetters", pb.ListDeadLettersRequest(limit=limit)
        )
        return [
            DeadLetterInfo(d.run_id, d.task_id, d.agent, d.attempt, d.error, d.finished_ms)
            for d in resp.dead_letters
        ]

    def retry(
        self, run_id: str, task_id: str, *, attempt: int = 0, request_id: str | None = None
    ) -> RetryInfo:
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
        resp: pb.RetryTaskResponse = self._call("RetryTask", req)
        return RetryInfo(
            run_id,
            task_id,
            resp.requeued,
            resp.attempt,
            pb.TaskStatus.Name(resp.status).removeprefix("TASK_STATUS_"),
        )

    def approve(
        self,
        run_id: str,
        task_id: str,
        reject: bool = False,
        comment: str = "",
        by: str | None = None,
        *,
        request_id: str | None = None,
    ) -> DecisionInfo:
        """Approve (or ``reject``) the task's open approval gate, exactly once.

        The gate's id is read first and sent with the decision, so the call (and its retries)
        can only decide that gate, never one a later rerun opens. Deciding a decided gate the
        same way again answers with the first decision (``applied=False``); the other way
        raises ``FailedPrecondition`` naming who decided. ``by`` defaults to the OS user.
        """
        run = self.get(run_id)
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
        resp: pb.ApproveTaskResponse = self._call("ApproveTask", req)
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
        self, run_id: str | None = None, limit: int = 100, after: ApprovalInfo | None = None
    ) -> list[ApprovalInfo]:
        """Open approval gates, oldest first, cluster-wide or of one run (at most 1000 a call;
        pass the last one as ``after`` for the next page)."""
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
        req = pb.ListApprovalsRequest(run_id=run_id or "", limit=limit)
        if after is not None:
            req.after_gate, req.after_run_id, req.after_task_id = after.gate, after.run_id, after.task_id
        resp: pb.ListApprovalsResponse = self._call("ListApprovals", req)
        return [
            ApprovalInfo(
                a.run_id, a.task_id, a.gate, a.agent, a.prompt, a.opened_ms, a.deadline_ms, a.on_timeout
            )
            for a in resp.approvals
        ]

    def pause(
        self, run_id: str, cancel_running: bool = False, *, request_id: str | None = None
    ) -> RunControlInfo:
        """Pause a run: nothing new starts; running attempts finish, or with ``cancel_running``
        are stopped and requeued (no retry used). Idempotent."""
        req = pb.PauseRunRequest(
            run_id=run_id, cancel_running=cancel_running, request_id=request_id or uuid.uuid4().hex
        )
        return _control_info(run_id, self._call("PauseRun", req))

    def resume(self, run_id: str, *, request_id: str | None = None) -> RunControlInfo:
        """Resume a paused run (its READY tasks queue again). Idempotent."""
        req = pb.ResumeRunRequest(run_id=run_id, request_id=request_id or uuid.uuid4().hex)
        return _control_info(run_id, self._call("ResumeRun", req))

    def rerun(self, run_id: str, task_id: str, *, request_id: str | None = None) -> RerunInfo:
        """Run an ended task and everything downstream of it again (new attempts; upstream outputs
        kept; earlier attempts stay in each task's ``history``). A finished run reopens."""
        req = pb.RerunTaskRequest(run_id=run_id, task_id=task_id, request_id=request_id or uuid.uuid4().hex)
        resp: pb.RerunTaskResponse = self._call("RerunTask", req)
        return RerunInfo(
            run_id,
            task_id,
            resp.reset,
            resp.dropped,
            resp.reopened,
            pb.TaskStatus.Name(resp.status).removeprefix("TASK_STATUS_"),
            pb.RunStatus.Name(resp.run_status).removeprefix("RUN_STATUS_"),
        )

    def watch(
        self, run_id: str, *, timeout_s: float | None = None, status_only: bool = False
    ) -> Iterator[RunEvent]:
        """Events of a run until it ends: a snapshot first (again after any reconnect), then changes.

        ``status_only`` streams just the run's status (a snapshot without tasks, then run events).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            addr = self.addresses[self._current]
            self._last_watch_addr = addr
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                req = pb.WatchRunRequest(run_id=run_id, status_only=status_only)
                stream = self._stub(addr).WatchRun(req, timeout=remaining)
                dog = Watchdog(stream)
                try:
                    for e in stream:
                        dog.feed()
                        attempt = 0
                        ev = RunEvent.from_pb(e)
                        if ev.kind == "heartbeat":
                            continue
                        yield ev
                        if ev.status in TERMINAL and ev.kind in (
                            "run",
                            "snapshot",
                        ):
                            return
                    return
                finally:
                    dog.close()
            except grpc.RpcError as exc:
                code = exc.code()
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(f"run {run_id} did not finish within {timeout_s} s") from None
                if code not in _RETRYABLE and not (code == grpc.StatusCode.CANCELLED and dog.fired):
                    raise _translate(exc) from None
            self._rotate()
            attempt += 1
            time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))

    def watch_runs(
        self,
        *,
        limit: int = 100,
        status: str | None = None,
        namespace: str = "",
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every run the caller may see, live: ``{"snapshot": [summary, ...]}`` first (the ``limit``
        newest, again after any reconnect or resync), then ``{"run": summary}`` for each run whose
        status or progress changed (a new run too; at most one per run per ~200 ms). Summaries
        are ``list_runs`` dicts. Endless: ``timeout_s`` ends the iteration quietly after that long;
        a node that fails or stalls is left for the next one, as ``watch`` does."""
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (0: the default 100), got {limit}")
        req = pb.WatchRunsRequest(
            limit=limit,
            namespace=namespace,
            status=pb.RunStatus.Name(pb.RunStatus.Value(f"RUN_STATUS_{status}")) if status else None,
        )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            addr = self.addresses[self._current]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            dog: Watchdog | None = None
            try:
                stream = self._stub(addr).WatchRuns(req, timeout=remaining)
                dog = Watchdog(stream)
                try:
                    for e in stream:
                        dog.feed()
                        attempt = 0
                        if e.is_snapshot:
                            yield {"snapshot": [run_summary_json(r) for r in e.snapshot]}
                        elif e.HasField("changed"):
                            yield {"run": run_summary_json(e.changed)}
                finally:
                    dog.close()
            except grpc.RpcError as exc:
                code = exc.code()
                if deadline is not None and time.monotonic() >= deadline:
                    return
                fired = dog is not None and dog.fired
                if code not in _RETRYABLE and not (code == grpc.StatusCode.CANCELLED and fired):
                    raise _translate(exc) from None
            # A stream the node ended (it is stopping) is reconnected like a failed one.
            self._rotate()
            attempt += 1
            time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))

    def wait(self, run_id: str, *, timeout_s: float | None = None) -> RunInfo:
        """Block until the run ends; returns it with every task's output."""
        for _ in self.watch(run_id, timeout_s=timeout_s, status_only=True):
            pass
        # The node that streamed the end has applied it: read there without another barrier.
        addr = self._last_watch_addr
        try:
            resp = self._stub(addr).GetRun(
                pb.GetRunRequest(run_id=run_id, stale_ok=True), timeout=self.timeout_s
            )
            return RunInfo.from_pb(resp)
        except grpc.RpcError:
            return self.get(run_id)

    def run(self, dag: DAG | dict[str, Any], *, timeout_s: float | None = None, **kw: Any) -> RunInfo:
        """Submit and wait."""
        return self.wait(self.submit(dag, **kw), timeout_s=timeout_s)

    # ---- locks ---------------------------------------------------------------------------

    def lock(
        self,
        names: str | list[str],
        *,
        ttl_s: float = 10.0,
        mode: str = "exclusive",
        wait_s: float = 30.0,
        priority: int = 0,
        owner: str | None = None,
    ) -> Any:
        """``with client.lock("db:orders", ttl_s=10) as lease:`` — held (and renewed) inside the block.

        ``lease.token`` is the fencing token; ``lease.fence()`` guards KV writes with it.
        Several names are acquired all at once. Raises ``DeadlineExceeded`` if not granted
        within ``wait_s`` and ``Aborted`` if chosen as a deadlock victim.
        """
        from ._coord import LockContext

        return LockContext(
            self,
            [names] if isinstance(names, str) else list(names),
            ttl_s=ttl_s,
            mode=mode,
            wait_s=wait_s,
            priority=priority,
            owner=owner,
        )

    # ---- cluster -----------------------------------------------------------------------

    def status(self, *, include_digest: bool = False) -> ClusterInfo:
        return ClusterInfo.from_pb(
            self._call("ClusterStatus", pb.ClusterStatusRequest(include_digest=include_digest))
        )

    def whoami(self) -> dict[str, Any]:
        """Who this client is to the cluster: ``principal``, ``role``, ``namespaces``, ``auth``
        (whether the nodes check tokens), ``node_id`` (the node that answered) and ``methods``
        (the full gRPC method names the role may call)."""
        return whoami_json(self._call("WhoAmI", pb.WhoAmIRequest()))

    def status_of(self, address: str, *, include_digest: bool = False, timeout_s: float = 2.0) -> ClusterInfo:
        """Status as one specific node sees it (no failover)."""
        try:
            return ClusterInfo.from_pb(
                self._stub(address).ClusterStatus(
                    pb.ClusterStatusRequest(include_digest=include_digest), timeout=timeout_s
                )
            )
        except grpc.RpcError as exc:
            raise _translate(exc) from None


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
