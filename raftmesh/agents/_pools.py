"""Where ``thread`` and ``process`` attempts run: a bounded thread pool and a pool of spawned workers.

Thread pool: ``THREAD_POOL_SIZE`` daemon threads (daemon: a thread stuck in an agent
must not keep a stopping node alive). A thread cannot be killed: a cancelled attempt's
thread keeps its pool slot until the function returns; the host discards its result.

Process pool: at most ``PROCESS_POOL_SIZE`` workers, spawned on demand (never forked:
the node has grpcio loaded) and reused across attempts. A worker that is killed
(timeout, cancellation) or dies (signal, limit, MemoryError) fails only that attempt
and is replaced at once by a *spare*: a worker started ahead of need (``keep_spare``; the
host also starts one when the node starts, if it offers a ``process`` agent), which the next
attempt takes instead of spawning. A worker's start is an interpreter plus the agents' imports
(~0.2 s of CPU: it loads neither grpcio nor the node; it was ~0.8 s, and 6-23 s on a loaded
2-core machine in chaos runs), which an attempt waiting for a cold spawn paid in full. Its pipe carries one attempt at a time; blocking pipe reads run on a
small thread pool of their own, never on the node's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..consensus.commands import NO_USAGE, Usage
from ._worker import MAX_WORKER_MESSAGE_BYTES, WORKER_PATH_ENV, decode, encode

log = logging.getLogger(__name__)

THREAD_POOL_SIZE = 16
"""``thread`` attempts running at once on one node; more wait for a free thread."""
PROCESS_POOL_SIZE = max(1, min(4, os.cpu_count() or 1))
"""``process`` workers on one node (each runs one attempt at a time); more attempts wait."""
MAX_THREAD_POOL_SIZE = 1024
"""The most ``--agent-threads`` accepts."""
MAX_PROCESS_POOL_SIZE = 256
"""The most ``--agent-processes`` accepts."""
WORKER_EXIT_WAIT_S = 5.0
"""How long a stopping node waits for an idle worker's teardown before killing it."""


class ThreadPool:
    """``size`` daemon threads running blocking agent functions, started on first use."""

    def __init__(self, size: int = THREAD_POOL_SIZE) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.busy = 0
        """Threads running a function now (a cancelled attempt's thread counts until it returns)."""

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self.size:
                t = threading.Thread(
                    target=self._serve, name=f"agent-thread-{len(self._threads)}", daemon=True
                )
                t.start()
                self._threads.append(t)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():  # cancelled while it waited: never started
                continue
            with self._lock:
                self.busy += 1
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            finally:
                with self._lock:
                    self.busy -= 1

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on a pool thread; cancelling the await leaves a started call running (its result is lost)."""
        if not self._threads:
            self._start()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # In the caller's context (its ``calls.Call``: the attempt's trace, its commands' origin).
        self._queue.put((functools.partial(contextvars.copy_context().run, fn), fut))
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


@dataclass(frozen=True)
class Outcome:
    """How a process attempt ended, as its worker (or its death) said."""

    ok: bool
    output: Any = None
    error: str = ""
    retryable: bool = True
    usage: Usage = NO_USAGE
    spawn: tuple[dict[str, Any], ...] = ()
    """The spawn maps of a successful attempt (``ctx.spawn`` in the worker)."""
    spawn_wait: bool = True


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.pid = proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def join(self, timeout_s: float) -> None:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass

    def exit_reason(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "worker closed its pipe"
        if code < 0:
            try:
                return f"worker exited with signal {signal.Signals(-code).name}"
            except ValueError:
                return f"worker exited with signal {-code}"
        return f"worker exited with code {code}"


_WORKER_BOOT = (
    "import json, os, sys; "
    f"sys.path[:] = json.loads(os.environ[{WORKER_PATH_ENV!r}]); "
    "from raftmesh.agents._worker import main; main(sys.argv[1:])"
)
"""The worker's command: the node's sys.path first, so agent modules import as they did in the node."""

Handler = Callable[[str, str, list[Any], dict[str, Any]], Awaitable[Any]]
"""Runs a worker's ``ctx.kv`` / ``ctx.locks`` call in the node (``_sync_clients.dispatch``)."""


