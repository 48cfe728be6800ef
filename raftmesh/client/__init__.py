"""The raftmesh Python SDK."""

from ._client import Client, parse_addresses
from ._dag import DAG, Task
from ._types import (
    BreakerInfo,
    ClusterInfo,
    DeadLetterInfo,
    FusionInfo,
    MemberInfo,
    OfferInfo,
    PreemptionInfo,
    ReplicaInfo,
    RetryInfo,
    RunEvent,
    RunInfo,
    TaskInfo,
    UsageInfo,
)

__all__ = [
    "DAG",
    "BreakerInfo",
    "Client",
    "ClusterInfo",
    "DeadLetterInfo",
    "FusionInfo",
    "MemberInfo",
    "OfferInfo",
    "PreemptionInfo",
    "ReplicaInfo",
    "RetryInfo",
    "RunEvent",
    "RunInfo",
    "Task",
    "TaskInfo",
    "UsageInfo",
    "parse_addresses",
]
