"""What an agent receives when it runs one attempt of a task."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..consensus.commands import NO_USAGE, Usage
from ._spawn import Spawns


@dataclass
class TaskContext:
    """One attempt of one task.

    ``token`` is the attempt's fencing token: results and fenced writes carrying
    an older token are rejected by the state machine. ``cancelled`` is set when
    the cluster no longer wants this attempt (run cancelled, attempt fenced).
    """

    run_id: str
    task_id: str
    attempt: int
    token: int
    node_id: str
    input: Any
    upstream: dict[str, Any]
    """Outputs of the task's dependencies, by task id."""
    trace_id: str
    """The run's W3C trace id (README Tracing): the attempt's commands, messages and log lines
    carry it ("" a run submitted before trace ids)."""
    logger: logging.LoggerAdapter[logging.Logger]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    kv: Any = None
    """The cluster KV store; writes are fenced by this attempt's token (``raftmesh.agents.TaskKv``)."""
    locks: Any = None
    """Locks owned by this attempt (``raftmesh.agents.TaskLocks``)."""
    agents: Any = None
    """The node's ``AgentRegistry`` (an agent may call another registered agent type as a tool)."""
    usage: Usage = NO_USAGE
    """What this attempt consumed so far; committed with its completion or failure."""
    reads: Any = None
    """The node's local replica (``raftmesh.agents._task_clients.Reader``: ``reads.read(fn)`` calls
    ``fn(ClusterState)`` under its lock; it may be a moment behind the leader). Async agents only."""
    spawns: Spawns = field(default_factory=Spawns, init=False, repr=False, compare=False)
    """What this attempt spawned so far (``spawn``); added to the run with its completion."""
    item: Any = None
    """A map instance's item of its source's output list (None for a task that is not one)."""
    index: int = 0
    """A map instance's position in that list."""
    messages: Any = None
    """Sends of this attempt (``raftmesh.agents._messaging.Messenger``, sender ``task:RUN/TASK``,
    durable ones fenced by the attempt's token); None where the node has no router."""

    def _messenger(self) -> Any:
        if self.messages is None:
            raise RuntimeError(
                "ctx.send/request/publish are available to async and thread agents on a node "
                "(not in process isolation)"
            )
        return self.messages

    async def send(
        self,
        target: str,
        payload: Any,
        *,
        durable: bool = False,
        type: str = "",
        ttl_ms: int = 0,
        priority: int = 0,
    ) -> Any:
        """Send to actor ``target`` (``TYPE/KEY``); a durable one is committed when this returns."""
        return await self._messenger().send(
            target, payload, durable=durable, type=type, ttl_ms=ttl_ms, priority=priority
        )

    async def request(
        self, target: str, payload: Any, *, timeout_s: float = 30.0, durable: bool = False, type: str = ""
    ) -> Any:
        """The reply's payload (``DeadlineExceeded`` after ``timeout_s``)."""
        return await self._messenger().request(
            target, payload, timeout_s=timeout_s, durable=durable, type=type
        )

    async def publish(
        self, topic: str, payload: Any, *, durable: bool = False, source: str = "", type: str = ""
    ) -> Any:
        """Publish to ``topic``'s subscribers."""
        return await self._messenger().publish(topic, payload, durable=durable, source=source, type=type)

    def report_usage(self, tokens_in: int = 0, tokens_out: int = 0, cost: float = 0.0) -> None:
        """Add to this attempt's usage (summed per task and per run in ``raftmesh get``)."""
        if tokens_in < 0 or tokens_out < 0 or not 0 <= cost < float("inf"):
            raise ValueError("report_usage: tokens and cost must be finite and >= 0")
        u = self.usage
        self.usage = Usage(u.tokens_in + int(tokens_in), u.tokens_out + int(tokens_out), u.cost + float(cost))

    def spawn(self, fragment: Any, wait: bool = True) -> list[str]:
        """Add tasks to this run when this attempt succeeds; returns their ids.

        ``fragment``: a ``raftmesh.DAG``, a list of ``raftmesh.Task`` or a list of task spec
        maps (the keys of a task in a spec file). A spawned task may depend on tasks of the
        fragment, on this task (it reads this attempt's output) or on tasks of the run that
        already SUCCEEDED. Calls accumulate; nothing is added if the attempt fails, is
        cancelled or fenced. ``wait=True``: this task stays WAITING_CHILDREN until what it
        spawned has ended, so its dependents run after them (they still read this task's own
        output); ``wait=False``: it succeeds at once. Raises ``SpawnError`` (not retried)
        for what is wrong within the fragment; what is wrong against the run (an id already
        used, an unknown agent type, depth, limits, budget) fails the attempt with the reason.
        """
        return self.spawns.add(self.task_id, fragment, wait)


@dataclass
class SyncTaskContext(TaskContext):
    """What a ``thread`` or ``process`` agent receives: the same attempt, usable without a loop.

    ``cancelled`` is a ``threading.Event``: poll ``ctx.cancelled.is_set()`` or sleep with
    ``ctx.cancelled.wait(seconds)``. ``kv`` and ``locks`` have the async clients' methods as
    plain blocking calls (``ctx.kv.put(key, value)``), still fenced by the attempt's token.
    """

    # A thread cannot await an asyncio.Event; the same name keeps agents portable across modes.
    cancelled: threading.Event = field(default_factory=threading.Event)  # type: ignore[assignment]
    loop: asyncio.AbstractEventLoop | None = None
    """The node's loop (``send``/``request``/``publish`` run there and block this thread)."""

    def _blocking(self, coro: Any, timeout_s: float) -> Any:
        if self.loop is None:
            coro.close()
            raise RuntimeError("ctx.send/request/publish are not available in process isolation")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout_s)

    def send(
        self,
        target: str,
        payload: Any,
        *,
        durable: bool = False,
        type: str = "",
        ttl_ms: int = 0,
        priority: int = 0,
    ) -> Any:
        """``TaskContext.send`` as a blocking call."""
        coro = TaskContext.send(
            self, target, payload, durable=durable, type=type, ttl_ms=ttl_ms, priority=priority
        )
        return self._blocking(coro, 120.0)

    def request(
        self, target: str, payload: Any, *, timeout_s: float = 30.0, durable: bool = False, type: str = ""
    ) -> Any:
        """``TaskContext.request`` as a blocking call."""
        coro = TaskContext.request(self, target, payload, timeout_s=timeout_s, durable=durable, type=type)
        return self._blocking(coro, timeout_s + 10.0)

    def publish(
        self, topic: str, payload: Any, *, durable: bool = False, source: str = "", type: str = ""
    ) -> Any:
        """``TaskContext.publish`` as a blocking call."""
        coro = TaskContext.publish(self, topic, payload, durable=durable, source=source, type=type)
        return self._blocking(coro, 120.0)