class ProcessPool:
    def __init__(self, node_id: str, size: int = PROCESS_POOL_SIZE) -> None:
        self.node_id = node_id
        self.size = size
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        # Blocking pipe I/O, spawns and reaping: one attempt uses one at a time.
        self._io = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * size + 2, thread_name_prefix="agent-pipe"
        )
        self.spawned = 0
        """Workers started since the pool was made (a replaced worker counts again)."""
        self._closed = False
        self._spare: concurrent.futures.Future[_Worker] | None = None
        """A worker started ahead of need (``keep_spare``), not yet taken by an attempt."""
        self._spare_lock = threading.Lock()
        """Orders a spare's start (I/O thread) against ``close`` (the spare is killed either way)."""

    @property
    def pids(self) -> list[int]:
        spare = self._spare
        extra = [spare.result().pid] if spare is not None and spare.done() and not spare.exception() else []
        return sorted([*(w.pid for w in self._workers), *extra])

    def keep_spare(self) -> None:
        """Start a worker ahead of need, unless one is idle or starting or the pool is full or closed.

        Called on the node's loop: when the node starts (it offers a ``process`` agent) and when a
        worker was killed or died, so the next attempt finds a started worker instead of paying
        the interpreter's start and imports itself.
        """
        if self._closed or self._spare is not None or self._idle or len(self._workers) >= self.size:
            return
        spare = self._io.submit(self._spawn)
        self._spare = spare
        spare.add_done_callback(self._spare_started)

    def _spare_started(self, spare: concurrent.futures.Future[_Worker]) -> None:
        """(I/O thread) A spare that finished starting after ``close`` is stopped at once."""
        if spare.cancelled() or spare.exception() is not None:
            return
        with self._spare_lock:
            if self._closed:
                w = spare.result()
                w.kill()
                _reap(w)

    def _spawn(self) -> _Worker:
        """A new worker (``raftmesh.agents._worker.main``) over a socket pair.

        Started with fork+exec (subprocess), never a bare fork: grpcio is loaded here. Not
        ``multiprocessing``'s spawn either: it would import the node's ``__main__`` again
        in every worker. The worker gets this process's ``sys.path`` to find agent modules.
        """
        ours, theirs = socket.socketpair()
        try:
            env = {**os.environ, WORKER_PATH_ENV: json.dumps(sys.path)}
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_BOOT, str(theirs.fileno()), self.node_id],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # only the worker holds its end: its death is EOF here
        self.spawned += 1
        return _Worker(proc, Connection(ours.detach()))

    async def _io_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _take(self) -> _Worker:
        while self._idle:
            w = self._idle.pop()
            if w.alive():
                return w
            self._discard(w)
        spare, self._spare = self._spare, None
        if spare is not None:
            started = await self._started(spare)
            if started is not None:
                return started
        spawn = asyncio.get_running_loop().run_in_executor(self._io, self._spawn)
        try:
            w = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelled while the worker starts: it is not ours to use, stop it once it exists.
            spawn.add_done_callback(self._drop_spawned)
            raise
        self._workers.add(w)
        return w

    async def _started(self, spare: concurrent.futures.Future[_Worker]) -> _Worker | None:
        """The spare once started (now this attempt's), or None if it failed to start or died."""
        started = asyncio.wrap_future(spare)
        try:
            w = await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(self._drop_spawned)
            raise
        except Exception as exc:
            log.warning("a spare agent worker failed to start: %s", exc)
            return None
        self._workers.add(w)
        if w.alive():
            return w
        self._discard(w)
        return None

    def _drop_spawned(self, spawn: asyncio.Future[_Worker]) -> None:
        if not spawn.cancelled() and spawn.exception() is None:
            self._discard(spawn.result())

    def _discard(self, w: _Worker) -> None:
        w.kill()
        self._workers.discard(w)
        # Reaped and its pipe closed off the loop, after it is gone: closing the pipe now could
        # hand its descriptor number to a new worker while a cancelled read still uses it.
        if self._closed:  # the node is stopping: its attempts' last cleanups come after close()
            threading.Thread(target=_reap, args=(w,), name="agent-reap", daemon=True).start()
        else:
            self._io.submit(_reap, w)

    async def run(
        self, request: dict[str, Any], handle: Handler, memory_mb: int = 0, cpu_seconds: int = 0
    ) -> Outcome:
        """One attempt in a worker. Cancelling it (timeout, cancellation) kills the worker."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        data = encode({"t": "run", **request, "memory_mb": memory_mb, "cpu_seconds": cpu_seconds})
        if len(data) > MAX_WORKER_MESSAGE_BYTES:
            return Outcome(
                False,
                error=f"input and upstream outputs are {len(data)} bytes encoded; a process agent "
                f"takes at most {MAX_WORKER_MESSAGE_BYTES}",
                retryable=False,
            )
        async with self._slots:
            w = await self._take()
            done = False
            try:
                await self._io_call(w.conn.send_bytes, data)
                while True:
                    msg = decode(await self._io_call(w.conn.recv_bytes, MAX_WORKER_MESSAGE_BYTES))
                    if msg.get("t") == "done":
                        done = not msg.get("exit")  # a worker that said it exits is not reused
                        return _outcome(msg)
                    if msg.get("t") == "call":
                        await self._io_call(w.conn.send_bytes, encode(await _answer(handle, msg)))
                        continue
                    raise ValueError(f"unexpected message {str(msg.get('t'))[:40]!r} from worker {w.pid}")
            except (EOFError, OSError):
                await self._io_call(w.join, WORKER_EXIT_WAIT_S)
                why = w.exit_reason()
                log.warning("agent worker %d died: %s", w.pid, why)
                return Outcome(False, error=_explain(why, memory_mb, cpu_seconds))
            finally:
                if done and w.alive():
                    self._idle.append(w)
                else:
                    self._discard(w)  # killed here if the attempt was cancelled or timed out
                    self.keep_spare()  # its replacement starts now, not when an attempt needs it

    def close(self) -> None:
        """Stop every worker: idle ones are asked to tear down, the rest (and stragglers) killed;
        a spare is killed (once started, if it is still starting)."""
        with self._spare_lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None and spare.done() and spare.exception() is None:
            self._workers.add(spare.result())  # killed with the busy ones below
        for w in self._idle:
            try:
                w.conn.send_bytes(encode({"t": "stop"}))
            except OSError:
                pass
        # One deadline for all: idle workers tear down in parallel, so a stop waits at most
        # WORKER_EXIT_WAIT_S for them together (it runs on the node's loop as it stops).
        deadline = time.monotonic() + WORKER_EXIT_WAIT_S
        for w in list(self._workers):
            if w in self._idle:
                w.join(max(0.0, deadline - time.monotonic()))
            w.kill()
        for w in list(self._workers):
            w.join(max(0.0, deadline - time.monotonic()) + 1.0)  # killed: gone within moments
            w.conn.close()
        self._idle.clear()
        self._workers.clear()
        self._io.shutdown(wait=False, cancel_futures=True)


def _reap(w: _Worker) -> None:
    w.join(WORKER_EXIT_WAIT_S)
    w.conn.close()


async def _answer(handle: Handler, msg: dict[str, Any]) -> dict[str, Any]:
    from ._sync_clients import error_kind

    try:
        args = msg.get("args")
        kw = msg.get("kw")
        if not isinstance(args, list) or not isinstance(kw, dict):
            raise ValueError("a call needs args (a list) and kw (a map)")
        value = await handle(str(msg.get("target")), str(msg.get("op")), args, kw)
        return {"t": "reply", "ok": True, "value": value}
    except Exception as exc:
        return {"t": "reply", "ok": False, "kind": error_kind(exc), "error": str(exc)[:2000]}


def _outcome(msg: dict[str, Any]) -> Outcome:
    u = msg.get("usage")
    usage = NO_USAGE
    if isinstance(u, list) and len(u) == 3:
        try:
            usage = Usage(int(u[0]), int(u[1]), float(u[2]))
        except (TypeError, ValueError):
            pass
    if msg.get("ok"):
        sp = msg.get("spawn")
        if sp is None:
            return Outcome(True, output=msg.get("output"), usage=usage)
        if not (
            isinstance(sp, list)
            and len(sp) == 2
            and isinstance(sp[0], bool)
            and isinstance(sp[1], list)
            and all(isinstance(m, dict) for m in sp[1])
        ):
            return Outcome(False, error="the worker sent a malformed spawn", retryable=False, usage=usage)
        return Outcome(True, output=msg.get("output"), usage=usage, spawn=tuple(sp[1]), spawn_wait=sp[0])
    return Outcome(
        False, error=str(msg.get("error", "")), retryable=bool(msg.get("retryable", True)), usage=usage
    )


def _explain(why: str, memory_mb: int, cpu_seconds: int) -> str:
    if cpu_seconds and why.endswith("SIGXCPU"):
        return f"cpu limit {cpu_seconds} s exceeded ({why})"
    if memory_mb and ("SIGSEGV" in why or "SIGABRT" in why or "SIGKILL" in why):
        return f"{why} (the attempt's memory limit was {memory_mb} MiB)"
    return why
