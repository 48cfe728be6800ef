"""The agent host: runs the attempts the replicated state assigns to this node.

Level-triggered: on every applied batch it compares "RUNNING here" in the state
with the attempts it is executing, starts what is missing and cancels what the
cluster no longer wants (run cancelled, attempt fenced). Results are reported in
batches (one ``complete`` and one ``fail`` command per flush, one log entry),
each item carrying the attempt's fencing token; a stale result is rejected by
the state machine, not here.

It runs nothing until this process's registration (its incarnation) is applied,
so a restarted node never resumes attempts that the cluster has already requeued.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from ..agents import AgentRegistry, TaskContext
from ..consensus import limits
from ..consensus.codes import Code
from ..consensus.commands import Complete, Completion, Fail, Failure
from ..consensus.raft import RaftMember
from ..consensus.state import TaskKey, TaskStatus
from ..errors import RaftmeshError
from .proposer import Proposer, new_request_id, now_ms
from .task_clients import TaskKv, TaskLocks

log = logging.getLogger(__name__)

MAX_REPORT_ITEMS = 2000


@dataclass(eq=False)
class _Attempt:
    key: TaskKey
    attempt: int
    token: int
    task: asyncio.Task[None] | None = None
    ctx: TaskContext | None = None
    reported: bool = False


@dataclass(eq=False)
class _Report:
    attempt: _Attempt
    ok: bool
    output: Any = None
    error: str = ""
    retryable: bool = True


class AgentHost:
    def __init__(
        self, node_id: str, incarnation: str, registry: AgentRegistry, raft: RaftMember, proposer: Proposer
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._registry = registry
        self._raft = raft
        self._proposer = proposer
        self._active: dict[TaskKey, _Attempt] = {}
        self._reports: list[_Report] = []
        self._wake = asyncio.Event()
        self._report_wake = asyncio.Event()
        self._semaphores: dict[str, asyncio.Semaphore] = {
            d.name: asyncio.Semaphore(d.concurrency) for d in registry.agents.values() if d.concurrency > 0
        }

    def poke(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        reporter = asyncio.get_running_loop().create_task(self._report_loop(), name="host-reports")
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.5)
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
                if a.task is not None:
                    a.task.cancel()

    def _reconcile(self) -> None:
        if not self._raft.ready:
            return
        to_start: list[tuple[_Attempt, str, Any, dict[str, Any], int]] = []
        with self._raft.lock:
            st = self._raft.machine.state
            me = st.members.get(self.node_id)
            if me is None or me.incarnation != self.incarnation or not me.up:
                wanted: dict[TaskKey, None] = {}
            else:
                wanted = st.running.get(self.node_id, {})
            for key in wanted:
                t = st.runs[key[0]].tasks[key[1]]
                cur = self._active.get(key)
                if cur is not None and cur.attempt == t.attempt:
                    continue
                if cur is not None:  # an older attempt of ours: stop it
                    self._cancel(cur)
                upstream = {d: st.runs[key[0]].tasks[d].output for d in t.spec.deps}
                a = _Attempt(key, t.attempt, t.token)
                to_start.append((a, t.spec.agent, t.spec.input, upstream, t.spec.timeout_ms))
            stale = [a for k, a in self._active.items() if k not in wanted]
            for a in stale:
                cur_t = st.task(*a.key)
                if (
                    cur_t is None
                    or cur_t.status is not TaskStatus.RUNNING
                    or cur_t.attempt != a.attempt
                    or cur_t.node != self.node_id
                ):
                    self._cancel(a)
        loop = asyncio.get_running_loop()
        for a, agent, inp, upstream, timeout_ms in to_start:
            self._active[a.key] = a
            a.task = loop.create_task(self._execute(a, agent, inp, upstream, timeout_ms))

    def _cancel(self, a: _Attempt) -> None:
        if self._active.get(a.key) is a:
            del self._active[a.key]
        if a.ctx is not None:
            a.ctx.cancelled.set()
        if a.task is not None and not a.task.done():
            a.task.cancel()

    async def _execute(
        self, a: _Attempt, agent: str, inp: Any, upstream: dict[str, Any], timeout_ms: int
    ) -> None:
        run_id, task_id = a.key
        adef = self._registry.get(agent)
        if adef is None:
            self._report(_Report(a, False, error=f"agent {agent!r} is not offered by node {self.node_id}"))
            return
        logger = logging.LoggerAdapter(
            logging.getLogger(f"raftmesh.agent.{agent}"),
            {"run_id": run_id, "task_id": task_id, "attempt": a.attempt},
        )
        ctx = TaskContext(
            run_id=run_id,
            task_id=task_id,
            attempt=a.attempt,
            token=a.token,
            node_id=self.node_id,
            input=inp,
            upstream=upstream,
            trace_id=run_id,
            logger=logger,
            kv=TaskKv(self._raft, self._proposer, run_id, task_id, a.attempt, a.token),
            locks=TaskLocks(self._proposer, run_id, task_id, a.attempt),
        )
        a.ctx = ctx
        sem = self._semaphores.get(agent)
        try:
            if sem is not None:
                await sem.acquire()
            try:
                coro = adef.fn(ctx)
                output = await (asyncio.wait_for(coro, timeout_ms / 1000) if timeout_ms else coro)
            finally:
                if sem is not None:
                    sem.release()
        except asyncio.CancelledError:
            raise  # the cluster no longer wants this attempt: report nothing
        except TimeoutError:
            self._report(_Report(a, False, error=f"attempt {a.attempt} timed out after {timeout_ms} ms"))
            return
        except Exception as exc:
            retryable = bool(getattr(exc, "retryable", True))
            self._report(_Report(a, False, error=f"{type(exc).__name__}: {exc}", retryable=retryable))
            return
        try:
            json.dumps(output, allow_nan=False)
            size = limits.encoded_size(output)  # as the state machine measures it
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int beyond 64 bits
            self._report(_Report(a, False, error=f"output is not JSON-serializable: {exc}", retryable=False))
            return
        if size > limits.MAX_TASK_OUTPUT_BYTES:
            self._report(
                _Report(
                    a,
                    False,
                    error=f"output is {size} bytes encoded; the limit is {limits.MAX_TASK_OUTPUT_BYTES}",
                    retryable=False,
                )
            )
            return
        self._report(_Report(a, True, output=output))

    def _report(self, r: _Report) -> None:
        self._reports.append(r)
        self._report_wake.set()

    async def _report_loop(self) -> None:
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            await asyncio.sleep(0)  # gather the results that finished in this loop iteration
            while self._reports:
                batch, self._reports = self._reports[:MAX_REPORT_ITEMS], self._reports[MAX_REPORT_ITEMS:]
                await self._flush(batch)

    async def _flush(self, batch: list[_Report]) -> None:
        ts = now_ms()
        done = [r for r in batch if r.ok]
        failed = [r for r in batch if not r.ok]
        cmds: list[Complete | Fail] = []
        if done:
            cmds.append(
                Complete(
                    new_request_id("c-"),
                    ts,
                    self.node_id,
                    tuple(
                        Completion(
                            r.attempt.key[0], r.attempt.key[1], r.attempt.attempt, r.attempt.token, r.output
                        )
                        for r in done
                    ),
                )
            )
        if failed:
            cmds.append(
                Fail(
                    new_request_id("f-"),
                    ts,
                    self.node_id,
                    tuple(
                        Failure(
                            r.attempt.key[0],
                            r.attempt.key[1],
                            r.attempt.attempt,
                            r.attempt.token,
                            r.error,
                            r.retryable,
                        )
                        for r in failed
                    ),
                )
            )
        # Both commands are proposed together so the proposer puts them in one log entry.
        results = await asyncio.gather(*(self._deliver(c) for c in cmds))
        for ok in results:
            if not ok:
                log.warning(
                    "results of %d attempts could not be delivered; the attempts will be retried", len(batch)
                )
        for r in batch:
            if self._active.get(r.attempt.key) is r.attempt:
                del self._active[r.attempt.key]
        self._wake.set()

    async def _deliver(self, cmd: Complete | Fail) -> bool:
        """Propose until applied (same request id every time) or until we stop being its node."""
        while True:
            try:
                res = await self._proposer.propose(cmd, timeout_s=30.0)
                if not res.ok and res.code is not Code.ABORTED:
                    log.warning("%s rejected: %s %s", cmd.TAG, res.code, res.message)
                return True
            except RaftmeshError as exc:
                log.info("%s %s: %s; retrying", cmd.TAG, cmd.request_id, exc)
                if not self._still_mine(cmd):
                    return False
                await asyncio.sleep(0.5)

    def _still_mine(self, cmd: Complete | Fail) -> bool:
        with self._raft.lock:
            st = self._raft.machine.state
            for it in cmd.items:
                t = st.task(it.run_id, it.task_id)
                if t is not None and t.status is TaskStatus.RUNNING and t.attempt == it.attempt:
                    return True
        return False
