"""A user's agent module (tests/test_agent_loading.py loads it into real nodes): one agent of
each form ``@raftmesh.agent`` takes."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import raftmesh


@raftmesh.agent("greet", capabilities=["text"], timeout_ms=5000)
async def greet(ctx: Any) -> Any:
    await asyncio.sleep(0)
    return {"hello": ctx.input["name"], "node": ctx.node_id}


@raftmesh.agent("add_sync", concurrency=2)
def add_sync(ctx: Any) -> Any:
    # A plain def must run off the node's event loop (which is the main thread of a node).
    total = ctx.input["value"] + sum(v for v in ctx.upstream.values() if isinstance(v, int))
    return {"sum": total, "off_loop": threading.current_thread() is not threading.main_thread()}


@raftmesh.agent("counter")
class Counter:
    """A class agent: set up once per node process, before any attempt, torn down at stop."""

    def __init__(self) -> None:
        self.setups = 0
        self.node: Any = None

    def setup(self, node: Any) -> None:
        self.setups += 1
        self.node = node
        with open(os.path.join(node.data_dir, "setup.log"), "a") as f:
            f.write(f"{node.node_id} pid {os.getpid()}\n")

    async def run(self, ctx: Any) -> Any:
        return {"setups": self.setups, "node": self.node.node_id, "input": ctx.input}

    def teardown(self) -> None:
        with open(os.path.join(self.node.data_dir, "teardown.log"), "a") as f:
            f.write(f"{self.node.node_id} pid {os.getpid()}\n")


@raftmesh.agent("shout")
class Shout:
    """A class agent with a plain ``run``: it defaults to the thread pool."""

    def run(self, ctx: Any) -> Any:
        return str(ctx.input).upper()
