"""Typed commands of the replicated state machine and their wire form.

A command is a frozen dataclass with a ``TAG``; on the wire it is a msgpack map
``{"t": tag, "v": version, ...fields}``. One Raft log entry carries a *batch*: a
msgpack array of command maps, applied in order. Decoding validates every field,
so the state machine only ever sees well-typed commands; a map that does not
decode becomes a rejected result, never an exception in ``apply``.

Time enters only here: ``ts_ms`` is stamped by the proposer (the node that
creates the command), never read from a clock during ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from .fast import fast_init

VERSION = 1

JsonValue = Any
"""A JSON-like value: None, bool, int, float, str, list or str-keyed dict."""


class CommandDecodeError(ValueError):
    """A command map is malformed (wrong tag, version, field or type)."""


def _get(m: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in m:
        raise CommandDecodeError(f"missing field {key!r}")
    value = m[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise CommandDecodeError(f"field {key!r} has type {type(value).__name__}")
    return value


def _str_tuple(m: dict[str, Any], key: str) -> tuple[str, ...]:
    values = _get(m, key, (list, tuple))
    # ``map(type, ...)`` runs in C: a fan-in's 10,000 deps are checked in ~0.1 ms, not ~1 ms.
    if not _STR_ONLY.issuperset(map(type, values)) and not all(isinstance(v, str) for v in values):
        raise CommandDecodeError(f"field {key!r} must be a list of strings")
    return tuple(values)


_STR_ONLY = frozenset((str,))


def _lock_items(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, (list, tuple)):
        raise CommandDecodeError("locks must be a list of [name, mode]")
    out = []
    for it in v:
        if not (isinstance(it, (list, tuple)) and len(it) == 2 and all(isinstance(x, str) for x in it)):
            raise CommandDecodeError("each lock must be [name, mode]")
        out.append((it[0], it[1]))
    return tuple(out)


@fast_init
@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a submitted DAG."""

    id: str
    agent: str
    input: JsonValue = None
    deps: tuple[str, ...] = ()
    retries: int = 0
    priority: int = 0
    timeout_ms: int = 0
    """0 means no timeout."""
    retry_backoff_ms: int = 0
    """Base of the exponential backoff between retries (0: retry at once)."""
    locks: tuple[tuple[str, str], ...] = ()
    """(lock name, "shared" | "exclusive") held while an attempt runs, acquired all at once."""
    requires: tuple[str, ...] = ()
    """Capabilities the node's offer of ``agent`` must all have (``placement``)."""
    # ---- workflow keys (issue 9); each is optional and validated in ``dag.validate`` ----
    when: JsonValue = None
    """A condition on upstream outputs (``conditions.py``); false: the task is SKIPPED."""
    trigger: str = ""
    """When the dependencies let it start: "" (all succeeded), "any_succeeded" or "all_done"."""
    map: str = ""
    """An upstream task id: one instance ``ID[i]`` per item of its output list (``groups``)."""
    max_parallel: int = 0
    """Map instances running at once (0: unbounded)."""
    replicas: int = 0
    """Run the task this many times in parallel and fuse the answers (0: once, as a plain task)."""
    fusion: str = ""
    """vote | weighted | merge | best | first."""
    quorum: int = 0
    """Successful replicas that decide (0: the fusion's default)."""
    weights: tuple[float, ...] = ()
    agents: tuple[str, ...] = ()
    """Agent types the replicas use in turn (empty: ``agent`` for every replica)."""
    judge: str = ""
    """Agent type that scores the replicas for ``fusion: best``."""
    approval: Approval | None = None
    compensate: Compensation | None = None

    def to_map(self) -> dict[str, Any]:
        # Optional keys are written only when set: specs without them keep their old form.
        base = {
            "id": self.id,
            "agent": self.agent,
            "input": self.input,
            "deps": list(self.deps),
            "retries": self.retries,
            "priority": self.priority,
            "timeout_ms": self.timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
        }
        if not (
            self.locks
            or self.requires
            or self.trigger
            or self.map
            or self.max_parallel
            or self.replicas
            or self.fusion
            or self.quorum
            or self.judge
            or self.when is not None
            or self.weights
            or self.agents
            or self.approval is not None
            or self.compensate is not None
        ):  # a plain task (most of a large run): the base keys alone
            return base
        extra: dict[str, Any] = {"locks": [list(lk) for lk in self.locks]} if self.locks else {}
        if self.requires:
            extra["requires"] = list(self.requires)
        for key in _FLOW_SCALARS:
            v = getattr(self, key)
            if v:
                extra[key] = v
        if self.when is not None:
            extra["when"] = self.when
        if self.weights:
            extra["weights"] = list(self.weights)
        if self.agents:
            extra["agents"] = list(self.agents)
        if self.approval is not None:
            extra["approval"] = self.approval.encode()
        if self.compensate is not None:
            extra["compensate"] = self.compensate.encode()
        return extra | base  # the optional keys first, then the base keys (the bytes snapshots hold)

    @classmethod
    def from_map(cls, m: Any) -> TaskSpec:
        # Fast path: a plain task (the 8 keys ``to_map`` always writes, none of the optional
        # ones) whose fields have exactly the types msgpack decodes them to. It builds the same
        # spec as the checks below would; anything else takes them (and their error messages).
        if type(m) is dict and len(m) == len(_PLAIN_KEYS) and m.keys() == _PLAIN_KEYS:
            tid, agent, deps = m["id"], m["agent"], m["deps"]
            retries, priority, timeout_ms, backoff = (
                m["retries"],
                m["priority"],
                m["timeout_ms"],
                m["retry_backoff_ms"],
            )
            if (
                type(tid) is str
                and type(agent) is str
                and type(deps) is list
                and type(retries) is int
                and type(priority) is int
                and type(timeout_ms) is int
                and type(backoff) is int
                and _STR_ONLY.issuperset(map(type, deps))
            ):
                return cls(tid, agent, m["input"], tuple(deps), retries, priority, timeout_ms, backoff)
        return cls.from_map_checked(m)

    @classmethod
    def from_map_checked(cls, m: Any) -> TaskSpec:
        """``from_map`` field by field, for every form (raises ``CommandDecodeError``)."""
        if not isinstance(m, dict):
            raise CommandDecodeError("a task spec must be a map")
        return cls(
            id=_get(m, "id", str),
            agent=_get(m, "agent", str),
            input=m.get("input"),
            deps=_str_tuple(m, "deps"),
            retries=_get(m, "retries", int),
            priority=_get(m, "priority", int),
            timeout_ms=_get(m, "timeout_ms", int),
            retry_backoff_ms=_get(m, "retry_backoff_ms", int),
            locks=_lock_items(m.get("locks", [])),
            requires=_str_tuple(m, "requires") if "requires" in m else (),
            when=m.get("when"),
            trigger=_opt(m, "trigger", str, ""),
            map=_opt(m, "map", str, ""),
            max_parallel=_opt(m, "max_parallel", int, 0),
            replicas=_opt(m, "replicas", int, 0),
            fusion=_opt(m, "fusion", str, ""),
            quorum=_opt(m, "quorum", int, 0),
            weights=_floats(m, "weights") if "weights" in m else (),
            agents=_str_tuple(m, "agents") if "agents" in m else (),
            judge=_opt(m, "judge", str, ""),
            approval=Approval.decode(m["approval"]) if "approval" in m else None,
            compensate=Compensation.decode(m["compensate"]) if "compensate" in m else None,
        )


