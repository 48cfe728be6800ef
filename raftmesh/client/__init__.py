"""The raftmesh Python SDK."""

from ._client import Client, parse_addresses
from ._dag import DAG, Task
from ._types import BreakerInfo, ClusterInfo, MemberInfo, OfferInfo, RunEvent, RunInfo, TaskInfo

__all__ = [
    "DAG",
    "BreakerInfo",
    "Client",
    "ClusterInfo",
    "MemberInfo",
    "OfferInfo",
    "RunEvent",
    "RunInfo",
    "Task",
    "TaskInfo",
    "parse_addresses",
]
