"""Agents: the units of work a node offers, the context a task runs in, and the host that runs them."""

from ._context import TaskContext
from ._host import AgentHost
from ._registry import AgentDef, AgentRegistry, default_registry
from ._task_clients import TaskKv, TaskLocks

__all__ = ["AgentDef", "AgentHost", "AgentRegistry", "TaskContext", "TaskKv", "TaskLocks", "default_registry"]