_PLAIN_KEYS = frozenset(
    ("id", "agent", "input", "deps", "retries", "priority", "timeout_ms", "retry_backoff_ms")
)
"""The keys of a task spec with no optional field set (``TaskSpec.to_map``)."""

_FLOW_SCALARS = ("trigger", "map", "max_parallel", "replicas", "fusion", "quorum", "judge")
"""TaskSpec keys written to the map only when set (not 0 / "")."""


def _opt(m: dict[str, Any], key: str, typ: type, default: Any) -> Any:
    return _get(m, key, typ) if key in m else default


def _floats(m: dict[str, Any], key: str) -> tuple[float, ...]:
    values = _get(m, key, (list, tuple))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise CommandDecodeError(f"field {key!r} must be a list of numbers")
    return tuple(float(v) for v in values)


@dataclass(frozen=True, slots=True)
class Approval:
    """A gate before the task runs: it waits in WAITING_APPROVAL until approved or rejected."""

    prompt: str = ""
    timeout_ms: int = 0
    """0: wait for ever."""
    on_timeout: str = "reject"
    """"reject" or "approve"."""

    def encode(self) -> list[Any]:
        return [self.prompt, self.timeout_ms, self.on_timeout]

    @classmethod
    def decode(cls, v: Any) -> Approval:
        if not (isinstance(v, (list, tuple)) and len(v) == 3):
            raise CommandDecodeError("approval must be [prompt, timeout_ms, on_timeout]")
        prompt, timeout_ms, on_timeout = v
        if not (isinstance(prompt, str) and _is_int(timeout_ms) and isinstance(on_timeout, str)):
            raise CommandDecodeError("approval prompt and on_timeout must be strings, timeout_ms an int")
        return cls(prompt, timeout_ms, on_timeout)


@dataclass(frozen=True, slots=True)
class Compensation:
    """What undoes a succeeded task when its run fails or is cancelled (a saga step)."""

    agent: str
    input: JsonValue = None

    def encode(self) -> list[Any]:
        return [self.agent, self.input]

    @classmethod
    def decode(cls, v: Any) -> Compensation:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str)):
            raise CommandDecodeError("compensate must be [agent, input]")
        return cls(v[0], v[1])


@dataclass(frozen=True, slots=True)
class Budget:
    """Hard limits on what a run may spend (0: no limit); ``budgets.py`` enforces them."""

    max_tasks: int = 0
    """Tasks the run may have, counting map instances, replicas and spawned tasks."""
    max_seconds: float = 0.0
    """From submission, in state time."""
    max_cost: float = 0.0
    max_tokens: int = 0
    """tokens_in + tokens_out."""

    def encode(self) -> list[Any]:
        return [self.max_tasks, self.max_seconds, self.max_cost, self.max_tokens]

    @classmethod
    def decode(cls, v: Any) -> Budget:
        if not (isinstance(v, (list, tuple)) and len(v) == 4):
            raise CommandDecodeError("budget must be [max_tasks, max_seconds, max_cost, max_tokens]")
        mt, ms, mc, mk = v
        if not (_is_int(mt) and _is_int(mk) and _is_number(ms) and _is_number(mc)):
            raise CommandDecodeError("budget max_tasks and max_tokens must be ints, the others numbers")
        return cls(mt, float(ms), float(mc), mk)

    def __bool__(self) -> bool:
        return bool(self.max_tasks or self.max_seconds or self.max_cost or self.max_tokens)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who caused a command, for the audit timeline and traces (never for a decision in apply).

    Stamped by the proposer from the gRPC call it serves (``raftmesh.calls``): the
    authenticated ``principal`` (``token:SUBJECT``, ``node:ID``, ``anonymous``), the
    API ``request`` id and the W3C ``trace`` id (32 hex digits, "" when none). A command a
    node makes on its own (assign, complete, tick) carries ``node:ID`` and the trace of
    the run or message it serves.
    """

    principal: str = ""
    request: str = ""
    trace: str = ""

    def encode(self) -> list[str]:
        return [self.principal, self.request, self.trace]

    @classmethod
    def decode(cls, v: Any) -> Origin:
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, str) for x in v)):
            raise CommandDecodeError("origin must be [principal, request, trace] strings")
        if any(len(x) > MAX_ORIGIN_FIELD for x in v):
            raise CommandDecodeError(f"an origin field is over {MAX_ORIGIN_FIELD} characters")
        return cls(v[0], v[1], v[2])


MAX_ORIGIN_FIELD = 256
"""Characters in one ``Origin`` field (the proposer clips; a longer one does not decode)."""


@dataclass(frozen=True, slots=True)
class Command:
    """Base of all commands. ``request_id`` makes retries apply once.

    ``origin`` (wire key ``"o"``, absent when None) says who caused it; the proposer
    stamps it (``raftmesh.node.proposer``), so services and agents build commands without it.
    """

    TAG: ClassVar[str] = ""
    request_id: str
    ts_ms: int
    origin: Origin | None = field(default=None, kw_only=True, compare=False)

    def _fields(self) -> dict[str, Any]:
        return {}

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"t": self.TAG, "v": VERSION, "rid": self.request_id, "ts": self.ts_ms}
        if self.origin is not None:
            m["o"] = self.origin.encode()
        m.update(self._fields())
        return m


@dataclass(frozen=True, slots=True)
class AgentOffer:
    """One agent type as a node offers it: what placement matches and the type's policy.

    The policy is the offering node's own (``raftmesh.agents.AgentDef``): its breaker
    threshold and cool-down, and the defaults a task of this type takes when it sets none.
    """

    name: str
    capabilities: tuple[str, ...] = ()
    """Sorted, unique."""
    concurrency: int = 0
    """Attempts of this type running at once on the node (0: bounded by its slots only)."""
    breaker_failures: int = 5
    """Consecutive failed attempts that open the breaker (0: never opens)."""
    breaker_cooldown_ms: int = 30_000
    timeout_ms: int = 0
    retries: int = 0

    def encode(self) -> list[Any]:
        return [
            self.name,
            list(self.capabilities),
            self.concurrency,
            self.breaker_failures,
            self.breaker_cooldown_ms,
            self.timeout_ms,
            self.retries,
        ]

    @classmethod
    def decode(cls, v: Any) -> AgentOffer:
        """Types only; bounds are the processor's (``members.offer_error``)."""
        if not (isinstance(v, (list, tuple)) and len(v) == 7):
            raise CommandDecodeError(
                "an offer must be [name, capabilities, concurrency, breaker_failures, "
                "breaker_cooldown_ms, timeout_ms, retries]"
            )
        name, caps, *numbers = v
        if not isinstance(name, str):
            raise CommandDecodeError("an offer's name must be a string")
        if not (isinstance(caps, (list, tuple)) and all(isinstance(c, str) for c in caps)):
            raise CommandDecodeError(f"offer {name[:40]!r}: capabilities must be a list of strings")
        if not all(_is_int(n) for n in numbers):
            raise CommandDecodeError(f"offer {name[:40]!r}: numbers must be ints")
        return cls(name, tuple(caps), *numbers)


