"""The raftmesh Python SDK."""

from ._client import Client, parse_addresses
from ._dag import DAG, Task
from ._types import (
    ApprovalInfo,
    AttemptInfo,
    BreakerInfo,
    ClusterInfo,
    DeadLetterInfo,
    DecisionInfo,
    GateInfo,
    MemberInfo,
    OfferInfo,
    PreemptionInfo,
    RerunInfo,
    RetryInfo,
    RunControlInfo,
    RunEvent,
    RunInfo,
    TaskInfo,
    UsageInfo,
)

__all__ = [
    "DAG",
    "ApprovalInfo",
    "AttemptInfo",
    "BreakerInfo",
    "Client",
    "ClusterInfo",
    "DeadLetterInfo",
    "DecisionInfo",
    "GateInfo",
    "MemberInfo",
    "OfferInfo",
    "PreemptionInfo",
    "RerunInfo",
    "RetryInfo",
    "RunControlInfo",
    "RunEvent",
    "RunInfo",
    "Task",
    "TaskInfo",
    "UsageInfo",
    "parse_addresses",
]
