"""Agents: the units of work a node offers, and the context a task runs in."""

from ._context import TaskContext
from ._registry import AgentDef, AgentRegistry, default_registry

__all__ = ["AgentDef", "AgentRegistry", "TaskContext", "default_registry"]
