"""Actor types for tests/test_messages_surface.py (loaded by every node as an agents module)."""

from __future__ import annotations

import asyncio
from typing import Any

import raftmesh

SOURCE = __file__


@raftmesh.actor("tally", idle_s=0)
class Tally:
    """Counts messages in ``ctx.state`` (so the count survives a move) and notes, per sender, any
    message whose ``seq`` is below one already handled (reordered) or equal to it (a duplicate).
    ``{"get": true}`` answers the state without counting."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        p = msg.payload if isinstance(msg.payload, dict) else {}
        if not p.get("get"):
            ctx.state["n"] = ctx.state.get("n", 0) + 1
            if "seq" in p:
                last = ctx.state.setdefault("last", {})
                prev = last.get(msg.sender, -1)
                if p["seq"] < prev:
                    ctx.state["reordered"] = ctx.state.get("reordered", 0) + 1
                elif p["seq"] == prev:
                    ctx.state["duplicates"] = ctx.state.get("duplicates", 0) + 1
                last[msg.sender] = max(prev, p["seq"])
        return {"state": dict(ctx.state), "node": ctx.node_id, "epoch": ctx.epoch}


@raftmesh.actor("board", topics=("bids",), idle_s=0)
class Board:
    """Keeps the bids published to ``bids`` (a type subscription: ``board/<source>``)."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        if isinstance(msg.payload, dict) and msg.payload.get("get"):
            return ctx.state.get("bids", [])
        ctx.state.setdefault("bids", []).append(msg.payload)
        return None


@raftmesh.actor("slow", idle_s=0)
class Slow:
    """Takes ``payload["sleep_s"]`` per message: what queues behind it can outlive its TTL.
    ``{"get": true}`` answers the ids handled."""

    async def on_message(self, ctx: Any, msg: Any) -> Any:
        p = msg.payload if isinstance(msg.payload, dict) else {}
        if not p.get("get"):
            await asyncio.sleep(float(p.get("sleep_s", 0)))
            ctx.state.setdefault("handled", []).append(msg.id)
        return ctx.state.get("handled", [])
