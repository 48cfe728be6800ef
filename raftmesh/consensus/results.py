"""What applying a command produces: a typed result per command kind, and events.

A result is a frozen dataclass; a rejection is ``Rejected(code, message)`` for any
command kind, and changes nothing. ``ok``, ``code`` and ``message`` read alike on
every result, so a caller that only needs success or failure does not care which
kind it holds; a caller that reads fields uses ``expect(res, SubmitRunResult)``,
which raises the rejection's error (``raftmesh.errors``) instead.

Results are remembered in the replicated dedup table, so each has a canonical
encoding (``encode_result``/``decode_result``): a decoded result equals the original.

Events say what changed, for the node to act on (wake a watcher, a lock waiter,
the scheduler). They are returned by ``apply`` and never stored in the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ..errors import RaftmeshError, error_for_code
from .codes import Code
from .commands import JsonValue
from .fast import fast_init
from .kv import KvEvent
from .state import RunStatus, TaskStatus

# ---- results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """Base of every result. Subclasses are the successes; ``Rejected`` is the failure."""

    TAG: ClassVar[str] = ""

    @property
    def ok(self) -> bool:
        return True

    @property
    def code(self) -> Code:
        return Code.OK

    @property
    def message(self) -> str:
        return ""

    def _encode(self) -> list[Any]:
        return []


@dataclass(frozen=True, slots=True)
class Rejected(Result):
    """The command was not applied; ``code`` says why in gRPC terms, ``message`` what to fix."""

    TAG: ClassVar[str] = "rejected"
    code: Code = field()
    message: str = field()

    @property
    def ok(self) -> bool:
        return False

    def error(self) -> RaftmeshError:
        """The error a caller raises for this rejection (the class is chosen by the code's name)."""
        return error_for_code(self.code, self.message)

    def _encode(self) -> list[Any]:
        return [self.code.value, self.message]

    @classmethod
    def _decode(cls, v: list[Any]) -> Rejected:
        return cls(Code(v[0]), v[1])


@dataclass(frozen=True, slots=True)
class MemberResult(Result):
    """``RegisterNode`` and ``NodeDown``."""

    TAG: ClassVar[str] = "member"
    node_id: str

    def _encode(self) -> list[Any]:
        return [self.node_id]

    @classmethod
    def _decode(cls, v: list[Any]) -> MemberResult:
        return cls(v[0])


@dataclass(frozen=True, slots=True)
class SubmitRunResult(Result):
    """``created`` is False when the idempotency key named an existing run (``run_id``)."""

    TAG: ClassVar[str] = "submit_run"
    run_id: str
    created: bool

    def _encode(self) -> list[Any]:
        return [self.run_id, self.created]

    @classmethod
    def _decode(cls, v: list[Any]) -> SubmitRunResult:
        return cls(v[0], v[1])


@dataclass(frozen=True, slots=True)
class CancelRunResult(Result):
    """``cancelled`` is False when the run had already finished (``status``)."""

    TAG: ClassVar[str] = "cancel_run"
    status: RunStatus
    cancelled: bool

    def _encode(self) -> list[Any]:
        return [self.status.value, self.cancelled]

    @classmethod
    def _decode(cls, v: list[Any]) -> CancelRunResult:
        return cls(RunStatus(v[0]), v[1])


@dataclass(frozen=True, slots=True)
class ItemRejected:
    """One item of a batched command that did not apply, and why."""

    run_id: str
    task_id: str
    reason: str

    def encode(self) -> list[Any]:
        return [self.run_id, self.task_id, self.reason]

    @classmethod
    def decode(cls, v: list[Any]) -> ItemRejected:
        return cls(v[0], v[1], v[2])


@dataclass(frozen=True, slots=True)
class AssignResult(Result):
    """``token``: the fencing token of every accepted assignment (the command's revision)."""

    TAG: ClassVar[str] = "assign"
    token: int
    accepted: int
    rejected: tuple[ItemRejected, ...] = ()

    def _encode(self) -> list[Any]:
        return [self.token, self.accepted, [r.encode() for r in self.rejected]]

    @classmethod
    def _decode(cls, v: list[Any]) -> AssignResult:
        return cls(v[0], v[1], tuple(ItemRejected.decode(r) for r in v[2]))


@dataclass(frozen=True, slots=True)
class ReportResult(Result):
    """``Complete`` and ``Fail``: the items applied, and the ones fenced out."""

    TAG: ClassVar[str] = "report"
    accepted: int
    rejected: tuple[ItemRejected, ...] = ()

    def _encode(self) -> list[Any]:
        return [self.accepted, [r.encode() for r in self.rejected]]

    @classmethod
    def _decode(cls, v: list[Any]) -> ReportResult:
        return cls(v[0], tuple(ItemRejected.decode(r) for r in v[1]))


@dataclass(frozen=True, slots=True)
class TickResult(Result):
    """``expired``: task timeouts, lock leases and waits, and KV leases that ended."""

    TAG: ClassVar[str] = "tick"
    expired: int
    time_ms: int

    def _encode(self) -> list[Any]:
        return [self.expired, self.time_ms]

    @classmethod
    def _decode(cls, v: list[Any]) -> TickResult:
        return cls(v[0], v[1])


@dataclass(frozen=True, slots=True)
class BarrierResult(Result):
    TAG: ClassVar[str] = "barrier"
    revision: int

    def _encode(self) -> list[Any]:
        return [self.revision]

    @classmethod
    def _decode(cls, v: list[Any]) -> BarrierResult:
        return cls(v[0])


@dataclass(frozen=True, slots=True)
class LockAcquireResult(Result):
    """Granted now (``token``), queued (``waiting``), or not granted.

    A request that was queued and ended within the same command (aborted as the victim
    of a deadlock it closed) has ``granted`` and ``waiting`` False and says why in
    ``end_code``/``end_message``.
    """

    TAG: ClassVar[str] = "lock_acquire"
    request_id: str
    granted: bool
    waiting: bool
    token: int
    end_code: Code = Code.OK
    end_message: str = ""

    def _encode(self) -> list[Any]:
        return [
            self.request_id,
            self.granted,
            self.waiting,
            self.token,
            self.end_code.value,
            self.end_message,
        ]

    @classmethod
    def _decode(cls, v: list[Any]) -> LockAcquireResult:
        return cls(v[0], v[1], v[2], v[3], Code(v[4]), v[5])


@dataclass(frozen=True, slots=True)
class LockReleaseResult(Result):
    TAG: ClassVar[str] = "lock_release"
    token: int

    def _encode(self) -> list[Any]:
        return [self.token]

    @classmethod
    def _decode(cls, v: list[Any]) -> LockReleaseResult:
        return cls(v[0])


@dataclass(frozen=True, slots=True)
class LockKeepAliveResult(Result):
    TAG: ClassVar[str] = "lock_keep_alive"
    token: int
    deadline_ms: int

    def _encode(self) -> list[Any]:
        return [self.token, self.deadline_ms]

    @classmethod
    def _decode(cls, v: list[Any]) -> LockKeepAliveResult:
        return cls(v[0], v[1])


@dataclass(frozen=True, slots=True)
class LockCancelResult(Result):
    """``cancelled`` False: the request was unknown or had already ended."""

    TAG: ClassVar[str] = "lock_cancel"
    cancelled: bool
    released: tuple[str, ...] = ()
    """Locks the request had been granted meanwhile, now released."""

    def _encode(self) -> list[Any]:
        return [self.cancelled, list(self.released)]

    @classmethod
    def _decode(cls, v: list[Any]) -> LockCancelResult:
        return cls(v[0], tuple(v[1]))


@dataclass(frozen=True, slots=True)
class Record:
    """A key's entry as a transaction read it (frozen; the store replaces entries, never edits them)."""

    value: JsonValue
    mod_revision: int
    create_revision: int
    version: int
    lease: int

    def encode(self) -> list[Any]:
        return [self.value, self.mod_revision, self.create_revision, self.version, self.lease]

    @classmethod
    def decode(cls, v: list[Any] | None) -> Record | None:
        return None if v is None else cls(v[0], v[1], v[2], v[3], v[4])


def _record(r: Record | None) -> list[Any] | None:
    return None if r is None else r.encode()


@dataclass(frozen=True, slots=True)
class GetResponse:
    key: str
    record: Record | None
    """None: the key does not exist."""


@dataclass(frozen=True, slots=True)
class PutResponse:
    key: str
    mod_revision: int
    version: int
    prev: Record | None


@dataclass(frozen=True, slots=True)
class DeleteResponse:
    key: str
    deleted: bool
    """False: the key did not exist."""


OpResponse = GetResponse | PutResponse | DeleteResponse


def _encode_op(r: OpResponse) -> list[Any]:
    if isinstance(r, GetResponse):
        return ["get", r.key, _record(r.record)]
    if isinstance(r, PutResponse):
        return ["put", r.key, r.mod_revision, r.version, _record(r.prev)]
    return ["delete", r.key, r.deleted]


def _decode_op(v: list[Any]) -> OpResponse:
    if v[0] == "get":
        return GetResponse(v[1], Record.decode(v[2]))
    if v[0] == "put":
        return PutResponse(v[1], v[2], v[3], Record.decode(v[4]))
    return DeleteResponse(v[1], v[2])


@dataclass(frozen=True, slots=True)
class KvTxnResult(Result):
    """Which branch ran (``succeeded``: every comparison held) and one response per operation."""

    TAG: ClassVar[str] = "kv_txn"
    succeeded: bool
    revision: int
    """The revision of the writes (the store's revision if the branch changed nothing)."""
    responses: tuple[OpResponse, ...] = ()

    def _encode(self) -> list[Any]:
        return [self.succeeded, self.revision, [_encode_op(r) for r in self.responses]]

    @classmethod
    def _decode(cls, v: list[Any]) -> KvTxnResult:
        return cls(v[0], v[1], tuple(_decode_op(r) for r in v[2]))


@dataclass(frozen=True, slots=True)
class KvLeaseResult(Result):
    """A granted or renewed lease."""

    TAG: ClassVar[str] = "kv_lease"
    lease: int
    ttl_ms: int
    deadline_ms: int

    def _encode(self) -> list[Any]:
        return [self.lease, self.ttl_ms, self.deadline_ms]

    @classmethod
    def _decode(cls, v: list[Any]) -> KvLeaseResult:
        return cls(v[0], v[1], v[2])


@dataclass(frozen=True, slots=True)
class KvLeaseRevoked(Result):
    TAG: ClassVar[str] = "kv_lease_revoked"
    lease: int
    deleted: tuple[str, ...] = ()
    """The keys the lease held, deleted with it."""

    def _encode(self) -> list[Any]:
        return [self.lease, list(self.deleted)]

    @classmethod
    def _decode(cls, v: list[Any]) -> KvLeaseRevoked:
        return cls(v[0], tuple(v[1]))


@dataclass(frozen=True, slots=True)
class RetryTaskResult(Result):
    """``requeued`` False: an earlier command already requeued the task at that attempt."""

    TAG: ClassVar[str] = "retry_task"
    requeued: bool
    attempt: int
    """The dead attempt the command named (the next attempt is ``attempt + 1``)."""
    status: TaskStatus
    """The task's status afterwards."""
    target: tuple[str, ...] = field(default=(), compare=False)
    """What the command named (``machine.target_of``), set when the dedup table records the
    result: a reused request id naming something else is refused. (): recorded before it.
    Bookkeeping, not part of the answer (a retry's answer equals the first)."""

    def _encode(self) -> list[Any]:
        return [self.requeued, self.attempt, self.status.value, list(self.target)]

    @classmethod
    def _decode(cls, v: list[Any]) -> RetryTaskResult:
        return cls(v[0], v[1], TaskStatus(v[2]), _target(v, 3))


@dataclass(frozen=True, slots=True)
class PreemptResult(Result):
    """The preemptions that applied, and the stale ones refused."""

    TAG: ClassVar[str] = "preempt"
    accepted: int
    rejected: tuple[ItemRejected, ...] = ()

    def _encode(self) -> list[Any]:
        return [self.accepted, [r.encode() for r in self.rejected]]

    @classmethod
    def _decode(cls, v: list[Any]) -> PreemptResult:
        return cls(v[0], tuple(ItemRejected.decode(r) for r in v[1]))


@dataclass(frozen=True, slots=True)
class ApproveTaskResult(Result):
    """The gate's decision; ``applied`` False when an earlier command had decided it so already."""

    TAG: ClassVar[str] = "approve_task"
    applied: bool
    gate: int
    decision: str
    by: str
    comment: str
    decided_ms: int
    status: TaskStatus
    """The task's status as of this answer (after the decision)."""
    target: tuple[str, ...] = field(default=(), compare=False)
    """What the command named (``machine.target_of``), set when the dedup table records the
    result: a reused request id naming something else is refused. (): recorded before it.
    Bookkeeping, not part of the answer (a retry's answer equals the first)."""

    def _encode(self) -> list[Any]:
        return [
            self.applied,
            self.gate,
            self.decision,
            self.by,
            self.comment,
            self.decided_ms,
            self.status.value,
            list(self.target),
        ]

    @classmethod
    def _decode(cls, v: list[Any]) -> ApproveTaskResult:
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], TaskStatus(v[6]), _target(v, 7))


