"""Agents: the units of work a node offers, the context a task runs in, and the host that runs them."""

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
