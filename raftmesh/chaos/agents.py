"""Agents the chaos nodes load (``--agents-module raftmesh.chaos.agents``).

``fail_breaker`` is the built-in ``fail`` with a circuit breaker that opens on one failure
for ``BREAKER_COOLDOWN_MS``: the workload's doomed tasks use it, so breakers open, go
half-open, probe and close on every node while nodes are killed, paused and cut off, and the
checker's "every retried dead letter's run succeeds" holds them to never wedging a type.

``sleep_thread`` and ``sleep_process`` have the built-in ``sleep``'s semantics (sleep
``input["seconds"]``, output the input) but run in the ``thread`` and ``process`` isolation
modes, so kills, partitions, fencing and preemption also land on attempts running in a
worker thread or a worker process, and the checker holds their results to the same rules.

The workflow jobs' agents (``raftmesh.chaos.workload.make_workflow_job``), each deterministic
so the checker knows every output:

- ``spawner`` spawns ``input["tasks"]`` as ``sum`` tasks ``sp<attempt>-<i>`` (the attempt in the
  id: were two attempts' spawns ever both added, the run would hold both sets) and outputs
  ``{"attempt", "spawned"}``;
- ``slow_sum`` is ``sum`` after ``input["seconds"]`` (replicas in flight when faults land);
  ``slow_sum_off`` answers one more, the dissenting replica of a vote;
- ``item_sum`` (a map instance) outputs ``input["value"]`` plus its item;
- ``spend`` sleeps ``input["seconds"]``, reports ``input["usage"]`` and outputs ``input["value"]``;
- ``undo_once`` is the compensating agent: it records the compensation under
  ``chaos/comp/<run>/<task>`` with a fenced create-if-absent, so the side effect is applied
  once whatever attempts ran, and the key shows which attempt applied it.

The message workload's actor (``raftmesh.chaos.message_workload``): ``chaos_log`` records each
turn it handles as one KV record written in the turn's ack (``ctx.kv``), keyed by the turn's
ordinal ``n``, which it keeps in ``ctx.state`` (saved in the same ack): the records are then
exactly the committed turns (their mod_revision the commit order), each with the message's
sender, path and sequence number, the activation's epoch and node, when the turn started and
when the message expired (``raftmesh.chaos.message_check`` judges them). A request's reply
is ``{"n", "epoch", "node"}``: the checker finds the turn that answered. ``chaos_relay`` does the
same and, in the same turn, sends the message on durably (``ctx.send``, committed with the ack)
to the ``chaos_log`` actor named in its payload, as ``<id>.r`` from its own address with its
turn's ``n`` as the sequence number: the forward must take effect once for each committed relay
turn, and in the relay's order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import raftmesh
from raftmesh.agents import SyncTaskContext, TaskContext
from raftmesh.agents._builtin import AgentInputError, fail
from raftmesh.clock import SYSTEM_CLOCK

BREAKER_COOLDOWN_MS = 500


def _sleep(ctx: SyncTaskContext) -> Any:
    inp = ctx.input
    seconds = inp.get("seconds") if isinstance(inp, dict) else None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        raise AgentInputError('input must be a map like {"seconds": 1.5}')
    deadline = time.monotonic() + float(seconds)
    # Wakes at once when the attempt is cancelled (thread mode; a process worker is killed).
    while (left := deadline - time.monotonic()) > 0:
        if ctx.cancelled.wait(left):
            break
    return inp


@raftmesh.agent("sleep_thread", isolation="thread")
def sleep_thread(ctx: SyncTaskContext) -> Any:
    return _sleep(ctx)


@raftmesh.agent("sleep_process", isolation="process")
def sleep_process(ctx: SyncTaskContext) -> Any:
    return _sleep(ctx)


@raftmesh.agent("fail_breaker", breaker_failures=1, breaker_cooldown_ms=BREAKER_COOLDOWN_MS)
async def fail_breaker(ctx: TaskContext) -> Any:
    return await fail(ctx)


COMPENSATION_PREFIX = "chaos/comp/"


def compensation_key(run_id: str, task_id: str) -> str:
    return f"{COMPENSATION_PREFIX}{run_id}/{task_id}"


def spawned_id(attempt: int, i: int) -> str:
    return f"sp{attempt}-{i}"


@raftmesh.agent("spawner")
async def spawner(ctx: TaskContext) -> Any:
    inp = ctx.input
    specs = inp.get("tasks") if isinstance(inp, dict) else None
    if not isinstance(specs, list):
        raise AgentInputError('input must be a map like {"tasks": [{"value": 1, "deps": [0]}]}')
    await asyncio.sleep(float(inp.get("seconds", 0)))
    fragment = [
        {
            "id": spawned_id(ctx.attempt, i),
            "agent": "sum",
            "input": {"value": s["value"]},
            # A task with no dependency in the fragment hangs under its spawner (whose output,
            # a map, ``sum`` ignores).
            "deps": [spawned_id(ctx.attempt, d) for d in s["deps"]] or [ctx.task_id],
        }
        for i, s in enumerate(specs)
    ]
    return {"attempt": ctx.attempt, "spawned": ctx.spawn(fragment, wait=True)}


async def _slow_sum(ctx: TaskContext, offset: int) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict) or not isinstance(inp.get("value"), int):
        raise AgentInputError('input must be a map like {"value": 3, "seconds": 0.2}')
    await asyncio.sleep(float(inp.get("seconds", 0)))
    ups = sum(v for v in ctx.upstream.values() if isinstance(v, int) and not isinstance(v, bool))
    return inp["value"] + ups + offset


@raftmesh.agent("slow_sum")
async def slow_sum(ctx: TaskContext) -> Any:
    return await _slow_sum(ctx, 0)


@raftmesh.agent("slow_sum_off")
async def slow_sum_off(ctx: TaskContext) -> Any:
    return await _slow_sum(ctx, 1)


@raftmesh.agent("item_sum")
async def item_sum(ctx: TaskContext) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict) or not isinstance(inp.get("value"), int) or not isinstance(ctx.item, int):
        raise AgentInputError('input must be a map like {"value": 3}, mapped over a list of integers')
    return inp["value"] + ctx.item


@raftmesh.agent("spend")
async def spend(ctx: TaskContext) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict) or not isinstance(inp.get("usage"), dict):
        raise AgentInputError('input must be a map like {"value": 1, "seconds": 0.2, "usage": {"cost": 0.5}}')
    await asyncio.sleep(float(inp.get("seconds", 0)))
    ctx.report_usage(**inp["usage"])
    return inp.get("value")


@raftmesh.agent("undo_once")
async def undo_once(ctx: TaskContext) -> Any:
    task = ctx.input["task"]
    key = compensation_key(ctx.run_id, task)
    record = {"task": task, "attempt": ctx.attempt, "node": ctx.node_id}
    # Fenced: once a newer attempt exists this raises StaleToken and writes nothing.
    if await ctx.kv.cas(key, 0, record):
        return {"undone": task, "by_attempt": ctx.attempt}
    done = await ctx.kv.get(key)  # an earlier attempt applied it (its node was lost before it reported)
    return {"undone": task, "by_attempt": done["attempt"] if isinstance(done, dict) else None}


ACTOR_TYPE = "chaos_log"
RELAY_TYPE = "chaos_relay"
EFFECT_PREFIX = "chaos-msg/eff/"
"""``<prefix><address>/<n:09d>/<id>``: one record per committed turn of a chaos actor."""


def effect_key(address: str, n: int, mid: str) -> str:
    return f"{EFFECT_PREFIX}{address}/{n:09d}/{mid}"


def relayed_id(mid: str) -> str:
    """The logical id of what a relay sends on for message ``mid``."""
    return f"{mid}.r"


def effect_record(
    payload: Any, mid: str, epoch: int, node: str, n: int, start_ms: int, expires_ms: int
) -> dict[str, Any]:
    """What a chaos actor's turn writes, from the message it handled."""
    p = payload if isinstance(payload, dict) else {}
    return {
        "id": p.get("id", mid),
        "s": p.get("s", ""),
        "p": p.get("p", ""),
        "q": p.get("q", 0),
        "mid": mid,
        "epoch": epoch,
        "node": node,
        "n": n,
        "start_ms": start_ms,
        "expires_ms": expires_ms,
    }


