"""The ``raftmesh.v1.Cluster`` gRPC service, served by every node.

Errors become gRPC statuses in ``raftmesh.node.rpc`` (the one place, for every
service). Writes go through the Raft log (pysyncobj forwards a follower's entries
to the leader); reads are linearizable through a read barrier unless ``stale_ok``,
and read the replica through ``NodeAccess.reads`` (O(answer) under the apply lock).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from .. import calls, redaction
from ..agents._llm import input_secret_error
from ..consensus import approvals, limits
from ..consensus.commands import (
    AgentOffer,
    ApproveTask,
    Budget,
    CancelRun,
    PauseRun,
    RerunTask,
    ResumeRun,
    RetryTask,
    SubmitRun,
    TaskSpec,
)
from ..consensus.dag import DagError, validate
from ..consensus.dead_letters import list_dead_letters
from ..consensus.members import task_defaults
from ..consensus.placement import waiting_reasons
from ..consensus.results import (
    ApproveTaskResult,
    CancelRunResult,
    RerunTaskResult,
    RetryTaskResult,
    RunChanged,
    RunControlResult,
    SubmitRunResult,
    TaskChanged,
    expect,
)
from ..consensus.state import TERMINAL_RUN, ClusterState, RunState, RunStatus, TaskStatus
from ..errors import (
    DagCycleError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NoLeader,
    NotFound,
    ResourceExhausted,
    RunNotFound,
    UnknownAgentError,
    UnknownDependencyError,
)
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ..security import ownership
from ..security.roles import METHOD_ROLES, Role, allows
from ..storage.audit import AuditArchive
from . import convert, rpc, staging
from .access import NodeAccess
from .proposer import new_request_id
from .watch import RESYNC, WatchHub

MAX_LIST_RUNS = 1000
DEFAULT_AUDIT_EVENTS = 1000
MAX_AUDIT_EVENTS = 10_000
AUDIT_FLUSH_WAITS = 4
"""GetAudit calls waiting at once for the audit writer (each holds a default-executor thread)."""
AUDIT_FLUSH_S = 2.0
STREAM_HEARTBEAT_S = 1.0
"""Idle server streams send an empty event this often; clients treat 5 s of silence as a dead node."""
RUNS_COALESCE_S = 0.2
"""WatchRuns sends at most one summary a run per this long (a busy run's task events coalesce)."""
PREFER_LEADER_MAX_TASKS = 4
"""A submit of at most this many tasks names the leader for its roots (``SubmitRun.prefer``): a
small run's tasks skip the follower's apply and the forward of their completion. A larger one
names nobody: its root's node places the fan-out it readies there first (the reporter's rule),
and the leader already spends the most CPU per task (bench.py fan-out, leader-placed root)."""
RUN_WAIT_MARGIN_S = 0.05
"""RunToEnd answers this long before the caller's deadline, so its answer (naming the run) arrives."""
RUN_ID_METADATA = "raftmesh-run-id"
"""The trailing metadata key of a RunToEnd that answered DEADLINE_EXCEEDED: the run still going."""
_DAG_ERRORS: dict[str, type[InvalidArgument]] = {
    "limit": LimitExceeded,
    "cycle": DagCycleError,
    "unknown_agent": UnknownAgentError,
    "unknown_dep": UnknownDependencyError,
}


def _for_caller(run: pb.Run) -> pb.Run:
    """``run`` as the calling principal may see it: a ``reader`` sees secrets in inputs as "***"."""
    call = calls.current()
    if call is not None and call.role != Role.READER.label:
        return run
    if call is None:
        return run  # no call bound: a node-internal read
    out: pb.Run = redaction.redact_message(run)
    return out


def _check_run_id(run_id: str) -> None:
    if not run_id:
        raise InvalidArgument("run_id is required")
    if len(run_id) > limits.MAX_ID_CHARS:
        raise InvalidArgument(
            f"run_id is {len(run_id)} characters long; run ids are at most {limits.MAX_ID_CHARS}"
        )


StatusFn = Callable[[bool], pb.ClusterStatusResponse]
"""include_digest -> this node's view of the cluster (``NodeRuntime.status_pb``)."""


SUBMIT_OFF_LOOP_TASKS = 256
"""A submit of at least this many tasks is decoded and validated in a worker thread."""


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(
        self,
        node: NodeAccess,
        hub: WatchHub,
        status: StatusFn,
        audit: AuditArchive | None = None,
        node_id: str = "",
        auth: bool = False,
        leader_id: Callable[[], str] | None = None,
    ) -> None:
        self.node = node
        self._leader_id = leader_id
        """The leader's node id as this node sees it ("" none known): a submit names it as the
        place its ready tasks prefer (``SubmitRun.prefer``)."""
        self._hub = hub
        self._status = status
        self._audit = audit
        self._node_id = node_id
        self._auth = auth
        self._flush_waits = asyncio.Semaphore(AUDIT_FLUSH_WAITS)
        self._run_waits = 0
        """RunToEnd calls waiting on this node (at most ``limits.MAX_RUN_WAITS``)."""

    # ---- audit ------------------------------------------------------------

    @rpc.unary
    async def GetAudit(
        self, request: pb.GetAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAuditResponse:
        _check_run_id(request.run_id)
        limit = request.limit or DEFAULT_AUDIT_EVENTS
        if limit > MAX_AUDIT_EVENTS:
            raise InvalidArgument(f"limit must be at most {MAX_AUDIT_EVENTS}")
        audit = self._audit
        if audit is None:
            raise FailedPrecondition(
                "this node keeps no audit archive (--audit-max-runs 0); ask another node"
            )
        if self.node.has_leader():
            # What was committed before the call is in this replica, then in the archive.
            await self.node.barrier(context)
        # Without a leader: what this replica applied, so the answer is as fresh as its state.
        applied = self.node.reads.read(lambda st: st.revision)
        async with self._flush_waits:
            flushed = await asyncio.to_thread(audit.flush, AUDIT_FLUSH_S, applied)
        tl = await asyncio.to_thread(audit.timeline, request.run_id, limit)
        live = self.node.reads.read(
            lambda st: (r.namespace, r.submitter) if (r := st.runs.get(request.run_id)) else None
        )
        if not tl.known and live is None:
            raise RunNotFound(f"run {request.run_id!r} has no audit timeline on node {self._node_id}")
        # The run's namespace from the state, or (it left the state) as the archive kept it: a token
        # limited to namespaces sees only theirs.
        first = tl.rows[0] if tl.rows and tl.rows[0].kind == "submitted" else None
        namespace = live[0] if live else tl.namespace
        if namespace is None and first is not None:  # an archive written before it kept the namespace
            namespace = str(first.detail.get("namespace", ""))
        if namespace is None:
            if ownership.restricted():
                # Not PERMISSION_DENIED: the SDK stops at that, and another node may hold the submission.
                raise FailedPrecondition(
                    f"node {self._node_id} lacks the submission of run {request.run_id!r}, so cannot "
                    "tell its namespace; ask another node"
                )
            namespace = ""
        ownership.check_run(namespace, live[1] if live else "", request.run_id)
        return pb.GetAuditResponse(
            events=[convert.audit_event_to_pb(r) for r in tl.rows],
            # Rows applied here but not yet written may be missing: not complete (the SDK asks on).
            complete=tl.complete and flushed,
            node_id=self._node_id,
        )

    # ---- runs -------------------------------------------------------------

    @rpc.unary
    async def SubmitRun(
        self, request: pb.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRunResponse:
        return await self._submit(request, context)

    def _prepare_submit(
        self, request: pb.SubmitRunRequest
    ) -> tuple[str | None, tuple[TaskSpec, ...], Budget | None]:
        """A submit's checks and its decoded tasks, in the order the caller's errors are
        reported: (the run of its idempotency key if it exists, (), None) or (None, the task
        specs, the budget). Raises the caller's error. Pure CPU and reads: any thread."""
        node = self.node
        key = request.idempotency_key

        def lookup(
            st: ClusterState,
        ) -> tuple[str | None, dict[str, set[tuple[str, ...]]], dict[str, AgentOffer]]:
            # O(members x agent types): the same scan the state machine makes for the submit.
            defaults = task_defaults(st, {t.agent for t in request.tasks})
            return (st.idempotency.get(key) if key else None), st.offered_capabilities(), defaults

        # Read before the tasks are decoded, so unset retries/timeout_ms take the agent type's
        # defaults in the same pass (a side-effect-free read: the errors below keep their order).
        existing, known, defaults = node.reads.read(lookup)
        specs = convert.task_specs_from_pb(request, defaults)
        budget = convert.budget_from_pb(request)
        if not node.has_leader():
            # Known agent types come from the replicated state: without a leader there is no
            # state to validate against, so say what is wrong (no leader), not "unknown agent".
            raise NoLeader(
                "this node knows no Raft leader (an election is on, or it is cut off); retry shortly or on another node (with the same idempotency key)"
            )
        ownership.check_namespace(request.namespace, "submitting a run")
        for t in specs:  # a task's declared locks are held by the node, for the caller
            for name, _ in t.locks:
                ownership.check_key(name)
        if existing is not None:
            return existing, (), None
        # Unset retries/timeout_ms took the agent type's defaults above, before the command is
        # logged: the logged spec is explicit, so apply never depends on who offers what.
        try:
            validate(specs, known)
        except DagError as exc:
            raise _DAG_ERRORS.get(exc.kind, InvalidArgument)(str(exc)) from exc
        for t in specs:  # a secret in an input would be replicated to every log and snapshot
            why = input_secret_error(t.agent, t.input)
            if not why and t.compensate is not None:
                why = input_secret_error(t.compensate.agent, t.compensate.input)
            if why:
                raise InvalidArgument(f"task {t.id!r}: {why}")
        if len(request.name) > limits.MAX_RUN_NAME_CHARS:
            raise InvalidArgument(f"name is longer than {limits.MAX_RUN_NAME_CHARS} characters")
        if not limits.printable(request.name):
            raise InvalidArgument(f"name {request.name[:40]!r} may not contain control characters")
        why = limits.request_id_error("idempotency_key", key) or limits.namespace_error(request.namespace)
        if why:
            raise InvalidArgument(why)
        return None, specs, budget

    async def _submit(
        self, request: pb.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRunResponse:
        node = self.node
        key = request.idempotency_key
        if len(request.tasks) >= SUBMIT_OFF_LOOP_TASKS:
            # Decoding and validating 10,000 tasks holds the thread for ~0.5 s of CPU (py-spy of
            # the leader during a 10,000-task submit: 610 of its event loop's 783 busy samples):
            # on the loop, every other call of the node (reads, watches, heartbeat answers)
            # waited for all of it. In a worker the loop gets the GIL back every switch interval.
            # The context (the caller's principal) goes with it (``asyncio.to_thread``).
            existing, specs, budget = await asyncio.to_thread(self._prepare_submit, request)
        else:
            existing, specs, budget = self._prepare_submit(request)
        if existing is not None:
            # The key's run, only to a caller that may see it (keys are cluster-wide).
            found = node.reads.read(functools.partial(_run_owner, run_id=existing))
            if found is not None:
                ownership.check_run(found[0], found[1], existing)
            return pb.SubmitRunResponse(run_id=existing, created=False)
        cmd = SubmitRun(
            request_id=f"s-{key}" if key else new_request_id("s-"),
            ts_ms=node.clock.now_ms(),
            run_id=new_request_id("r-")[:14],
            idempotency_key=key,
            tasks=specs,
            priority=request.priority,
            name=request.name,
            submitter=ownership.principal_or(context.peer() or ""),
            budget=budget,
            namespace=request.namespace,
            prefer=self._leader_id()
            if self._leader_id is not None and len(specs) <= PREFER_LEADER_MAX_TASKS
            else "",
        )
        res = await staging.propose_submit(node, cmd, self._node_id, context)  # large runs: in parts
        out = expect(res, SubmitRunResult)
        if key:
            # The key's run may have been made elsewhere after the lookup above (this node had not
            # applied it yet; the dedup table then answers the first submit's result, created
            # or not): the same check, or a limited token would learn another namespace's run.
            found = node.reads.read(functools.partial(_run_owner, run_id=out.run_id))
            if found is not None:
                ownership.check_run(found[0], found[1], out.run_id)
        return pb.SubmitRunResponse(run_id=out.run_id, created=out.created)

    @rpc.unary
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        _check_run_id(request.run_id)
        if not request.stale_ok:
            await self.node.barrier(context)
        read = await self.node.reads.run_async(request.run_id)
        if read is None:
            raise RunNotFound(f"run {request.run_id!r} not found")
        ownership.check_run(read.run.namespace, read.run.submitter, request.run_id)
        return _for_caller(self._with_waiting_reasons(read.run))

    def _with_waiting_reasons(self, run: pb.Run) -> pb.Run:
        """``run`` with each READY task's ``waiting_reason``: derived now from this replica and
        this node's clock (it changes with every member and breaker, so it is never cached)."""
        ready = [t.id for t in run.tasks if t.status == pb.TASK_STATUS_READY]
        if not ready:
            return run
        now = self.node.clock.now_ms()
        reasons = self.node.reads.read(lambda st: waiting_reasons(st, run.run_id, ready, now))
        if not reasons:
            return run
        out = pb.Run()
        out.CopyFrom(run)  # the cached encoding is shared: never changed in place
        for t in out.tasks:
            t.waiting_reason = reasons.get(t.id, "")
        return out

    @rpc.unary
    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        limit = request.limit or 100
        if limit > MAX_LIST_RUNS:
            raise InvalidArgument(f"limit must be at most {MAX_LIST_RUNS}")
        want = convert.RUN_STATUS_FROM_PB.get(request.status) if request.status else None
        if request.status and want is None:  # a status this server does not know: not "any status"
            raise InvalidArgument(f"unknown run status {request.status}")
        why = limits.namespace_error(request.namespace)
        if why:
            raise InvalidArgument(why)
        if request.namespace:
            ownership.check_namespace(request.namespace, "listing its runs")
        await self.node.barrier(context)
        # Filtered while paging (offset counts the runs the caller may see): O(1) a run.
        page = functools.partial(
            _runs_page,
            want=want,
            only=request.namespace,
            limited=ownership.restricted(),
            offset=request.offset,
            limit=limit,
        )
        return pb.ListRunsResponse(runs=self.node.reads.read(page))

    @rpc.stream
    async def WatchRuns(
        self, request: pb.WatchRunsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunsEvent]:
        limit = request.limit or 100
        if limit > MAX_LIST_RUNS:
            raise InvalidArgument(f"limit must be at most {MAX_LIST_RUNS}")
        want = convert.RUN_STATUS_FROM_PB.get(request.status) if request.status else None
        if request.status and want is None:
            raise InvalidArgument(f"unknown run status {request.status}")
        why = limits.namespace_error(request.namespace)
        if why:
            raise InvalidArgument(why)
        only, limited = request.namespace, ownership.restricted()
        if only:
            ownership.check_namespace(only, "watching its runs")
        await self.node.barrier(context)
        page = functools.partial(_runs_page, want=want, only=only, limited=limited, offset=0, limit=limit)

        def visible(r: RunState, status_changed: bool) -> bool:
            if only and r.namespace != only:
                return False
            if not only and limited and not ownership.may_see(r.namespace):
                return False
            # With a status filter, a run leaving that status is still sent (once: its status change).
            return want is None or r.status is want or status_changed

        def changed(
            st: ClusterState, runs: dict[str, tuple[int, bool]], seen: int
        ) -> tuple[int, list[pb.RunSummary]]:
            # O(runs changed): only their summaries are read and encoded, never a sort of every run.
            out = []
            for run_id, (rev, status_changed) in runs.items():
                r = st.runs.get(run_id)
                if r is not None and rev > seen and visible(r, status_changed):
                    out.append(convert.run_summary_to_pb(r))
            return st.revision, out

        w = self._hub.subscribe_runs()  # before the snapshot: no change is missed between them
        try:
            while True:
                seen, snap = self.node.reads.read(lambda st: (st.revision, page(st)))
                yield pb.RunsEvent(revision=seen, snapshot=snap, is_snapshot=True)
                # What this stream last said of each run: a task event that leaves the summary as it
                # was (a task started) sends nothing. Bounded: forgetting only costs a repeat.
                said = {r.run_id: r.SerializeToString(deterministic=True) for r in snap}
                last = seen  # the newest revision read: what events carry (never a filter)
                while True:
                    try:
                        async with asyncio.timeout(STREAM_HEARTBEAT_S):
                            await w.wake.wait()
                    except TimeoutError:
                        yield pb.RunsEvent(revision=last)
                        continue
                    resync, runs = w.take()
                    if resync:
                        break
                    # ``seen`` stays the snapshot's revision: the state read here may already hold a
                    # change whose event has not reached this loop yet (the Raft thread applies first,
                    # then hands the event over), so raising ``seen`` to ``rev`` would drop that event
                    # for good when it arrives. A summary sent early and again is removed by ``said``.
                    rev, summaries = self.node.reads.read(functools.partial(changed, runs=runs, seen=seen))
                    last = max(last, rev)
                    sent = False
                    for summary in summaries:
                        encoded = summary.SerializeToString(deterministic=True)
                        if said.get(summary.run_id) == encoded:
                            continue
                        if len(said) >= MAX_LIST_RUNS * 10:
                            said.clear()
                        said[summary.run_id] = encoded
                        sent = True
                        yield pb.RunsEvent(revision=last, changed=summary)
                    if sent:
                        await asyncio.sleep(RUNS_COALESCE_S)  # what changes meanwhile is one entry a run
        finally:
            self._hub.unsubscribe_runs(w)

    @rpc.unary
    async def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.aio.ServicerContext) -> pb.WhoAmIResponse:
        call = calls.current()
        principal = call.principal if call is not None else calls.ANONYMOUS
        label = call.role if call is not None else Role.ADMIN.label
        namespaces = call.namespaces if call is not None else ("*",)
        role = Role.parse(label)
        return pb.WhoAmIResponse(
            principal=principal,
            role=role.label,
            namespaces=list(namespaces),
            auth=self._auth,
            node_id=self._node_id,
            methods=sorted(m for m in METHOD_ROLES if allows(role, m)),
        )

    @rpc.stream
    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEvent]:
        _check_run_id(request.run_id)
        node = self.node
        if not request.final_run:
            await node.barrier(context)
            async for ev in self._watch(request.run_id, request.status_only, None):
                yield ev
            return
        # The barrier commits while the stream starts: only the run's end must be read after it,
        # and a task takes longer than a commit, so it is off the critical path (timeline: ~1
        # commit, 2-12 ms, of a single task's submit -> result).
        if not node.has_leader():
            raise NoLeader(
                "this node knows no Raft leader (an election is on, or it is cut off); retry shortly or on another node"
            )
        barrier = asyncio.ensure_future(node.barrier(context))
        try:
            async for ev in self._watch(request.run_id, request.status_only, barrier):
                yield ev
        finally:
            if not barrier.done():
                barrier.cancel()
            barrier.add_done_callback(lambda f: f.cancelled() or f.exception())

    @rpc.stream
    async def SubmitAndWatchRun(
        self, request: pb.SubmitAndWatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEvent]:
        """SubmitRun and WatchRun(final_run) in one call: one round trip and no read barrier
        when this call created the run (this node has applied the submit, and the run's whole
        life is inside the call); a run the idempotency key already named is read after one."""
        async for ev in self._submit_and_watch(request.submit, request.status_only, context):
            yield ev

    async def _submit_and_watch(
        self, submit: pb.SubmitRunRequest, status_only: bool, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.RunEvent, None]:
        resp = await self._submit(submit, context)
        barrier = None if resp.created else asyncio.ensure_future(self.node.barrier(context))
        try:
            async for ev in self._watch(resp.run_id, status_only, barrier, final_run=True):
                yield ev
        finally:
            if barrier is not None:
                if not barrier.done():
                    barrier.cancel()
                barrier.add_done_callback(lambda f: f.cancelled() or f.exception())

    @rpc.unary
    async def RunToEnd(self, request: pb.RunToEndRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        """SubmitAndWatchRun's submit and wait as one unary call, answering the ended run: a sync
        client's unary call costs less than reading a stream (grpc starts a channel spin thread
        per server stream; scripts/bench_run_to_end.py). A run still going at the wait's end
        answers DEADLINE_EXCEEDED with its id (message and trailing metadata)."""
        if request.wait_ms > limits.MAX_RUN_WAIT_MS:
            raise InvalidArgument(
                f"wait_ms is {request.wait_ms}; a call waits at most {limits.MAX_RUN_WAIT_MS} ms "
                "(0: that long): send it again, or WatchRun the run, to wait longer"
            )
        wait_s = (request.wait_ms or limits.MAX_RUN_WAIT_MS) / 1000
        left = context.time_remaining()
        if left is not None:  # answer before the caller's own deadline cuts the call off unanswered
            wait_s = min(wait_s, max(0.0, left - RUN_WAIT_MARGIN_S))
        if self._run_waits >= limits.MAX_RUN_WAITS:
            raise ResourceExhausted(
                f"this node has {limits.MAX_RUN_WAITS} RunToEnd calls waiting already; "
                "retry later with the same idempotency key (or through another node)"
            )
        self._run_waits += 1
        run_id = ""
        barrier: asyncio.Future[None] | None = None
        try:
            async with asyncio.timeout(wait_s):
                resp = await self._submit(request.submit, context)
                run_id = resp.run_id
                # A run this call created was applied here: its whole life is inside the call. One
                # the idempotency key already named is read after a barrier (SubmitAndWatchRun's rule).
                barrier = None if resp.created else asyncio.ensure_future(self.node.barrier(context))
                return await self._run_end(run_id, barrier)
        except TimeoutError:
            if not run_id:  # the submit itself did not commit in time: retry it (same key)
                raise DeadlineExceeded(
                    f"the submit did not commit within {wait_s:.3f} s; send it again with the "
                    "same idempotency key"
                ) from None
            context.set_trailing_metadata(((RUN_ID_METADATA, run_id),))
            raise DeadlineExceeded(
                f"run {run_id} is still going after {wait_s:.3f} s: watch it (WatchRun "
                f"{run_id}, raftmesh watch {run_id}) or send the same request again"
            ) from None
        finally:
            self._run_waits -= 1
            if barrier is not None:
                if not barrier.done():
                    barrier.cancel()
                barrier.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _run_end(self, run_id: str, barrier: asyncio.Future[None] | None) -> pb.Run:
        """The whole run once it has ended (``_final``), for RunToEnd. Until then only its status is
        read, on each of its status changes: the watch's snapshot and events are a stream's. Built
        in the loop turn the submit's commit resumes, before the agent host's attempt starts, they
        cost ~0.15 ms of a single task's submit -> result (stamps on the leader)."""
        node = self.node
        q = self._hub.subscribe(run_id)
        try:
            while True:
                found = node.reads.read(functools.partial(_run_owner_status, run_id=run_id))
                if found is None:
                    if barrier is not None and not barrier.done():
                        await barrier  # maybe not applied here yet
                        continue
                    raise RunNotFound(f"run {run_id!r} not found")
                namespace, submitter, status = found
                ownership.check_run(namespace, submitter, run_id)
                if status in TERMINAL_RUN:
                    final = await self._final(run_id, barrier)
                    if final is not None:
                        return final
                    continue  # reopened before the barrier: read it again
                while True:  # until its status changes (or the queue overflowed: RESYNC)
                    ev = await self._next_event(
                        q, "this node lost its Raft leader; send the same request to another node"
                    )
                    if ev is RESYNC or isinstance(ev, RunChanged):
                        break
        finally:
            self._hub.unsubscribe(run_id, q)

    async def _next_event(self, q: asyncio.Queue[object], no_leader: str) -> object | None:
        """A run's next queued event, or None after ``STREAM_HEARTBEAT_S`` of quiet. NoLeader
        (``no_leader``) if this node lost its leader meanwhile: cut off from it (chaos: a client
        on a node outside the majority waited out the whole partition), the client asks another
        node, whose replica moves on."""
        if not q.empty():
            # Queued events are taken without arming the heartbeat's timer: the timer cost ~6 us
            # an event, the stream's largest cost after the message itself (py-spy on the leader
            # during a 2,002-task fan-out).
            return q.get_nowait()
        try:
            async with asyncio.timeout(STREAM_HEARTBEAT_S):
                return await q.get()
        except TimeoutError:
            if not self.node.has_leader():
                raise NoLeader(no_leader) from None
            return None

    async def _final(self, run_id: str, barrier: asyncio.Future[None] | None) -> pb.Run | None:
        """The whole run once ``barrier`` (if any) is done, if it has ended then; else None."""
        if barrier is not None:
            await barrier
        read = await self.node.reads.run_async(run_id)
        if read is None:
            raise RunNotFound(f"run {run_id!r} not found")
        run = _for_caller(self._with_waiting_reasons(read.run))
        return run if convert.RUN_STATUS_FROM_PB[run.status] in TERMINAL_RUN else None

    async def _watch(
        self,
        run_id: str,
        status_only: bool,
        barrier: asyncio.Future[None] | None,
        final_run: bool | None = None,
    ) -> AsyncIterator[pb.RunEvent]:
        """WatchRun's stream from this replica. ``final_run`` (default: ``barrier`` given): the
        terminal event carries the whole run, read after ``barrier``; a run reopened meanwhile
        (a rerun) is streamed on until it ends again."""
        node = self.node
        if final_run is None:
            final_run = barrier is not None
        q = self._hub.subscribe(run_id)
        try:
            while True:
                read = await node.reads.run_async(run_id, with_tasks=not status_only)
                if read is None:
                    if barrier is not None and not barrier.done():
                        await barrier  # maybe not applied here yet
                        continue
                    raise RunNotFound(f"run {run_id!r} not found")
                ownership.check_run(read.run.namespace, read.run.submitter, run_id)
                seen, snap = read.revision, _for_caller(self._with_waiting_reasons(read.run))
                done = convert.RUN_STATUS_FROM_PB[snap.status] in TERMINAL_RUN
                final = None
                if done and final_run:
                    final = await self._final(run_id, barrier)
                    if final is None:  # reopened before the barrier: read it again
                        continue
                yield pb.RunEvent(revision=seen, snapshot=snap, final=final)
                if done:
                    return
                while True:
                    ev = await self._next_event(q, "this node lost its Raft leader; watch from another node")
                    if ev is None:
                        # An idle stream still says "alive" so clients can tell a stalled node.
                        yield pb.RunEvent(revision=seen)
                        continue
                    if ev is RESYNC:
                        break
                    if isinstance(ev, TaskChanged) and ev.revision > seen and not status_only:
                        yield pb.RunEvent(
                            revision=ev.revision,
                            task=pb.TaskEvent(
                                task_id=ev.task_id,
                                status=convert.TASK_STATUS[ev.status],
                                attempt=ev.attempt,
                                node=ev.node,
                            ),
                        )
                    elif isinstance(ev, RunChanged) and ev.revision > seen:
                        ended = ev.status in TERMINAL_RUN
                        if ended and final_run:
                            final = await self._final(run_id, barrier)
                            if final is None:
                                continue  # reopened since: its events follow in the queue
                            yield pb.RunEvent(
                                revision=ev.revision,
                                run=pb.RunStatusEvent(status=final.status, error=final.error),
                                final=final,
                            )
                            return
                        err = node.reads.read(functools.partial(_run_error, run_id=ev.run_id))
                        yield pb.RunEvent(
                            revision=ev.revision,
                            run=pb.RunStatusEvent(status=convert.RUN_STATUS[ev.status], error=err),
                        )
                        if ended:
                            return
        finally:
            self._hub.unsubscribe(run_id, q)

    @rpc.unary
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelRunResponse:
        _check_run_id(request.run_id)
        if len(request.reason) > limits.MAX_CANCEL_REASON_CHARS:
            raise InvalidArgument(f"reason is longer than {limits.MAX_CANCEL_REASON_CHARS} characters")
        await self._check_run(request.run_id, context, cancel=True)
        cmd = CancelRun(
            new_request_id("x-"), self.node.clock.now_ms(), run_id=request.run_id, reason=request.reason
        )
        res = await self.node.propose(cmd, context)
        out = expect(res, CancelRunResult)
        return pb.CancelRunResponse(status=convert.RUN_STATUS[out.status], cancelled=out.cancelled)

    # ---- dead letters ---------------------------------------------------------

    @rpc.unary
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        limit = request.limit or 100
        if limit > limits.MAX_DEAD_LETTERS_LISTED:
            raise InvalidArgument(f"limit must be at most {limits.MAX_DEAD_LETTERS_LISTED}")
        await self.node.barrier(context)
        # O(limit) under the lock: the state keeps the dead letters sorted (consensus.dead_letters).
        # A caller limited to namespaces: other runs' dead letters are skipped while paging.
        visible = ownership.may_see if ownership.restricted() else None
        dead = self.node.reads.read(functools.partial(list_dead_letters, limit=limit, visible=visible))
        return pb.ListDeadLettersResponse(dead_letters=[convert.dead_letter_to_pb(d) for d in dead])

    @rpc.unary
    async def RetryTask(
        self, request: pb.RetryTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetryTaskResponse:
        _check_run_id(request.run_id)
        why = limits.task_ref_error("task_id", request.task_id) or limits.request_id_error(
            "request_id", request.request_id
        )
        if why:
            raise InvalidArgument(why)
        attempt = request.attempt
        if attempt == 0:
            # "The current dead attempt": pinned here, so the command applies once whoever repeats it.
            await self.node.barrier(context)
            attempt = self.node.reads.read(
                functools.partial(_dead_attempt, run_id=request.run_id, task_id=request.task_id)
            )
        await self._check_run(request.run_id, context)
        rid = request.request_id or new_request_id("rt-")  # as the Kv and Locks services take theirs
        cmd = RetryTask(
            rid, self.node.clock.now_ms(), run_id=request.run_id, task_id=request.task_id, attempt=attempt
        )
        out = expect(await self.node.propose(cmd, context), RetryTaskResult)
        return pb.RetryTaskResponse(
            requeued=out.requeued, attempt=out.attempt, status=convert.TASK_STATUS[out.status]
        )

    # ---- approvals, pause and rerun -------------------------------------------

    @rpc.unary
    async def ApproveTask(
        self, request: pb.ApproveTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApproveTaskResponse:
        _check_run_id(request.run_id)
        # With tokens the decider is the authenticated principal, not what the caller claims.
        by = ownership.principal_or(request.by or context.peer() or "anonymous")
        why = (
            approvals.task_id_error(request.task_id)
            or limits.request_id_error("request_id", request.request_id)
            or limits.name_error("by", by, limits.MAX_PRINCIPAL_CHARS)
            or approvals.text_error("comment", request.comment, limits.MAX_COMMENT_CHARS)
        )
        if why:
            raise InvalidArgument(why)
        if request.gate == 0:
            # Not "the open gate": a retried call would then decide a gate opened after the first.
            raise InvalidArgument(
                "gate is required: the id of the task's gate (GetRun's task.gate.id, or ListApprovals)"
            )
        await self._check_run(request.run_id, context)
        cmd = ApproveTask(
            request.request_id or new_request_id("ap-"),
            self.node.clock.now_ms(),
            run_id=request.run_id,
            task_id=request.task_id,
            gate=request.gate,
            approve=not request.reject,
            by=by,
            comment=request.comment,
        )
        out = expect(await self.node.propose(cmd, context), ApproveTaskResult)
        return pb.ApproveTaskResponse(
            applied=out.applied,
            gate=out.gate,
            decision=out.decision,
            by=out.by,
            comment=out.comment,
            decided_ms=out.decided_ms,
            status=convert.TASK_STATUS[out.status],
        )

    @rpc.unary
    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApprovalsResponse:
        limit = request.limit or 100
        if limit > limits.MAX_APPROVALS_LISTED:
            raise InvalidArgument(f"limit must be at most {limits.MAX_APPROVALS_LISTED}")
        if request.run_id:
            _check_run_id(request.run_id)
        if (
            len(request.after_run_id) > limits.MAX_ID_CHARS
            or len(request.after_task_id) > 2 * limits.MAX_ID_CHARS
        ):
            raise InvalidArgument("after_run_id or after_task_id is longer than any id")
        after = (
            (request.after_gate, request.after_run_id, request.after_task_id)
            if request.after_gate or request.after_run_id or request.after_task_id
            else None
        )
        await self.node.barrier(context)

        def read(st: ClusterState) -> list[approvals.ApprovalView] | None:
            if request.run_id and request.run_id not in st.runs:
                return None
            # A caller limited to namespaces: gates of other runs are skipped while paging.
            visible = (lambda rid: ownership.may_see(_run_namespace(st, rid))) if limited else None
            return approvals.list_approvals(st, request.run_id, limit + 1, after, visible)

        limited = ownership.restricted()
        if limited and request.run_id:
            await self._check_run(request.run_id, context)
        views = self.node.reads.read(read)
        if views is None:
            raise RunNotFound(f"run {request.run_id!r} not found")
        return pb.ListApprovalsResponse(
            approvals=[convert.approval_view_to_pb(v) for v in views[:limit]], more=len(views) > limit
        )

    async def _check_run(self, run_id: str, context: grpc.aio.ServicerContext, cancel: bool = False) -> None:
        """Ownership and namespace of ``run_id`` for this caller (``raftmesh.security.ownership``)."""
        if not ownership.restricted() and not (cancel and ownership.may_cancel_only_own()):
            return
        found = self.node.reads.read(functools.partial(_run_owner, run_id=run_id))
        if found is None:  # maybe not on this replica yet: a run's owner never changes, so one barrier
            await self.node.barrier(context)
            found = self.node.reads.read(functools.partial(_run_owner, run_id=run_id))
        if found is not None:  # else the command answers "not found"
            ownership.check_run(found[0], found[1], run_id, cancel=cancel)

    def _control_ids(self, request_id: str, run_id: str, task_id: str | None = None) -> None:
        _check_run_id(run_id)
        why = limits.request_id_error("request_id", request_id)
        if task_id is not None:
            why = why or approvals.task_id_error(task_id)
        if why:
            raise InvalidArgument(why)

    @rpc.unary
    async def PauseRun(
        self, request: pb.PauseRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunControlResponse:
        self._control_ids(request.request_id, request.run_id)
        await self._check_run(request.run_id, context)
        cmd = PauseRun(
            request.request_id or new_request_id("pa-"),
            self.node.clock.now_ms(),
            run_id=request.run_id,
            cancel_running=request.cancel_running,
        )
        return _control_pb(expect(await self.node.propose(cmd, context), RunControlResult))

    @rpc.unary
    async def ResumeRun(
        self, request: pb.ResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunControlResponse:
        self._control_ids(request.request_id, request.run_id)
        await self._check_run(request.run_id, context)
        cmd = ResumeRun(
            request.request_id or new_request_id("re-"), self.node.clock.now_ms(), run_id=request.run_id
        )
        return _control_pb(expect(await self.node.propose(cmd, context), RunControlResult))

    @rpc.unary
    async def RerunTask(
        self, request: pb.RerunTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RerunTaskResponse:
        self._control_ids(request.request_id, request.run_id, request.task_id)
        await self._check_run(request.run_id, context)
        cmd = RerunTask(
            request.request_id or new_request_id("rr-"),
            self.node.clock.now_ms(),
            run_id=request.run_id,
            task_id=request.task_id,
        )
        out = expect(await self.node.propose(cmd, context), RerunTaskResult)
        return pb.RerunTaskResponse(
            reset=out.reset,
            dropped=out.dropped,
            reopened=out.reopened,
            status=convert.TASK_STATUS[out.status],
            run_status=convert.RUN_STATUS[out.run_status],
        )

    # ---- cluster ------------------------------------------------------------

    @rpc.unary
    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterStatusResponse:
        if request.include_digest:  # O(state) hashing: off the event loop
            return await asyncio.to_thread(self._status, True)
        return self._status(False)


def _runs_page(
    st: ClusterState, want: RunStatus | None, only: str, limited: bool, offset: int, limit: int
) -> list[pb.RunSummary]:
    """Run summaries newest first, filtered while paging (``offset`` counts the runs the caller may see)."""
    # Sorting references is O(runs log runs) with no encoding; only the page is encoded
    # (a summary is a few scalars).
    runs: list[RunState] = sorted(st.runs.values(), key=lambda r: (r.created_ms, r.run_id), reverse=True)
    if want is not None:
        runs = [r for r in runs if r.status is want]
    if only:
        runs = [r for r in runs if r.namespace == only]
    elif limited:
        runs = [r for r in runs if ownership.may_see(r.namespace)]
    return [convert.run_summary_to_pb(r) for r in runs[offset : offset + limit]]


def _run_error(st: ClusterState, run_id: str) -> str:
    r = st.runs.get(run_id)
    return r.error if r is not None else ""


def _run_owner(st: ClusterState, run_id: str) -> tuple[str, str] | None:
    r = st.runs.get(run_id)
    return (r.namespace, r.submitter) if r is not None else None


def _run_owner_status(st: ClusterState, run_id: str) -> tuple[str, str, RunStatus] | None:
    r = st.runs.get(run_id)
    return (r.namespace, r.submitter, r.status) if r is not None else None


def _run_namespace(st: ClusterState, run_id: str) -> str:
    r = st.runs.get(run_id)
    return r.namespace if r is not None else ""


def _dead_attempt(st: ClusterState, run_id: str, task_id: str) -> int:
    """The attempt a retry of this task names: its dead one, or the one it was last requeued at."""
    run = st.runs.get(run_id)
    if run is None:
        raise RunNotFound(f"run {run_id!r} not found (never submitted, or evicted)")
    t = run.tasks.get(task_id)
    if t is None:
        raise NotFound(f"run {run_id!r} has no task {task_id!r}")
    if t.status is TaskStatus.FAILED:
        return t.attempt
    if t.requeued_attempt:
        return t.requeued_attempt  # answered "already requeued" by the state machine
    raise FailedPrecondition(
        f"task {task_id!r} of run {run_id!r} is {t.status.value}, not a dead letter "
        "(only a task that failed for good can be retried)"
    )


def _control_pb(out: RunControlResult) -> pb.RunControlResponse:
    return pb.RunControlResponse(
        status=convert.RUN_STATUS[out.status], changed=out.changed, stopped=out.stopped
    )
