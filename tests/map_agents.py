"""Agents that report the map item they were given, one per isolation mode (``tests/test_e2e_maps.py``).

A node loads them with ``--agents-module tests.map_agents:register_agents``; a process worker
loads the same source again to find one by name.
"""

from __future__ import annotations

from typing import Any

from raftmesh.agents import AgentRegistry, TaskContext

SOURCE = "tests.map_agents:register_agents"


def _item(ctx: Any) -> Any:
    return {"item": ctx.item, "index": ctx.index, "input": ctx.input, "upstream": sorted(ctx.upstream)}


async def _item_async(ctx: TaskContext) -> Any:
    return _item(ctx)


def register_agents(reg: AgentRegistry) -> None:
    reg.register("item_async", _item_async, isolation="async", source=SOURCE)
    reg.register("item_thread", _item, isolation="thread", source=SOURCE)
    reg.register("item_process", _item, isolation="process", source=SOURCE)