@raftmesh.actor(ACTOR_TYPE)
class ChaosLog:
    async def on_message(self, ctx: Any, msg: raftmesh.Message) -> Any:
        start_ms = SYSTEM_CLOCK.now_ms()  # first: the turn's start, compared with the expiry
        n = int(ctx.state.get("n", 0)) + 1
        ctx.state["n"] = n
        rec = effect_record(msg.payload, msg.id, ctx.epoch, ctx.node_id, n, start_ms, msg.expires_ms)
        ctx.kv.put(effect_key(ctx.address, n, rec["id"]), rec)
        return {"n": n, "epoch": ctx.epoch, "node": ctx.node_id}


@raftmesh.actor(RELAY_TYPE)
class ChaosRelay:
    async def on_message(self, ctx: Any, msg: raftmesh.Message) -> Any:
        start_ms = SYSTEM_CLOCK.now_ms()
        n = int(ctx.state.get("n", 0)) + 1
        ctx.state["n"] = n
        rec = effect_record(msg.payload, msg.id, ctx.epoch, ctx.node_id, n, start_ms, msg.expires_ms)
        to = msg.payload.get("to") if isinstance(msg.payload, dict) else None
        if isinstance(to, str) and to:
            rec["to"] = to
            forward = {"id": relayed_id(rec["id"]), "s": ctx.address, "p": "durable", "q": n}
            await ctx.send(to, forward, durable=True)
        ctx.kv.put(effect_key(ctx.address, n, rec["id"]), rec)
        return {"n": n, "epoch": ctx.epoch, "node": ctx.node_id}
