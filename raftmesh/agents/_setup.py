"""Class agents' ``setup(node)`` and ``teardown()``, once per process that runs them.

The node sets up its ``async`` and ``thread`` class agents before it starts Raft or
gRPC (a setup that raises stops it there, naming the agent) and tears them down when it
stops; a process worker calls ``set_up_in_worker`` / ``tear_down_in_worker`` for the
``process`` agents it runs. A hook may be a plain or an ``async`` method.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FailedPrecondition
from ._registry import AgentDef, AgentRegistry

if TYPE_CHECKING:
    from ..client._security import Credentials

log = logging.getLogger(__name__)

IN_NODE = ("async", "thread")
"""Isolation modes whose attempts run in the node process (set up there)."""


class AgentSetupError(FailedPrecondition):
    """A class agent's ``setup(node)`` raised: the node does not start."""


@dataclass(frozen=True)
class AgentNode:
    """What a class agent's ``setup(node)`` receives: where it runs."""

    node_id: str
    agent: str
    """The agent type being set up."""
    data_dir: str
    """A directory of this agent on this node (``DATA_DIR/agents/TYPE``), kept across restarts."""
    grpc: str
    """This node's gRPC address (``raftmesh.Client([node.grpc])`` reaches the cluster)."""
    addresses: tuple[str, ...]
    """Every member's gRPC address."""
    tls_ca: str | None = None
    """On a TLS node: its ``--tls-ca``, ``--tls-cert`` and ``--tls-key`` (None without TLS)."""
    tls_cert: str | None = None
    tls_key: str | None = None

    def credentials(self) -> Credentials:
        """How to reach the cluster from here: ``raftmesh.Client([node.grpc], credentials=node.credentials())``.

        On a TLS node, its CA and its own certificate as the client certificate (what a node with
        ``--tls-client-auth require`` asks for); anything not set comes from the environment.
        """
        from ..client._security import Credentials

        return Credentials.resolve(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key)


async def set_up(registry: AgentRegistry, node_for: Callable[[str], AgentNode]) -> list[AgentDef]:
    """Set up the class agents of ``registry`` that run in this process, in name order; on a
    failure, tear down those already set up and raise ``AgentSetupError``. Returns what to
    pass to ``tear_down`` at stop."""
    done: list[AgentDef] = []
    for name in registry.names():
        d = registry.agents[name]
        if d.setup is None or d.isolation not in IN_NODE:
            continue
        node = node_for(name)
        try:
            os.makedirs(node.data_dir, exist_ok=True)
            await _finish(d.setup(node))
        except Exception as exc:
            await tear_down(done)
            raise AgentSetupError(f"agent {name!r}: setup(node) failed: {_told(exc)}") from exc
        log.info("agent %s set up", name)
        done.append(d)
    return done


async def tear_down(defs: Iterable[AgentDef]) -> None:
    """``teardown()`` of each, last set up first; a teardown that raises is logged, not fatal."""
    for d in reversed(list(defs)):
        if d.teardown is None:
            continue
        try:
            await _finish(d.teardown())
        except Exception:
            log.exception("agent %s: teardown() failed", d.name)


def set_up_in_worker(d: AgentDef, node: AgentNode) -> None:
    """In a process worker: ``setup(node)`` of its class agent (no-op for a function agent)."""
    if d.setup is None:
        return
    os.makedirs(node.data_dir, exist_ok=True)
    try:
        finish_in_worker(d.setup(node))
    except Exception as exc:
        raise AgentSetupError(f"agent {d.name!r}: setup(node) failed: {_told(exc)}") from exc


def tear_down_in_worker(d: AgentDef) -> None:
    if d.teardown is not None:
        finish_in_worker(d.teardown())


async def _finish(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


_worker_loop: asyncio.AbstractEventLoop | None = None


def worker_loop() -> asyncio.AbstractEventLoop:
    """The one event loop of a process worker: an async ``setup``, every async attempt and
    ``teardown`` run on it, so what ``setup`` built (a client, a pool, a lock) stays usable
    (with a loop per call it would be tied to a closed loop by the first attempt)."""
    global _worker_loop
    if _worker_loop is None or _worker_loop.is_closed():
        _worker_loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_worker_loop)
    return _worker_loop


def finish_in_worker(result: Any) -> Any:
    """``result``, awaited on the worker's loop if it is awaitable."""
    if inspect.isawaitable(result):
        return worker_loop().run_until_complete(_awaited(result))
    return result


async def _awaited(aw: Any) -> Any:
    return await aw


def _told(exc: BaseException) -> str:
    """``Type: message at FILE:LINE`` (where it was raised)."""
    tb = traceback.extract_tb(exc.__traceback__)
    at = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc)[:1000]}{at}"
