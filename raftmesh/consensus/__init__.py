"""The replicated state machine (pure) and the Raft member that drives it.

Only the ``raftmesh.consensus.raft`` package imports pysyncobj; everything else in this
package is pure and testable without Raft, threads or a clock.
"""

from .commands import (
    Assign,
    Assignment,
    Barrier,
    CancelRun,
    Command,
    Complete,
    Completion,
    Fail,
    Failure,
    RegisterNode,
    SubmitRun,
    TaskSpec,
    Tick,
    decode_batch,
    encode_batch,
)
from .machine import Event, MemberChanged, Result, RunChanged, StateMachine, TaskChanged
from .state import ClusterState, RunStatus, TaskStatus

__all__ = [
    "Assign",
    "Assignment",
    "Barrier",
    "CancelRun",
    "ClusterState",
    "Command",
    "Complete",
    "Completion",
    "Event",
    "Fail",
    "Failure",
    "MemberChanged",
    "RegisterNode",
    "Result",
    "RunChanged",
    "RunStatus",
    "StateMachine",
    "SubmitRun",
    "TaskChanged",
    "TaskSpec",
    "TaskStatus",
    "Tick",
    "decode_batch",
    "encode_batch",
]