@dataclass(frozen=True, slots=True)
class RegisterNode(Command):
    """A node announces itself (at start and after a restart: a new incarnation)."""

    TAG: ClassVar[str] = "register_node"
    node_id: str = ""
    grpc: str = ""
    raft: str = ""
    agents: tuple[str, ...] = ()
    slots: int = 0
    incarnation: str = ""
    offers: tuple[AgentOffer, ...] = ()
    """One per name in ``agents`` (none: every type is offered with no capabilities and the
    default policy, as registrations from before offers existed)."""
    actors: tuple[ActorOffer, ...] = ()
    """Actor types (``@raftmesh.actor``) this node can activate (``messages``)."""
    places: bool = False
    """The node runs attempts that apply places on it (``Member.places``)."""

    def _fields(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"offers": [o.encode() for o in self.offers]} if self.offers else {}
        if self.actors:
            extra["actors"] = [a.encode() for a in self.actors]
        if self.places:
            extra["places"] = True
        return extra | {
            "node_id": self.node_id,
            "grpc": self.grpc,
            "raft": self.raft,
            "agents": list(self.agents),
            "slots": self.slots,
            "incarnation": self.incarnation,
        }


@dataclass(frozen=True, slots=True)
class SubmitRun(Command):
    TAG: ClassVar[str] = "submit_run"
    run_id: str = ""
    idempotency_key: str = ""
    tasks: tuple[TaskSpec, ...] = ()
    priority: int = 0
    name: str = ""
    submitter: str = ""
    budget: Budget | None = None
    namespace: str = ""
    """The namespace the run belongs to ("" the default one); tokens are granted namespaces."""
    prefer: str = ""
    """The member that wins a tie on load for the tasks this submit readies (the leader, as the
    node that served the call saw it; "" none): its apply starts them first and its completion
    is appended without a forward, so a task there skips two hops. A hint, never a rule."""
    staged: int = 0
    """Tasks that ``StageRun`` entries of this run id staged before this one (0: not staged);
    ``tasks`` are the rest. Apply checks the count, so a lost part cannot go unnoticed."""

    def _fields(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"budget": self.budget.encode()} if self.budget else {}
        if self.namespace:
            extra["ns"] = self.namespace
        if self.prefer:  # encoded only when set: a submit without it is the same bytes as before
            extra["prefer"] = self.prefer
        if self.staged:  # absent when 0: an unstaged submit encodes as before
            extra["staged"] = self.staged
        return extra | {
            "run_id": self.run_id,
            "key": self.idempotency_key,
            "tasks": [t.to_map() for t in self.tasks],
            "priority": self.priority,
            "name": self.name,
            "submitter": self.submitter,
        }


@dataclass(frozen=True, slots=True)
class StageRun(Command):
    """One part of a large run's tasks, applied before the run's ``SubmitRun`` (``runs.stage``).

    A run too large for one entry (``limits.STAGE_PART_TASKS``) is proposed as parts of
    bounded size, ``seq`` 0, 1, ..., then a ``SubmitRun`` with ``staged`` set and the last
    part: no entry holds apply for the whole run. The parts are invisible (no run, no event)
    until that ``SubmitRun`` applies; an abandoned stage expires (``limits.STAGE_TTL_MS``).
    A task may depend only on tasks of its own or an earlier part.
    """

    TAG: ClassVar[str] = "stage_run"
    run_id: str = ""
    seq: int = 0
    tasks: tuple[TaskSpec, ...] = ()
    idempotency_key: str = ""
    """The run's key: a part that finds it taken answers the existing run (the stage stops)."""
    node_id: str = ""
    """The node staging it (stages are bounded per node too)."""

    def _fields(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "tasks": [t.to_map() for t in self.tasks],
            "key": self.idempotency_key,
            "node_id": self.node_id,
        }


@dataclass(frozen=True, slots=True)
class Tick(Command):
    """The leader's clock, so that timeouts and backoffs advance on every replica alike."""

    TAG: ClassVar[str] = "tick"


@fast_init
@dataclass(frozen=True, slots=True)
class Assignment:
    run_id: str
    task_id: str
    node_id: str
    attempt: int
    """The attempt number this assignment starts (the task's current attempt + 1)."""


@dataclass(frozen=True, slots=True)
class Assign(Command):
    TAG: ClassVar[str] = "assign"
    items: tuple[Assignment, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {"items": [[a.run_id, a.task_id, a.node_id, a.attempt] for a in self.items]}


@fast_init
@dataclass(frozen=True, slots=True)
class Usage:
    """What an attempt consumed, as its agent reported it (``TaskContext.report_usage``)."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    def encode(self) -> list[Any]:
        return [self.tokens_in, self.tokens_out, self.cost]

    @classmethod
    def decode(cls, v: Any) -> Usage:
        if not (isinstance(v, (list, tuple)) and len(v) == 3):
            raise CommandDecodeError("usage must be [tokens_in, tokens_out, cost]")
        ti, to, cost = v
        if not (
            _is_int(ti) and _is_int(to) and isinstance(cost, (int, float)) and not isinstance(cost, bool)
        ):
            raise CommandDecodeError("usage tokens must be ints and cost a number")
        if ti < 0 or to < 0 or not 0 <= cost < float("inf"):
            raise CommandDecodeError("usage figures must be finite and >= 0")
        return cls(ti, to, float(cost))

    def __bool__(self) -> bool:
        return bool(self.tokens_in or self.tokens_out or self.cost)


NO_USAGE = Usage()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _leader_term(m: dict[str, Any]) -> int:
    """``leader_term`` of a ``NodeDown``/``SuspectNode`` map: absent is 0; present, a positive int
    (0 is never encoded, so an encoded 0 would not re-encode as it was)."""
    term = _opt(m, "leader_term", int, 0)
    if "leader_term" in m and term <= 0:
        raise CommandDecodeError("field 'leader_term' must be positive")
    return int(term)


@fast_init
@dataclass(frozen=True, slots=True)
class Completion:
    run_id: str
    task_id: str
    attempt: int
    token: int
    output: JsonValue = None
    usage: Usage = NO_USAGE
    spawn: tuple[TaskSpec, ...] = ()
    """Tasks the attempt adds to its run (``ctx.spawn``): applied atomically with this completion."""
    spawn_wait: bool = True
    """Whether the task's dependents wait for what it spawned (it stays WAITING_CHILDREN until then)."""

    def encode(self) -> list[Any]:
        # usage and spawn are appended only when present: entries without them keep their old form
        item = [self.run_id, self.task_id, self.attempt, self.token, self.output]
        if self.usage or self.spawn:
            item.append(self.usage.encode())
        if self.spawn:
            item.append([self.spawn_wait, [t.to_map() for t in self.spawn]])
        return item


@dataclass(frozen=True, slots=True)
class Complete(Command):
    """Results of finished attempts, each fenced by its attempt's token."""

    TAG: ClassVar[str] = "complete"
    node_id: str = ""
    items: tuple[Completion, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "items": [c.encode() for c in self.items],
        }


@dataclass(frozen=True, slots=True)
class Failure:
    run_id: str
    task_id: str
    attempt: int
    token: int
    error: str
    retryable: bool = True
    """False for errors that retrying cannot fix (e.g. output over the limit)."""
    usage: Usage = NO_USAGE


@dataclass(frozen=True, slots=True)
class Fail(Command):
    TAG: ClassVar[str] = "fail"
    node_id: str = ""
    items: tuple[Failure, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "items": [
                [f.run_id, f.task_id, f.attempt, f.token, f.error, f.retryable]
                + ([f.usage.encode()] if f.usage else [])
                for f in self.items
            ],
        }


@dataclass(frozen=True, slots=True)
class CancelRun(Command):
    TAG: ClassVar[str] = "cancel_run"
    run_id: str = ""
    reason: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RetryTask(Command):
    """Requeue a dead letter: the task FAILED at ``attempt`` goes back to READY with its retries.

    Naming the attempt makes a repeated command harmless: once requeued, the task is no
    longer dead at that attempt, and the command reports "already requeued".
    """

    TAG: ClassVar[str] = "retry_task"
    run_id: str = ""
    task_id: str = ""
    attempt: int = 0

    def _fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "task_id": self.task_id, "attempt": self.attempt}


