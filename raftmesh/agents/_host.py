"""The agent host: runs the attempts the replicated state assigns to this node.

Level-triggered: on every applied batch it compares "RUNNING here" in the state
with the attempts it is executing, starts what is missing and cancels what the
cluster no longer wants (run cancelled, attempt fenced). Results are reported in
batches (one ``complete`` and one ``fail`` command per flush, one log entry),
each item carrying the attempt's fencing token; a stale result is rejected by
the state machine, not here.

It runs nothing until this process's registration (its incarnation) is applied,
so a restarted node never resumes attempts that the cluster has already requeued.

``decide(state)`` is the whole reconcile decision (which attempts to start, which
to stop) as a function of the state and the attempts running here, with no I/O;
the node hands the host a reader, a writer and a clock, nothing of its own.

Each attempt runs where its agent's isolation says (``isolation_of``): ``async`` on the
loop, ``thread`` in the host's bounded ``ThreadPool`` (a plain ``def`` always), ``process``
in a worker of its ``ProcessPool`` (``raftmesh.agents._pools``). Stopping an attempt
cancels its task, sets ``ctx.cancelled`` (what a thread agent can see) and kills its
worker; a thread that ignores it runs on, and its result and late writes are discarded
(reported nowhere, fenced by the state machine).

Every attempt says at INFO when it starts and how it ends: stopped, or finished with its
result accepted, rejected as fenced, or not delivered because the cluster moved on.

Finished attempts wait in a bounded list (``MAX_PENDING_REPORTS``) for the next
flush; an attempt that finds it full waits for room before it reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import calls, redaction, tracing
from ..clock import Clock
from ..consensus import limits, values
from ..consensus.codes import Code
from ..consensus.commands import NO_USAGE, Complete, Completion, Fail, Failure, Fence, TaskSpec, Usage
from ..consensus.members import task_defaults
from ..consensus.results import Rejected, ReportResult, Result
from ..consensus.state import ClusterState, TaskKey, TaskStatus
from ..errors import PermissionDenied, RaftmeshError
from ._context import SyncTaskContext, TaskContext
from ._messaging import Messenger, Router
from ._pools import PROCESS_POOL_SIZE, THREAD_POOL_SIZE, ProcessPool, ThreadPool
from ._registry import AgentDef, AgentRegistry, default_registry
from ._setup import AgentNode
from ._spawn import SpawnError, task_specs
from ._sync_clients import SyncKv, SyncLocks, dispatch, loop_call
from ._task_clients import Reader, TaskKv, TaskLocks, Writer, check_run_key

log = logging.getLogger(__name__)

MAX_REPORT_ITEMS = 2000
"""Results per flush (one ``complete`` and one ``fail`` command)."""
MAX_PENDING_REPORTS = 10_000
"""Finished attempts waiting for a flush; more wait for room (the node's slots keep it far lower)."""
MAX_LOGGED_ERROR_CHARS = 500
"""An agent's error as quoted in the host's log line for its attempt (the state keeps more)."""


@dataclass(eq=False)
class _Attempt:
    key: TaskKey
    attempt: int
    token: int
    task: asyncio.Task[None] | None = None
    ctx: TaskContext | None = None
    reported: bool = False
    agent: str = ""
    started: float = 0.0
    """``time.perf_counter()`` when the attempt started here (its duration metric)."""
    trace_id: str = ""
    """The run's trace: the attempt runs under ``tracing.node_call`` with it (its commands'
    origin, its messages, its log lines)."""
    started_ns: int = 0
    """Wall clock when it started here (its span's start)."""
    secrets: tuple[str, ...] = ()
    """The input's secret values (``raftmesh.redaction``): masked in the attempt's error text."""
    call: calls.Call | None = None
    """Its ``tracing.node_call`` (``AgentHost._call_of``), made once: it is bound when the attempt
    starts, when its report is proposed and when its outcome is logged."""
    namespace: str = ""
    """The run's namespace: its ``ctx.kv``, ``ctx.locks`` and spawned locks stay under ``NAMESPACE/``."""


@dataclass(frozen=True)
class Start:
    """An attempt assigned to this node that is not running here yet."""

    key: TaskKey
    attempt: int
    token: int
    agent: str
    input: Any
    upstream: dict[str, Any]
    timeout_ms: int
    item: Any = None
    """A map instance's item (``ctx.item``) and its position (``ctx.index``)."""
    index: int = 0
    trace_id: str = ""
    namespace: str = ""


@dataclass
class Reconcile:
    start: list[Start] = field(default_factory=list)
    stop: list[TaskKey] = field(default_factory=list)
    """Attempts running here that the cluster no longer wants (fenced, cancelled, moved)."""


@dataclass(eq=False)
class _Report:
    attempt: _Attempt
    ok: bool
    output: Any = None
    error: str = ""
    retryable: bool = True
    usage: Usage = NO_USAGE
    spawn: tuple[TaskSpec, ...] = ()
    """What a successful attempt spawned (``ctx.spawn``), committed with its completion."""
    spawn_wait: bool = True


class _AttemptFailed(Exception):
    """An attempt failed with an error already worded for the user (a worker's report or death)."""

    def __init__(self, error: str, retryable: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.retryable = retryable


_BUILTIN_NAMES = frozenset(default_registry().names())


def isolation_of(adef: AgentDef) -> str:
    """Where ``adef``'s attempts run: its ``isolation``, except that a plain ``def`` never runs
    on the node's loop (it would block heartbeats and every other task): it runs in a thread."""
    if adef.isolation == "async" and not _is_async(adef.fn):
        return "thread"
    return adef.isolation


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


class AgentHost:
    def __init__(
        self,
        node_id: str,
        incarnation: str,
        registry: AgentRegistry,
        reads: Reader,
        writer: Writer,
        clock: Clock,
        ready: Callable[[], bool] = lambda: True,
        thread_pool_size: int = THREAD_POOL_SIZE,
        process_pool_size: int = PROCESS_POOL_SIZE,
        agent_node: Callable[[str], AgentNode] | None = None,
        router: Router | None = None,
    ) -> None:
        self.node_id = node_id
        self._router = router
        """The node's message router (``ctx.send``/``request``/``publish``); None: not offered."""
        self.incarnation = incarnation
        self._registry = registry
        self._reads = reads
        self._writer = writer
        self._clock = clock
        self._ready = ready
        """The local replica has caught up with the leader at least once (nothing to run before)."""
        self._active: dict[TaskKey, _Attempt] = {}
        self._reports: list[_Report] = []
        self._report_room = asyncio.Event()
        self._wake = asyncio.Event()
        self._report_wake = asyncio.Event()
        self._agent_node = agent_node or self._scratch_node
        """What a process worker passes a class agent's ``setup(node)`` (the runtime's ``agent_node``)."""
        self.threads = ThreadPool(thread_pool_size)
        self.processes = ProcessPool(node_id, process_pool_size)
        self.on_attempt: Callable[[str, bool, float, Usage], None] | None = None
        """Told (agent, ok, seconds, usage) of every attempt reported (the node's metrics)."""
        self.spans: tracing.SpanSink | None = None
        """Where each attempt's span goes when it ends (``raftmesh.node.otel``); None: nowhere."""
        self._setups: dict[str, tuple[AgentDef, str, logging.Logger]] = {}
        """Per agent type: its definition, isolation and logger (``_agent_setup``)."""
        self._semaphores: dict[str, asyncio.Semaphore] = {
            d.name: asyncio.Semaphore(d.concurrency) for d in registry.agents.values() if d.concurrency > 0
        }

    def _scratch_node(self, agent: str) -> AgentNode:
        """A host made without a runtime (tests): a temporary directory per agent type."""
        return AgentNode(
            self.node_id,
            agent,
            os.path.join(tempfile.gettempdir(), f"raftmesh-{self.node_id}", agent),
            "",
            (),
        )

    def attach_router(self, router: Router) -> None:
        """The node's message router, once it exists (``ctx.send``/``request``/``publish``)."""
        self._router = router

    def poke(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        reporter = asyncio.get_running_loop().create_task(self._report_loop(), name="host-reports")
        if any(isolation_of(d) == "process" for d in self._registry.agents.values()):
            # The first process attempt finds a started worker (a restarted node's too).
            self.processes.keep_spare()
        try:
            while True:
                try:
                    # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands as the
                    # event is set, and this loop would then outlive the node's stop.
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                try:
                    self._reconcile()
                except Exception:
                    log.exception("host reconcile failed")
        finally:
            reporter.cancel()
            for a in self._active.values():
                if a.task is not None and not a.task.done():
                    log.info("attempt %d of %s/%s stopped: the node is stopping", a.attempt, *a.key)
                    a.task.cancel()
                if a.ctx is not None:
                    a.ctx.cancelled.set()
            self.processes.close()
            self.threads.close()

    def decide(self, st: ClusterState) -> Reconcile:
        """Which attempts to start and stop, given the state and what runs here (no I/O)."""
        out = Reconcile()
        if not st.up_member(self.node_id, self.incarnation):
            wanted: dict[TaskKey, None] = {}
        else:
            wanted = st.running.get(self.node_id, {})
        for key in wanted:
            run = st.runs[key[0]]
            t = run.tasks[key[1]]
            cur = self._active.get(key)
            # The token too: a task id can come back with its attempts counted afresh (a rerun
            # drops a map's or replicated task's children and expands them again).
            if cur is not None and cur.attempt == t.attempt and cur.token == t.token:
                continue
            if cur is not None:  # an older attempt of ours: stop it
                out.stop.append(key)
            upstream = {d: run.tasks[d].output for d in t.spec.deps}
            out.start.append(
                Start(
                    key,
                    t.attempt,
                    t.token,
                    t.spec.agent,
                    t.spec.input,
                    upstream,
                    t.spec.timeout_ms,
                    t.item,
                    t.index,
                    run.trace_id,
                    run.namespace,
                )
            )
        for key, a in self._active.items():
            if key in wanted:
                continue
            cur_t = st.task(*key)
            if (
                cur_t is None
                or cur_t.status is not TaskStatus.RUNNING
                or cur_t.attempt != a.attempt
                or cur_t.token != a.token
                or cur_t.node != self.node_id
            ):
                out.stop.append(key)
        return out

    def _reconcile(self) -> None:
        if not self._ready():
            return
        plan = self._reads.read(self.decide)
        for key in plan.stop:
            a = self._active.get(key)
            if a is None:
                continue
            # One that finished already has its report queued: the flush logs how that ends.
            if a.task is not None and not a.task.done():
                log.info("attempt %d of %s/%s stopped: the cluster no longer runs it here", a.attempt, *a.key)
            self._cancel(a)
        loop = asyncio.get_running_loop()
        for s in plan.start:
            a = _Attempt(s.key, s.attempt, s.token, agent=s.agent, started=time.perf_counter())
            a.trace_id, a.started_ns, a.namespace = s.trace_id, time.time_ns(), s.namespace
            self._active[s.key] = a
            # The task copies the context: all the attempt causes runs under its trace. (bind and
            # unbind, not calls.bound: its generator was ~1/3 of this loop's own cost per attempt.)
            token = calls.bind(self._call_of(a))
            try:
                # DEBUG, as the success line below: at INFO the two lines per attempt were 12-19% of
                # a node's CPU in a fan-out (py-spy); the audit timeline (GetAudit) has every attempt.
                log.debug("attempt %d of %s/%s started (token %d)", s.attempt, *s.key, s.token)
                a.task = loop.create_task(
                    self._execute(a, s.agent, s.input, s.upstream, s.timeout_ms, item=s.item, index=s.index)
                )
            finally:
                calls.unbind(token)

    def _call_of(self, a: _Attempt) -> calls.Call:
        if a.call is None:  # a sha256 span id and a Call: three times per attempt otherwise
            span = tracing.attempt_span_id(a.trace_id, *a.key, a.attempt) if a.trace_id else ""
            a.call = tracing.node_call(self.node_id, a.trace_id, span)
        return a.call

    def _cancel(self, a: _Attempt) -> None:
        if self._active.get(a.key) is a:
            del self._active[a.key]
            if self.spans is not None and a.task is not None and not a.task.done():  # (done: reported)
                self.spans.attempt_ended(
                    self.node_id,
                    a.trace_id,
                    *a.key,
                    a.attempt,
                    a.agent,
                    a.started_ns,
                    "stopped",
                    "",
                    NO_USAGE,
                )
        if a.ctx is not None:
            a.ctx.cancelled.set()
        if a.task is not None and not a.task.done():
            a.task.cancel()

    async def _execute(
        self,
        a: _Attempt,
        agent: str,
        inp: Any,
        upstream: dict[str, Any],
        timeout_ms: int,
        *,
        item: Any = None,
        index: int = 0,
    ) -> None:
        run_id, task_id = a.key
        # The agent gets the secrets' values; they never come back in an error (replicated, shown).
        if redaction.contains_secret(inp) or redaction.contains_secret(upstream):  # else: no copies
            a.secrets = tuple(redaction.secret_values(inp)) + tuple(redaction.secret_values(upstream))
            inp, upstream = redaction.reveal(inp), redaction.reveal(upstream)
        adef = self._registry.get(agent)
        if adef is None:
            await self._report(
                _Report(a, False, error=f"agent {agent!r} is not offered by node {self.node_id}")
            )
            return
        mode, agent_log = self._agent_setup(adef)
        logger = redaction.ScrubbingAdapter(
            agent_log,
            {"run_id": run_id, "task_id": task_id, "attempt": a.attempt, "trace_id": a.trace_id},
            a.secrets,
        )
        kv = TaskKv(self._reads, self._writer, self._clock, run_id, task_id, a.attempt, a.token, a.namespace)
        locks = TaskLocks(self._writer, self._clock, run_id, task_id, a.attempt, a.namespace)
        fields: dict[str, Any] = dict(
            run_id=run_id,
            task_id=task_id,
            attempt=a.attempt,
            token=a.token,
            node_id=self.node_id,
            input=inp,
            upstream=upstream,
            trace_id=a.trace_id,
            logger=logger,
            agents=self._registry,
            item=item,
            index=index,
        )
        if self._router is not None and mode != "process":
            fields["messages"] = Messenger(
                self._router,
                self._clock,
                self.node_id,
                f"task:{run_id}/{task_id}",
                Fence(run_id=run_id, task_id=task_id, token=a.token),
                trace_id=a.trace_id,
            )
        ctx: TaskContext
        if mode == "async":
            ctx = TaskContext(**fields, kv=kv, locks=locks, reads=self._reads)
        else:
            loop = asyncio.get_running_loop()
            call = loop_call(kv, locks, loop)
            ctx = SyncTaskContext(**fields, kv=SyncKv(call), locks=SyncLocks(call), loop=loop)
        a.ctx = ctx
        sem = self._semaphores.get(agent)
        try:
            if sem is not None:
                await sem.acquire()
            try:
                if timeout_ms:
                    async with asyncio.timeout(timeout_ms / 1000):
                        output = await self._run_in(mode, adef, ctx, kv, locks)
                else:
                    output = await self._run_in(mode, adef, ctx, kv, locks)
            finally:
                if sem is not None:
                    sem.release()
        except asyncio.CancelledError:
            ctx.cancelled.set()  # a thread agent polls it; a process worker was killed
            raise  # the cluster no longer wants this attempt: report nothing
        except TimeoutError:
            ctx.cancelled.set()
            await self._report(
                _Report(a, False, error=f"attempt {a.attempt} timed out after {timeout_ms} ms")
            )
            return
        except _AttemptFailed as failed:
            await self._report(_Report(a, False, error=failed.error, retryable=failed.retryable))
            return
        except Exception as exc:
            retryable = bool(getattr(exc, "retryable", True))
            error = f"{type(exc).__name__}: {exc}"[: limits.MAX_ERROR_CHARS]  # apply keeps no more
            await self._report(_Report(a, False, error=error, retryable=retryable))
            return
        why = values.problem(output)  # the rule apply enforces; never raises (deep nesting included)
        if why:
            await self._report(_Report(a, False, error=f"output is not storable: {why}", retryable=False))
            return
        size = limits.encoded_size(output)  # as the state machine measures it
        if size > limits.MAX_TASK_OUTPUT_BYTES:
            await self._report(
                _Report(
                    a,
                    False,
                    error=f"output is {size} bytes encoded; the limit is {limits.MAX_TASK_OUTPUT_BYTES}",
                    retryable=False,
                )
            )
            return
        spawn: tuple[TaskSpec, ...] = ()
        if ctx.spawns.tasks:
            try:
                spawn = self._spawn_specs(run_id, ctx.spawns.tasks)
                for t in spawn:  # declared locks are taken by the node: the run's namespace only
                    for name, _ in t.locks:
                        check_run_key(a.namespace, name, f"ctx.spawn: task {t.id!r}: lock")
            except (SpawnError, PermissionDenied) as exc:
                await self._report(
                    _Report(a, False, error=str(exc)[: limits.MAX_ERROR_CHARS], retryable=False)
                )
                return
            except Exception as exc:  # never leave the attempt unreported (it would stay RUNNING)
                error = f"ctx.spawn: the spawned tasks could not be converted: {type(exc).__name__}: {exc}"
                await self._report(_Report(a, False, error=error[: limits.MAX_ERROR_CHARS], retryable=False))
                return
        await self._report(
            _Report(a, True, output=output, spawn=spawn, spawn_wait=ctx.spawns.wait is not False)
        )

    def _agent_setup(self, adef: AgentDef) -> tuple[str, logging.Logger]:
        """``adef``'s isolation and its logger, worked out once per definition (``inspect`` and
        ``getLogger`` for every attempt were a tenth of ``_execute``'s own cost)."""
        known = self._setups.get(adef.name)
        if known is None or known[0] is not adef:
            known = self._setups[adef.name] = (
                adef,
                isolation_of(adef),
                logging.getLogger(f"raftmesh.agent.{adef.name}"),
            )
        return known[1], known[2]

    def _spawn_specs(self, run_id: str, maps: list[dict[str, Any]]) -> tuple[TaskSpec, ...]:
        """The spawned tasks, explicit as a submit logs them (the run's priority, the agent
        types' retries/timeout where unset): apply never looks up who offers what."""

        def look(st: ClusterState) -> tuple[int, dict[str, Any]]:
            run = st.runs.get(run_id)
            return (run.priority if run else 0), task_defaults(st, {str(m.get("agent")) for m in maps})

        priority, defaults = self._reads.read(look)
        return task_specs(maps, priority, defaults)

    async def _run_in(self, mode: str, adef: AgentDef, ctx: TaskContext, kv: TaskKv, locks: TaskLocks) -> Any:
        """The attempt's output, run where its agent's isolation says; raises what the agent raised."""
        if mode == "async":
            out = adef.fn(ctx)
            return await out if inspect.isawaitable(out) else out
        if mode == "thread":
            out = await self.threads.run(functools.partial(adef.fn, ctx))
            if inspect.isawaitable(out):  # a plain def that returned a coroutine: finish it here
                out = await out
            return out
        if not adef.source and adef.name not in _BUILTIN_NAMES:
            raise _AttemptFailed(
                f"agent {adef.name!r} has isolation 'process' but no source module a worker "
                "could load it from (register it from a module)",
                retryable=False,
            )
        request = {
            "source": adef.source,
            "agent": adef.name,
            "run_id": ctx.run_id,
            "task_id": ctx.task_id,
            "attempt": ctx.attempt,
            "token": ctx.token,
            "input": ctx.input,
            "upstream": ctx.upstream,
            "item": ctx.item,
            "index": ctx.index,
            "trace_id": ctx.trace_id,
            "node": dataclasses.asdict(self._agent_node(adef.name)),
        }
        res = await self.processes.run(
            request, functools.partial(dispatch, kv, locks), adef.memory_mb, adef.cpu_seconds
        )
        ctx.usage = res.usage
        if res.ok and res.spawn:
            ctx.spawns.tasks, ctx.spawns.wait = list(res.spawn), res.spawn_wait
        if not res.ok:
            raise _AttemptFailed(res.error[: limits.MAX_ERROR_CHARS], res.retryable)
        return res.output

    async def _report(self, r: _Report) -> None:
        if r.attempt.secrets and r.error:
            r.error = redaction.scrub(r.error, r.attempt.secrets)
        if r.attempt.ctx is not None:
            r.usage = r.attempt.ctx.usage
        if self.on_attempt is not None:
            self.on_attempt(r.attempt.agent, r.ok, time.perf_counter() - r.attempt.started, r.usage)
        while len(self._reports) >= MAX_PENDING_REPORTS:
            self._report_room.clear()
            await self._report_room.wait()
        self._reports.append(r)
        self._report_wake.set()

    async def _report_loop(self) -> None:
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            await asyncio.sleep(0)  # gather the results that finished in this loop iteration
            while self._reports:
                batch, self._reports = self._reports[:MAX_REPORT_ITEMS], self._reports[MAX_REPORT_ITEMS:]
                self._report_room.set()
                await self._flush(batch)

    async def _flush(self, batch: list[_Report]) -> None:
        ts = self._clock.now_ms()
        # One command per trace and outcome: a command has one origin, and each attempt's
        # Complete or Fail must carry its run's trace.
        plain: dict[tuple[str, bool], list[_Report]] = {}
        for r in batch:
            if not (r.ok and r.spawn):
                plain.setdefault((r.attempt.trace_id, r.ok), []).append(r)
        # A completion that spawns (up to MAX_SPAWNED_BYTES_PER_RUN of specs) goes in a command
        # of its own, so several large spawns never add up to one oversized command.
        groups = list(plain.values()) + [[r] for r in batch if r.ok and r.spawn]
        cmds = [self._command(g, ts) for g in groups]
        # The commands are proposed together so the proposer puts them in as few log entries as fit.
        results = await asyncio.gather(
            *(self._deliver_as(g[0].attempt, c) for g, c in zip(groups, cmds, strict=True))
        )
        for group, res in zip(groups, results, strict=True):
            outcomes = _log_outcomes(group, res, self._call_of)
            if self.spans is not None:
                for r, outcome in zip(group, outcomes, strict=True):
                    a = r.attempt
                    self.spans.attempt_ended(
                        self.node_id,
                        a.trace_id,
                        *a.key,
                        a.attempt,
                        a.agent,
                        a.started_ns,
                        outcome,
                        r.error,
                        r.usage,
                    )
        for r in batch:
            if self._active.get(r.attempt.key) is r.attempt:
                del self._active[r.attempt.key]
        self._wake.set()

    def _command(self, group: list[_Report], ts: int) -> Complete | Fail:
        if group[0].ok:
            return Complete(
                f"c-{uuid.uuid4().hex}",
                ts,
                self.node_id,
                tuple(
                    Completion(
                        *r.attempt.key,
                        r.attempt.attempt,
                        r.attempt.token,
                        r.output,
                        r.usage,
                        r.spawn,
                        r.spawn_wait,
                    )
                    for r in group
                ),
            )
        return Fail(
            f"f-{uuid.uuid4().hex}",
            ts,
            self.node_id,
            tuple(
                Failure(*r.attempt.key, r.attempt.attempt, r.attempt.token, r.error, r.retryable, r.usage)
                for r in group
            ),
        )

    async def _deliver_as(self, a: _Attempt, cmd: Complete | Fail) -> Result | None:
        """``_deliver`` under the attempt's trace (the command's origin)."""
        with calls.bound(self._call_of(a)):
            return await self._deliver(cmd)

    async def _deliver(self, cmd: Complete | Fail) -> Result | None:
        """Propose until applied (same request id every time): its result, or None once no
        item is this node's to report any more (the cluster has requeued or finished them)."""
        while True:
            try:
                return await self._writer.propose(cmd, timeout_s=30.0)
            except RaftmeshError as exc:
                log.info("%s %s: %s; retrying", cmd.TAG, cmd.request_id, exc)
                if not self._reads.read(lambda st: _still_mine(st, cmd)):
                    return None
                await self._clock.sleep(0.5)


def _log_outcomes(
    group: list[_Report], res: Result | None, call_of: Callable[[_Attempt], calls.Call]
) -> list[str]:
    """Say at INFO how each reported attempt ended (the state machine decided; this only tells),
    each line under its attempt's call (its trace); each one's outcome as its span says it."""
    fenced: dict[TaskKey, str] = {}
    if isinstance(res, ReportResult):
        fenced = {(it.run_id, it.task_id): it.reason for it in res.rejected}
    elif isinstance(res, Rejected) and res.code is Code.ABORTED:  # every item was fenced
        fenced = {r.attempt.key: res.message for r in group}
    outcomes: list[str] = []
    for r in group:
        a = r.attempt
        how = "succeeded" if r.ok else f"failed: {r.error[:MAX_LOGGED_ERROR_CHARS]}"
        token = calls.bind(call_of(a))  # not calls.bound: a generator per line
        try:
            if res is None:
                outcomes.append("undelivered")
                log.info(
                    "attempt %d of %s/%s %s; its result was not delivered and the cluster no longer "
                    "runs it here (a newer attempt exists or the run ended)",
                    a.attempt,
                    *a.key,
                    how,
                )
            elif a.key in fenced:
                outcomes.append("fenced")
                log.info(
                    "attempt %d of %s/%s %s; its result was rejected as fenced: %s",
                    a.attempt,
                    *a.key,
                    how,
                    fenced[a.key],
                )
            elif isinstance(res, Rejected):
                outcomes.append("rejected")
                log.warning(
                    "attempt %d of %s/%s %s; its result was rejected: %s %s",
                    a.attempt,
                    *a.key,
                    how,
                    res.code.name,
                    res.message,
                )
            else:
                outcomes.append("succeeded" if r.ok else "failed")
                log.log(
                    logging.DEBUG if r.ok else logging.INFO, "attempt %d of %s/%s %s", a.attempt, *a.key, how
                )
        finally:
            calls.unbind(token)
    return outcomes


def _still_mine(st: ClusterState, cmd: Complete | Fail) -> bool:
    for it in cmd.items:
        t = st.task(it.run_id, it.task_id)
        if t is not None and t.status is TaskStatus.RUNNING and t.attempt == it.attempt:
            return True
    return False
