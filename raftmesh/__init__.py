"""raftmesh: a Raft-replicated, peer-to-peer cluster that runs DAGs of agent tasks."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .errors import RaftmeshError

if TYPE_CHECKING:
    from .agents import ActorContext, actor, agent
    from .agents._tools import tool
    from .client import DAG, Client, ClusterInfo, RunEvent, RunInfo, TaskInfo
    from .consensus.commands import Message

__version__ = "0.1.0"

__all__ = [
    "DAG",
    "ActorContext",
    "Client",
    "ClusterInfo",
    "Message",
    "RaftmeshError",
    "RunEvent",
    "RunInfo",
    "TaskInfo",
    "__version__",
    "actor",
    "agent",
    "tool",
]

_LAZY = {
    "DAG": ".client",
    "Client": ".client",
    "ClusterInfo": ".client",
    "RunEvent": ".client",
    "RunInfo": ".client",
    "TaskInfo": ".client",
    "agent": ".agents",
    "actor": ".agents",
    "ActorContext": ".agents",
    "tool": ".agents._tools",
    "Message": ".consensus.commands",
}
"""Public names loaded on first use (PEP 562). The client loads grpcio and the agents package
what a node needs: a spawned ``process`` worker runs ``import raftmesh; @raftmesh.agent(...)``
and must not pay for either (nor a client-only program for the agents)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name.isidentifier() and not name.startswith("_"):
            # ``import raftmesh`` then ``raftmesh.client.X``: the subpackage loads on first use too
            try:
                if importlib.util.find_spec(f"{__name__}.{name}") is not None:
                    return importlib.import_module(f".{name}", __name__)
            except ImportError:
                pass
        raise AttributeError(f"module 'raftmesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
