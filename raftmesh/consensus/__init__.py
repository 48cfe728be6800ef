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

if TYPE_CHECKING:
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
    from .machine import StateMachine
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

_HOME = {
    "Code": "codes",
    **dict.fromkeys(
        [
            "Assign",
            "Assignment",
            "Barrier",
            "CancelRun",
            "Command",
            "Complete",
            "Completion",
            "Fail",
            "Failure",
            "RegisterNode",
            "SubmitRun",
            "TaskSpec",
            "Tick",
            "decode_batch",
            "encode_batch",
        ],
        "commands",
    ),
    "StateMachine": "machine",
    **dict.fromkeys(
        [
            "Event",
            "KvChanged",
            "LockChanged",
            "MemberChanged",
            "Rejected",
            "Result",
            "RunChanged",
            "TaskChanged",
            "expect",
        ],
        "results",
    ),
    **dict.fromkeys(("ClusterState", "RunStatus", "TaskStatus"), "state"),
}

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
assert sorted(__all__) == sorted(_HOME)


def __getattr__(name: str) -> Any:
    # Each name loads its module on first use: the client and the CLI import a limit or a
    # command through this package, and loading every command class, result and the machine
    # (with every processor it dispatches to) cost each CLI process a third of its start-up.
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Static relative imports, one module per branch (the purity check forbids dynamic ones:
    # they could hide any module).
    value: Any
    if home == "codes":
        from . import codes

        value = getattr(codes, name)
    elif home == "commands":
        from . import commands

        value = getattr(commands, name)
    elif home == "machine":
        from . import machine

        value = getattr(machine, name)
    elif home == "results":
        from . import results

        value = getattr(results, name)
    else:
        from . import state

        value = getattr(state, name)
    globals()[name] = value
    return value
