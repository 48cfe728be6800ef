"""Agents: the units of work a node offers, the context a task runs in, and the host that runs them."""

from ._context import SyncTaskContext, TaskContext
from ._declare import AgentDefinitionError, agent
from ._host import AgentHost
from ._loader import ENTRY_POINT_GROUP, AgentLoadError, load_agent, load_agents
from ._registry import AgentDef, AgentRegistry, DuplicateAgentError, default_registry
from ._setup import AgentNode, AgentSetupError
from ._spawn import SpawnError
from ._task_clients import TaskKv, TaskLocks

__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentDef",
    "AgentDefinitionError",
    "AgentHost",
    "AgentLoadError",
    "AgentNode",
    "AgentRegistry",
    "AgentSetupError",
    "DuplicateAgentError",
    "SpawnError",
    "SyncTaskContext",
    "TaskContext",
    "TaskKv",
    "TaskLocks",
    "agent",
    "default_registry",
    "load_agent",
    "load_agents",
]
