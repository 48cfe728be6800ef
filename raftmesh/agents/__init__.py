"""Agents: the units of work a node offers, the context a task runs in, and the host that runs them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._actors import ActorContext, ActorHost
    from ._context import SyncTaskContext, TaskContext
    from ._declare import AgentDefinitionError, actor, agent
    from ._host import AgentHost
    from ._loader import ENTRY_POINT_GROUP, AgentLoadError, load_agent, load_agents
    from ._messaging import HandlerError
    from ._registry import ActorDef, AgentDef, AgentRegistry, DuplicateAgentError, default_registry
    from ._setup import AgentNode, AgentSetupError
    from ._spawn import SpawnError
    from ._task_clients import TaskKv, TaskLocks

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActorContext",
    "ActorDef",
    "ActorHost",
    "AgentDef",
    "AgentDefinitionError",
    "AgentHost",
    "AgentLoadError",
    "AgentNode",
    "AgentRegistry",
    "AgentSetupError",
    "DuplicateAgentError",
    "HandlerError",
    "SpawnError",
    "SyncTaskContext",
    "TaskContext",
    "TaskKv",
    "TaskLocks",
    "actor",
    "agent",
    "default_registry",
    "load_agent",
    "load_agents",
]

_LAZY = {
    "ActorContext": "._actors",
    "ActorHost": "._actors",
    "SyncTaskContext": "._context",
    "TaskContext": "._context",
    "AgentDefinitionError": "._declare",
    "actor": "._declare",
    "agent": "._declare",
    "AgentHost": "._host",
    "ENTRY_POINT_GROUP": "._loader",
    "AgentLoadError": "._loader",
    "load_agent": "._loader",
    "load_agents": "._loader",
    "HandlerError": "._messaging",
    "ActorDef": "._registry",
    "AgentDef": "._registry",
    "AgentRegistry": "._registry",
    "DuplicateAgentError": "._registry",
    "default_registry": "._registry",
    "AgentNode": "._setup",
    "AgentSetupError": "._setup",
    "SpawnError": "._spawn",
    "TaskKv": "._task_clients",
    "TaskLocks": "._task_clients",
}
"""Public names loaded on first use (PEP 562): a spawned ``process`` worker imports this package
on its way to ``_worker`` and to ``@raftmesh.agent``, and must not load the host, the actors or
messaging (and with them grpcio, the node and the Raft layer) that only a node uses."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raftmesh.agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