@dataclass(frozen=True, slots=True)
class RunControlResult(Result):
    """``PauseRun`` and ``ResumeRun``: ``changed`` False when the run already was as asked."""

    TAG: ClassVar[str] = "run_control"
    status: RunStatus
    changed: bool
    stopped: int = 0
    """Running attempts a pause with ``cancel_running`` stopped (and requeued)."""
    target: tuple[str, ...] = field(default=(), compare=False)
    """What the command named (``machine.target_of``), set when the dedup table records the
    result: a reused request id naming something else is refused. (): recorded before it.
    Bookkeeping, not part of the answer (a retry's answer equals the first)."""

    def _encode(self) -> list[Any]:
        return [self.status.value, self.changed, self.stopped, list(self.target)]

    @classmethod
    def _decode(cls, v: list[Any]) -> RunControlResult:
        return cls(RunStatus(v[0]), v[1], v[2], _target(v, 3))


@dataclass(frozen=True, slots=True)
class RerunTaskResult(Result):
    """``reset``: tasks sent back (the task and its downstream; a reopened run's cancelled ones);
    ``dropped``: children of reset tasks removed from the run; ``reopened``: the run had finished."""

    TAG: ClassVar[str] = "rerun_task"
    reset: int
    dropped: int
    reopened: bool
    status: TaskStatus
    """The task's status afterwards (READY, WAITING_APPROVAL, PENDING behind a reset dependency...)."""
    run_status: RunStatus
    target: tuple[str, ...] = field(default=(), compare=False)
    """What the command named (``machine.target_of``), set when the dedup table records the
    result: a reused request id naming something else is refused. (): recorded before it.
    Bookkeeping, not part of the answer (a retry's answer equals the first)."""

    def _encode(self) -> list[Any]:
        return [
            self.reset,
            self.dropped,
            self.reopened,
            self.status.value,
            self.run_status.value,
            list(self.target),
        ]

    @classmethod
    def _decode(cls, v: list[Any]) -> RerunTaskResult:
        return cls(v[0], v[1], v[2], TaskStatus(v[3]), RunStatus(v[4]), _target(v, 5))


