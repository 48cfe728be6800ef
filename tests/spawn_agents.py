"""Agents that spawn sub-DAGs at run time, for ``tests/test_e2e_spawn.py``.

A node loads them with ``--agents-module tests.spawn_agents:register_agents``; a process
worker loads the same source again to find ``plan_process`` by name.

Every planner spawns, for ``input["items"]``, one ``sum`` task per item (``sq-I``: the item
squared) and ``total`` (their sum, plus the planner's own output ``width`` read as upstream).
"""

from __future__ import annotations

from typing import Any

import raftmesh
from raftmesh.agents import AgentRegistry, TaskContext
from raftmesh.client import Task

SOURCE = "tests.spawn_agents:register_agents"


def _plan_maps(ctx: Any) -> list[dict[str, Any]]:
    items = ctx.input["items"]
    maps: list[dict[str, Any]] = [{"id": f"sq-{i}", "agent": "sum", "input": {"value": i * i}} for i in items]
    maps.append(
        {
            "id": "total",
            "agent": "width_sum",
            "deps": [m["id"] for m in maps] + [ctx.task_id],
        }
    )
    return maps


async def plan_async(ctx: TaskContext) -> Any:
    """Spawns spec maps (the keys of a task in a YAML spec), in two calls."""
    maps = _plan_maps(ctx)
    ids = ctx.spawn(maps[:-1], wait=ctx.input.get("wait", True))
    ids += ctx.spawn(maps[-1:], wait=ctx.input.get("wait", True))
    return {"width": len(ctx.input["items"]), "spawned": ids}


def plan_thread(ctx: Any) -> Any:
    """Spawns a list of ``raftmesh.Task``."""
    tasks = [Task(m["id"], m["agent"], m.get("input"), tuple(m.get("deps", ()))) for m in _plan_maps(ctx)]
    return {"width": len(ctx.input["items"]), "spawned": ctx.spawn(tasks)}


def plan_process(ctx: Any) -> Any:
    """Spawns a ``raftmesh.DAG`` built with the SDK builder, from inside a worker process."""
    dag = raftmesh.DAG()
    for m in _plan_maps(ctx):
        dag.task(m["id"], m["agent"], input=m.get("input"), deps=m.get("deps", ()))
    return {"width": len(ctx.input["items"]), "spawned": ctx.spawn(dag)}


async def plan_slow(ctx: TaskContext) -> Any:
    """Spawns one ``sleep`` task of input["seconds"]: long enough to watch the spawner wait."""
    return {
        "spawned": ctx.spawn([{"id": "nap", "agent": "sleep", "input": {"seconds": ctx.input["seconds"]}}])
    }


async def width_sum(ctx: TaskContext) -> Any:
    """The spawned tasks' outputs summed, plus the planner's output ``width`` (its upstream)."""
    total = 0
    for v in ctx.upstream.values():
        total += v["width"] if isinstance(v, dict) else v
    return total


async def upstream(ctx: TaskContext) -> Any:
    return ctx.upstream


async def bad_spawn(ctx: TaskContext) -> Any:
    """Spawns a task of an agent type no node offers: the state machine fails the attempt."""
    ctx.spawn([{"id": "ghost", "agent": "no_such_agent"}])
    return "kept only if the spawn were valid"


def register_agents(reg: AgentRegistry) -> None:
    reg.register("plan_async", plan_async, source=SOURCE)
    reg.register("plan_thread", plan_thread, isolation="thread", source=SOURCE)
    reg.register("plan_process", plan_process, isolation="process", source=SOURCE)
    reg.register("plan_slow", plan_slow, source=SOURCE)
    reg.register("width_sum", width_sum, source=SOURCE)
    reg.register("upstream", upstream, source=SOURCE)
    reg.register("bad_spawn", bad_spawn, source=SOURCE)
