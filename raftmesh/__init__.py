"""raftmesh: a Raft-replicated, peer-to-peer cluster that runs DAGs of agent tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import DAG, Client, ClusterInfo, RunEvent, RunInfo, TaskInfo
from .errors import RaftmeshError

if TYPE_CHECKING:
    from .agents import ActorContext, actor, agent
    from .agents._tools import tool
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


def __getattr__(name: str) -> Any:
    # ``raftmesh.agent``, ``raftmesh.actor`` and ``raftmesh.tool`` load the agents package (and the state machine it
    # uses) on first use: a program that only uses the client does not pay for importing it.
    if name == "agent":
        from .agents import agent

        return agent
    if name in ("actor", "ActorContext"):
        from . import agents

        return getattr(agents, name)
    if name == "Message":
        from .consensus.commands import Message

        return Message
    if name == "tool":
        from .agents._tools import tool

        return tool
    raise AttributeError(f"module 'raftmesh' has no attribute {name!r}")
