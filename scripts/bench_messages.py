#!/usr/bin/env python3
"""raftmesh agent messaging (fast and durable paths) vs AutoGen's gRPC worker runtime, side by side.

What is measured
----------------
Both systems run on this machine in the same run, 64-byte payloads everywhere:

* raftmesh: a ``LocalCluster`` of 3 node processes on loopback, data in a temporary directory, every
  node loading ``scripts/bench_messages_agents.py``: the actor ``benchecho/k1`` answers a request with
  its payload; ``benchsub`` (subscribed to topic ``bench``) handles a publish as ``benchsub/default``.
  The driver is this process: asyncio gRPC calls on the raw ``raftmesh.v1.Messages`` API
  (``Request``, ``Send`` with a topic), each lane starting at the Raft leader and failing over to the
  next node on UNAVAILABLE / DEADLINE_EXCEEDED, re-sending the same message id (a durable send is
  idempotent by its id; the fast path's receiver drops a duplicate id). Every scenario is run on the
  fast path (``durable=False``) and on the durable path (``durable=True``: committed to the Raft log
  before ``Send``/``Request`` returns; the handler's ack commits the reply).
* AutoGen: ``autogen-ext[grpc]==0.7.5`` + ``autogen-core`` in their own virtual environment (they pin
  grpcio 1.70), made by this script under ``--autogen-venv`` (default
  ``$XDG_CACHE_HOME/raftmesh/bench-autogen-0.7.5``) the first time. A ``GrpcWorkerAgentRuntimeHost``
  process and 3 ``GrpcWorkerAgentRuntime`` worker processes on loopback (scripts/bench_messages_autogen.py):
  one hosts the ``echo`` agent (an ``@rpc`` handler), one the subscriber (``TypeSubscription`` to topic
  ``bench``), one is the driver (``send_message`` / ``publish_message``), driven over a pipe by this
  script.

Both subscribers record the same effect: one unbuffered append of ``"SEQ MONOTONIC_NS"`` to an effect
log per message handled (CLOCK_MONOTONIC is one clock for every process of the machine), from which
end-to-end rates and losses are read.

Scenarios 1-3 run ``--repeat`` rounds (default 3), every system's turn in each round one after the
other, and the round with the median msg/s is shown (each round's msg/s is in the JSON): the machine is
shared, and its load moves. A round starts no new request after ``--max-s`` s (default 20), so a slow
path is measured on fewer requests rather than for minutes.

Scenarios:

1. request/response one at a time (``--requests``, default 2,000, after 50 untimed): p50/p99 of the
   round trip at the driver, and messages/s = requests / wall time.
2. 64 requests in flight (``--inflight-requests``, default 5,000): 64 lanes each issuing its next request
   when the previous one answered; msg/s = requests / wall time, p50/p99 per request. All go to one
   agent on both systems. AutoGen runs one agent's handlers concurrently (a task per message);
   a raftmesh activation takes one turn at a time, and a durable turn ends with its ack committed,
   so one durable key is bounded by the commit latency. A raftmesh-only row therefore also spreads
   the 64 lanes over 64 keys (``benchecho/s0`` .. ``s63``, activated by an untimed round first).
3. publish to a subscriber end to end (``--publishes``, default 5,000): msg/s = publishes / (the last
   one's handling at the subscriber - the first publish call). AutoGen's ``publish_message`` returns
   before anything is sent, so its driver publishes in a tight loop; raftmesh's ``Send`` answers once
   the subscriber's node accepted (fast) or the log committed (durable) it, so its driver keeps 64 in
   flight. A second row is the rate at which the calls returned (for raftmesh: were acknowledged), so
   a gap between the two is the subscriber's handling falling behind.
4. kills mid-stream (``--stream`` publishes, default 4,000, paced at ``--rate``/s, default 400): a kill -9
   after the first third, a restart after the second third, then wait until every publish was handled
   or nothing new arrived for ``--settle`` s. AutoGen: kill its host (restarted on the same port), and
   kill the subscriber's worker (a new one started). raftmesh, each path: kill the Raft leader, and kill
   the node hosting ``benchsub/default`` (both restarted). Printed: publishes whose call raised or
   gave up, acknowledged ones (the call returned OK), lost (never handled) of each, and duplicates.

Guarantees behind the kill figures (README "## Messages"): a durable message is in the replicated
log when ``Send`` returns, so it must never be lost (a handler may run twice if its node dies before
the ack commits: duplicates, never losses). The fast path is at least once while the sender's and the
target's nodes live; a message the target's node accepted and then died holding is lost, and the
figure says so.

How to read the ratios
----------------------
Ratios are raftmesh / AutoGen: msg/s above 1 = raftmesh faster; latency above 1 = raftmesh slower.
The issue's goals are printed next to them. AutoGen routes every message through its one host process
and keeps its routes and subscriptions in that process's memory; raftmesh's fast path goes node to
node, and its durable path commits to a Raft log on a majority first.

Usage::

    python scripts/bench_messages.py                 # everything, ~12 minutes
    python scripts/bench_messages.py --quick         # small counts (the test runs this)
    python scripts/bench_messages.py --skip-autogen  # raftmesh only
    python scripts/bench_messages.py --skip-raftmesh # AutoGen only
    python scripts/bench_messages.py --json > out.json

Everything started is stopped and the temporary directory removed, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from _benchkit import environment, finite, percentile, positive_int, ratio, run_bench

HERE = os.path.dirname(os.path.abspath(__file__))
AUTOGEN_SCRIPT = os.path.join(HERE, "bench_messages_autogen.py")
AGENTS_MODULE = os.path.join(HERE, "bench_messages_agents.py")
AUTOGEN_PINS = ("autogen-ext[grpc]==0.7.5", "autogen-core==0.7.5")
AUTOGEN_VERSION = "0.7.5"
NODES = 3
WINDOW = 64
PAYLOAD_BYTES = 64
WARMUP = 50
ECHO = "benchecho/k1"
TOPIC = "bench"
SUBSCRIBER = "benchsub/default"
READY_S = 60.0
CALL_S = 10.0
"""One raftmesh call's deadline; a lane then tries the next node with the same message id."""
GIVE_UP_S = 60.0
"""A kill-scenario publish still not acknowledged after this long counts as failed (never sent)."""


