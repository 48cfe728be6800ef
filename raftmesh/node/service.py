"""The ``raftmesh.v1.Cluster`` gRPC service, served by every node.

Errors are translated to gRPC status codes in exactly one place (``_rpc``).
Writes go through the Raft log (pysyncobj forwards a follower's entries to the
leader); reads are linearizable through a read barrier unless ``stale_ok``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ..consensus import limits
from ..consensus.commands import CancelRun, SubmitRun
from ..consensus.dag import DagError, validate
from ..consensus.results import CancelRunResult, RunChanged, SubmitRunResult, TaskChanged, expect
from ..consensus.state import TERMINAL_RUN, RunState
from ..errors import (
    InvalidArgument,
    LimitExceeded,
    NoLeader,
    RaftmeshError,
    RunNotFound,
    clip_message,
)
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from . import convert
from .proposer import new_request_id, now_ms
from .watch import RESYNC

if TYPE_CHECKING:
    from .runtime import NodeRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_LIST_RUNS = 1000
STREAM_HEARTBEAT_S = 1.0
"""Idle server streams send an empty event this often; clients treat 5 s of silence as a dead node."""
_DAG_ERRORS = {"limit": LimitExceeded}


def _rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Translate raftmesh errors (and bugs) to gRPC statuses: the one place that does."""

    @functools.wraps(fn)
    async def wrapper(self: ClusterService, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except RaftmeshError as exc:
            await context.abort(grpc.StatusCode[exc.code], clip_message(exc.message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, clip_message(f"internal error: {type(exc).__name__}: {exc}")
            )
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


def _check_run_id(run_id: str) -> None:
    if not run_id:
        raise InvalidArgument("run_id is required")
    if len(run_id) > limits.MAX_ID_CHARS:
        raise InvalidArgument(
            f"run_id is {len(run_id)} characters long; run ids are at most {limits.MAX_ID_CHARS}"
        )


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(self, node: NodeRuntime) -> None:
        self.node = node

    # ---- runs -------------------------------------------------------------

    @_rpc
    async def SubmitRun(
        self, request: pb.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRunResponse:
        node = self.node
        specs = convert.task_specs_from_pb(request)
        if node.raft.leader_addr is None:
            # Known agent types come from the replicated state: without a leader there is no
            # state to validate against, so say what is wrong (no leader), not "unknown agent".
            raise NoLeader("no Raft leader is elected yet; retry shortly (with the same idempotency key)")
        key = request.idempotency_key
        with node.raft.lock:
            st = node.raft.machine.state
            if key and key in st.idempotency:
                return pb.SubmitRunResponse(run_id=st.idempotency[key], created=False)
            known = st.known_agents()
        try:
            validate(specs, known)
        except DagError as exc:
            raise _DAG_ERRORS.get(exc.kind, InvalidArgument)(str(exc)) from exc
        if len(request.name) > 256:
            raise InvalidArgument("name is longer than 256 characters")
        if not limits.printable(request.name):
            raise InvalidArgument(f"name {request.name[:40]!r} may not contain control characters")
        why = limits.request_id_error("idempotency_key", key)
        if why:
            raise InvalidArgument(why)
        cmd = SubmitRun(
            request_id=f"s-{key}" if key else new_request_id("s-"),
            ts_ms=now_ms(),
            run_id=new_request_id("r-")[:14],
            idempotency_key=key,
            tasks=specs,
            priority=request.priority,
            name=request.name,
            submitter=context.peer() or "",
        )
        res = await node.proposer.propose(cmd, timeout_s=_timeout(context, node.config.propose_timeout_s))
        out = expect(res, SubmitRunResult)
        return pb.SubmitRunResponse(run_id=out.run_id, created=out.created)

    @_rpc
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        _check_run_id(request.run_id)
        if not request.stale_ok:
            await self._barrier(context)
        with self.node.raft.lock:
            run = self.node.raft.machine.state.runs.get(request.run_id)
            if run is None:
                raise RunNotFound(f"run {request.run_id!r} not found")
            return convert.run_to_pb(run)

    @_rpc
    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        limit = request.limit or 100
        if limit > MAX_LIST_RUNS:
            raise InvalidArgument(f"limit must be at most {MAX_LIST_RUNS}")
        want = convert.RUN_STATUS_FROM_PB.get(request.status) if request.status else None
        await self._barrier(context)
        out: list[pb.RunSummary] = []
        with self.node.raft.lock:
            runs: list[RunState] = list(self.node.raft.machine.state.runs.values())
            runs.sort(key=lambda r: (r.created_ms, r.run_id), reverse=True)
            skip = request.offset
            for r in runs:
                if want is None or r.status is want:
                    if skip:
                        skip -= 1
                        continue
                    out.append(convert.run_summary_to_pb(r))
                    if len(out) >= limit:
                        break
        return pb.ListRunsResponse(runs=out)

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEvent]:
        try:
            async for ev in self._watch(request, context):
                yield ev
        except RaftmeshError as exc:
            await context.abort(grpc.StatusCode[exc.code], clip_message(exc.message))

    async def _watch(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunEvent]:
        _check_run_id(request.run_id)
        node = self.node
        await self._barrier(context)
        q = node.hub.subscribe(request.run_id)
        try:
            while True:
                with node.raft.lock:
                    st = node.raft.machine.state
                    run = st.runs.get(request.run_id)
                    if run is None:
                        raise RunNotFound(f"run {request.run_id!r} not found")
                    seen = st.revision
                    snap = convert.run_to_pb(run, with_tasks=not request.status_only)
                    done = run.status in TERMINAL_RUN
                yield pb.RunEvent(revision=seen, snapshot=snap)
                if done:
                    return
                while True:
                    try:
                        ev = await asyncio.wait_for(q.get(), STREAM_HEARTBEAT_S)
                    except TimeoutError:
                        # An idle stream still says "alive" so clients can tell a stalled node.
                        yield pb.RunEvent(revision=seen)
                        continue
                    if ev is RESYNC:
                        break
                    if isinstance(ev, TaskChanged) and ev.revision > seen and not request.status_only:
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
                        with node.raft.lock:
                            r = node.raft.machine.state.runs.get(ev.run_id)
                            err = r.error if r is not None else ""
                        yield pb.RunEvent(
                            revision=ev.revision,
                            run=pb.RunStatusEvent(status=convert.RUN_STATUS[ev.status], error=err),
                        )
                        if ev.status in TERMINAL_RUN:
                            return
        finally:
            node.hub.unsubscribe(request.run_id, q)

    @_rpc
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelRunResponse:
        _check_run_id(request.run_id)
        if len(request.reason) > 1024:
            raise InvalidArgument("reason is longer than 1024 characters")
        cmd = CancelRun(new_request_id("x-"), now_ms(), run_id=request.run_id, reason=request.reason)
        res = await self.node.proposer.propose(
            cmd, timeout_s=_timeout(context, self.node.config.propose_timeout_s)
        )
        out = expect(res, CancelRunResult)
        return pb.CancelRunResponse(status=convert.RUN_STATUS[out.status], cancelled=out.cancelled)

    # ---- cluster ------------------------------------------------------------

    @_rpc
    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterStatusResponse:
        return self.node.status_pb(request.include_digest)

    async def _barrier(self, context: grpc.aio.ServicerContext) -> None:
        await read_barrier(self.node, context)


async def read_barrier(node: NodeRuntime, context: grpc.aio.ServicerContext) -> None:
    """Make this node's replica reflect every write committed before the call (linearizable reads)."""
    if node.raft.leader_addr is None:
        raise NoLeader("no Raft leader is elected yet; retry shortly, or read with stale_ok")
    await node.proposer.barrier(timeout_s=_timeout(context, 5.0))


def _timeout(context: grpc.aio.ServicerContext, default: float) -> float:
    remaining = context.time_remaining()
    if remaining is None:
        return default
    return max(0.05, min(default, float(remaining) - 0.05))
