"""The inside of a ``process`` worker: a spawned Python process that runs one attempt at a time.

It loads agents by (source, name) with the node's loader (``load_agent``) the first time
it is asked for them (a class agent's ``setup(node)`` runs then, once per worker), sets the attempt's limits, runs it,
and answers over its pipe. Messages are msgpack maps, one per ``send_bytes``:

- node -> worker: ``{"t": "run", ...}`` (one attempt), ``{"t": "reply", ...}`` (a KV or
  lock call's answer), ``{"t": "stop"}`` (tear down and exit);
- worker -> node: ``{"t": "call", ...}`` (``ctx.kv`` / ``ctx.locks``), ``{"t": "done", ...}``.

Limits are soft rlimits set per attempt (an agent could raise them again: they stop
runaway code, they are not a sandbox): ``RLIMIT_AS`` at the worker's address space
plus ``memory_mb``, ``RLIMIT_CPU`` at its CPU time so far plus ``cpu_seconds``.
Exceeding the CPU limit kills the worker (SIGXCPU); the node reports it. A MemoryError
is reported by the worker, which then exits: its heap may be in any state.

This module must import nothing that loads grpc: it is what a spawned worker imports first
(with ``import raftmesh`` and ``@raftmesh.agent`` of the agent's module, both lazy in the
package ``__init__``s; ``tests/test_agent_pools.py`` checks what a worker has loaded).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import resource
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from .. import calls, tracing
from ..log_format import JsonFormatter, skip_unused_record_fields
from ._context import SyncTaskContext
from ._loader import load_agent
from ._registry import AgentDef
from ._setup import AgentNode, finish_in_worker, set_up_in_worker, tear_down_in_worker
from ._sync_clients import AsyncKv, AsyncLocks, SyncKv, SyncLocks, remote_error

WORKER_PATH_ENV = "RAFTMESH_WORKER_SYS_PATH"
"""The node's ``sys.path`` (JSON), so a worker imports agent modules as the node did."""
MAX_WORKER_MESSAGE_BYTES = 16 * 1024 * 1024
"""One message on a worker's pipe (an attempt's input and upstream outputs, a result, a KV call)."""

log = logging.getLogger(__name__)


def encode(msg: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(msg, use_bin_type=True)
    return data


def decode(data: bytes) -> dict[str, Any]:
    msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(msg, dict):
        raise ValueError("a worker message must be a map")
    return msg


class _Pipe:
    """The worker's end: answers the node's messages and makes ``ctx.kv`` / ``ctx.locks`` calls."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.send_bytes(encode(msg))

    def recv(self) -> dict[str, Any]:
        return decode(self.conn.recv_bytes(MAX_WORKER_MESSAGE_BYTES))

    def call(self, target: str, op: str, args: list[Any], kw: dict[str, Any]) -> Any:
        self.send({"t": "call", "target": target, "op": op, "args": args, "kw": kw})
        reply = self.recv()
        if reply.get("ok"):
            return reply.get("value")
        raise remote_error(str(reply.get("kind", "")), str(reply.get("error", "")))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds_used() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _set_limits(memory_mb: int, cpu_seconds: int) -> list[tuple[int, tuple[int, int]]]:
    """Set this attempt's soft limits; returns what to restore."""
    saved = []
    if memory_mb > 0:
        old = resource.getrlimit(resource.RLIMIT_AS)
        saved.append((resource.RLIMIT_AS, old))
        resource.setrlimit(resource.RLIMIT_AS, (_address_space_bytes() + memory_mb * 1024 * 1024, old[1]))
    if cpu_seconds > 0:
        old = resource.getrlimit(resource.RLIMIT_CPU)
        saved.append((resource.RLIMIT_CPU, old))
        resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(_cpu_seconds_used()) + cpu_seconds, old[1]))
    return saved