@dataclass(frozen=True, slots=True)
class ApproveTask(Command):
    """Decide the approval gate ``gate`` of a task WAITING_APPROVAL (applied once per gate)."""

    TAG: ClassVar[str] = "approve_task"
    run_id: str = ""
    task_id: str = ""
    gate: int = 0
    """The gate's id (the revision that opened it): a decision for an older gate changes nothing."""
    approve: bool = True
    by: str = ""
    """Who decided (the client's principal)."""
    comment: str = ""

    def _fields(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "gate": self.gate,
            "approve": self.approve,
            "by": self.by,
            "comment": self.comment,
        }


@dataclass(frozen=True, slots=True)
class PauseRun(Command):
    """Nothing new of the run starts; running attempts finish (or are requeued: ``cancel_running``)."""

    TAG: ClassVar[str] = "pause_run"
    run_id: str = ""
    cancel_running: bool = False

    def _fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "cancel_running": self.cancel_running}


@dataclass(frozen=True, slots=True)
class ResumeRun(Command):
    TAG: ClassVar[str] = "resume_run"
    run_id: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id}


@dataclass(frozen=True, slots=True)
class RerunTask(Command):
    """The task and everything downstream of it go back to be run again with new attempts."""

    TAG: ClassVar[str] = "rerun_task"
    run_id: str = ""
    task_id: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "task_id": self.task_id}


@dataclass(frozen=True, slots=True)
class Preemption:
    """Stop the victim's attempt (fenced by its attempt and token) so that ``by`` can take its slot."""

    run_id: str
    task_id: str
    attempt: int
    token: int
    by_run_id: str
    by_task_id: str

    def encode(self) -> list[Any]:
        return [self.run_id, self.task_id, self.attempt, self.token, self.by_run_id, self.by_task_id]


@dataclass(frozen=True, slots=True)
class Preempt(Command):
    """The leader's preemptions: each victim is requeued without consuming its retries."""

    TAG: ClassVar[str] = "preempt"
    items: tuple[Preemption, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {"items": [p.encode() for p in self.items]}


def _decode_preempt(m: dict[str, Any], rid: str, ts: int) -> Preempt:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) == 6):
            raise CommandDecodeError(
                "preempt item must be [run_id, task_id, attempt, token, by_run_id, by_task_id]"
            )
        run_id, task_id, attempt, token, by_run, by_task = it
        if not all(isinstance(x, str) for x in (run_id, task_id, by_run, by_task)):
            raise CommandDecodeError("preempt item ids must be strings")
        if not (_is_int(attempt) and _is_int(token)):
            raise CommandDecodeError("preempt item attempt and token must be ints")
        items.append(Preemption(run_id, task_id, attempt, token, by_run, by_task))
    return Preempt(rid, ts, tuple(items))


@dataclass(frozen=True, slots=True)
class NodeDown(Command):
    """The leader lost contact with a node: its attempts go back to READY (retries kept).

    Only the incarnation named here is marked down, so a node that already
    restarted and re-registered is not knocked out by a late ``node_down``.

    ``leader_term``: the Raft term of the leadership that decided it (the proposer stamps it);
    applied only from a log entry of that term (``members.leader_term_error``), so a copy
    pysyncobj forwarded to the next leader changes nothing. Encoded only when set (not 0), so
    every entry from before it decodes and re-encodes as it was.
    """

    TAG: ClassVar[str] = "node_down"
    node_id: str = ""
    incarnation: str = ""
    reason: str = ""
    leader_term: int = 0

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "reason": self.reason,
        }
        if self.leader_term:
            out["leader_term"] = self.leader_term
        return out


@dataclass(frozen=True, slots=True)
class SuspectNode(Command):
    """The leader's liveness view of a node changed: it went silent (``suspect``), or was
    heard again. Proposed only on such a change, never per tick, so placement inside apply
    (which cannot see heartbeats) keeps new work off a member the leader has lost touch with
    (``Member.suspect``). Only the incarnation named here is flagged.

    ``requeue`` (with ``suspect``): the leader has heard the member on neither signal for a while
    (``raftmesh.node.liveness.Liveness.lost``), so its running attempts that may move
    (``members.moves_on_suspicion``: no declared locks, fewer than ``MAX_SUSPECT_MOVES`` such
    moves) go back to READY now, fenced as a node-down would, without marking it down. Encoded
    only when true, so every entry from before it decodes and re-encodes as it was.

    ``leader_term``: as ``NodeDown.leader_term`` (encoded only when set)."""

    TAG: ClassVar[str] = "suspect_node"
    node_id: str = ""
    incarnation: str = ""
    suspect: bool = False
    requeue: bool = False
    leader_term: int = 0

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "suspect": self.suspect,
        }
        if self.requeue:
            out["requeue"] = True
        if self.leader_term:
            out["leader_term"] = self.leader_term
        return out


@dataclass(frozen=True, slots=True)
class LockAcquire(Command):
    """Acquire every lock in ``items`` at once, or wait up to ``wait_ms`` (0: try once).

    ``fence`` (optional): the request is rejected (ABORTED) unless its holder is current when
    it is applied, e.g. an actor activation's epoch (a waiting request is not checked again
    when granted later)."""

    TAG: ClassVar[str] = "lock_acquire"
    owner: str = ""
    items: tuple[tuple[str, str], ...] = ()
    ttl_ms: int = 0
    priority: int = 0
    wait_ms: int = 0
    fence: Fence | None = None
    lease: str = ""
    """The secret lease handle the node serving Acquire made ("" for the node's own holders:
    task attempts, actor activations); its release and renewals must name it."""
    principal: str = ""
    """Who asked (the serving call's principal; "" for the node's own holders): a retry
    under the same request id gets the lease back only from the same principal."""

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "owner": self.owner,
            "items": [list(i) for i in self.items],
            "ttl_ms": self.ttl_ms,
            "priority": self.priority,
            "wait_ms": self.wait_ms,
        }
        if self.fence is not None:  # only when set: entries written before the field decode the same
            out["fence"] = self.fence.encode()
        if self.lease:
            out["lease"] = self.lease
        if self.principal:  # only when set, like lease
            out["principal"] = self.principal
        return out


