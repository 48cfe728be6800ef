"""raftmesh: a Raft-replicated, peer-to-peer cluster that runs DAGs of agent tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import DAG, Client, ClusterInfo, RunEvent, RunInfo, TaskInfo
from .errors import RaftmeshError

if TYPE_CHECKING:
    from .agents._tools import tool

__version__ = "0.1.0"

__all__ = ["DAG", "Client", "ClusterInfo", "RaftmeshError", "RunEvent", "RunInfo", "TaskInfo", "__version__"]
__all__ += ["tool"]  # @raftmesh.tool (kept on its own line: other parts of issue 8 extend the list)


def __getattr__(name: str) -> Any:
    # ``raftmesh.tool`` loads the agents package on first use: a program that only uses the
    # client does not pay for importing it.
    if name == "tool":
        from .agents._tools import tool

        return tool
    raise AttributeError(f"module 'raftmesh' has no attribute {name!r}")
