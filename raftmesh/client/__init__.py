"""The raftmesh Python SDK."""

from ._client import Client, parse_addresses
from ._dag import DAG, Task
from ._types import (
    ClusterInfo,
    DeadLetterInfo,
    MemberInfo,
    PreemptionInfo,
    RetryInfo,
    RunEvent,
    RunInfo,
    TaskInfo,
    UsageInfo,
)

__all__ = [
    "DAG",
    "Client",
    "ClusterInfo",
    "DeadLetterInfo",
    "MemberInfo",
    "PreemptionInfo",
    "RetryInfo",
    "RunEvent",
    "RunInfo",
    "Task",
    "TaskInfo",
    "UsageInfo",
    "parse_addresses",
]