@dataclass(frozen=True, slots=True)
class LockRelease(Command):
    """Release (``keep_alive=False``) or renew the lease of a held lock; a stale token is rejected.

    ``fence`` (optional) is checked for a renewal only: a holder that is no longer current
    may still give its own grant up, never extend it."""

    TAG: ClassVar[str] = "lock_release"
    owner: str = ""
    name: str = ""
    token: int = 0
    keep_alive: bool = False
    fence: Fence | None = None
    lease: str = ""
    """Must equal the holder's lease handle (``LockAcquire.lease``)."""

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "owner": self.owner,
            "name": self.name,
            "token": self.token,
            "keep_alive": self.keep_alive,
        }
        if self.fence is not None:
            out["fence"] = self.fence.encode()
        if self.lease:
            out["lease"] = self.lease
        return out


@dataclass(frozen=True, slots=True)
class LockCancel(Command):
    """The waiter gave up: drop the request, or release what it was granted meanwhile."""

    TAG: ClassVar[str] = "lock_cancel"
    lock_request_id: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"lock_request_id": self.lock_request_id}


@dataclass(frozen=True, slots=True)
class Fence:
    """A write is applied only if its holder is still current.

    Either a lock token (rejected if a newer grant of ``lock`` exists) or a task
    attempt token (rejected unless that attempt is the task's running one).
    """

    lock: str = ""
    token: int = 0
    run_id: str = ""
    task_id: str = ""
    actor: str = ""
    """Or an actor activation (``TYPE/KEY``) with ``token`` its epoch: rejected unless that
    activation is the key's current one (``messages.fence_error``)."""

    def encode(self) -> list[Any]:
        base: list[Any] = [self.lock, self.token, self.run_id, self.task_id]
        return [*base, self.actor] if self.actor else base


def _fence(v: Any) -> Fence | None:
    if v is None:
        return None
    if not (isinstance(v, (list, tuple)) and len(v) in (4, 5)):
        raise CommandDecodeError("fence must be [lock, token, run_id, task_id(, actor)]")
    lock, token, run_id, task_id, *rest = v
    actor = rest[0] if rest else ""
    if not all(isinstance(x, str) for x in (lock, run_id, task_id, actor)):
        raise CommandDecodeError("fence names must be strings")
    if not isinstance(token, int) or isinstance(token, bool):
        raise CommandDecodeError("fence token must be an int")
    return Fence(lock, token, run_id, task_id, actor)


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard: ``target`` of ``key`` compared with ``operand``.

    target: "value", "version", "mod" (mod_revision) or "create" (create_revision);
    op: "=", "!=", "<", ">". A missing key has version/mod/create 0 and value None.
    """

    key: str
    target: str
    op: str
    operand: JsonValue = None

    def encode(self) -> list[Any]:
        return [self.key, self.target, self.op, self.operand]


@dataclass(frozen=True, slots=True)
class KvOp:
    """One operation of a transaction: "put" (value, lease), "delete" or "get"."""

    kind: str
    key: str
    value: JsonValue = None
    lease: int = 0

    def encode(self) -> list[Any]:
        return [self.kind, self.key, self.value, self.lease]


@dataclass(frozen=True, slots=True)
class KvTxn(Command):
    """If every comparison holds, apply ``success``, else ``failure`` (etcd's Txn).

    A plain put, delete or compare-and-set is a transaction too. ``fence`` guards the
    whole transaction.
    """

    TAG: ClassVar[str] = "kv_txn"
    compares: tuple[Compare, ...] = ()
    success: tuple[KvOp, ...] = ()
    failure: tuple[KvOp, ...] = ()
    fence: Fence | None = None

    def _fields(self) -> dict[str, Any]:
        return {
            "compares": [c.encode() for c in self.compares],
            "success": [o.encode() for o in self.success],
            "failure": [o.encode() for o in self.failure],
            "fence": self.fence.encode() if self.fence else None,
        }


@dataclass(frozen=True, slots=True)
class KvLease(Command):
    """Grant (``lease`` 0, ``ttl_ms``), renew (``keep_alive``) or revoke a KV lease."""

    TAG: ClassVar[str] = "kv_lease"
    lease: int = 0
    ttl_ms: int = 0
    action: str = "grant"
    """"grant", "keep_alive" or "revoke"."""
    principal: str = ""
    """Who asks for a grant ("" on an open cluster): recorded on the lease, so another
    principal's attach, renewal or revoke can be refused by the Kv service."""

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lease": self.lease, "ttl_ms": self.ttl_ms, "action": self.action}
        if self.principal:  # only when set: entries written before the field encode the same
            out["principal"] = self.principal
        return out


def _compares(v: Any) -> tuple[Compare, ...]:
    if not isinstance(v, (list, tuple)):
        raise CommandDecodeError("compares must be a list")
    out = []
    for c in v:
        if not (isinstance(c, (list, tuple)) and len(c) == 4 and all(isinstance(x, str) for x in c[:3])):
            raise CommandDecodeError("a compare must be [key, target, op, operand]")
        out.append(Compare(c[0], c[1], c[2], c[3]))
    return tuple(out)


def _ops(v: Any) -> tuple[KvOp, ...]:
    if not isinstance(v, (list, tuple)):
        raise CommandDecodeError("ops must be a list")
    out = []
    for o in v:
        if not (
            isinstance(o, (list, tuple)) and len(o) == 4 and isinstance(o[0], str) and isinstance(o[1], str)
        ):
            raise CommandDecodeError("an op must be [kind, key, value, lease]")
        if not isinstance(o[3], int) or isinstance(o[3], bool):
            raise CommandDecodeError("an op's lease must be an int")
        out.append(KvOp(o[0], o[1], o[2], o[3]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Barrier(Command):
    """Changes nothing; once applied locally, every earlier committed entry is too (read barrier)."""

    TAG: ClassVar[str] = "barrier"


def _decode_assign(m: dict[str, Any], rid: str, ts: int) -> Assign:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) == 4):
            raise CommandDecodeError("assign item must be [run_id, task_id, node_id, attempt]")
        run_id, task_id, node_id, attempt = it
        if not (isinstance(run_id, str) and isinstance(task_id, str) and isinstance(node_id, str)):
            raise CommandDecodeError("assign item ids must be strings")
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise CommandDecodeError("assign item attempt must be an int")
        items.append(Assignment(run_id, task_id, node_id, attempt))
    return Assign(rid, ts, tuple(items))


def _decode_complete(m: dict[str, Any], rid: str, ts: int) -> Complete:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) in (5, 6, 7)):
            raise CommandDecodeError(
                "complete item must be [run_id, task_id, attempt, token, output, usage?, [wait, spawn]?]"
            )
        run_id, task_id, attempt, token, output = it[:5]
        usage = Usage.decode(it[5]) if len(it) >= 6 else NO_USAGE
        spawn: tuple[TaskSpec, ...] = ()
        wait = True
        if len(it) == 7:
            sp = it[6]
            if not (isinstance(sp, (list, tuple)) and len(sp) == 2 and isinstance(sp[0], bool)):
                raise CommandDecodeError("a completion's spawn must be [wait, [task specs]]")
            if not isinstance(sp[1], (list, tuple)):
                raise CommandDecodeError("a completion's spawned tasks must be a list")
            wait, spawn = sp[0], tuple(TaskSpec.from_map(t) for t in sp[1])
        if not (isinstance(run_id, str) and isinstance(task_id, str)):
            raise CommandDecodeError("complete item ids must be strings")
        if not (_is_int(attempt) and _is_int(token)):
            raise CommandDecodeError("complete item attempt and token must be ints")
        items.append(Completion(run_id, task_id, attempt, token, output, usage, spawn, wait))
    return Complete(rid, ts, _get(m, "node_id", str), tuple(items))


