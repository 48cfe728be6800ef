"""Agents the chaos nodes load (``--agents-module raftmesh.chaos.agents``).

``fail_breaker`` is the built-in ``fail`` with a circuit breaker that opens on one failure
for ``BREAKER_COOLDOWN_MS``: the workload's doomed tasks use it, so breakers open, go
half-open, probe and close on every node while nodes are killed, paused and cut off, and the
checker's "every retried dead letter's run succeeds" holds them to never wedging a type.

``sleep_thread`` and ``sleep_process`` have the built-in ``sleep``'s semantics (sleep
``input["seconds"]``, output the input) but run in the ``thread`` and ``process`` isolation
modes, so kills, partitions, fencing and preemption also land on attempts running in a
worker thread or a worker process, and the checker holds their results to the same rules.
"""

from __future__ import annotations

import time
from typing import Any

import raftmesh
from raftmesh.agents import SyncTaskContext, TaskContext
from raftmesh.agents._builtin import AgentInputError, fail

BREAKER_COOLDOWN_MS = 500


def _sleep(ctx: SyncTaskContext) -> Any:
    inp = ctx.input
    seconds = inp.get("seconds") if isinstance(inp, dict) else None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        raise AgentInputError('input must be a map like {"seconds": 1.5}')
    deadline = time.monotonic() + float(seconds)
    # Wakes at once when the attempt is cancelled (thread mode; a process worker is killed).
    while (left := deadline - time.monotonic()) > 0:
        if ctx.cancelled.wait(left):
            break
    return inp


@raftmesh.agent("sleep_thread", isolation="thread")
def sleep_thread(ctx: SyncTaskContext) -> Any:
    return _sleep(ctx)


@raftmesh.agent("sleep_process", isolation="process")
def sleep_process(ctx: SyncTaskContext) -> Any:
    return _sleep(ctx)


@raftmesh.agent("fail_breaker", breaker_failures=1, breaker_cooldown_ms=BREAKER_COOLDOWN_MS)
async def fail_breaker(ctx: TaskContext) -> Any:
    return await fail(ctx)