class WrongAnswer(AssertionError):
    """A reply did not match its request, or a system broke its own promise where it makes one."""


def log(msg: str) -> None:
    print(f"[bench_messages] {msg}", file=sys.stderr, flush=True)


def payload(seq: int) -> bytes:
    """64 bytes: the sequence number (20 digits), padding. The subscribers parse the first 20."""
    return b"%020d" % seq + b"x" * (PAYLOAD_BYTES - 20)


def latency_summary(lat_ns: Sequence[int], wall_ns: int) -> dict[str, Any]:
    ms = [x / 1e6 for x in lat_ns]
    return {
        "n": len(ms),
        "msg_per_s": len(ms) / (wall_ns / 1e9) if wall_ns else None,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


# ---- the effect log both subscribers append to ----------------------------------------------------------


class EffectLog:
    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "ab").close()

    def read(self) -> dict[int, list[int]]:
        """seq -> monotonic ns of each handling (more than one: handled more than once)."""
        out: dict[int, list[int]] = {}
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a write in progress
                s, t = line.split()
                out.setdefault(int(s), []).append(int(t))
        return out

    def wait_for(self, seqs: range, settle_s: float) -> dict[int, list[int]]:
        """Poll until every seq in ``seqs`` was handled, or nothing new arrived for ``settle_s``."""
        last_size, last_change = -1, time.monotonic()
        while True:
            got = self.read()
            if all(s in got for s in seqs):
                return got
            size = os.path.getsize(self.path)
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change >= settle_s:
                return got
            time.sleep(0.05)


def losses(seqs: range, acked: set[int], failed: set[int], got: dict[int, list[int]]) -> dict[str, Any]:
    handled = {s for s in seqs if s in got}
    lost = [s for s in seqs if s not in got]
    return {
        "sent": len(seqs),
        "acknowledged": len(acked),
        "failed_calls": len(failed),
        "handled": len(handled),
        "lost": len(lost),
        "lost_acknowledged": len([s for s in lost if s in acked]),
        "duplicates": sum(len(got[s]) - 1 for s in handled),
        "lost_ranges": ranges([s - seqs.start for s in lost]),
    }


def ranges(xs: list[int], most: int = 4) -> str:
    """ "a-b, c-d, ..." of sorted ints (offsets in the stream), the first ``most`` runs."""
    runs: list[list[int]] = []
    for x in xs:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:most])
    return shown + (f", ... ({len(runs)} runs)" if len(runs) > most else "")


# ---- AutoGen ---------------------------------------------------------------------------------------------


def default_autogen_venv() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "raftmesh", f"bench-autogen-{AUTOGEN_VERSION}")


def autogen_python(venv: str) -> tuple[str | None, str]:
    """The venv's python, making the venv first if needed; (None, why) if it cannot be had."""
    py = os.path.join(venv, "bin", "python")
    probe = [py, "-c", "import autogen_core, autogen_ext.runtimes.grpc; print(autogen_core.__version__)"]

    def works() -> bool:
        if not os.path.exists(py):
            return False
        r = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        return r.returncode == 0 and r.stdout.strip() == AUTOGEN_VERSION

    if works():
        return py, ""
    log(f"making AutoGen's virtual environment in {venv} ({' '.join(AUTOGEN_PINS)})")
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", venv],
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *AUTOGEN_PINS],
    ]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(cmd[:4])}: {exc}"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return None, f"{' '.join(cmd[:4])} failed: {' | '.join(tail)}"
    if not works():
        return None, f"{py} cannot import autogen_ext.runtimes.grpc {AUTOGEN_VERSION} after installing it"
    return py, ""