def _decode_fail(m: dict[str, Any], rid: str, ts: int) -> Fail:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) in (6, 7)):
            raise CommandDecodeError(
                "fail item must be [run_id, task_id, attempt, token, error, retryable, usage?]"
            )
        run_id, task_id, attempt, token, error, retryable = it[:6]
        usage = Usage.decode(it[6]) if len(it) == 7 else NO_USAGE
        if not (isinstance(run_id, str) and isinstance(task_id, str) and isinstance(error, str)):
            raise CommandDecodeError("fail item ids and error must be strings")
        if not (_is_int(attempt) and _is_int(token) and isinstance(retryable, bool)):
            raise CommandDecodeError("fail item attempt/token must be ints, retryable a bool")
        items.append(Failure(run_id, task_id, attempt, token, error, retryable, usage))
    return Fail(rid, ts, _get(m, "node_id", str), tuple(items))


def _decode_map(m: Any) -> Command:
    cmd = _decode_body(m)
    o = m.get("o")
    if o is not None:
        # Set on the freshly decoded (frozen) command: one place for every tag.
        object.__setattr__(cmd, "origin", Origin.decode(o))
    return cmd


def _decode_body(m: Any) -> Command:
    if not isinstance(m, dict):
        raise CommandDecodeError("a command must be a map")
    tag = _get(m, "t", str)
    version = _get(m, "v", int)
    if version != VERSION:
        raise CommandDecodeError(f"command {tag!r} has version {version}, this node knows {VERSION}")
    rid = _get(m, "rid", str)
    ts = _get(m, "ts", int)
    if tag == RegisterNode.TAG:
        return RegisterNode(
            rid,
            ts,
            node_id=_get(m, "node_id", str),
            grpc=_get(m, "grpc", str),
            raft=_get(m, "raft", str),
            agents=_str_tuple(m, "agents"),
            slots=_get(m, "slots", int),
            incarnation=_get(m, "incarnation", str),
            offers=tuple(AgentOffer.decode(o) for o in _get(m, "offers", (list, tuple)))
            if "offers" in m
            else (),
            actors=tuple(ActorOffer.decode(a) for a in _get(m, "actors", (list, tuple)))
            if "actors" in m
            else (),
            places=_get(m, "places", bool) if "places" in m else False,
        )
    if tag == SubmitRun.TAG:
        return SubmitRun(
            rid,
            ts,
            run_id=_get(m, "run_id", str),
            idempotency_key=_get(m, "key", str),
            tasks=tuple(TaskSpec.from_map(t) for t in _get(m, "tasks", (list, tuple))),
            priority=_get(m, "priority", int),
            name=_get(m, "name", str),
            submitter=_get(m, "submitter", str),
            budget=Budget.decode(m["budget"]) if "budget" in m else None,
            namespace=_get(m, "ns", str) if "ns" in m else "",
            prefer=_get(m, "prefer", str) if "prefer" in m else "",
            staged=_get(m, "staged", int) if "staged" in m else 0,
        )
    if tag == StageRun.TAG:
        return StageRun(
            rid,
            ts,
            run_id=_get(m, "run_id", str),
            seq=_get(m, "seq", int),
            tasks=tuple(TaskSpec.from_map(t) for t in _get(m, "tasks", (list, tuple))),
            idempotency_key=_get(m, "key", str),
            node_id=_get(m, "node_id", str),
        )
    if tag == Tick.TAG:
        return Tick(rid, ts)
    if tag == Assign.TAG:
        return _decode_assign(m, rid, ts)
    if tag == Complete.TAG:
        return _decode_complete(m, rid, ts)
    if tag == Fail.TAG:
        return _decode_fail(m, rid, ts)
    if tag == CancelRun.TAG:
        return CancelRun(rid, ts, run_id=_get(m, "run_id", str), reason=_get(m, "reason", str))
    if tag == NodeDown.TAG:
        return NodeDown(
            rid,
            ts,
            node_id=_get(m, "node_id", str),
            incarnation=_get(m, "incarnation", str),
            reason=_get(m, "reason", str),
            leader_term=_leader_term(m),
        )
    if tag == SuspectNode.TAG:
        return SuspectNode(
            rid,
            ts,
            node_id=_get(m, "node_id", str),
            incarnation=_get(m, "incarnation", str),
            suspect=_get(m, "suspect", bool),
            requeue=_get(m, "requeue", bool) if "requeue" in m else False,
            leader_term=_leader_term(m),
        )
    if tag == LockAcquire.TAG:
        return LockAcquire(
            rid,
            ts,
            owner=_get(m, "owner", str),
            items=_lock_items(_get(m, "items", (list, tuple))),
            ttl_ms=_get(m, "ttl_ms", int),
            priority=_get(m, "priority", int),
            wait_ms=_get(m, "wait_ms", int),
            fence=_fence(m.get("fence")),
            lease=_get(m, "lease", str) if "lease" in m else "",
            principal=_get(m, "principal", str) if "principal" in m else "",
        )
    if tag == LockRelease.TAG:
        return LockRelease(
            rid,
            ts,
            owner=_get(m, "owner", str),
            name=_get(m, "name", str),
            token=_get(m, "token", int),
            keep_alive=_get(m, "keep_alive", bool),
            fence=_fence(m.get("fence")),
            lease=_get(m, "lease", str) if "lease" in m else "",
        )
    if tag == LockCancel.TAG:
        return LockCancel(rid, ts, lock_request_id=_get(m, "lock_request_id", str))
    if tag == KvTxn.TAG:
        return KvTxn(
            rid,
            ts,
            compares=_compares(_get(m, "compares", (list, tuple))),
            success=_ops(_get(m, "success", (list, tuple))),
            failure=_ops(_get(m, "failure", (list, tuple))),
            fence=_fence(m.get("fence")),
        )
    if tag == KvLease.TAG:
        return KvLease(
            rid,
            ts,
            lease=_get(m, "lease", int),
            ttl_ms=_get(m, "ttl_ms", int),
            action=_get(m, "action", str),
            principal=_get(m, "principal", str) if "principal" in m else "",
        )
    if tag == RetryTask.TAG:
        return RetryTask(
            rid,
            ts,
            run_id=_get(m, "run_id", str),
            task_id=_get(m, "task_id", str),
            attempt=_get(m, "attempt", int),
        )
    if tag == Preempt.TAG:
        return _decode_preempt(m, rid, ts)
    if tag == ApproveTask.TAG:
        return ApproveTask(
            rid,
            ts,
            run_id=_get(m, "run_id", str),
            task_id=_get(m, "task_id", str),
            gate=_get(m, "gate", int),
            approve=_get(m, "approve", bool),
            by=_get(m, "by", str),
            comment=_get(m, "comment", str),
        )
    if tag == PauseRun.TAG:
        return PauseRun(
            rid, ts, run_id=_get(m, "run_id", str), cancel_running=_get(m, "cancel_running", bool)
        )
    if tag == ResumeRun.TAG:
        return ResumeRun(rid, ts, run_id=_get(m, "run_id", str))
    if tag == RerunTask.TAG:
        return RerunTask(rid, ts, run_id=_get(m, "run_id", str), task_id=_get(m, "task_id", str))
    if tag == Barrier.TAG:
        return Barrier(rid, ts)
    decode = _MESSAGING_DECODERS.get(tag)
    if decode is not None:
        decoded: Command = decode(m, rid, ts)
        return decoded
    raise CommandDecodeError(f"unknown command tag {tag!r}")


