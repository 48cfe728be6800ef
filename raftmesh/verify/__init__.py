"""Test-side verification of raftmesh histories: a linearizability checker and its models.

Nothing in the node imports this package; tests and the simulation harness do.
See ``linearizability`` for the algorithm and ``models`` for the specifications.
"""

from .linearizability import (
    UNKNOWN_OUTPUT,
    CheckResult,
    Event,
    EventKind,
    HistoryError,
    Model,
    Operation,
    PartitionReport,
    Verdict,
    check_events,
    check_operations,
    describe,
    operations_from_events,
)
from .models import (
    Acquire,
    Cas,
    CasVersion,
    Delete,
    Get,
    KvModel,
    KvOp,
    MutexModel,
    Put,
    Release,
    VersionedKvModel,
    as_kv_op,
    partition_by,
)

__all__ = [
    "UNKNOWN_OUTPUT",
    "Acquire",
    "Cas",
    "CasVersion",
    "CheckResult",
    "Delete",
    "Event",
    "EventKind",
    "Get",
    "HistoryError",
    "KvModel",
    "KvOp",
    "Model",
    "MutexModel",
    "Operation",
    "PartitionReport",
    "Put",
    "Release",
    "Verdict",
    "VersionedKvModel",
    "as_kv_op",
    "check_events",
    "check_operations",
    "describe",
    "operations_from_events",
    "partition_by",
]
