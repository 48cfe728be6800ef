"""``StateMachine``: the thin FSM that applies commands to the cluster state.

It owns what every command shares: request-id deduplication, dispatch from a table
to the processor of the command's type (``members``, ``runs``, ``ticks``,
``lock_commands``, ``kv_commands``, ``message_commands``), the never-raise guard, and the digest,
snapshot and restore of the state. The transitions themselves live in the processors.

Rules (each one is tested):

- Pure: no clock, no randomness, no I/O. Time is ``max(state.time_ms, cmd.ts_ms)``.
- Never raises: errors are ``Rejected`` results. A command is validated completely
  before it mutates anything, so a rejected command changes nothing.
- A command that changes the state raises ``revision`` by one and records its
  result under its request id; applying the same request id again returns the first
  result and changes nothing. Rejections are not recorded (re-applying is deterministic).
- Fencing: assignments get ``token = revision``; a completion or failure whose
  (attempt, token, node) is not the task's current one is rejected as stale.
- Apply cost is O(size of the command) plus the tasks it unblocks or cancels.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from . import (
    approvals,
    control,
    dead_letters,
    kv_commands,
    limits,
    lock_commands,
    members,
    message_commands,
    preemption,
    runs,
    tasks,
    ticks,
)
from .codes import Code
from .commands import (
    AckMessage,
    Activate,
    ApproveTask,
    Assign,
    Barrier,
    CancelRun,
    Command,
    Complete,
    Deactivate,
    Fail,
    KvLease,
    KvTxn,
    LockAcquire,
    LockCancel,
    LockRelease,
    NodeDown,
    PauseRun,
    Preempt,
    RecordDeadLetters,
    RegisterNode,
    RenewActivations,
    RerunTask,
    ResumeRun,
    RetryTask,
    SendMessages,
    StageRun,
    SubmitRun,
    SubscribeTopic,
    SuspectNode,
    Tick,
    Undecodable,
    decode_batch,
)
from .context import ApplyContext
from .results import (
    BarrierResult,
    Event,
    Rejected,
    Result,
    decode_result,
    encode_result,
)
from .state import ClusterState

log = logging.getLogger(__name__)

Processor = Callable[[ApplyContext, Any], Result]

PROCESSORS: dict[type[Command], Processor] = {
    RegisterNode: members.register,
    NodeDown: members.node_down,
    SuspectNode: members.suspect_node,
    SubmitRun: runs.submit,
    StageRun: runs.stage,
    CancelRun: runs.cancel,
    Assign: runs.assign,
    Complete: runs.complete,
    Fail: runs.fail,
    Tick: ticks.tick,
    LockAcquire: lock_commands.acquire,
    LockRelease: lock_commands.release,
    LockCancel: lock_commands.cancel,
    KvTxn: kv_commands.txn,
    KvLease: kv_commands.lease,
    RetryTask: dead_letters.retry,
    Preempt: preemption.preempt,
    ApproveTask: approvals.approve,
    PauseRun: control.pause,
    ResumeRun: control.resume,
    RerunTask: control.rerun,
    SendMessages: message_commands.send,
    AckMessage: message_commands.ack,
    Activate: message_commands.activate,
    RenewActivations: message_commands.renew,
    Deactivate: message_commands.deactivate,
    SubscribeTopic: message_commands.subscribe,
    RecordDeadLetters: message_commands.record_dead_letters,
}
"""The processor of each command type (``Barrier`` is answered here: it changes nothing)."""

_TARGETS: dict[type[Command], tuple[tuple[str, ...], Callable[[Any], tuple[str, ...]]]] = {
    ApproveTask: (
        ("run", "task", "gate", "decision"),
        lambda c: (c.run_id, c.task_id, str(c.gate), "approve" if c.approve else "reject"),
    ),
    RetryTask: (("run", "task", "attempt"), lambda c: (c.run_id, c.task_id, str(c.attempt))),
    RerunTask: (("run", "task"), lambda c: (c.run_id, c.task_id)),
    PauseRun: (("run",), lambda c: (c.run_id,)),
    ResumeRun: (("run",), lambda c: (c.run_id,)),
}
"""What a command names, kept in its recorded result: the same request id reused for another
run, task or gate must not be answered with this one's result (the other stays undone)."""


def target_of(cmd: Command) -> tuple[str, ...]:
    """What ``cmd`` names (() for a command whose result keeps no target)."""
    entry = _TARGETS.get(type(cmd))
    return entry[1](cmd) if entry is not None else ()


def _describe(cmd: Command, target: tuple[str, ...]) -> str:
    names = _TARGETS[type(cmd)][0]
    return f"{cmd.TAG} of " + ", ".join(f"{n} {v!r}" for n, v in zip(names, target, strict=False))


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """One command that changed the state, as the audit archive receives it: the command (its
    ``origin``), its result and events, its audit notes, and the revision and state time after it."""

    cmd: Command
    result: Result
    events: list[Event]
    notes: list[tuple[str, str, str, str]]
    revision: int
    time_ms: int
    changed: bool = True
    """False: a report whose every item was fenced (stale token); ``revision`` is the current one."""