# ---- agent messaging (``message_commands``) ----


@dataclass(frozen=True, slots=True)
class MessagesSent(Result):
    """``SendMessages``: per message, its sequence number (a publish: its topic log's) and the
    addresses it was queued for (a publish: every subscriber's)."""

    TAG: ClassVar[str] = "messages_sent"
    seqs: tuple[int, ...]
    targets: tuple[tuple[str, ...], ...]

    def _encode(self) -> list[Any]:
        return [list(self.seqs), [list(t) for t in self.targets]]

    @classmethod
    def _decode(cls, v: list[Any]) -> MessagesSent:
        return cls(tuple(v[0]), tuple(tuple(t) for t in v[1]))


@dataclass(frozen=True, slots=True)
class MessageAcked(Result):
    """``AckMessage``: ``applied`` False means the message had already been acknowledged (or
    expired): nothing of this turn was applied, as is right for a redelivered message."""

    TAG: ClassVar[str] = "message_acked"
    applied: bool
    revision: int

    def _encode(self) -> list[Any]:
        return [self.applied, self.revision]

    @classmethod
    def _decode(cls, v: list[Any]) -> MessageAcked:
        return cls(v[0], v[1])


@dataclass(frozen=True, slots=True)
class ActivationResult(Result):
    """``Activate``: the address's activation (``created`` if this command granted it)."""

    TAG: ClassVar[str] = "activation"
    address: str
    node: str
    epoch: int
    deadline_ms: int
    created: bool

    def _encode(self) -> list[Any]:
        return [self.address, self.node, self.epoch, self.deadline_ms, self.created]

    @classmethod
    def _decode(cls, v: list[Any]) -> ActivationResult:
        return cls(v[0], v[1], v[2], v[3], v[4])


