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
    if not all(isinstance(v, str) for v in values):
        raise CommandDecodeError(f"field {key!r} must be a list of strings")
    return tuple(values)


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

    def to_map(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "input": self.input,
            "deps": list(self.deps),
            "retries": self.retries,
            "priority": self.priority,
            "timeout_ms": self.timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
        }

    @classmethod
    def from_map(cls, m: Any) -> TaskSpec:
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
        )


@dataclass(frozen=True, slots=True)
class Command:
    """Base of all commands. ``request_id`` makes retries apply once."""

    TAG: ClassVar[str] = ""
    request_id: str
    ts_ms: int

    def _fields(self) -> dict[str, Any]:
        return {}

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"t": self.TAG, "v": VERSION, "rid": self.request_id, "ts": self.ts_ms}
        m.update(self._fields())
        return m


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

    def _fields(self) -> dict[str, Any]:
        return {
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

    def _fields(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "key": self.idempotency_key,
            "tasks": [t.to_map() for t in self.tasks],
            "priority": self.priority,
            "name": self.name,
            "submitter": self.submitter,
        }


@dataclass(frozen=True, slots=True)
class Tick(Command):
    """The leader's clock, so that timeouts and backoffs advance on every replica alike."""

    TAG: ClassVar[str] = "tick"


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


@dataclass(frozen=True, slots=True)
class Completion:
    run_id: str
    task_id: str
    attempt: int
    token: int
    output: JsonValue = None


@dataclass(frozen=True, slots=True)
class Complete(Command):
    """Results of finished attempts, each fenced by its attempt's token."""

    TAG: ClassVar[str] = "complete"
    node_id: str = ""
    items: tuple[Completion, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "items": [[c.run_id, c.task_id, c.attempt, c.token, c.output] for c in self.items],
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


@dataclass(frozen=True, slots=True)
class Fail(Command):
    TAG: ClassVar[str] = "fail"
    node_id: str = ""
    items: tuple[Failure, ...] = ()

    def _fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "items": [[f.run_id, f.task_id, f.attempt, f.token, f.error, f.retryable] for f in self.items],
        }


@dataclass(frozen=True, slots=True)
class CancelRun(Command):
    TAG: ClassVar[str] = "cancel_run"
    run_id: str = ""
    reason: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class NodeDown(Command):
    """The leader lost contact with a node: its attempts go back to READY (retries kept).

    Only the incarnation named here is marked down, so a node that already
    restarted and re-registered is not knocked out by a late ``node_down``.
    """

    TAG: ClassVar[str] = "node_down"
    node_id: str = ""
    incarnation: str = ""
    reason: str = ""

    def _fields(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "incarnation": self.incarnation, "reason": self.reason}


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
        if not (isinstance(it, (list, tuple)) and len(it) == 5):
            raise CommandDecodeError("complete item must be [run_id, task_id, attempt, token, output]")
        run_id, task_id, attempt, token, output = it
        if not (isinstance(run_id, str) and isinstance(task_id, str)):
            raise CommandDecodeError("complete item ids must be strings")
        if not (isinstance(attempt, int) and isinstance(token, int)):
            raise CommandDecodeError("complete item attempt and token must be ints")
        items.append(Completion(run_id, task_id, attempt, token, output))
    return Complete(rid, ts, _get(m, "node_id", str), tuple(items))


def _decode_fail(m: dict[str, Any], rid: str, ts: int) -> Fail:
    items = []
    for it in _get(m, "items", (list, tuple)):
        if not (isinstance(it, (list, tuple)) and len(it) == 6):
            raise CommandDecodeError("fail item must be [run_id, task_id, attempt, token, error, retryable]")
        run_id, task_id, attempt, token, error, retryable = it
        if not (isinstance(run_id, str) and isinstance(task_id, str) and isinstance(error, str)):
            raise CommandDecodeError("fail item ids and error must be strings")
        if not (isinstance(attempt, int) and isinstance(token, int) and isinstance(retryable, bool)):
            raise CommandDecodeError("fail item attempt/token must be ints, retryable a bool")
        items.append(Failure(run_id, task_id, attempt, token, error, retryable))
    return Fail(rid, ts, _get(m, "node_id", str), tuple(items))


def _decode_map(m: Any) -> Command:
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
        )
    if tag == Barrier.TAG:
        return Barrier(rid, ts)
    raise CommandDecodeError(f"unknown command tag {tag!r}")


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
