"""Agents and an actor for tests/test_tracing.py: each says which trace it ran under.

Every attempt logs ``traced agent <name>`` through ``ctx.logger`` (the test finds the line in
the node's JSON log), answers with ``ctx.trace_id`` and the trace of the call bound where it
runs (``raftmesh.calls``: the context a thread or a worker process sees), and writes a KV key
(a command whose origin must carry the trace). The async one also sends a durable message to
the ``trace_sink`` actor, which records the trace of the message and of its own turn.
"""

from __future__ import annotations

from typing import Any

import raftmesh
from raftmesh import calls


def _bound_trace() -> str:
    call = calls.current()
    return call.trace_id if call is not None else ""


def _answer(ctx: Any, name: str) -> dict[str, Any]:
    ctx.logger.info("traced agent %s", name)
    return {"ctx": ctx.trace_id, "bound": _bound_trace()}


@raftmesh.agent("traced_async", isolation="async")
async def traced_async(ctx: Any) -> Any:
    await ctx.send("trace_sink/k", {"from": ctx.task_id}, durable=True)
    await ctx.kv.put(f"traced/{ctx.task_id}", ctx.trace_id)
    return _answer(ctx, "traced_async")


@raftmesh.agent("traced_thread", isolation="thread")
def traced_thread(ctx: Any) -> Any:
    ctx.kv.put(f"traced/{ctx.task_id}", ctx.trace_id)
    return _answer(ctx, "traced_thread")


@raftmesh.agent("traced_process", isolation="process")
def traced_process(ctx: Any) -> Any:
    ctx.kv.put(f"traced/{ctx.task_id}", ctx.trace_id)
    return _answer(ctx, "traced_process")


@raftmesh.actor("trace_sink", idle_s=0)
class TraceSink:
    async def on_message(self, ctx: Any, msg: Any) -> Any:
        ctx.kv.put(f"sink/{msg.id}", {"message": msg.trace_id, "turn": _bound_trace()})
        return None