@dataclass(frozen=True, slots=True)
class RenewResult(Result):
    """``RenewActivations`` and ``Deactivate``: the addresses whose activation this node no
    longer holds (expired and moved, or given up): it must stop handling them."""

    TAG: ClassVar[str] = "renew"
    renewed: int
    lost: tuple[str, ...]

    def _encode(self) -> list[Any]:
        return [self.renewed, list(self.lost)]

    @classmethod
    def _decode(cls, v: list[Any]) -> RenewResult:
        return cls(v[0], tuple(v[1]))


@dataclass(frozen=True, slots=True)
class ChangedResult(Result):
    """``SubscribeTopic`` and ``RecordDeadLetters``: whether anything changed / how many recorded."""

    TAG: ClassVar[str] = "changed"
    count: int

    def _encode(self) -> list[Any]:
        return [self.count]

    @classmethod
    def _decode(cls, v: list[Any]) -> ChangedResult:
        return cls(v[0])


def _target(v: list[Any], i: int) -> tuple[str, ...]:
    """A result's ``target`` at ``v[i]``; () in an encoding from before targets were kept."""
    return tuple(str(x) for x in v[i]) if len(v) > i else ()


RESULT_TYPES: tuple[type[Result], ...] = (
    Rejected,
    MemberResult,
    SubmitRunResult,
    CancelRunResult,
    AssignResult,
    ReportResult,
    TickResult,
    BarrierResult,
    LockAcquireResult,
    LockReleaseResult,
    LockKeepAliveResult,
    LockCancelResult,
    KvTxnResult,
    KvLeaseResult,
    KvLeaseRevoked,
    RetryTaskResult,
    PreemptResult,
    ApproveTaskResult,
    RunControlResult,
    RerunTaskResult,
    MessagesSent,
    MessageAcked,
    ActivationResult,
    RenewResult,
    ChangedResult,
)
_BY_TAG: dict[str, Any] = {cls.TAG: cls for cls in RESULT_TYPES}


