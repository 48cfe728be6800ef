"""The replicated state machine (pure) and the Raft member that drives it.

Only the ``raftmesh.consensus.raft`` package imports pysyncobj; everything else in this
package is pure and testable without Raft, threads or a clock:

- ``commands``: typed commands in, ``results``: typed results and events out
  (``codes``: their status codes);
- ``machine``: the thin FSM (dedup, dispatch, never-raise, snapshot, digest), over
  ``context.ApplyContext``;
- processors: ``members``, ``runs`` (with ``tasks``, the task transitions, and ``usage``,
  the usage sums), ``dead_letters`` (listing and requeue), ``preemption`` (its plan and
  its command), ``approvals`` (gates: open, decide, time out, list), ``control`` (pause,
  resume, rerun), ``ticks``, ``lock_commands``, ``kv_commands``, ``message_commands``
  (agent messaging, with ``activations``: placement and leases of actor activations);
- data: ``state`` (with ``locks``, ``kv``, ``messages``), ``dag`` (DAG validation), ``placement``,
  ``limits`` (every limit and the checks that apply them).
"""

from typing import TYPE_CHECKING, Any

from .codes import Code
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
from .results import (
    Event,
    KvChanged,
    LockChanged,
    MemberChanged,
    Rejected,
    Result,
    RunChanged,
    TaskChanged,
    expect,
)
from .state import ClusterState, RunStatus, TaskStatus

__all__ = [
    "Assign",
    "Assignment",
    "Barrier",
    "CancelRun",
    "ClusterState",
    "Code",
    "Command",
    "Complete",
    "Completion",
    "Event",
    "Fail",
    "Failure",
    "KvChanged",
    "LockChanged",
    "MemberChanged",
    "RegisterNode",
    "Rejected",
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
    "expect",
]


if TYPE_CHECKING:
    from .machine import StateMachine


def __getattr__(name: str) -> Any:
    # The machine (and every processor it dispatches to) loads on first use: the client and the
    # CLI import the commands through this package and never apply one.
    if name == "StateMachine":
        from .machine import StateMachine

        return StateMachine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
