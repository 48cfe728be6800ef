"""Agents that misbehave on purpose, for the isolation tests and ``scripts/bench_agents.py``.

A node loads them with ``--agents-module tests.isolation_agents:register_agents`` (a callable
that takes the registry); a process worker loads the same source again to find one by name.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Any

from raftmesh.agents import AgentRegistry, TaskContext
from raftmesh.errors import StaleToken

SOURCE = "tests.isolation_agents:register_agents"
MAX_WAIT_S = 120.0
"""No agent here waits longer than this for a cancellation (a stuck test ends anyway)."""


def _spin(ctx: Any) -> int:
    """Burn CPU in pure Python for input["seconds"] (or until cancelled); the loop count."""
    seconds = float(ctx.input.get("seconds", 1.0))
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and not ctx.cancelled.is_set():
        n += 1
    return n


def _block(ctx: Any) -> Any:
    """A blocking call (no loop, no polling) for input["seconds"]."""
    time.sleep(float(ctx.input.get("seconds", 1.0)))
    return ctx.input


def _segfault(ctx: Any) -> Any:
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return None


def _hog_memory(ctx: Any) -> int:
    chunks = [bytearray(16 * 1024 * 1024) for _ in range(int(ctx.input.get("chunks", 64)))]
    return len(chunks)


def _spin_forever(ctx: Any) -> None:
    while True:
        pass


def _wait_cancelled_then_put(ctx: Any) -> Any:
    """Ignore cancellation until it has happened, then try a fenced write and say how it went
    (in the file input["marker"]: the attempt's result itself is discarded)."""
    ctx.cancelled.wait(MAX_WAIT_S)
    try:
        ctx.kv.put(ctx.input["key"], {"zombie": ctx.attempt})
        outcome = "written"
    except StaleToken as exc:
        outcome = f"StaleToken: {exc}"
    with open(ctx.input["marker"], "w") as f:
        f.write(outcome)
    return outcome


def _pid_and_wait(ctx: Any) -> int:
    """Write this worker's pid to input["pid_file"], then wait (a process agent to cancel)."""
    with open(ctx.input["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(MAX_WAIT_S)
    return os.getpid()


async def _wait_async(ctx: TaskContext) -> None:
    await asyncio.sleep(MAX_WAIT_S)


def _kv_and_usage(ctx: Any) -> dict[str, Any]:
    """Uses ctx.kv through the worker's pipe and reports usage."""
    rev = ctx.kv.put(ctx.input["key"], {"from": "worker", "attempt": ctx.attempt})
    ctx.report_usage(tokens_in=3, tokens_out=4, cost=0.5)
    return {"revision": rev, "read": ctx.kv.get(ctx.input["key"]), "pid": os.getpid()}


async def _async_in_worker(ctx: TaskContext) -> dict[str, Any]:
    rev = await ctx.kv.put(ctx.input["key"], "async")
    return {"revision": rev, "pid": os.getpid()}


class Counter:
    """A class agent: ``setup`` once per process that runs it, then one count per attempt."""

    setups = 0

    def setup(self, node: Any) -> None:
        Counter.setups += 1
        self.pid = os.getpid()
        self.runs = 0
        self.data_dir = node.data_dir

    def run(self, ctx: Any) -> dict[str, Any]:
        self.runs += 1
        return {"pid": self.pid, "runs": self.runs, "setups": Counter.setups, "data_dir": self.data_dir}


class AsyncClient:
    """A class agent whose async ``setup`` builds loop-bound state (as a real client would)."""

    async def setup(self, node: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()  # bound to the loop the first time it is awaited
        self.ready.set()

    async def run(self, ctx: Any) -> dict[str, Any]:
        await self.ready.wait()
        return {"same_loop": asyncio.get_running_loop() is self.loop}


def _nothing(ctx: Any) -> None:
    return None


async def _nothing_async(ctx: TaskContext) -> None:
    return None


async def _echo(ctx: TaskContext) -> Any:
    return ctx.input


def register_agents(reg: AgentRegistry) -> None:
    def add(name: str, fn: Any, isolation: str, **kw: Any) -> None:
        reg.register(name, fn, isolation=isolation, source=SOURCE, **kw)

    add("spin_thread", _spin, "thread")
    add("spin_process", _spin, "process")
    add("block_thread", _block, "thread")
    add("plain_def", _block, "async")  # a plain def left at the default: must run in a thread
    add("segfault", _segfault, "process")
    add("hog_memory", _hog_memory, "process", memory_mb=64)
    add("cpu_limited", _spin_forever, "process", cpu_seconds=1)
    add("zombie_put_thread", _wait_cancelled_then_put, "thread")
    add("wait_process", _pid_and_wait, "process")
    add("wait_async", _wait_async, "async")
    add("kv_usage_process", _kv_and_usage, "process")
    add("async_in_worker", _async_in_worker, "process")
    counter = Counter()
    add("counter_process", counter.run, "process", setup=counter.setup)
    client = AsyncClient()
    add("async_client_process", client.run, "process", setup=client.setup)
    add("empty_async", _nothing_async, "async")
    add("empty_thread", _nothing, "thread")
    add("empty_process", _nothing, "process")
    add("echo_here", _echo, "async")
