"""The replicated cluster state: data, canonical encoding, digest, derived indexes.

Everything that is replicated lives in ``ClusterState``. Derived indexes (READY
queue, tasks running per node, timeout heap) are rebuilt from the data on restore
and are not part of the canonical encoding, so a restored replica has the same
digest as one that applied the whole log.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from collections import OrderedDict
from collections.abc import ItemsView, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from .commands import NO_USAGE, ActorOffer, AgentOffer, Budget, JsonValue, TaskSpec, Usage
from .kv import KvStore
from .locks import LockTable
from .messages import MessageStore

SNAPSHOT_FORMAT = 5
"""2: results in the dedup table are typed (``results.encode_result``) and name the command kind.
3: tasks and runs end with their usage sums; tasks with ``preempted_by`` and ``requeued_attempt``;
a member carries its agent offers and its breakers (``Member.offers``, ``Member.breakers``).
A format-2 snapshot still loads (the new fields start empty; members offer their agents with
default policy).
4: tasks end with the workflow fields (``deps_skipped`` ... ``depth``), runs with ``budget`` and
``reason``. Format 2 and 3 snapshots still load (the new fields start empty)."""
READABLE_FORMATS = frozenset({2, 3, 4, SNAPSHOT_FORMAT})


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    """Waiting for dependencies."""
    READY = "READY"
    """Dependencies succeeded; waiting for a slot (or for its retry backoff, see ``not_before_ms``)."""
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"
    """Its ``when`` was false, or its dependencies were skipped and its trigger needs them."""
    WAITING_APPROVAL = "WAITING_APPROVAL"
    """Its approval gate is open (``TaskState.gate``): it runs once approved."""
    WAITING_CHILDREN = "WAITING_CHILDREN"
    """A map, a replicated task, or a spawner with ``wait``: done once its children are."""


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"
    """Nothing new starts; running attempts finish."""
    COMPENSATING = "COMPENSATING"
    """It failed or was cancelled, and the compensations of its succeeded tasks are running."""
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


TERMINAL_TASK = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED})
TERMINAL_RUN = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.COMPENSATED,
        RunStatus.COMPENSATION_FAILED,
    }
)
BUDGET_BOUND = frozenset({RunStatus.RUNNING, RunStatus.PAUSED})
"""Runs whose budget binds (``budgets.BOUND``; a saga's compensations are not stopped)."""
SCHEDULABLE_RUN = frozenset({RunStatus.RUNNING, RunStatus.COMPENSATING})
"""Runs whose READY tasks may be assigned (a PAUSED run starts nothing)."""

TaskKey = tuple[str, str]
"""(run_id, task_id)"""


@dataclass(slots=True)
class Breaker:
    """The circuit breaker of one agent type on one node (``breakers.py`` owns the rules).

    Closed while ``open_until_ms`` is 0; open until then; half-open (one probe) after it.
    A member keeps only breakers that are not closed-and-clean, so the encoding stays small.
    """

    failures: int = 0
    """Consecutive failed attempts (reset by a success)."""
    open_until_ms: int = 0

    def encode(self) -> list[Any]:
        return [self.failures, self.open_until_ms]


@dataclass(slots=True)
class Member:
    node_id: str
    grpc: str
    raft: str
    agents: tuple[str, ...]
    """The offered type names, sorted (kept for readers that predate ``offers``)."""
    slots: int
    incarnation: str
    up: bool
    registered_ms: int
    offers: dict[str, AgentOffer] = field(default_factory=dict)
    """agent type -> its offer; the same names as ``agents``."""
    breakers: dict[str, Breaker] = field(default_factory=dict)
    """agent type -> breaker, only for types with failures or an open breaker."""
    actors: dict[str, ActorOffer] = field(default_factory=dict)
    """actor type -> its offer (``@raftmesh.actor`` types this node can activate)."""
    places: bool = False
    """It runs attempts that apply places on it (``tasks.place_queued``), learning of them from
    the applied state as of an ``Assign``'s. False (a registration that
    did not say so): only the leader's ``Assign`` places work there."""
    suspect: bool = False
    """The leader has not heard its heartbeats lately (``SuspectNode``): no new work goes there,
    from apply or from the leader's plan, until the leader hears it again or marks it down."""

    def encode(self) -> list[Any]:
        # ``places`` and ``suspect`` only when set: such a member encodes as before.
        return [
            self.node_id,
            self.grpc,
            self.raft,
            list(self.agents),
            self.slots,
            self.incarnation,
            self.up,
            self.registered_ms,
            [self.offers[k].encode() for k in sorted(self.offers)],
            [[k, *self.breakers[k].encode()] for k in sorted(self.breakers)],
            [self.actors[k].encode() for k in sorted(self.actors)],
        ] + ([self.places, True] if self.suspect else [True] if self.places else [])

    @classmethod
    def decode(cls, v: list[Any]) -> Member:
        # A format-2 member has no offers: its agents are offered with the default policy.
        offers = [AgentOffer.decode(o) for o in v[8]] if len(v) > 8 else [AgentOffer(a) for a in v[3]]
        return cls(
            v[0],
            v[1],
            v[2],
            tuple(v[3]),
            v[4],
            v[5],
            v[6],
            v[7],
            {o.name: o for o in offers},
            {b[0]: Breaker(b[1], b[2]) for b in (v[9] if len(v) > 9 else ())},
            {a[0]: ActorOffer.decode(a) for a in (v[10] if len(v) > 10 else ())},
            len(v) > 11 and bool(v[11]),
            len(v) > 12 and bool(v[12]),
        )


@dataclass(slots=True)
class Gate:
    """An approval gate: opened when the task could start, decided once."""

    id: int
    """Unique and increasing, drawn from ``ClusterState.seq`` when it opens (a rerun opens a new
    gate with a new id; gates opened by one command still differ)."""
    opened_ms: int
    deadline_ms: int = 0
    """When ``on_timeout`` decides it (0: never)."""
    decision: str = ""
    """"" while open, then "approved" or "rejected" (a timeout decides as ``on_timeout`` says,
    with ``by`` "timeout")."""
    by: str = ""
    comment: str = ""
    decided_ms: int = 0

    def encode(self) -> list[Any]:
        return [
            self.id,
            self.opened_ms,
            self.deadline_ms,
            self.decision,
            self.by,
            self.comment,
            self.decided_ms,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> Gate:
        return cls(*v)


@dataclass(slots=True)
class Attempt:
    """An ended attempt of a task, kept so that reruns and retries leave a readable history."""

    attempt: int
    node: str
    started_ms: int
    finished_ms: int
    outcome: str
    """SUCCEEDED, FAILED, CANCELLED, or why it ended early (lost, preempted, paused, rerun)."""
    error: str = ""
    output: JsonValue = None
    """Kept only for an output a rerun replaced."""

    def encode(self) -> list[Any]:
        return [
            self.attempt,
            self.node,
            self.started_ms,
            self.finished_ms,
            self.outcome,
            self.error,
            self.output,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> Attempt:
        return cls(*v)


def _task_flow(v: list[Any]) -> tuple[Any, ...]:
    """The workflow fields of an encoded task (defaults for a format-2/3 task)."""
    if len(v) <= 18:
        return ()
    return (
        v[18],
        v[19],
        v[20],
        list(v[21]),
        v[22],
        v[23],
        v[24],
        Gate.decode(v[25]) if v[25] is not None else None,
        [Attempt.decode(a) for a in v[26]],
        v[27],
    )


@dataclass(slots=True)
class TaskState:
    spec: TaskSpec
    status: TaskStatus
    deps_waiting: int
    """Dependencies not yet SUCCEEDED."""
    dependents: list[str]
    retries_left: int
    attempt: int = 0
    node: str = ""
    token: int = 0
    """Fencing token of the current attempt (the revision that granted it)."""
    output: JsonValue = None
    error: str = ""
    not_before_ms: int = 0
    ready_seq: int = 0
    """Position in the FIFO of READY tasks (global, from ``ClusterState.seq``)."""
    started_ms: int = 0
    finished_ms: int = 0
    deadline_ms: int = 0
    """Timeout of the running attempt (0: none)."""
    usage: Usage = NO_USAGE
    """Summed over the attempts whose completion or failure was accepted (fenced reports add nothing)."""
    preempted_by: tuple[tuple[str, str, int, int], ...] = ()
    """(run id, task id, preempted attempt, time_ms) of the newest preemptions, oldest first (bounded)."""
    requeued_attempt: int = 0
    """The last attempt at which this task was requeued from the dead letters (``RetryTask``)."""
    # ---- workflow fields (issue 9) ----
    deps_skipped: int = 0
    """Dependencies that ended SKIPPED (the trigger rule reads it)."""
    parent: str = ""
    """The task this one is a child of: its map, replicated task, spawner or compensated task."""
    origin: str = ""
    """How it came to be: "" (submitted), "map", "replica", "judge", "spawn", "compensation"."""
    children: list[str] = field(default_factory=list)
    """Its children's ids, in creation order."""
    children_waiting: int = 0
    """Children not yet ended that this task waits for (WAITING_CHILDREN while > 0)."""
    item: JsonValue = None
    """A map instance's item (``ctx.item``)."""
    index: int = 0
    """A map instance's or replica's position among its siblings."""
    gate: Gate | None = None
    """Its approval gate, once opened."""
    history: list[Attempt] = field(default_factory=list)
    """Its ended attempts, oldest first (bounded by ``limits.MAX_ATTEMPT_HISTORY``)."""
    depth: int = 0
    """Spawn depth: 0 for submitted tasks, the spawner's depth + 1 for spawned ones."""
    suspect_moves: int = 0
    """Attempts of this task moved off a member the leader suspected (``SuspectNode.requeue``),
    bounded by ``limits.MAX_SUSPECT_MOVES``; encoded only once non-zero."""

    def encode(self) -> list[Any]:
        out = [
            self.spec.to_map(),
            self.status.value,
            self.deps_waiting,
            self.dependents,
            self.retries_left,
            self.attempt,
            self.node,
            self.token,
            self.output,
            self.error,
            self.not_before_ms,
            self.ready_seq,
            self.started_ms,
            self.finished_ms,
            self.deadline_ms,
            self.usage.encode(),
            [list(p) for p in self.preempted_by],
            self.requeued_attempt,
            self.deps_skipped,
            self.parent,
            self.origin,
            self.children,
            self.children_waiting,
            self.item,
            self.index,
            self.gate.encode() if self.gate else None,
            [a.encode() for a in self.history],
            self.depth,
        ]
        if self.suspect_moves:
            out.append(self.suspect_moves)
        return out

    @classmethod
    def decode(cls, v: list[Any]) -> TaskState:
        t = cls(
            TaskSpec.from_map(v[0]),
            TaskStatus(v[1]),
            v[2],
            list(v[3]),
            v[4],
            v[5],
            v[6],
            v[7],
            v[8],
            v[9],
            v[10],
            v[11],
            v[12],
            v[13],
            v[14],
            Usage.decode(v[15]) if len(v) > 15 else NO_USAGE,
            tuple((p[0], p[1], p[2], p[3]) for p in v[16]) if len(v) > 16 else (),
            v[17] if len(v) > 17 else 0,
            *_task_flow(v),
        )
        if len(v) > 28:
            t.suspect_moves = v[28]
        return t


@dataclass(slots=True)
class RunState:
    run_id: str
    status: RunStatus
    tasks: dict[str, TaskState]
    """In spec order."""
    unfinished: int
    """Tasks not in a terminal state."""
    priority: int
    idempotency_key: str
    name: str
    submitter: str
    created_ms: int
    finished_ms: int = 0
    error: str = ""
    revision: int = 0
    """Revision of the last change to this run or any of its tasks."""
    usage: Usage = NO_USAGE
    """Sum of its tasks' usage, kept as a running sum (O(1) per report)."""
    budget: Budget | None = None
    reason: str = ""
    """Why it ended as it did, as a code: "" (succeeded), TASK_FAILED, CANCELLED, BUDGET_EXCEEDED, ..."""
    spawned_bytes: int = 0
    """Encoded size of the task specs its attempts spawned (bounded by ``MAX_SPAWNED_BYTES_PER_RUN``)."""
    trace_id: str = ""
    """The W3C trace id the run was submitted under (32 hex digits; "" none): its attempts carry it."""
    namespace: str = ""
    """The namespace it was submitted into ("" the default one)."""

    def budget_deadline_ms(self) -> int:
        """When its ``max_seconds`` runs out, in state time (0: no such limit)."""
        b = self.budget
        return self.created_ms + math.ceil(b.max_seconds * 1000) if b is not None and b.max_seconds else 0

    def encode(self) -> list[Any]:
        return [
            self.run_id,
            self.status.value,
            [t.encode() for t in self.tasks.values()],
            self.unfinished,
            self.priority,
            self.idempotency_key,
            self.name,
            self.submitter,
            self.created_ms,
            self.finished_ms,
            self.error,
            self.revision,
            self.usage.encode(),
            self.budget.encode() if self.budget else None,
            self.reason,
            self.spawned_bytes,
            self.trace_id,
            self.namespace,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> RunState:
        tasks = [TaskState.decode(t) for t in v[2]]
        return cls(
            v[0],
            RunStatus(v[1]),
            {t.spec.id: t for t in tasks},
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            v[8],
            v[9],
            v[10],
            v[11],
            Usage.decode(v[12]) if len(v) > 12 else NO_USAGE,
            Budget.decode(v[13]) if len(v) > 13 and v[13] is not None else None,
            v[14] if len(v) > 14 else "",
            v[15] if len(v) > 15 else 0,
            v[16] if len(v) > 16 else "",
            v[17] if len(v) > 17 else "",
        )


class FinishedRuns(MutableMapping[str, int]):
    """Finished run id -> its task count, oldest finished first, and ``tasks``, their sum, kept
    by every insertion and removal so that retention by size costs O(1) per finished run.

    Only the ids are encoded (the counts are ``len(run.tasks)``, rebuilt on decode): while a
    run is finished its tasks do not change, and a command that makes it live again pops it.

    It wraps an ``OrderedDict`` rather than subclassing one: a subclass inherits C methods that
    change the entries without ``__setitem__``/``__delitem__`` (``clear``), and ``copy.deepcopy``
    or pickling restored ``tasks`` and then re-added every entry, doubling it. Here every change
    goes through the methods below, and copies copy both.
    """

    __slots__ = ("_runs", "tasks")

    def __init__(self, items: Iterable[tuple[str, int]] = ()) -> None:
        self._runs: OrderedDict[str, int] = OrderedDict()
        self.tasks = 0
        for k, v in items:
            self[k] = v

    def __getitem__(self, key: str) -> int:
        return self._runs[key]

    def __setitem__(self, key: str, tasks: int) -> None:
        self.tasks += tasks - self._runs.get(key, 0)
        self._runs[key] = tasks

    def __delitem__(self, key: str) -> None:
        self.tasks -= self._runs.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._runs

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def __eq__(self, other: object) -> bool:
        # Order matters: it is the retention order, and part of the encoded state.
        return isinstance(other, FinishedRuns) and self._runs == other._runs

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"FinishedRuns({list(self._runs.items())!r})"

    def get(self, key: str, default: Any = None) -> Any:
        return self._runs.get(key, default)

    def items(self) -> ItemsView[str, int]:
        return self._runs.items()

    def pop(self, key: str, *default: Any) -> Any:
        if key in self._runs:
            self.tasks -= self._runs[key]
        return self._runs.pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[str, int]:
        """The newest entry (``last``), else the oldest."""
        key, tasks = self._runs.popitem(last)
        self.tasks -= tasks
        return key, tasks

    def clear(self) -> None:
        self._runs.clear()
        self.tasks = 0

    def copy(self) -> FinishedRuns:
        return FinishedRuns(self._runs.items())

    __copy__ = copy


@dataclass(slots=True)
class Stage:
    """A large run's tasks staged by ``StageRun`` parts, not yet a run (``runs.stage``): no
    reader, scheduler or watch sees them until the run's ``SubmitRun`` adopts them."""

    run_id: str
    node_id: str
    """The node staging it (``limits.MAX_STAGES_PER_NODE``)."""
    idempotency_key: str
    next_seq: int
    """The ``seq`` of the part expected next."""
    expires_ms: int
    """State time after which a tick drops it (renewed by every part)."""
    tasks: dict[str, TaskState]
    """Built as a submit builds them (PENDING, ``dependents`` filled), in part order."""
    roots: list[str]
    """Its tasks with no dependencies, in order: what the ``SubmitRun`` activates."""
    fixed: int
    """``budgets.fixed_tasks`` of its tasks (replicas and judges counted)."""
    spec_bytes: int
    """Encoded size of its task specs (``limits.MAX_RUN_SPEC_BYTES``, ``MAX_STAGED_BYTES``)."""

    def encode(self) -> list[Any]:
        return [
            self.run_id,
            self.node_id,
            self.idempotency_key,
            self.next_seq,
            self.expires_ms,
            [t.encode() for t in self.tasks.values()],
            self.fixed,
            self.spec_bytes,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> Stage:
        tasks = [TaskState.decode(t) for t in v[5]]
        roots = [t.spec.id for t in tasks if not t.spec.deps]
        return cls(v[0], v[1], v[2], v[3], v[4], {t.spec.id: t for t in tasks}, roots, v[6], v[7])


DeadLetter = tuple[int, str, str]
"""(finished_ms, run_id, task_id) of a FAILED task: the dead-letter index's sort key."""


@dataclass(slots=True)
class ClusterState:
    revision: int = 0
    """Raised by every applied command that changes something; the fencing-token space."""
    time_ms: int = 0
    """max(ts_ms) of applied commands: the only clock the state machine knows."""
    seq: int = 0
    """Source of ``ready_seq`` (FIFO order of READY tasks)."""
    members: dict[str, Member] = field(default_factory=dict)
    runs: dict[str, RunState] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    """Idempotency key -> run id."""
    dedup: OrderedDict[str, tuple[int, str, list[Any]]] = field(default_factory=OrderedDict)
    """request id -> (ts_ms, command tag, encoded result), oldest first."""
    """Request id -> (ts_ms, encoded result), oldest first."""
    finished: FinishedRuns = field(default_factory=FinishedRuns)
    """Finished run ids (-> task counts), oldest finished first (for retention)."""
    locks: LockTable = field(default_factory=LockTable)
    kv: KvStore = field(default_factory=KvStore)
    messages: MessageStore = field(default_factory=MessageStore)
    """Actor activations, durable mailboxes, topics, message dead letters (``messages``)."""
    stages: dict[str, Stage] = field(default_factory=dict)
    """Run id -> the run's staged parts (``StageRun``), oldest stage first. Encoded only when
    not empty, so a state with no stage encodes (and digests) as before staging existed."""

    # Derived indexes: not encoded, rebuilt by ``rebuild_indexes``.
    ready: dict[int, dict[TaskKey, None]] = field(default_factory=dict)
    """priority -> READY tasks in FIFO order."""
    running: dict[str, dict[TaskKey, None]] = field(default_factory=dict)
    """node id -> tasks RUNNING there."""
    running_agent: dict[tuple[str, str], int] = field(default_factory=dict)
    """(node id, agent type) -> attempts of that type RUNNING there (per-agent concurrency)."""
    timeouts: list[tuple[int, str, str, int]] = field(default_factory=list)
    """Heap of (deadline_ms, run_id, task_id, attempt); entries go stale lazily."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    """FAILED tasks of retained runs, sorted (oldest first): read newest first in O(limit)."""
    budget_deadlines: list[tuple[int, str]] = field(default_factory=list)
    """Heap of (max_seconds deadline, run_id) of RUNNING/PAUSED runs; entries go stale lazily."""
    open_gates: list[tuple[int, str, str]] = field(default_factory=list)
    """(gate id, run_id, task_id) of every task WAITING_APPROVAL, sorted: oldest gate first."""
    gate_deadlines: list[tuple[int, str, str, int]] = field(default_factory=list)
    """Heap of (deadline_ms, run_id, task_id, gate id) of open gates with a timeout; stale lazily."""
    actor_offers: dict[str, int] = field(default_factory=dict)
    """Actor type -> how many members (up or down) offer it: a send checks its target type in
    O(1) instead of scanning every member's offers. Kept by ``set_member``."""

    # ---- canonical encoding -------------------------------------------------

    def encode(self) -> bytes:
        """Canonical bytes: equal states encode equally (the snapshot and digest format)."""
        body = [
            SNAPSHOT_FORMAT,
            self.revision,
            self.time_ms,
            self.seq,
            [self.members[k].encode() for k in sorted(self.members)],
            [self.runs[k].encode() for k in sorted(self.runs)],
            sorted(self.idempotency.items()),
            [[rid, ts, tag, res] for rid, (ts, tag, res) in self.dedup.items()],
            list(self.finished),
            self.locks.encode(),
            self.kv.encode(),
            self.messages.encode(),
        ]
        if self.stages:
            body.append(self.encode_stages())
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    @classmethod
    def decode(cls, data: bytes) -> ClusterState:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if body[0] not in READABLE_FORMATS:
            raise ValueError(
                f"snapshot format {body[0]} is not supported (this node reads {SNAPSHOT_FORMAT})"
            )
        runs = {r[0]: RunState.decode(r) for r in body[5]}
        state = cls(
            revision=body[1],
            time_ms=body[2],
            seq=body[3],
            members={m[0]: Member.decode(m) for m in body[4]},
            runs=runs,
            idempotency={k: v for k, v in body[6]},
            dedup=OrderedDict((rid, (ts, tag, res)) for rid, ts, tag, res in body[7]),
            finished=FinishedRuns((r, len(runs[r].tasks) if r in runs else 0) for r in body[8]),
            locks=LockTable.decode(body[9]),
            kv=KvStore.decode(body[10]),
            messages=MessageStore.decode(body[11]) if len(body) > 11 else MessageStore(),
            stages={v[0]: Stage.decode(v) for v in body[12]} if len(body) > 12 else {},
        )
        state.rebuild_indexes()
        return state

    def encode_stages(self) -> list[Any]:
        return [self.stages[k].encode() for k in sorted(self.stages)]

    def digest(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()

    # ---- derived indexes ----------------------------------------------------

    def rebuild_indexes(self) -> None:
        ready: list[tuple[int, int, TaskKey]] = []
        self.running = {}
        self.running_agent = {}
        self.timeouts = []
        self.dead_letters = []
        self.budget_deadlines = []
        self.open_gates = []
        self.gate_deadlines = []
        for run in self.runs.values():
            if run.status in BUDGET_BOUND and run.budget_deadline_ms():
                self.budget_deadlines.append((run.budget_deadline_ms(), run.run_id))
            for t in run.tasks.values():
                key = (run.run_id, t.spec.id)
                if t.status is TaskStatus.FAILED and t.origin != "replica":  # see fusion.replica_failed
                    self.dead_letters.append((t.finished_ms, run.run_id, t.spec.id))
                elif t.status is TaskStatus.READY:
                    if run.status is not RunStatus.PAUSED:  # a paused run's tasks wait outside the queue
                        ready.append((t.spec.priority, t.ready_seq, key))
                elif t.status is TaskStatus.WAITING_APPROVAL and t.gate is not None:
                    self.open_gates.append((t.gate.id, run.run_id, t.spec.id))
                    if t.gate.deadline_ms:
                        self.gate_deadlines.append((t.gate.deadline_ms, run.run_id, t.spec.id, t.gate.id))
                elif t.status is TaskStatus.RUNNING:
                    self.running.setdefault(t.node, {})[key] = None
                    na = (t.node, t.spec.agent)
                    self.running_agent[na] = self.running_agent.get(na, 0) + 1
                    if t.deadline_ms:
                        self.timeouts.append((t.deadline_ms, run.run_id, t.spec.id, t.attempt))
        ready.sort(key=lambda e: e[1])
        self.ready = {}
        for prio, _, key in ready:
            self.ready.setdefault(prio, {})[key] = None
        heapq.heapify(self.timeouts)
        heapq.heapify(self.budget_deadlines)
        self.dead_letters.sort()
        self.open_gates.sort()
        heapq.heapify(self.gate_deadlines)
        self.actor_offers = {}
        for m in self.members.values():
            for kind in m.actors:
                self.actor_offers[kind] = self.actor_offers.get(kind, 0) + 1
        self.messages.rebuild_indexes()

    def set_member(self, m: Member) -> None:
        """Add or replace member ``m`` (keeps ``actor_offers``)."""
        old = self.members.get(m.node_id)
        for kind in old.actors if old is not None else ():
            n = self.actor_offers[kind] - 1
            if n:
                self.actor_offers[kind] = n
            else:
                del self.actor_offers[kind]
        for kind in m.actors:
            self.actor_offers[kind] = self.actor_offers.get(kind, 0) + 1
        self.members[m.node_id] = m

    def index_snapshot(self) -> tuple[Any, ...]:
        """The derived indexes in a comparable form (tests check maintained == rebuilt)."""
        return (
            {p: list(q) for p, q in self.ready.items() if q},
            {n: sorted(q) for n, q in self.running.items() if q},
            # A set: a child re-created by a rerun may start attempt 1 again at the same time.
            sorted({e for e in self.timeouts if self._timeout_live(e)}),
            # A set: a renewal or re-grant to the same deadline may push a duplicate heap entry.
            sorted({e for e in self.locks.deadlines if self.locks._live(e)}),
            (list(self.kv.keys), self.kv.history_bytes, self.kv.next_deadline_ms()),
            list(self.dead_letters),
            dict(sorted(self.running_agent.items())),
            # A set: a run made RUNNING again (a requeued dead letter) pushes its deadline again.
            sorted({e for e in self.budget_deadlines if self.budget_live(e)}),
            list(self.open_gates),
            sorted(e for e in self.gate_deadlines if self.gate_live(e)),
            self.messages.index_snapshot(),
            dict(sorted(self.actor_offers.items())),
            (list(self.finished.items()), self.finished.tasks),
        )

    def add_dead_letter(self, entry: DeadLetter) -> None:
        # finished_ms is state time, which never decreases: the insert is at (or near) the end.
        bisect.insort(self.dead_letters, entry)

    def drop_dead_letters(self, finished_ms: int, run_id: str) -> None:
        """Forget the run's dead letters that finished at ``finished_ms`` (contiguous in the index)."""
        i = bisect.bisect_left(self.dead_letters, (finished_ms, run_id, ""))
        j = i
        while j < len(self.dead_letters) and self.dead_letters[j][:2] == (finished_ms, run_id):
            j += 1
        del self.dead_letters[i:j]

    def drop_dead_letter(self, entry: DeadLetter) -> None:
        """Forget one dead letter (a task that is run again)."""
        i = bisect.bisect_left(self.dead_letters, entry)
        if i < len(self.dead_letters) and self.dead_letters[i] == entry:
            del self.dead_letters[i]

    def gate_live(self, entry: tuple[int, str, str, int]) -> bool:
        """Whether a ``gate_deadlines`` entry is still the deadline of an open gate."""
        deadline, run_id, task_id, gate_id = entry
        t = self.task(run_id, task_id)
        return (
            t is not None
            and t.status is TaskStatus.WAITING_APPROVAL
            and t.gate is not None
            and t.gate.id == gate_id
            and t.gate.deadline_ms == deadline
        )

    def next_gate_deadline_ms(self) -> int | None:
        while self.gate_deadlines and not self.gate_live(self.gate_deadlines[0]):
            heapq.heappop(self.gate_deadlines)
        return self.gate_deadlines[0][0] if self.gate_deadlines else None

    def _timeout_live(self, entry: tuple[int, str, str, int]) -> bool:
        deadline, run_id, task_id, attempt = entry
        run = self.runs.get(run_id)
        t = run.tasks.get(task_id) if run else None
        return (
            t is not None
            and t.status is TaskStatus.RUNNING
            and t.attempt == attempt
            and t.deadline_ms == deadline
        )

    def budget_live(self, entry: tuple[int, str]) -> bool:
        """Whether a ``budget_deadlines`` entry is the deadline of a bound run."""
        run = self.runs.get(entry[1])
        return run is not None and run.status in BUDGET_BOUND and run.budget_deadline_ms() == entry[0]

    def next_budget_deadline_ms(self) -> int | None:
        while self.budget_deadlines and not self.budget_live(self.budget_deadlines[0]):
            heapq.heappop(self.budget_deadlines)
        return self.budget_deadlines[0][0] if self.budget_deadlines else None

    def next_task_deadline_ms(self) -> int | None:
        while self.timeouts and not self._timeout_live(self.timeouts[0]):
            heapq.heappop(self.timeouts)
        return self.timeouts[0][0] if self.timeouts else None

    def next_deadline_ms(self) -> int | None:
        """The earliest task timeout, lock lease or wait, KV lease, run budget, approval timeout or
        stage expiry: when a tick is due."""
        ds = [
            d
            for d in (
                self.next_task_deadline_ms(),
                self.locks.next_deadline_ms(),
                self.kv.next_deadline_ms(),
                self.next_budget_deadline_ms(),
                self.next_gate_deadline_ms(),
                self.messages.next_deadline_ms(),
                # At most MAX_STAGES: scanned, not kept in a heap.
                min((s.expires_ms for s in self.stages.values()), default=None),
            )
            if d
        ]
        return min(ds) if ds else None

    def task(self, run_id: str, task_id: str) -> TaskState | None:
        run = self.runs.get(run_id)
        return run.tasks.get(task_id) if run else None

    def up_member(self, node_id: str, incarnation: str) -> bool:
        """Whether ``node_id`` is an up member in exactly this incarnation (the node's own process)."""
        m = self.members.get(node_id)
        return m is not None and m.up and m.incarnation == incarnation

    def known_agents(self) -> set[str]:
        agents: set[str] = set()
        for m in self.members.values():
            agents.update(m.agents)
        return agents

    def offered_capabilities(self) -> dict[str, set[tuple[str, ...]]]:
        """agent type -> the capability sets its members (up or down) offer it with."""
        out: dict[str, set[tuple[str, ...]]] = {}
        for m in self.members.values():
            for name in m.agents:
                o = m.offers.get(name)
                out.setdefault(name, set()).add(o.capabilities if o else ())
        return out
