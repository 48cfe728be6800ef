"""Audit the messaging part of a committed log: activations as leases, and every applied ack.

Fed by ``Audit`` with each command and the machine around it. Like ``LockAudit`` it does
not trust the machine's own bookkeeping: it diffs the activations before and after every
command, which turns the log into activation spans (granted by command i, ended by command
j, and how), and it judges every ``AckMessage`` the machine applied against the activation
the address had just before it:

- an applied ack whose epoch (or node) is not the address's current activation is a stale
  activation's turn that got through (a double activation);
- a new activation granted while the previous one's lease still ran (state time before its
  deadline), unless that one was given up by its own node (``Deactivate``) or its node came
  back as a new incarnation (the old process is gone), means two nodes could handle the
  address at once: the hosting node's local guard only stops it at its lease's end;
- an applied ack of a durable message past its ``expires_ms`` (state time) delivered an
  expired message;
- an applied ack of a sequence number that was not queued applied a turn twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..consensus.codes import Code
from ..consensus.commands import AckMessage, Command, Deactivate, RegisterNode
from ..consensus.machine import StateMachine
from ..consensus.results import MessageAcked, Rejected, Result


def logical_id(payload: Any, message_id: str) -> str:
    """The id a chaos sender put in the payload (``{"id": ...}``), else the message id."""
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):
        return str(payload["id"])
    return message_id


@dataclass
class ActivationSpan:
    """One activation of one address in log order: from command ``start`` to command ``end``."""

    address: str
    node: str
    incarnation: str
    epoch: int
    start: int
    start_ms: int
    """State time after the granting command."""
    deadline_ms: int
    """The lease's end as last renewed (updated while the span is open)."""
    end: float = math.inf
    end_ms: int = 0
    end_reason: str = ""
    """The tag of the command that ended it ("" while open)."""

    def describe(self) -> str:
        end = "open" if self.end == math.inf else f"#{int(self.end)} {self.end_reason} at {self.end_ms}"
        return (
            f"{self.address} on {self.node} epoch {self.epoch} (#{self.start} at {self.start_ms},"
            f" lease to {self.deadline_ms}, ended {end})"
        )


@dataclass(frozen=True)
class AppliedAck:
    """An ``AckMessage`` the machine applied, with what the address had just before it."""

    index: int
    time_ms: int
    node: str
    address: str
    epoch: int
    seq: int
    message_id: str
    """The acked durable message's id ("" for a fast-path turn, seq 0)."""
    logical_id: str
    expires_ms: int
    """0 for a fast-path turn (not in the log)."""
    queued: bool
    """A durable ack: the seq was in the mailbox before the command."""
    current_node: str
    current_epoch: int
    """The address's activation before the command (0: none)."""

    @property
    def stale(self) -> bool:
        return self.epoch != self.current_epoch or self.node != self.current_node

    @property
    def expired(self) -> bool:
        return self.seq > 0 and self.queued and self.time_ms > self.expires_ms

    def describe(self) -> str:
        what = f"seq {self.seq} ({self.logical_id})" if self.seq else "a fast-path turn"
        return (
            f"log #{self.index} at {self.time_ms}: ack of {what} at {self.address} by {self.node} epoch"
            f" {self.epoch}; the address was held by {self.current_node or 'nobody'} epoch {self.current_epoch}"
        )


_Queued = tuple[str, str, int]
"""A queued message's (id, logical id, expires_ms)."""
_Pre = tuple[dict[str, tuple[str, str, int, int]], dict[int, _Queued], bool]
"""(address -> (node, incarnation, epoch, deadline_ms)) before the command; for a durable ack,
the queued message's (id, logical id, expires_ms) or None if the seq was not queued; and
whether the command's request id was applied before (the machine then only echoes its result)."""


