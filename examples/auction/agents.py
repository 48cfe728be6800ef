"""An English auction between actors: an auctioneer per lot and bidders that each keep a budget.

Run it with ``examples/auction/run.sh`` (README "Messages", "Example"). Loaded by every node with
``--agents-module examples/auction/agents.py``:

* ``bidder/NAME`` keeps its budget and the lots it won in ``ctx.state`` (saved with each turn in
  the fenced KV, so a bidder whose node dies continues on another node with the same state).
  ``{"op": "budget", "max": N}`` sets its budget; ``{"op": "ask", "lot", "price"}`` answers
  ``{"bid": bool}``: yes while the price fits what is left of the budget;
  ``{"op": "won", "lot", "price"}`` books a win (by lot, so a repeated message books it once).
* ``auctioneer/LOT`` runs one ascending auction on ``{"op": "run", "item", "start", "step",
  "bidders"}`` (a durable request): it asks every bidder still in at each price (fast
  requests, one round after another), raises the price by ``step`` while two or more stay in,
  settles with the winner (a request: the winner's booking is committed before it answers),
  publishes the result on topic ``auctions`` (durable: retained for late subscribers), keeps it
  in its state and answers it. A repeated ``run`` answers the kept result.
"""

from __future__ import annotations

import asyncio
from typing import Any

import raftmesh

TOPIC = "auctions"


@raftmesh.actor("bidder")
class Bidder:
    async def on_message(self, ctx: Any, msg: Any) -> Any:
        p = msg.payload
        won: dict[str, int] = ctx.state.setdefault("won", {})
        if p["op"] == "budget":
            ctx.state["max"] = int(p["max"])
            return {"max": ctx.state["max"]}
        # What a lot may cost: the budget less the other lots' prices (a repeated ask or win of
        # the same lot does not count it twice).
        left = ctx.state.get("max", 0) - sum(v for lot, v in won.items() if lot != p["lot"])
        if p["op"] == "ask":
            return {"bid": p["price"] <= left, "node": ctx.node_id}
        if p["op"] == "won":
            won[p["lot"]] = p["price"]
            return {"left": left - p["price"]}
        raise ValueError(f"bidder: unknown op {p['op']!r}")


@raftmesh.actor("auctioneer")
class Auctioneer:
    async def on_message(self, ctx: Any, msg: Any) -> Any:
        p = msg.payload
        if p["op"] != "run":
            raise ValueError(f"auctioneer: unknown op {p['op']!r}")
        if "result" in ctx.state:
            return ctx.state["result"]
        lot, price, step = ctx.key, int(p["start"]), int(p["step"])
        bidders = [f"bidder/{b}" for b in p["bidders"]]
        rounds: list[dict[str, Any]] = []
        winner, paid = None, None
        while bidders:
            answers = await asyncio.gather(
                *(ctx.request(b, {"op": "ask", "lot": lot, "price": price}, timeout_s=60.0) for b in bidders)
            )
            staying = [b for b, a in zip(bidders, answers, strict=True) if a["bid"]]
            rounds.append({"price": price, "in": [b.split("/", 1)[1] for b in staying]})
            if len(staying) == 1:
                winner, paid = staying[0], price
                break
            if not staying:  # all left at once: the first of the last round wins at its price
                if len(rounds) > 1:
                    winner, paid = bidders[0], price - step
                break
            bidders, price = staying, price + step
        result: dict[str, Any] = {
            "lot": lot,
            "item": p["item"],
            "rounds": rounds,
            "winner": None,
            "price": None,
        }
        if winner is not None:
            await ctx.request(winner, {"op": "won", "lot": lot, "price": paid}, timeout_s=60.0)
            result |= {"winner": winner.split("/", 1)[1], "price": paid}
        await ctx.publish(TOPIC, result, durable=True)
        ctx.state["result"] = result
        return result