# ---- agent messaging (issue 10: README "Messages") ----------------------------------


@dataclass(frozen=True, slots=True)
class ActorOffer:
    """An actor type as a node offers it: what placement of its activations matches."""

    name: str
    capabilities: tuple[str, ...] = ()
    """Sorted, unique."""
    max_activations: int = 0
    """Activations of this type the node hosts at once (0: ``limits.MAX_ACTIVATIONS_PER_NODE``)."""

    def encode(self) -> list[Any]:
        return [self.name, list(self.capabilities), self.max_activations]

    @classmethod
    def decode(cls, v: Any) -> ActorOffer:
        """Types only; bounds are the processor's."""
        if not (isinstance(v, (list, tuple)) and len(v) == 3):
            raise CommandDecodeError("an actor offer must be [name, capabilities, max_activations]")
        name, caps, most = v
        if not isinstance(name, str):
            raise CommandDecodeError("an actor offer's name must be a string")
        if not (isinstance(caps, (list, tuple)) and all(isinstance(c, str) for c in caps)):
            raise CommandDecodeError(f"actor offer {name[:40]!r}: capabilities must be a list of strings")
        if not _is_int(most):
            raise CommandDecodeError(f"actor offer {name[:40]!r}: max_activations must be an int")
        return cls(name, tuple(caps), most)


Payload = Any
"""A message payload: ``bytes`` (opaque) or a JSON value."""


@dataclass(frozen=True, slots=True)
class Message:
    """An agent message (protobuf ``raftmesh.v1.AgentMessage``) as the log and the peer streams carry it.

    ``target`` is an actor address ``TYPE/KEY``, or "" for a publish to ``topic``.
    ``sender`` says who sent it (an actor address, ``task:RUN/TASK``, ``client:NAME`` or
    ``node:ID``). ``sent_ms`` + ``ttl_ms`` is its expiry (0: ``limits.DEFAULT_MESSAGE_TTL_MS``
    is filled in by the API before it is sent). ``reply_to`` is the node id a reply goes to
    (requests only); ``source`` is the topic source: a type subscription delivers a publish
    to ``TYPE/<source>``.
    """

    id: str
    sender: str
    target: str = ""
    topic: str = ""
    type: str = ""
    payload: Payload = None
    correlation_id: str = ""
    trace_id: str = ""
    priority: int = 0
    ttl_ms: int = 0
    sent_ms: int = 0
    durable: bool = False
    reply_to: str = ""
    source: str = ""
    epoch: int = 0
    """A reply's: the epoch of the activation that answered (a stale one is dropped)."""

    @property
    def expires_ms(self) -> int:
        return self.sent_ms + self.ttl_ms

    def encode(self) -> list[Any]:
        return [
            self.id,
            self.sender,
            self.target,
            self.topic,
            self.type,
            self.payload,
            self.correlation_id,
            self.trace_id,
            self.priority,
            self.ttl_ms,
            self.sent_ms,
            self.durable,
            self.reply_to,
            self.source,
            self.epoch,
        ]

    @classmethod
    def decode(cls, v: Any) -> Message:
        """Types only; bounds are ``messages.message_error``'s."""
        if not (isinstance(v, (list, tuple)) and len(v) == 15):
            raise CommandDecodeError("a message must be a list of its 15 fields")
        strs = (0, 1, 2, 3, 4, 6, 7, 12, 13)
        if not all(isinstance(v[i], str) for i in strs):
            raise CommandDecodeError(
                "a message's id, sender, target, topic, type, ids and source are strings"
            )
        if not all(_is_int(v[i]) for i in (8, 9, 10, 14)) or not isinstance(v[11], bool):
            raise CommandDecodeError("a message's priority, ttl_ms, sent_ms, epoch are ints; durable a bool")
        return cls(*v)


def _messages(v: Any) -> tuple[Message, ...]:
    if not isinstance(v, (list, tuple)):
        raise CommandDecodeError("messages must be a list")
    return tuple(Message.decode(x) for x in v)


@dataclass(frozen=True, slots=True)
class SendMessages(Command):
    """Commit durable messages: each goes to its target's mailbox (activating the target if it
    has no activation), a publish to every subscriber's mailbox and the topic's retained log.

    All or nothing: a full mailbox (RESOURCE_EXHAUSTED) or a bad message rejects the command.
    ``fence``: the sending attempt's or activation's (a stale sender sends nothing).
    """

    TAG: ClassVar[str] = "send_messages"
    messages: tuple[Message, ...] = ()
    fence: Fence | None = None

    def _fields(self) -> dict[str, Any]:
        return {
            "messages": [x.encode() for x in self.messages],
            "fence": self.fence.encode() if self.fence else None,
        }