def _run(pipe: _Pipe, msg: dict[str, Any], loaded: dict[tuple[str, str], AgentDef], node_id: str) -> bool:
    """One attempt; False if this worker must exit after it (its memory may be corrupt)."""
    source, name = str(msg["source"]), str(msg["agent"])
    memory_mb, cpu_seconds = int(msg.get("memory_mb", 0)), int(msg.get("cpu_seconds", 0))
    ctx: SyncTaskContext | None = None
    keep = True
    try:
        adef = loaded.get((source, name))
        if adef is None:
            adef = load_agent(source, name)
            node = msg.get("node") or {}
            set_up_in_worker(
                adef,
                AgentNode(
                    node_id,
                    name,
                    str(node.get("data_dir", "")),
                    str(node.get("grpc", "")),
                    tuple(str(a) for a in node.get("addresses", ())),
                    *(node.get(k) or None for k in ("tls_ca", "tls_cert", "tls_key")),
                ),
            )
            loaded[(source, name)] = adef
        is_async = inspect.iscoroutinefunction(adef.fn)
        kv, locks = SyncKv(pipe.call), SyncLocks(pipe.call)
        trace_id = str(msg.get("trace_id") or "")  # the run's (the host sends it; no call crosses)
        ctx = SyncTaskContext(
            run_id=msg["run_id"],
            task_id=msg["task_id"],
            attempt=msg["attempt"],
            token=msg["token"],
            node_id=node_id,
            input=msg["input"],
            upstream=msg["upstream"],
            trace_id=trace_id,
            logger=logging.LoggerAdapter(
                logging.getLogger(f"raftmesh.agent.{name}"),
                {
                    "run_id": msg["run_id"],
                    "task_id": msg["task_id"],
                    "attempt": msg["attempt"],
                    "trace_id": trace_id,
                },
            ),
            kv=AsyncKv(kv) if is_async else kv,
            locks=AsyncLocks(locks) if is_async else locks,
            item=msg.get("item"),
            index=msg.get("index", 0),
        )
        saved = _set_limits(memory_mb, cpu_seconds)
        try:
            # Bound so the agent's own log lines and SDK calls carry the attempt's trace here too.
            span = tracing.attempt_span_id(trace_id, ctx.run_id, ctx.task_id, ctx.attempt) if trace_id else ""
            with calls.bound(tracing.node_call(node_id, trace_id, span)):
                out = finish_in_worker(adef.fn(ctx))
        finally:
            for which, old in saved:
                resource.setrlimit(which, old)
        reply = {"t": "done", "ok": True, "output": out}
        if ctx.spawns.tasks:  # sent with the success only: a failed attempt spawns nothing
            reply["spawn"] = [ctx.spawns.wait is not False, ctx.spawns.tasks]
        try:
            data = encode({**reply, "usage": ctx.usage.encode()})
        except (TypeError, ValueError, OverflowError) as exc:
            reply = {"t": "done", "ok": False, "retryable": False, "error": f"output is not storable: {exc}"}
            data = b""
    except MemoryError:
        keep = False
        reply = {"t": "done", "ok": False, "retryable": True}
        reply["error"] = (
            f"memory limit {memory_mb} MiB exceeded" if memory_mb else "out of memory (MemoryError)"
        )
        data = b""
    except Exception as exc:
        reply = {
            "t": "done",
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "retryable": bool(getattr(exc, "retryable", True)),
        }
        data = b""
    if not keep:
        reply["exit"] = True  # the node must not hand this worker another attempt
    if not data:
        usage = ctx.usage.encode() if ctx is not None else [0, 0, 0.0]
        data = encode({**reply, "usage": usage})
    if len(data) > MAX_WORKER_MESSAGE_BYTES:
        data = encode(
            {
                "t": "done",
                "ok": False,
                "retryable": False,
                "error": f"the result is {len(data)} bytes encoded; a process agent's limit is "
                f"{MAX_WORKER_MESSAGE_BYTES}",
                "usage": ctx.usage.encode() if ctx is not None else [0, 0, 0.0],
            }
        )
    pipe.conn.send_bytes(data)
    return keep


def worker_main(conn: Connection, node_id: str) -> None:
    """Entry point of a spawned worker: serve attempts until told to stop or the pipe closes."""
    # The node stops its workers itself: a Ctrl-C on its terminal must not kill one mid-attempt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    skip_unused_record_fields()
    handler = logging.StreamHandler(sys.stderr)  # the node's stderr: the same JSON lines as the node's
    handler.setFormatter(JsonFormatter(node_id))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    pipe = _Pipe(conn)
    loaded: dict[tuple[str, str], AgentDef] = {}
    try:
        while True:
            try:
                msg = pipe.recv()
            except (EOFError, OSError):
                return
            if msg.get("t") == "stop":
                return
            if msg.get("t") == "run" and not _run(pipe, msg, loaded, node_id):
                return
    finally:
        for adef in loaded.values():
            try:
                tear_down_in_worker(adef)
            except Exception:
                log.exception("teardown of agent %s failed", adef.name)


def main(argv: list[str]) -> None:
    """Entry point of a worker the node's ``ProcessPool`` started: ``FD NODE_ID``."""
    worker_main(Connection(int(argv[0])), argv[1])
