"""``ctx.kv`` and ``ctx.locks`` for agents that do not run on the node's loop.

A ``thread`` agent's calls run the attempt's async clients on the node loop
(``run_coroutine_threadsafe``) and block the agent's thread until they finish; a
``process`` agent's calls travel over its worker's pipe and the node runs them the
same way (``dispatch``). Either way the write is fenced by the attempt's token in
the node, so a call made after the attempt was cancelled or fenced is rejected
(``StaleToken``) exactly as an async agent's would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:  # annotations only: a worker imports this module and never builds one
    from ._task_clients import TaskKv, TaskLocks

Call = Callable[[str, str, list[Any], dict[str, Any]], Any]
"""(target "kv" | "locks", method, args, kwargs) -> the method's result; raises what it raises."""

CALL_TIMEOUT_S = 120.0
"""A blocking KV/lock call from a thread waits at most this long for the node loop's answer."""

OPS: dict[str, frozenset[str]] = {
    "kv": frozenset({"get", "put", "delete", "cas"}),
    "locks": frozenset({"try_acquire", "release"}),
}
"""What a thread or worker may call; a worker's pipe is not trusted to name any attribute."""


async def dispatch(
    kv: TaskKv, locks: TaskLocks, target: str, op: str, args: list[Any], kw: dict[str, Any]
) -> Any:
    """Run one call of a non-async agent on the node loop, with the attempt's own (fenced) clients."""
    if op not in OPS.get(target, frozenset()):
        raise errors.InvalidArgument(f"{target}.{op} is not available to agents")
    obj: Any = kv if target == "kv" else locks
    return await getattr(obj, op)(*args, **kw)


def loop_call(kv: TaskKv, locks: TaskLocks, loop: asyncio.AbstractEventLoop) -> Call:
    """A ``Call`` for a thread agent: runs on ``loop`` and blocks the calling thread."""

    def call(target: str, op: str, args: list[Any], kw: dict[str, Any]) -> Any:
        fut = asyncio.run_coroutine_threadsafe(dispatch(kv, locks, target, op, args, kw), loop)
        try:
            return fut.result(timeout=CALL_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()  # the agent is told it failed: stop the call on the loop too (not left running)
            raise

    return call


def error_kind(exc: BaseException) -> str:
    """The name a worker's pipe carries for an error raised by a call (``remote_error`` reverses it)."""
    return type(exc).__name__ if isinstance(exc, errors.RaftmeshError) else "RaftmeshError"


def remote_error(kind: str, message: str) -> Exception:
    """The raftmesh error a call raised in the node, raised again in the worker."""
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.RaftmeshError):
        return cls(message)
    return errors.RaftmeshError(message)


class SyncKv:
    """``TaskKv`` as blocking calls: ``get``, ``put`` (-> mod_revision), ``delete``, ``cas``."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def get(self, key: str) -> Any:
        return self._call("kv", "get", [key], {})

    def put(self, key: str, value: Any) -> int:
        return int(self._call("kv", "put", [key, value], {}))

    def delete(self, key: str) -> bool:
        return bool(self._call("kv", "delete", [key], {}))

    def cas(self, key: str, expected_revision: int, value: Any) -> bool:
        return bool(self._call("kv", "cas", [key, expected_revision, value], {}))


class SyncLocks:
    """``TaskLocks`` as blocking calls: ``try_acquire`` (-> token or None), ``release``."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def try_acquire(self, name: str, *, ttl_s: float = 30.0, mode: str = "exclusive") -> int | None:
        token = self._call("locks", "try_acquire", [name], {"ttl_s": ttl_s, "mode": mode})
        return None if token is None else int(token)

    def release(self, name: str, token: int) -> None:
        self._call("locks", "release", [name, token], {})


class AsyncKv:
    """The pipe-backed KV for an ``async def`` agent run in a worker process (awaitable, like ``TaskKv``)."""

    def __init__(self, sync: SyncKv) -> None:
        self._sync = sync

    async def get(self, key: str) -> Any:
        return self._sync.get(key)

    async def put(self, key: str, value: Any) -> int:
        return self._sync.put(key, value)

    async def delete(self, key: str) -> bool:
        return self._sync.delete(key)

    async def cas(self, key: str, expected_revision: int, value: Any) -> bool:
        return self._sync.cas(key, expected_revision, value)


class AsyncLocks:
    """The pipe-backed locks for an ``async def`` agent run in a worker process."""

    def __init__(self, sync: SyncLocks) -> None:
        self._sync = sync

    async def try_acquire(self, name: str, *, ttl_s: float = 30.0, mode: str = "exclusive") -> int | None:
        return self._sync.try_acquire(name, ttl_s=ttl_s, mode=mode)

    async def release(self, name: str, token: int) -> None:
        self._sync.release(name, token)
