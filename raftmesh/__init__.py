"""raftmesh: a Raft-replicated, peer-to-peer cluster that runs DAGs of agent tasks."""

from .agents._tools import tool
from .client import DAG, Client, ClusterInfo, RunEvent, RunInfo, TaskInfo
from .errors import RaftmeshError

__version__ = "0.1.0"

__all__ = ["DAG", "Client", "ClusterInfo", "RaftmeshError", "RunEvent", "RunInfo", "TaskInfo", "__version__"]
__all__ += ["tool"]  # @raftmesh.tool (kept on its own line: other parts of issue 8 extend the list)
