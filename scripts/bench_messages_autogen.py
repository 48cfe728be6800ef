"""AutoGen's side of scripts/bench_messages.py: its gRPC host and worker processes.

Run by the Python of the separate AutoGen virtual environment that bench_messages.py makes
(``autogen-ext[grpc]==0.7.5`` pins grpcio 1.70, so it cannot share raftmesh's), never by raftmesh's:
it imports only the standard library and AutoGen. One role per process:

    python bench_messages_autogen.py host ADDRESS
    python bench_messages_autogen.py echo HOST_ADDRESS           # the request/response target
    python bench_messages_autogen.py sub HOST_ADDRESS EFFECT_LOG  # the topic subscriber
    python bench_messages_autogen.py driver HOST_ADDRESS         # sends and publishes

Every role prints ``{"event": "ready"}`` on stdout once it serves/registered. The driver then reads one
JSON command a line on stdin and answers each with one JSON line (progress events may come first):

    {"op": "rr", "n": N, "max_s": S}          N requests one at a time (none started after S s);
                                              the latency of each (ns), the wall time
    {"op": "inflight", "n": N, "window": W, "max_s": S}   the same with W in flight
    {"op": "publish", "n": N, "base": B}      N publishes of seq B..B+N-1 as fast as publish_message returns
    {"op": "stream", "n": N, "base": B, "rate": R, "marks": [K, ...]}
                                              N publishes paced at R/s; after the K-th one it prints
                                              {"event": "mark", "sent": K} and carries on
    {"op": "probe", "timeout_s": T}           one request: did it answer within T s, raise, or hang?
    {"op": "quit"}

The subscriber's handler appends ``"SEQ MONOTONIC_NS\\n"`` to EFFECT_LOG with one unbuffered write (the
same effect the raftmesh side's subscriber actor records), so what it handled survives a kill -9 and the
benchmark reads end-to-end times and losses from the file. All messages carry a 64-byte payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    TopicId,
    TypeSubscription,
    event,
    rpc,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost

TOPIC = "bench"
PAYLOAD = "x" * 64


@dataclass
class Req:
    seq: int
    payload: str


@dataclass
class Resp:
    seq: int
    payload: str


@dataclass
class Pub:
    seq: int
    payload: str


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Echo(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("echo")

    @rpc
    async def on_req(self, message: Req, ctx: MessageContext) -> Resp:
        return Resp(message.seq, message.payload)


class Sub(RoutedAgent):
    def __init__(self, fd: int) -> None:
        super().__init__("subscriber")
        self.fd = fd

    @event
    async def on_pub(self, message: Pub, ctx: MessageContext) -> None:
        os.write(self.fd, f"{message.seq} {time.monotonic_ns()}\n".encode())


async def worker(host: str) -> GrpcWorkerAgentRuntime:
    rt = GrpcWorkerAgentRuntime(host_address=host)
    for t in (Req, Resp, Pub):
        rt.add_message_serializer(try_get_known_serializers_for_type(t))
    await rt.start()
    return rt


async def serve_forever() -> None:
    await asyncio.Event().wait()  # until the benchmark kills or terminates this process


async def run_host(address: str) -> None:
    host = GrpcWorkerAgentRuntimeHost(address=address)
    host.start()
    say({"event": "ready"})
    await serve_forever()


async def run_echo(host: str) -> None:
    rt = await worker(host)
    await Echo.register(rt, "echo", Echo)
    say({"event": "ready"})
    await serve_forever()


async def run_sub(host: str, effect_log: str) -> None:
    fd = os.open(effect_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rt = await worker(host)
    await Sub.register(rt, "sub", lambda: Sub(fd))
    await rt.add_subscription(TypeSubscription(topic_type=TOPIC, agent_type="sub"))
    say({"event": "ready"})
    await serve_forever()


class Driver:
    def __init__(self, rt: GrpcWorkerAgentRuntime) -> None:
        self.rt = rt
        self.target = AgentId("echo", "default")
        self.topic = TopicId(TOPIC, "default")

    async def request(self, seq: int) -> int:
        t0 = time.monotonic_ns()
        r = await self.rt.send_message(Req(seq, PAYLOAD), self.target)
        if not isinstance(r, Resp) or r.seq != seq:
            raise RuntimeError(f"wrong reply to request {seq}: {r!r}")
        return time.monotonic_ns() - t0

    async def rr(self, n: int, max_s: float) -> dict[str, Any]:
        return await self.inflight(n, 1, max_s)

    async def inflight(self, n: int, window: int, max_s: float) -> dict[str, Any]:
        """n requests on ``window`` lanes; no new one after ``max_s`` seconds."""
        lat: list[int] = []
        it = iter(range(n))
        stop = time.monotonic() + max_s

        async def lane() -> None:
            for i in it:
                if time.monotonic() >= stop:
                    return
                lat.append(await self.request(i))

        t0 = time.monotonic_ns()
        await asyncio.gather(*(lane() for _ in range(window)))
        return {"latency_ns": lat, "wall_ns": time.monotonic_ns() - t0}

    async def publish(self, n: int, base: int) -> dict[str, Any]:
        errors = 0
        t0 = time.monotonic_ns()
        for i in range(base, base + n):
            try:
                await self.rt.publish_message(Pub(i, PAYLOAD), self.topic)
            except Exception:
                errors += 1
        return {"t_first_ns": t0, "t_last_ns": time.monotonic_ns(), "errors": errors}

    async def stream(self, n: int, base: int, rate: float, marks: list[int]) -> dict[str, Any]:
        errors: list[str] = []
        t0 = time.monotonic()
        for k in range(1, n + 1):
            delay = t0 + (k - 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not waiting for something
            try:
                await self.rt.publish_message(Pub(base + k - 1, PAYLOAD), self.topic)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            if k in marks:
                say({"event": "mark", "sent": k})
        return {
            "sent": n,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "wall_s": time.monotonic() - t0,
        }

    async def probe(self, timeout_s: float) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await self.rt.send_message(Req(-1, PAYLOAD), self.target)
            return {"outcome": "answered", "s": time.monotonic() - t0}
        except TimeoutError:
            return {"outcome": "hung", "s": time.monotonic() - t0}
        except Exception as exc:
            return {"outcome": f"raised {type(exc).__name__}: {exc}", "s": time.monotonic() - t0}


async def run_driver(host: str) -> None:
    rt = await worker(host)
    d = Driver(rt)
    say({"event": "ready"})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            say({"ok": True})
            os._exit(0)  # the runtime's own stop() waits on a host that may be dead
        try:
            res = await getattr(d, op)(**cmd)
            say({"ok": True, **res})
        except Exception as exc:
            say({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main() -> None:
    # AutoGen formats a log line per message even when nothing is logged at INFO; keep its output quiet.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    role, *args = sys.argv[1:]
    fn = {"host": run_host, "echo": run_echo, "sub": run_sub, "driver": run_driver}[role]
    asyncio.run(fn(*args))


if __name__ == "__main__":
    main()