@dataclass(frozen=True, slots=True)
class AckMessage(Command):
    """A handler's turn, committed at once: the mailbox ack (``seq``; 0 for a fast-path message,
    which has no mailbox entry), the KV writes, the durable messages it sent and its reply.

    Applied only if ``epoch`` is ``address``'s current activation (else ABORTED) and ``seq`` is
    still queued in its mailbox (any queued one: a handler takes the highest priority first); an
    ack of a message already acknowledged or expired changes nothing (effect-once). ``reply`` (a request's answer) is kept for ``limits.REPLY_RETENTION_MS``
    so a requester that retries gets it. ``dead_letter`` (a reason; with a ``seq``) records the
    message as a dead letter as it is unqueued: the handler gave up on it, in one command so
    it is never both handled and dead-lettered, nor lost between the two.
    """

    TAG: ClassVar[str] = "ack_message"
    node_id: str = ""
    address: str = ""
    epoch: int = 0
    seq: int = 0
    kv: tuple[KvOp, ...] = ()
    sends: tuple[Message, ...] = ()
    reply: Message | None = None
    dead_letter: str = ""
    also: tuple[int, ...] = ()
    """More queued seqs of the same activation whose turns had no effect (no KV, sends or
    reply), acknowledged by this command with ``seq``: each is unqueued if still queued (an
    expired one is dead-lettered), so a busy consumer commits one command per batch of turns."""

    def _fields(self) -> dict[str, Any]:
        out = {
            "node_id": self.node_id,
            "address": self.address,
            "epoch": self.epoch,
            "seq": self.seq,
            "kv": [o.encode() for o in self.kv],
            "sends": [x.encode() for x in self.sends],
            "reply": self.reply.encode() if self.reply else None,
        }
        if self.dead_letter:  # only when set: entries written before the field decode the same
            out["dead_letter"] = self.dead_letter
        if self.also:  # likewise
            out["also"] = list(self.also)
        return out


@dataclass(frozen=True, slots=True)
class Activate(Command):
    """Give ``address`` an activation (placed by ``apply``) if it has none: the first fast-path
    message to a key. Answers the activation either way."""

    TAG: ClassVar[str] = "activate"
    address: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"address": self.address}


@dataclass(frozen=True, slots=True)
class RenewActivations(Command):
    """The hosting node extends the leases of its activations ((address, epoch) pairs)."""

    TAG: ClassVar[str] = "renew_activations"
    node_id: str = ""
    incarnation: str = ""
    items: tuple[tuple[str, int], ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "items": [list(i) for i in self.items],
        }


@dataclass(frozen=True, slots=True)
class Deactivate(Command):
    """The hosting node gives up an idle activation (refused while its mailbox holds messages)."""

    TAG: ClassVar[str] = "deactivate"
    node_id: str = ""
    address: str = ""
    epoch: int = 0

    def _fields(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class SubscribeTopic(Command):
    """Subscribe (or unsubscribe) an actor type ``TYPE`` or key ``TYPE/KEY`` to ``topic``."""

    TAG: ClassVar[str] = "subscribe_topic"
    topic: str = ""
    subscriber: str = ""
    subscribe: bool = True

    def _fields(self) -> dict[str, Any]:
        return {"topic": self.topic, "subscriber": self.subscriber, "subscribe": self.subscribe}


@dataclass(frozen=True, slots=True)
class MessageDeadLetter:
    """A message that was not delivered, and why (``expired``, ``undeliverable: ...``)."""

    message: Message
    reason: str

    def encode(self) -> list[Any]:
        return [self.message.encode(), self.reason]


@dataclass(frozen=True, slots=True)
class RecordDeadLetters(Command):
    """A node records fast-path messages it gave up on, so no loss is silent."""

    TAG: ClassVar[str] = "record_dead_letters"
    node_id: str = ""
    items: tuple[MessageDeadLetter, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "items": [i.encode() for i in self.items]}


def _decode_ack(m: dict[str, Any], rid: str, ts: int) -> AckMessage:
    reply = m.get("reply")
    return AckMessage(
        rid,
        ts,
        node_id=_get(m, "node_id", str),
        address=_get(m, "address", str),
        epoch=_get(m, "epoch", int),
        seq=_get(m, "seq", int),
        kv=_ops(_get(m, "kv", (list, tuple))),
        sends=_messages(_get(m, "sends", (list, tuple))),
        reply=Message.decode(reply) if reply is not None else None,
        dead_letter=_get(m, "dead_letter", str) if "dead_letter" in m else "",
        also=_seqs(_get(m, "also", (list, tuple))) if "also" in m else (),
    )


def _seqs(v: list[Any] | tuple[Any, ...]) -> tuple[int, ...]:
    if not all(_is_int(x) for x in v):
        raise CommandDecodeError("also must be a list of integer seqs")
    return tuple(v)


def _decode_renew(m: dict[str, Any], rid: str, ts: int) -> RenewActivations:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) == 2 and isinstance(it[0], str) and _is_int(it[1])):
            raise CommandDecodeError("a renewal must be [address, epoch]")
        items.append((it[0], it[1]))
    return RenewActivations(
        rid, ts, node_id=_get(m, "node_id", str), incarnation=_get(m, "incarnation", str), items=tuple(items)
    )


def _decode_dead_letters(m: dict[str, Any], rid: str, ts: int) -> RecordDeadLetters:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) == 2 and isinstance(it[1], str)):
            raise CommandDecodeError("a dead letter must be [message, reason]")
        items.append(MessageDeadLetter(Message.decode(it[0]), it[1]))
    return RecordDeadLetters(rid, ts, node_id=_get(m, "node_id", str), items=tuple(items))


_MESSAGING_DECODERS: dict[str, Any] = {
    SendMessages.TAG: lambda m, rid, ts: SendMessages(
        rid, ts, messages=_messages(_get(m, "messages", (list, tuple))), fence=_fence(m.get("fence"))
    ),
    AckMessage.TAG: _decode_ack,
    Activate.TAG: lambda m, rid, ts: Activate(rid, ts, address=_get(m, "address", str)),
    RenewActivations.TAG: _decode_renew,
    Deactivate.TAG: lambda m, rid, ts: Deactivate(
        rid, ts, node_id=_get(m, "node_id", str), address=_get(m, "address", str), epoch=_get(m, "epoch", int)
    ),
    SubscribeTopic.TAG: lambda m, rid, ts: SubscribeTopic(
        rid,
        ts,
        topic=_get(m, "topic", str),
        subscriber=_get(m, "subscriber", str),
        subscribe=_get(m, "subscribe", bool),
    ),
    RecordDeadLetters.TAG: _decode_dead_letters,
}


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A batch element that did not decode; applying it changes nothing."""

    reason: str
    request_id: str = field(default="")


def encode_batch(commands: list[Command] | tuple[Command, ...]) -> bytes:
    """The bytes of one log entry."""
    data: bytes = msgpack.packb([c.to_map() for c in commands], use_bin_type=True)
    return data


def decode_batch(payload: bytes) -> list[Command | Undecodable]:
    """Decode one log entry; elements that fail to decode come back as ``Undecodable``."""
    try:
        maps = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # any garbage in the log must not stall apply
        return [Undecodable(f"batch is not msgpack: {exc}")]
    if not isinstance(maps, list):
        return [Undecodable("batch is not an array")]
    out: list[Command | Undecodable] = []
    for m in maps:
        try:
            out.append(_decode_map(m))
        except CommandDecodeError as exc:
            rid = m.get("rid", "") if isinstance(m, dict) else ""
            out.append(Undecodable(str(exc), rid if isinstance(rid, str) else ""))
    return out


def encode_command(command: Command) -> bytes:
    data: bytes = msgpack.packb(command.to_map(), use_bin_type=True)
    return data


def decode_command(payload: bytes) -> Command:
    """Decode a single command (raises ``CommandDecodeError``); used by tests and tools."""
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise CommandDecodeError(f"not msgpack: {exc}") from exc
    return _decode_map(m)