@dataclass
class MessageAudit:
    spans: list[ActivationSpan] = field(default_factory=list)
    acks: list[AppliedAck] = field(default_factory=list)
    """Every applied ack, in log order."""
    acks_rejected: int = 0
    """Acks the machine refused as stale (ABORTED): shows fencing was exercised."""
    acks_not_applied: int = 0
    """Acks answered ``applied=False`` (already acked or expired: a redelivery made safe)."""
    early_grants: list[str] = field(default_factory=list)
    """Activations granted while an earlier one's lease still ran (must stay empty)."""
    epoch_regressions: list[str] = field(default_factory=list)
    _open: dict[str, ActivationSpan] = field(default_factory=dict)
    _last: dict[str, ActivationSpan] = field(default_factory=dict)
    """address -> its latest ended span (for the next grant's checks)."""

    def before(self, cmd: Command, machine: StateMachine) -> _Pre:
        store = machine.state.messages
        acts = {
            a.address: (a.node, a.incarnation, a.epoch, a.deadline_ms) for a in store.activations.values()
        }
        queued: dict[int, _Queued] = {}
        if isinstance(cmd, AckMessage) and cmd.seq > 0:
            box = store.mailboxes.get(cmd.address)
            for seq in (cmd.seq, *cmd.also):
                q = box.queue.get(seq) if box is not None else None
                if q is not None:
                    queued[seq] = (
                        q.message.id,
                        logical_id(q.message.payload, q.message.id),
                        q.message.expires_ms,
                    )
        repeat = bool(cmd.request_id) and cmd.request_id in machine.state.dedup
        return acts, queued, repeat

    def after(self, index: int, cmd: Command, res: Result, machine: StateMachine, pre: _Pre) -> None:
        before, queued, repeat = pre
        st = machine.state
        now = st.time_ms
        after = st.messages.activations
        for address, (node, inc, epoch, deadline) in before.items():
            a = after.get(address)
            if a is not None and a.epoch == epoch:
                span = self._open.get(address)
                if span is not None:
                    span.deadline_ms = a.deadline_ms
                continue
            span = self._open.pop(address, None)
            if span is None:  # the audit started mid-log: make up the span it missed
                span = ActivationSpan(address, node, inc, epoch, 0, 0, deadline)
                self.spans.append(span)
            span.end, span.end_ms, span.end_reason, span.deadline_ms = index, now, cmd.TAG, deadline
            if _given_up(cmd, span) or now >= deadline:
                span.deadline_ms = min(deadline, now)  # nothing of it runs past here
            self._last[address] = span
        for address, a in after.items():
            prev = before.get(address)
            if prev is not None and prev[2] == a.epoch:
                continue
            last = self._last.get(address)
            if last is not None:
                if a.epoch <= last.epoch:
                    self.epoch_regressions.append(
                        f"log #{index}: {address} granted epoch {a.epoch} after epoch {last.epoch}"
                    )
                if now < last.deadline_ms:
                    self.early_grants.append(
                        f"log #{index} ({cmd.TAG}) at {now}: {address} granted to {a.node} epoch {a.epoch} while"
                        f" {last.node} epoch {last.epoch}'s lease ran to {last.deadline_ms}"
                        f" (ended by {last.end_reason} at {last.end_ms})"
                    )
            span = ActivationSpan(address, a.node, a.incarnation, a.epoch, index, now, a.deadline_ms)
            self.spans.append(span)
            self._open[address] = span
        if isinstance(cmd, AckMessage) and not repeat:  # a retried ack is judged where it applied
            self._ack(index, now, cmd, res, before, queued, machine)

    def _ack(
        self,
        index: int,
        now: int,
        cmd: AckMessage,
        res: Result,
        before: dict[str, tuple[str, str, int, int]],
        queued: dict[int, _Queued],
        machine: StateMachine,
    ) -> None:
        if isinstance(res, Rejected):
            self.acks_rejected += res.code is Code.ABORTED
            return
        if not isinstance(res, MessageAcked):
            return
        if not res.applied:
            self.acks_not_applied += 1
            return
        node, _inc, epoch, _deadline = before.get(cmd.address, ("", "", 0, 0))

        def applied(seq: int, item: _Queued, queued_before: bool) -> AppliedAck:
            mid, lid, expires = item
            at = (index, now, cmd.node_id, cmd.address, cmd.epoch)
            return AppliedAck(*at, seq, mid, lid, expires, queued_before, node, epoch)

        if cmd.also:
            # Effect-free turns acked together: each seq queued before and gone after is acked,
            # unless it had expired (the machine dead-letters those).
            box = machine.state.messages.mailboxes.get(cmd.address)
            for seq, item in queued.items():
                _mid, _lid, expires = item
                if (box is None or seq not in box.queue) and expires > now:
                    self.acks.append(applied(seq, item, True))
            return
        self.acks.append(applied(cmd.seq, queued.get(cmd.seq, ("", "", 0)), cmd.seq in queued))

    @property
    def stale_acks(self) -> list[AppliedAck]:
        return [a for a in self.acks if a.stale]

    @property
    def expired_acks(self) -> list[AppliedAck]:
        return [a for a in self.acks if a.expired]

    @property
    def unqueued_acks(self) -> list[AppliedAck]:
        """Durable acks applied for a seq that was not in the mailbox (a turn applied twice)."""
        return [a for a in self.acks if a.seq > 0 and not a.queued]


def _given_up(cmd: Command, span: ActivationSpan) -> bool:
    """The span ended because its own node let go, or its process is gone (a new incarnation)."""
    if isinstance(cmd, Deactivate):
        return cmd.node_id == span.node
    if isinstance(cmd, RegisterNode):
        return cmd.node_id == span.node and cmd.incarnation != span.incarnation
    return False