class JsonProc:
    """One AutoGen process: JSON lines on its stdout (read by a thread), commands on its stdin."""

    def __init__(self, python: str, role: str, args: Sequence[str], tmp: str) -> None:
        self.role = role
        self.err_path = os.path.join(tmp, f"autogen-{role}-{uuid.uuid4().hex[:6]}.err")
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [python, AUTOGEN_SCRIPT, role, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        threading.Thread(target=self._read, name=f"autogen-{role}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout_s: float) -> dict[str, Any]:
        try:
            msg = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise WrongAnswer(
                f"AutoGen {self.role}: nothing within {timeout_s:g} s ({self.err_tail()})"
            ) from None
        if msg is None:
            raise WrongAnswer(f"AutoGen {self.role} exited ({self.err_tail()})")
        return msg

    def err_tail(self) -> str:
        with open(self.err_path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-3:]) or "no stderr"

    def wait_ready(self) -> None:
        msg = self.next(READY_S)
        if msg.get("event") != "ready":
            raise WrongAnswer(f"AutoGen {self.role}: expected ready, got {msg}")

    def call(
        self, cmd: dict[str, Any], timeout_s: float, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.next(max(0.1, deadline - time.monotonic()))
            if "ok" in msg:
                if not msg["ok"]:
                    raise WrongAnswer(f"AutoGen driver: {cmd['op']} failed: {msg['error']}")
                return msg
            if on_event is not None:
                on_event(msg)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


class AutogenSide:
    name = "AutoGen"

    def __init__(self, python: str, tmp: str, effects: EffectLog) -> None:
        from raftmesh.localcluster import free_ports

        self.python, self.tmp, self.effects = python, tmp, effects
        self.address = f"127.0.0.1:{free_ports(1)[0]}"
        self.procs: list[JsonProc] = []
        self.host = self._start("host", self.address)
        self.echo = self._start("echo", self.address)
        self.sub = self._start("sub", self.address, effects.path)
        self.driver = self._start("driver", self.address)

    def _start(self, role: str, *args: str, wait: bool = True) -> JsonProc:
        p = JsonProc(self.python, role, args, self.tmp)
        self.procs.append(p)
        if wait:
            p.wait_ready()
        return p

    def close(self) -> None:
        for p in self.procs:
            p.stop()

    def rr(self, n: int, max_s: float) -> dict[str, Any]:
        self.driver.call({"op": "rr", "n": WARMUP, "max_s": max_s}, 120)
        r = self.driver.call({"op": "rr", "n": n, "max_s": max_s}, max_s + 120)
        return latency_summary(r["latency_ns"], r["wall_ns"])

    def inflight(self, n: int, max_s: float) -> dict[str, Any]:
        r = self.driver.call({"op": "inflight", "n": n, "window": WINDOW, "max_s": max_s}, max_s + 120)
        return latency_summary(r["latency_ns"], r["wall_ns"])

    def publish(self, n: int, base: int, settle_s: float) -> dict[str, Any]:
        r = self.driver.call({"op": "publish", "n": n, "base": base}, 600)
        seqs = range(base, base + n)
        got = self.effects.wait_for(seqs, settle_s)
        return e2e_summary(seqs, got, r["t_first_ns"], r["t_last_ns"], failed=r["errors"])

    def kill_scenario(self, what: str, n: int, base: int, rate: float, settle_s: float) -> dict[str, Any]:
        """what: "host" (kill -9 the host, start a new one on the same port) or "sub" (the subscriber's
        worker; a new one registers)."""
        notes: list[str] = []
        restarted: list[JsonProc] = []

        def on_event(ev: dict[str, Any]) -> None:
            if ev.get("event") != "mark":
                return
            if ev["sent"] == marks[0]:
                victim = self.host if what == "host" else self.sub
                victim.kill()
                log(
                    f"AutoGen: killed the {'host' if what == 'host' else 'subscriber worker'} after {ev['sent']} publishes"
                )
            else:
                if what == "host":
                    self.host = self._start("host", self.address, wait=False)
                    restarted.append(self.host)
                else:
                    self.sub = self._start("sub", self.address, self.effects.path, wait=False)
                    restarted.append(self.sub)
                log(f"AutoGen: started a new {what} after {ev['sent']} publishes")

        marks = [n // 3, 2 * n // 3]
        r = self.driver.call(
            {"op": "stream", "n": n, "base": base, "rate": rate, "marks": marks}, n / rate + 120, on_event
        )
        for p in restarted:
            p.wait_ready()
        seqs = range(base, base + n)
        got = self.effects.wait_for(seqs, settle_s)
        out = losses(seqs, set(seqs), set(), got)
        # publish_message returned without raising = acknowledged; it does not say which ones raised
        out["acknowledged"] = n - r["errors"]
        out["failed_calls"] = r["errors"]
        out["lost_acknowledged"] = out["lost"] if r["errors"] == 0 else None
        after_restart = [s for s in seqs if s - base >= marks[1] and s in got]
        out["handled_after_restart"] = len(after_restart)
        if what == "host":
            probe = self.driver.call({"op": "probe", "timeout_s": 5.0}, 30)
            out["request_after_restart"] = probe["outcome"]
            notes.append(f"a request after the new host started: {probe['outcome']} ({probe['s']:.1f} s)")
        out["notes"] = notes
        return out


def e2e_summary(
    seqs: range, got: dict[int, list[int]], t_first_ns: int, t_calls_done_ns: int, failed: int
) -> dict[str, Any]:
    """msg/s end to end (first call to last handling); calls_per_s: until the last call returned."""
    handled = [min(got[s]) for s in seqs if s in got]
    missing = len(seqs) - len(handled)
    if missing:
        raise WrongAnswer(
            f"{missing} of {len(seqs)} publishes never reached the subscriber (no fault injected)"
        )
    wall = (max(handled) - t_first_ns) / 1e9
    calls = (t_calls_done_ns - t_first_ns) / 1e9
    return {
        "n": len(seqs),
        "msg_per_s": len(seqs) / wall,
        "wall_s": wall,
        "calls_per_s": len(seqs) / calls if calls > 0 else None,
        "failed_calls": failed,
    }


# ---- raftmesh ------------------------------------------------------------------------------------------------


RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


class RaftmeshSide:
    name = "raftmesh"

    def __init__(self, tmp: str, effects: EffectLog) -> None:
        from raftmesh.localcluster import LocalCluster

        self.effects = effects
        self.cluster = LocalCluster(
            NODES,
            base_dir=os.path.join(tmp, "raftmesh"),
            agents_modules=[AGENTS_MODULE],
            env={"RAFTMESH_BENCH_EFFECT_LOG": effects.path},
        )

    def start(self) -> None:
        self.cluster.start(timeout_s=READY_S)
        self.leader = self.cluster.wait_ready()

    def close(self) -> None:
        self.cluster.close()

    def order_from(self, first: str) -> list[str]:
        ids = list(self.cluster.nodes)
        k = ids.index(first)
        return [self.cluster.nodes[i].grpc for i in ids[k:] + ids[:k]]

    # -- the driver: asyncio gRPC on the raw Messages API

    async def _channels(self, addrs: list[str]) -> tuple[list[Any], list[Any]]:
        import grpc

        from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

        chans = [grpc.aio.insecure_channel(a) for a in addrs]
        return chans, [pb_grpc.MessagesStub(c) for c in chans]

    async def _call(self, stubs: list[Any], lane: int, method: str, req: Any, give_up_s: float) -> Any:
        """One call, failing over: the same request (same message id) to the next node on a retryable error."""
        import grpc

        k = 0
        deadline = time.monotonic() + give_up_s
        while True:
            stub = stubs[(lane + k) % len(stubs)] if k else stubs[0]
            try:
                return await getattr(stub, method)(req, timeout=CALL_S + 5)
            except grpc.aio.AioRpcError as exc:
                if exc.code().name not in RETRYABLE or time.monotonic() >= deadline:
                    raise
                k += 1
                await asyncio.sleep(min(0.5, 0.02 * k))  # backoff before trying the next node

    def _msg(self, seq: int, durable: bool, *, target: str = "", topic: str = "") -> Any:
        from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

        return pb.AgentMessage(
            id=f"bench-{uuid.uuid4().hex}",
            target=target,
            topic=topic,
            payload_bytes=payload(seq),
            durable=durable,
        )

    async def _requests(
        self, n: int, window: int, durable: bool, max_s: float, keys: int = 1
    ) -> tuple[list[int], int]:
        """n requests on ``window`` lanes (none started after ``max_s`` s); latencies, wall time."""
        from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

        chans, stubs = await self._channels(self.order_from(self.leader))
        try:
            lat: list[int] = []
            seqs = iter(range(n))

            async def lane(i: int) -> None:
                for s in seqs:
                    if time.monotonic() >= stop:
                        return
                    target = ECHO if keys == 1 else f"benchecho/s{s % keys}"
                    req = pb.MessageRequest(message=self._msg(s, durable, target=target), timeout_s=CALL_S)
                    t0 = time.monotonic_ns()
                    r = await self._call(stubs, i, "Request", req, GIVE_UP_S)
                    lat.append(time.monotonic_ns() - t0)
                    if r.reply.payload_bytes != payload(s):
                        raise WrongAnswer(f"raftmesh: reply to request {s} was {r.reply!r}")

            stop = time.monotonic() + max_s
            t0 = time.monotonic_ns()
            await asyncio.gather(*(lane(i) for i in range(window)))
            return lat, time.monotonic_ns() - t0
        finally:
            for c in chans:
                await c.close()

    def rr(self, n: int, durable: bool, max_s: float) -> dict[str, Any]:
        asyncio.run(self._requests(WARMUP, 1, durable, max_s))
        return latency_summary(*asyncio.run(self._requests(n, 1, durable, max_s)))

    def inflight(self, n: int, durable: bool, max_s: float) -> dict[str, Any]:
        return latency_summary(*asyncio.run(self._requests(n, WINDOW, durable, max_s)))

    def spread(self, n: int, durable: bool, max_s: float) -> dict[str, Any]:
        """64 in flight, each lane to its own key (benchecho/s0..s63, activated by an untimed round)."""
        asyncio.run(self._requests(WINDOW, WINDOW, durable, max_s, keys=WINDOW))
        return latency_summary(*asyncio.run(self._requests(n, WINDOW, durable, max_s, keys=WINDOW)))

    async def _publishes(
        self,
        seqs: range,
        durable: bool,
        rate: float | None,
        marks: dict[int, Callable[[], None]],
        first: str,
    ) -> tuple[int, set[int], set[int]]:
        """Publish ``seqs`` on WINDOW lanes (paced at ``rate``/s if given); the actions in ``marks`` run
        (in a thread) once that many publishes were started. (t_first_ns, acknowledged, failed)."""
        from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb

        chans, stubs = await self._channels(self.order_from(first))
        acked: set[int] = set()
        failed: set[int] = set()
        loop = asyncio.get_running_loop()
        actions: list[asyncio.Future[None]] = []
        counter = itertools.count(1)
        t0 = time.monotonic()
        t_first = time.monotonic_ns()
        try:

            async def lane(i: int) -> None:
                for s in it:
                    k = next(counter)
                    if rate is not None:
                        delay = t0 + (k - 1) / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)  # pacing the stream, not waiting for something
                    if k in marks:
                        actions.append(loop.run_in_executor(None, marks[k]))
                    req = pb.SendMessageRequest(message=self._msg(s, durable, topic=TOPIC))
                    try:
                        await self._call(stubs, i, "Send", req, GIVE_UP_S)
                        acked.add(s)
                    except Exception as exc:
                        failed.add(s)
                        if len(failed) == 1:
                            log(f"raftmesh: publish {s} failed: {exc}")

            it = iter(seqs)
            await asyncio.gather(*(lane(i) for i in range(WINDOW)))
            for a in actions:
                await a
            return t_first, acked, failed
        finally:
            for c in chans:
                await c.close()

    def publish(self, n: int, base: int, durable: bool, settle_s: float) -> dict[str, Any]:
        seqs = range(base, base + n)
        t_first, _, failed = asyncio.run(self._publishes(seqs, durable, None, {}, self.leader))
        t_calls_done = time.monotonic_ns()
        got = self.effects.wait_for(seqs, settle_s)
        return e2e_summary(seqs, got, t_first, t_calls_done, failed=len(failed))

    def activate_subscriber(self) -> str:
        """Publish once (a seq outside every stream) so that benchsub/default is placed; its node."""
        asyncio.run(self._publishes(range(10**12, 10**12 + 1), True, None, {}, self.leader))
        deadline = time.monotonic() + READY_S
        while True:
            try:
                return self.host_of(SUBSCRIBER)
            except WrongAnswer:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def host_of(self, address: str) -> str:
        import grpc

        from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
        from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.cluster.nodes[self.leader].grpc) as ch:
            r = pb_grpc.MessagesStub(ch).ListActivations(
                pb.ListActivationsRequest(prefix=address), timeout=10
            )
        for a in r.activations:
            if a.address == address:
                return str(a.node)
        raise WrongAnswer(f"raftmesh: {address} has no activation")

    def dead_letters(self, seqs: range) -> Counter[str]:
        """The reasons the cluster's dead-letter list gives for publishes of ``seqs`` (never silent)."""
        import grpc

        from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
        from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.cluster.nodes[self.leader].grpc) as ch:
            r = pb_grpc.MessagesStub(ch).DeadLetters(pb.MessageDeadLettersRequest(limit=1000), timeout=10)
        out: Counter[str] = Counter()
        for d in r.dead_letters:
            p = d.message.payload_bytes
            if p[:20].isdigit() and int(p[:20]) in seqs:
                out[d.reason] += 1
        return out

    def kill_scenario(
        self, what: str, durable: bool, n: int, base: int, rate: float, settle_s: float
    ) -> dict[str, Any]:
        """what: "leader" or "host" (the node hosting benchsub/default); killed after n/3 publishes,
        restarted after 2n/3."""
        self.leader = self.cluster.wait_ready()
        host = self.activate_subscriber()
        victim = self.leader if what == "leader" else host
        notes = [f"leader {self.leader}, {SUBSCRIBER} on {host}; killed {victim}"]

        def kill() -> None:
            self.cluster.kill(victim)
            log(f"raftmesh: killed {victim} ({what})")

        def restart() -> None:
            self.cluster.start_node(victim)
            log(f"raftmesh: restarted {victim}")

        seqs = range(base, base + n)
        _, acked, failed = asyncio.run(
            self._publishes(seqs, durable, rate, {n // 3: kill, 2 * n // 3: restart}, self.leader)
        )
        got = self.effects.wait_for(seqs, settle_s)
        out = losses(seqs, acked, failed, got)
        self.leader = self.cluster.wait_ready()
        out["moved_to"] = self.host_of(SUBSCRIBER)
        dead = self.dead_letters(seqs)
        out["dead_lettered"] = sum(dead.values())
        if dead:
            notes.append("dead letters: " + ", ".join(f"{n} {why}" for why, n in dead.most_common()))
        notes.append(f"{SUBSCRIBER} now on {out['moved_to']}")
        out["notes"] = notes
        if durable and out["lost_acknowledged"]:
            raise WrongAnswer(
                f"raftmesh durable path lost {out['lost_acknowledged']} acknowledged messages: {out}"
            )
        return out


# ---- the report ---------------------------------------------------------------------------------------------


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


GOALS = {
    "rr_p50": "fast request/response p50 <= 1.5x AutoGen's",
    "inflight": "fast 64-in-flight msg/s >= AutoGen's",
    "durable_publish": "durable publish msg/s >= 0.5x AutoGen's",
}


def render(report: dict[str, Any]) -> str:
    env, cfg, res = report["environment"], report["config"], report["results"]
    load0, load1 = env["loadavg_1_5_15_at_start"], env["loadavg_1_5_15_at_end"]
    lines = [
        "raftmesh agent messaging vs AutoGen gRPC worker runtime (64-byte payloads, loopback)",
        f"  machine : {env['cpu_count']} CPUs ({env['usable_cpus']} usable), Python {env['python']}; load "
        f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} at start, {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} at end",
        f"  raftmesh: {NODES} node processes, driver = asyncio gRPC Messages API from this process"
        + (f" ({report['raftmesh_skipped']})" if report["raftmesh_skipped"] else ""),
        f"  AutoGen : {cfg['autogen']}",
        f"  rounds  : scenarios 1-3 run {cfg['repeat']} time(s), the systems interleaved in each round; shown: the round",
        f"            with the median msg/s (every round's msg/s is in --json); no new request after {cfg['max_s']:g} s",
        "",
    ]
    cols = [("raftmesh fast", "fast"), ("raftmesh durable", "durable"), ("AutoGen", "autogen")]

    def row(label: str, scen: str, key: str, spec: str, ag_scen: str | None = None) -> str:
        """ag_scen: the AutoGen scenario the ratios are to (default: the same one)."""
        s = f"  {label:<34}"
        for _, k in cols:
            s += f"{_f(res.get(scen, {}).get(k, {}).get(key), spec):>18}"
        ag = res.get(ag_scen or scen, {}).get("autogen", {}).get(key)
        for k in ("fast", "durable"):
            s += f"{_f(ratio(res.get(scen, {}).get(k, {}).get(key), ag), '.2f'):>10}"
        return s

    lines.append(f"  {'':<34}" + "".join(f"{c:>18}" for c, _ in cols) + f"{'fast/AG':>10}{'dur/AG':>10}")
    for scen, title in (
        ("rr", "1. request/response, one at a time"),
        ("inflight", f"2. request/response, {WINDOW} in flight"),
        ("publish", "3. publish to a subscriber, end to end"),
    ):
        lines.append(f" {title}")
        lines.append(row("msg/s", scen, "msg_per_s", ",.0f"))
        if scen == "publish":
            lines.append(row("publish calls returned, /s", scen, "calls_per_s", ",.0f"))
        if scen != "publish":
            lines.append(row("p50 ms", scen, "p50_ms", ".2f"))
            lines.append(row("p99 ms", scen, "p99_ms", ".2f"))
        if scen == "inflight" and res.get("spread"):
            lines.append(f"  raftmesh over {WINDOW} keys (a lane each; ratios to AutoGen's one agent above):")
            lines.append(row("msg/s", "spread", "msg_per_s", ",.0f", "inflight"))
            lines.append(row("p50 ms", "spread", "p50_ms", ".2f", "inflight"))
            lines.append(row("p99 ms", "spread", "p99_ms", ".2f", "inflight"))
    kills = res.get("kills", {})
    if kills:
        lines.append(
            f" 4. kills mid-stream ({cfg['stream']} publishes at {cfg['rate']:g}/s; kill after 1/3, restart after 2/3)"
        )
        lines.append(
            f"  {'':<40}{'sent':>7}{'acked':>7}{'failed':>7}{'lost':>7}{'lost acked':>11}{'dups':>7}"
        )
        for label, r in kills.items():
            lines.append(
                f"  {label:<40}{r['sent']:>7}{_f(r['acknowledged'], 'd'):>7}{r['failed_calls']:>7}{r['lost']:>7}"
                f"{_f(r['lost_acknowledged'], 'd'):>11}{r['duplicates']:>7}"
            )
            if r["lost"]:
                lines.append(f"  {'':<6}lost: publishes {r['lost_ranges']} of the stream (0-based)")
            for note in r.get("notes", []):
                lines.append(f"  {'':<6}{note}")
    goals = report.get("goals")
    if goals:
        lines.append(" goals (the issue's):")
        for ok, text in goals.values():
            lines.append(f"  {'met    ' if ok else 'NOT met'} {text}")
    if report["autogen_skipped"]:
        lines.append(f" AutoGen skipped: {report['autogen_skipped']}. No ratios.")
    return "\n".join(lines)


def goals(res: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """The issue's goals that this run measured both sides of."""
    checks = (
        ("rr_p50", "rr", "fast", "p50_ms", lambda r: r <= 1.5),
        ("inflight", "inflight", "fast", "msg_per_s", lambda r: r >= 1.0),
        ("durable_publish", "publish", "durable", "msg_per_s", lambda r: r >= 0.5),
    )
    out: dict[str, tuple[bool, str]] = {}
    for goal, scen, col, key, ok in checks:
        r = ratio(res[scen].get(col, {}).get(key), res[scen].get("autogen", {}).get(key))
        if r is not None:
            out[goal] = (ok(r), f"{GOALS[goal]}: {r:.2f}x")
    return out


# ---- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=positive_int, default=2000)
    p.add_argument("--inflight-requests", type=positive_int, default=5000)
    p.add_argument("--publishes", type=positive_int, default=5000)
    p.add_argument("--stream", type=positive_int, default=4000, help="publishes per kill scenario")
    p.add_argument("--rate", type=float, default=400.0, help="kill scenarios' publishes per second")
    p.add_argument(
        "--repeat", type=positive_int, default=3, help="rounds of scenarios 1-3, systems interleaved (median)"
    )
    p.add_argument(
        "--max-s", type=float, default=20.0, help="no new request after this long in one round (default 20)"
    )
    p.add_argument("--settle", type=float, default=15.0, help="s without progress before counting losses")
    p.add_argument("--quick", action="store_true", help="small counts (a smoke test, not a measurement)")
    p.add_argument("--skip-autogen", action="store_true")
    p.add_argument("--skip-raftmesh", action="store_true")
    p.add_argument(
        "--only",
        default="rr,inflight,publish,kills",
        help="comma-separated scenarios to run, of rr,inflight,publish,kills (default: all)",
    )
    p.add_argument("--autogen-venv", default=default_autogen_venv())
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table on stderr)")
    a = p.parse_args(argv)
    unknown = set(a.only.split(",")) - {"rr", "inflight", "publish", "kills"}
    if unknown:
        p.error(f"--only: unknown scenario(s) {sorted(unknown)}; choose from rr,inflight,publish,kills")
    if a.quick:
        a.repeat = 1
        # inflight: 3 windows of 64 still keep 64 in flight and queue behind them; the durable
        # side commits each one on its key's lane (~50/s on a loaded 2-core machine), so 500 cost ~10 s
        a.requests, a.inflight_requests, a.publishes, a.stream, a.rate, a.settle = (
            100,
            3 * WINDOW,
            500,
            600,
            150.0,
            12.0,
        )
    return a


def run(a: argparse.Namespace, tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    effects = EffectLog(os.path.join(tmp, "effects.log"))
    load0 = os.getloadavg()
    res: dict[str, dict[str, Any]] = {"rr": {}, "inflight": {}, "spread": {}, "publish": {}, "kills": {}}
    autogen_skipped = "--skip-autogen was given" if a.skip_autogen else None
    ag: AutogenSide | None = None
    if not a.skip_autogen:
        py, why = autogen_python(a.autogen_venv)
        if py is None:
            autogen_skipped = f"its virtual environment could not be made: {why}"
            log(f"AutoGen skipped: {autogen_skipped}")
        else:
            log(f"starting AutoGen: host + 3 workers ({py})")
            ag = AutogenSide(py, tmp, effects)
            stack.callback(ag.close)
    rm: RaftmeshSide | None = None
    if not a.skip_raftmesh:
        log(f"starting raftmesh: {NODES} nodes")
        rm = RaftmeshSide(tmp, effects)
        stack.callback(rm.close)
        rm.start()
    base = itertools.count(0, 1_000_000)

    def step(scen: str, col: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        t = time.perf_counter()
        r = fn(*args)
        shown = json.dumps(finite({k: v for k, v in r.items() if k != "notes"}))
        log(f"{scen:9} {col:8} {shown} ({time.perf_counter() - t:.1f} s)")
        return r

    only = set(a.only.split(","))
    # (scenario, column, what to call): run --repeat times, the systems interleaved in each round
    plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
    for scen, n in (("rr", a.requests), ("inflight", a.inflight_requests)):
        if scen not in only:
            continue
        if rm:
            plan.append((scen, "fast", functools.partial(getattr(rm, scen), n, False, a.max_s)))
            plan.append((scen, "durable", functools.partial(getattr(rm, scen), n, True, a.max_s)))
        if ag:
            plan.append((scen, "autogen", functools.partial(getattr(ag, scen), n, a.max_s)))
    if rm and "inflight" in only:
        plan.append(("spread", "fast", functools.partial(rm.spread, a.inflight_requests, False, a.max_s)))
        plan.append(("spread", "durable", functools.partial(rm.spread, a.inflight_requests, True, a.max_s)))
    if "publish" in only:
        if rm:
            plan.append(("publish", "fast", lambda: rm.publish(a.publishes, next(base), False, a.settle)))
            plan.append(("publish", "durable", lambda: rm.publish(a.publishes, next(base), True, a.settle)))
        if ag:
            plan.append(("publish", "autogen", lambda: ag.publish(a.publishes, next(base), a.settle)))
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for k in range(a.repeat):
        for scen, col, fn in plan:
            samples.setdefault((scen, col), []).append(step(scen, f"{col}#{k + 1}", fn))
    for (scen, col), rs in samples.items():
        # the round with the median msg/s, and every round's msg/s beside it
        ranked = sorted(rs, key=lambda r: r["msg_per_s"])
        res[scen][col] = {**ranked[(len(ranked) - 1) // 2], "msg_per_s_rounds": [r["msg_per_s"] for r in rs]}
    if "kills" in only:
        kill_plan: list[tuple[str, Callable[..., dict[str, Any]]]] = []
        if rm:
            for durable in (False, True):
                for what, victim in (("leader", "the leader"), ("host", "the subscriber's node")):
                    kill_plan.append(
                        (
                            f"raftmesh {'durable' if durable else 'fast'}: kill {victim}",
                            functools.partial(
                                rm.kill_scenario, what, durable, n=a.stream, rate=a.rate, settle_s=a.settle
                            ),
                        )
                    )
        if ag:  # the host kill last: AutoGen does not recover from it
            for what, victim in (("sub", "the subscriber's worker"), ("host", "the host")):
                kill_plan.append(
                    (
                        f"AutoGen: kill {victim}",
                        functools.partial(ag.kill_scenario, what, n=a.stream, rate=a.rate, settle_s=a.settle),
                    )
                )
        for label, fn in kill_plan:
            res["kills"][label] = step("kills", label, functools.partial(fn, base=next(base)))
    return {
        "benchmark": "raftmesh-vs-autogen-messages",
        "environment": {
            **environment(),
            "loadavg_1_5_15_at_start": list(load0),
            "loadavg_1_5_15_at_end": list(os.getloadavg()),
        },
        "config": {
            "nodes": NODES,
            "window": WINDOW,
            "payload_bytes": PAYLOAD_BYTES,
            "requests": a.requests,
            "inflight_requests": a.inflight_requests,
            "publishes": a.publishes,
            "stream": a.stream,
            "rate": a.rate,
            "settle_s": a.settle,
            "repeat": a.repeat,
            "max_s": a.max_s,
            "quick": a.quick,
            "autogen": (
                f"autogen-ext[grpc] {AUTOGEN_VERSION}: host + 3 worker processes (echo, subscriber, driver)"
                if ag
                else "-"
            ),
        },
        "results": res,
        "goals": goals(res),
        "autogen_skipped": autogen_skipped,
        "raftmesh_skipped": "--skip-raftmesh was given" if a.skip_raftmesh else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()

    def measure(tmp: str, stack: contextlib.ExitStack) -> dict[str, Any]:
        report = run(a, tmp, stack)
        report["elapsed_s"] = time.perf_counter() - t0
        return report

    return run_bench("raftmesh-bench-messages-", measure, render, a.json, log, (WrongAnswer,))


if __name__ == "__main__":
    sys.exit(main())
