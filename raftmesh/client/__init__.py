"""The raftmesh Python SDK."""

from ._client import Client, parse_addresses
from ._dag import DAG, Task
from ._types import ClusterInfo, MemberInfo, RunEvent, RunInfo, TaskInfo

__all__ = [
    "DAG",
    "Client",
    "ClusterInfo",
    "MemberInfo",
    "RunEvent",
    "RunInfo",
    "Task",
    "TaskInfo",
    "parse_addresses",
]
