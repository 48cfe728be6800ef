"""The raftmesh Python SDK."""

from ._audit import AuditEventInfo, AuditTrail
from ._client import Client, parse_addresses
from ._dag import DAG, Task
from ._types import (
    ApprovalInfo,
    AttemptInfo,
    BreakerInfo,
    ClusterInfo,
    DeadLetterInfo,
    DecisionInfo,
    FusionInfo,
    GateInfo,
    MemberInfo,
    OfferInfo,
    PreemptionInfo,
    ReplicaInfo,
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
    "AuditEventInfo",
    "AuditTrail",
    "BreakerInfo",
    "Client",
    "ClusterInfo",
    "DeadLetterInfo",
    "DecisionInfo",
    "FusionInfo",
    "GateInfo",
    "MemberInfo",
    "OfferInfo",
    "PreemptionInfo",
    "ReplicaInfo",
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
