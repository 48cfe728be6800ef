"""Actor types for tests/test_actors.py (loaded as an agents module, as a node would)."""

from __future__ import annotations

from typing import Any

import raftmesh


@raftmesh.actor("counter", idle_s=0)
class Counter:
    """Counts what it was sent in ``ctx.state``; answers a request with the count."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        seen = ctx.state.setdefault("seen", [])
        seen.append(msg.payload)
        del seen[:-50]
        return {"n": ctx.state["n"], "node": ctx.node_id, "epoch": ctx.epoch}


@raftmesh.actor("relay", idle_s=0)
class Relay:
    """Forwards a durable message to the counter named in the payload (with the turn's ack)."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        await ctx.send(msg.payload["to"], msg.payload["value"], durable=True)
        ctx.kv.put(f"relayed/{msg.id}", msg.payload["value"])
        return "ok"


@raftmesh.actor("asker", idle_s=0)
class Asker:
    """Asks another actor and answers with its answer (a request inside a turn)."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        return await ctx.request(msg.payload["to"], msg.payload["value"], timeout_s=10.0)


@raftmesh.actor("listener", topics=("news",), idle_s=0)
class Listener:
    async def on_message(self, ctx: Any, msg: Any) -> Any:
        ctx.state.setdefault("got", []).append(msg.payload)
        return None


@raftmesh.actor("flaky", idle_s=0)
class Flaky:
    async def on_message(self, ctx: Any, msg: Any) -> Any:
        raise RuntimeError(f"cannot handle {msg.payload!r}")


@raftmesh.actor("sleepy", idle_s=0.5)
class Sleepy:
    async def on_activate(self, ctx: Any) -> None:
        ctx.state["activations"] = ctx.state.get("activations", 0) + 1
        ctx.kv.put(f"woke/{ctx.key}", ctx.epoch)  # committed with on_activate's own ack

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        return ctx.state.get("activations", 0)


@raftmesh.agent("messenger")
async def messenger(ctx: Any) -> Any:
    """A task that sends a durable message and asks for an answer."""
    await ctx.send(ctx.input["to"], ctx.input.get("send", "from-task"), durable=True)
    return await ctx.request(ctx.input["to"], "ask", timeout_s=ctx.input.get("timeout_s", 10.0))


@raftmesh.actor("sink", idle_s=0)
class Sink:
    """Counts in memory only: its turns change nothing but the mailbox (acks pipelined)."""

    count = 0

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        Sink.count += 1
        return None


@raftmesh.agent("messenger_sync", isolation="thread")
def messenger_sync(ctx: Any) -> Any:
    """The same from a thread agent: blocking calls."""
    ctx.send(ctx.input["to"], "from-thread", durable=True)
    return ctx.request(ctx.input["to"], "ask", timeout_s=10.0)