class StateMachine:
    """Owns a ``ClusterState`` and applies commands to it."""

    def __init__(
        self, state: ClusterState | None = None, processors: Mapping[type[Command], Processor] = PROCESSORS
    ) -> None:
        self.state = state if state is not None else ClusterState()
        # Replaceable so that a test can run a machine with one broken transition (the audit's tests).
        self.processors = processors
        self._notes: list[tuple[str, str, str, str]] = []
        """The last applied command's audit notes (``ApplyContext.notes``)."""
        self.entry_term: int | None = None
        """The Raft term of the log entry being applied (``ApplyContext.entry_term``); None when
        unknown (a replay of bare payloads)."""

    def apply_batch(
        self,
        payload: bytes | list[Command | Undecodable],
        trail: list[Applied] | None = None,
        term: int | None = None,
    ) -> tuple[list[Result], list[Event]]:
        """Apply one log entry (a batch of commands, or its ``decode_batch``). Never raises.

        ``trail``: if given, one ``Applied`` per command that changed the state is appended
        (what the node's audit archive records, off this thread). ``term``: the entry's Raft
        term (``entry_term``), which every replica applying the entry knows alike."""
        results: list[Result] = []
        events: list[Event] = []
        st = self.state
        self.entry_term = term
        for cmd in decode_batch(payload) if isinstance(payload, bytes) else payload:
            if isinstance(cmd, Undecodable):
                results.append(Rejected(Code.INVALID_ARGUMENT, f"undecodable command: {cmd.reason}"))
                continue
            before = st.revision if trail is not None else 0
            res, evs = self.apply(cmd)
            results.append(res)
            events.extend(evs)
            if trail is None:
                continue
            if st.revision != before:
                trail.append(Applied(cmd, res, evs, self._notes, st.revision, st.time_ms))
            elif isinstance(cmd, Complete | Fail) and res.code is Code.ABORTED:
                # Every item fenced out: nothing changed, but a node's stale work is worth recording.
                trail.append(Applied(cmd, res, [], [], st.revision, st.time_ms, changed=False))
        self.entry_term = None  # a later direct ``apply`` is of no log entry
        return results, events

    def apply(self, cmd: Command) -> tuple[Result, list[Event]]:
        """Apply one command. Never raises: an unexpected error is logged and rejected."""
        st = self.state
        if isinstance(cmd, Barrier):  # never deduplicated, never recorded
            return BarrierResult(st.revision), []
        why = limits.request_id_error("request id", cmd.request_id)
        if why:  # it would be kept in the dedup table and echoed in errors
            return Rejected(Code.INVALID_ARGUMENT, why), []
        prior = st.dedup.get(cmd.request_id) if cmd.request_id else None
        if prior is not None:
            if prior[1] != cmd.TAG:
                # A reused id must not hand one kind of command another kind's result.
                return Rejected(
                    Code.INVALID_ARGUMENT,
                    f"request id {cmd.request_id!r} was already used by a {prior[1]} command; "
                    "use a new request id for each operation",
                ), []
            answer = decode_result(prior[2])
            before, now = getattr(answer, "target", ()), target_of(cmd)
            if before and before != now:
                return Rejected(
                    Code.INVALID_ARGUMENT,
                    f"request id {cmd.request_id!r} was already used for {_describe(cmd, before)}, "
                    f"not {_describe(cmd, now)}; use a new request id for each operation",
                ), []
            return answer, []
        processor = self.processors.get(type(cmd))
        if processor is None:
            return Rejected(Code.INVALID_ARGUMENT, f"unsupported command {type(cmd).__name__}"), []
        ctx = ApplyContext(st, cmd.ts_ms, entry_term=self.entry_term)
        self._notes = ctx.notes
        try:
            res = processor(ctx, cmd)
            if ctx.changed and ctx.released:
                # Locks freed by a task's end (or a node's loss) go to their waiters now.
                lock_commands.settle(ctx)
            if ctx.readied or ctx.freed:
                # What this command made READY, or found a slot for, starts at once where a
                # member takes placements from apply (``Member.places``): no Assign commit.
                tasks.place_queued(ctx)
        except Exception as exc:  # a bug must not stall the log on every replica
            log.exception("apply failed for %s", type(cmd).__name__)
            return Rejected(Code.INTERNAL, f"apply failed: {type(exc).__name__}: {exc}"), []
        # Only a command that changed the state is remembered: an OK that changes nothing
        # (a known idempotency key, cancelling a finished run) must leave the digest alone.
        if res.ok and ctx.changed:
            self._record(cmd, res)
        return res, ctx.events

    def digest(self) -> str:
        return self.state.digest()

    def snapshot(self) -> bytes:
        return self.state.encode()

    def restore(self, data: bytes) -> None:
        self.state = ClusterState.decode(data)

    def _record(self, cmd: Command, res: Result) -> None:
        st = self.state
        if cmd.request_id:
            target = target_of(cmd)
            if target:
                res = dataclasses.replace(res, target=target)  # type: ignore[call-arg]
            st.dedup[cmd.request_id] = (cmd.ts_ms, cmd.TAG, encode_result(res))
        horizon = st.time_ms - limits.DEDUP_RETENTION_MS
        while st.dedup:
            _, (ts, _, _) = next(iter(st.dedup.items()))
            if len(st.dedup) > limits.DEDUP_MAX_ENTRIES or ts < horizon:
                st.dedup.popitem(last=False)
            else:
                break
