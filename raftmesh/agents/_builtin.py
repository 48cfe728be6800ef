"""Built-in agents with exact semantics (tests and demos rely on them).

- ``echo``: output = input.
- ``sum``: output = ``input.get("value", 0)`` + the sum of all numeric upstream outputs;
  ``input.usage`` (``{"tokens_in", "tokens_out", "cost"}``, optional) is reported as the
  attempt's usage (the chaos workload checks the sums).
- ``sleep``: sleeps ``input["seconds"]``, output = input.
- ``fail``: fails its first ``input["times"]`` attempts, then outputs input.
- ``kv_put``: after ``input.get("delay_seconds", 0)`` seconds, writes
  ``{"value": input["value"], "attempt", "node"}`` to ``input["key"]``, fenced by the
  attempt's token (a zombie attempt's write is rejected); output = the mod_revision.
- ``http``: one HTTP(S) call, idempotent across attempts (``raftmesh.agents._http``).
- ``llm``: an OpenAI-compatible chat completion with a tool-calling loop (``raftmesh.agents._llm``).
- ``planner``: asks a model for a plan, validates it as submit would and spawns it
  (``raftmesh.agents._planner``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import InvalidArgument
from ._context import TaskContext
from ._registry import AgentRegistry


class AgentInputError(InvalidArgument, ValueError):
    """The task's input does not fit the agent; retrying will not help."""

    retryable = False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


async def echo(ctx: TaskContext) -> Any:
    return ctx.input


async def sum_agent(ctx: TaskContext) -> Any:
    inp = ctx.input if ctx.input is not None else {}
    if not isinstance(inp, dict):
        raise AgentInputError('sum: input must be a map like {"value": 3} (or null)')
    value = inp.get("value", 0)
    if not _is_number(value):
        raise AgentInputError(f"sum: input.value must be a number, not {type(value).__name__}")
    usage = inp.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise AgentInputError('sum: input.usage must be a map like {"tokens_in": 3, "cost": 0.5}')
        try:
            ctx.report_usage(**{k: usage[k] for k in ("tokens_in", "tokens_out", "cost") if k in usage})
        except (TypeError, ValueError) as exc:
            raise AgentInputError(f"sum: input.usage: {exc}") from exc
    return value + sum(v for v in ctx.upstream.values() if _is_number(v))


async def sleep(ctx: TaskContext) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict) or not _is_number(inp.get("seconds")) or inp["seconds"] < 0:
        raise AgentInputError('sleep: input must be a map like {"seconds": 1.5}')
    await asyncio.sleep(float(inp["seconds"]))
    return inp


async def fail(ctx: TaskContext) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict) or not isinstance(inp.get("times"), int):
        raise AgentInputError('fail: input must be a map like {"times": 2}')
    if ctx.attempt <= inp["times"]:
        raise RuntimeError(f"fail: attempt {ctx.attempt} fails on purpose (times={inp['times']})")
    return inp


async def kv_put(ctx: TaskContext) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict) or not isinstance(inp.get("key"), str):
        raise AgentInputError('kv_put: input must be a map like {"key": "k", "value": 1, "delay_seconds": 0}')
    delay = inp.get("delay_seconds", 0)
    if not _is_number(delay) or delay < 0:
        raise AgentInputError("kv_put: delay_seconds must be a number >= 0")
    await asyncio.sleep(float(delay))
    record = {"value": inp.get("value"), "attempt": ctx.attempt, "node": ctx.node_id}
    return await ctx.kv.put(inp["key"], record)


def register_builtins(reg: AgentRegistry) -> None:
    reg.register("echo", echo)
    reg.register("sum", sum_agent)
    reg.register("sleep", sleep)
    # Its failures are scripted by the task's input, not a sign of a broken node: no breaker.
    reg.register("fail", fail, breaker_failures=0)
    reg.register("kv_put", kv_put)
    # Imported here: they import AgentInputError from this module.
    from ._http import http_agent
    from ._llm import llm_agent
    from ._planner import planner_agent

    reg.register("http", http_agent)
    reg.register("llm", llm_agent)
    reg.register("planner", planner_agent)