def encode_result(res: Result) -> list[Any]:
    """``[tag, *fields]``: msgpack-ready and canonical (what the dedup table stores)."""
    return [res.TAG, *res._encode()]


def decode_result(v: list[Any]) -> Result:
    decoded: Result = _BY_TAG[v[0]]._decode(v[1:])
    return decoded


R = TypeVar("R", bound=Result)


def expect(res: Result, kind: type[R]) -> R:
    """``res`` as ``kind``; a rejection raises its error (``Rejected.error``)."""
    if isinstance(res, kind):
        return res
    if isinstance(res, Rejected):
        raise res.error()
    raise TypeError(f"expected a {kind.__name__}, got {res!r}")


# ---- events ------------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class TaskChanged:
    revision: int
    run_id: str
    task_id: str
    status: TaskStatus
    attempt: int
    node: str


@fast_init
@dataclass(frozen=True, slots=True)
class RunChanged:
    revision: int
    run_id: str
    status: RunStatus


@dataclass(frozen=True, slots=True)
class MemberChanged:
    revision: int
    node_id: str
    up: bool


@dataclass(frozen=True, slots=True)
class LockChanged:
    """A waiting request was granted or ended (the node serving that waiter wakes up)."""

    revision: int
    request_id: str
    owner: str
    granted: bool
    token: int
    code: Code = Code.OK
    """Why a request ended without a grant: ABORTED, DEADLINE_EXCEEDED or CANCELLED."""
    message: str = ""


@dataclass(frozen=True, slots=True)
class KvChanged:
    revision: int
    event: KvEvent


@dataclass(frozen=True, slots=True)
class MessageQueued:
    """Durable messages were queued for ``address`` (hosted by ``node``, "" if unplaced)."""

    revision: int
    address: str
    node: str


@dataclass(frozen=True, slots=True)
class ActivationChanged:
    """``address`` was activated on ``node`` with ``epoch``, or (``active`` False) lost it."""

    revision: int
    address: str
    node: str
    epoch: int
    active: bool


@dataclass(frozen=True, slots=True)
class TopicPublished:
    """A durable publish was committed to ``topic`` (client subscribers stream it)."""

    revision: int
    topic: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReplyCommitted:
    """A durable request's reply was committed (the requester on ``reply_to`` wakes up)."""

    revision: int
    correlation_id: str
    reply_to: str


MessageEvent = MessageQueued | ActivationChanged | TopicPublished | ReplyCommitted

Event = TaskChanged | RunChanged | MemberChanged | LockChanged | KvChanged | MessageEvent
