"""The compensating agent of the saga tests: it records each of its attempts in the fenced KV.

A node loads it with ``--agents-module tests.saga_agents:register_agents``. Each attempt
writes its own key ``saga/RUN/TASK/ATTEMPT`` (fenced by the attempt's token), so the test
counts how many times each compensation ran, and reads the order from the keys' revisions.
"""

from __future__ import annotations

from typing import Any

from raftmesh.agents import AgentRegistry, TaskContext

SOURCE = "tests.saga_agents:register_agents"


async def undo(ctx: TaskContext) -> Any:
    task = ctx.input["task"]
    record = {"input": ctx.input, "output": ctx.upstream.get(task), "node": ctx.node_id}
    revision = await ctx.kv.put(f"saga/{ctx.run_id}/{task}/{ctx.attempt}", record)
    return {"undone": task, "revision": revision}


def register_agents(reg: AgentRegistry) -> None:
    reg.register("undo", undo)
