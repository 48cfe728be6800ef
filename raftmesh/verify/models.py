"""Sequential models for the linearizability checker: a KV register, a versioned KV, a mutex.

Each model partitions its history by the object an operation touches (a key,
a lock name): operations on different objects never constrain each other, so
each object is checked alone (P-compositionality). A state is therefore the
state of one object, which keeps it small and cheap to hash in the search
cache.

Every model accepts ``UNKNOWN_OUTPUT`` as the output of any operation: the
client never saw the response, so whatever the model would return is fine.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .linearizability import UNKNOWN_OUTPUT, Operation


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` (None counts as absent, so it reads like a delete). Output: not checked."""

    key: Hashable
    value: Hashable


@dataclass(frozen=True, slots=True)
class Get:
    """Read a key. Output: the value, or None if absent (``VersionedKvModel``: (value, version))."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class Cas:
    """Write ``new`` if the value is ``expected``. Output: True if it wrote, else False."""

    key: Hashable
    expected: Hashable
    new: Hashable


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove a key. Output: not checked."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class CasVersion:
    """Write ``new`` if the key's version is ``version``. Output: True if it wrote, else False."""

    key: Hashable
    version: int
    new: Hashable


KvOp = Put | Get | Cas | Delete | CasVersion


def as_kv_op(input: Any) -> KvOp:
    """Accept the typed inputs or their tuple spelling.

    ``("put", key, value)``, ``("get", key)``, ``("cas", key, expected, new)``,
    ``("delete", key)``, ``("cas_version", key, version, new)``.
    """
    match input:
        case Put() | Get() | Cas() | Delete() | CasVersion():
            return input
        case ("put", key, value):
            return Put(key, value)
        case ("get", key):
            return Get(key)
        case ("cas", key, expected, new):
            return Cas(key, expected, new)
        case ("delete", key):
            return Delete(key)
        case ("cas_version", key, version, new):
            return CasVersion(key, version, new)
    raise ValueError(f"not a KV operation: {input!r}")


def partition_by(history: Sequence[Operation], key: Callable[[Any], Hashable]) -> list[list[Operation]]:
    """Group operations by ``key(input)``, in order of first appearance (deterministic reports)."""
    groups: dict[Hashable, list[Operation]] = {}
    for op in history:
        groups.setdefault(key(op.input), []).append(op)
    return list(groups.values())


def _kv_key(input: Any) -> Hashable:
    return as_kv_op(input).key


def _describe_kv(input: Any, output: Any) -> str:
    op = as_kv_op(input)
    match op:
        case Put(key, value):
            call = f"put({key!r}, {value!r})"
        case Get(key):
            call = f"get({key!r})"
        case Cas(key, expected, new):
            call = f"cas({key!r}, {expected!r} -> {new!r})"
        case Delete(key):
            call = f"delete({key!r})"
        case CasVersion(key, version, new):
            call = f"cas_version({key!r}, v{version} -> {new!r})"
    return f"{call} -> {output!r}"


def _cas_result(matches: bool, output: Any) -> bool:
    return output is UNKNOWN_OUTPUT or output is matches


@dataclass(frozen=True, slots=True)
class KvModel:
    """A register per key with put, get, cas and delete. State: the key's value (None: absent)."""

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        match as_kv_op(input):
            case Get():
                return output is UNKNOWN_OUTPUT or output == state, state
            case Put(_, value):
                return True, value
            case Cas(_, expected, new):
                hit = state == expected
                return _cas_result(hit, output), new if hit else state
            case Delete():
                return True, None
            case CasVersion():
                raise ValueError("cas_version needs VersionedKvModel")
        raise AssertionError("unreachable")

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        return partition_by(history, _kv_key)

    def describe_partition(self, history: Sequence[Operation]) -> str:
        return f"key={_kv_key(history[0].input)!r}" if history else "empty"

    def describe_operation(self, input: Any, output: Any) -> str:
        return _describe_kv(input, output)

    def describe_state(self, state: Hashable) -> str:
        return f"value={state!r}"


@dataclass(frozen=True, slots=True)
class VersionedKvModel:
    """A register per key whose version counts the writes to it; get returns (value, version).

    State: (value, version), starting at (None, 0). Every put, delete and
    successful cas raises the version by one. The output of put and delete is
    the version after the write, or None when the client does not report it.
    ``Cas`` compares values and ``CasVersion`` compares versions; both output
    True or False.
    """

    def init(self) -> tuple[Hashable, int]:
        return (None, 0)

    def step(self, state: tuple[Hashable, int], input: Any, output: Any) -> tuple[bool, tuple[Hashable, int]]:
        value, version = state
        match as_kv_op(input):
            case Get():
                return output is UNKNOWN_OUTPUT or output == state, state
            case Put(_, new):
                return _version_matches(output, version + 1), (new, version + 1)
            case Delete():
                return _version_matches(output, version + 1), (None, version + 1)
            case Cas(_, expected, new):
                hit = value == expected
                return _cas_result(hit, output), (new, version + 1) if hit else state
            case CasVersion(_, expected_version, new):
                hit = version == expected_version
                return _cas_result(hit, output), (new, version + 1) if hit else state
        raise AssertionError("unreachable")

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        return partition_by(history, _kv_key)

    def describe_partition(self, history: Sequence[Operation]) -> str:
        return f"key={_kv_key(history[0].input)!r}" if history else "empty"

    def describe_operation(self, input: Any, output: Any) -> str:
        return _describe_kv(input, output)

    def describe_state(self, state: tuple[Hashable, int]) -> str:
        return f"value={state[0]!r} version={state[1]}"


def _version_matches(output: Any, version: int) -> bool:
    return output is None or output is UNKNOWN_OUTPUT or output == version


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take ``lock`` for ``owner``. Output: True if taken, False if refused (held by anyone)."""

    owner: Hashable
    lock: Hashable = None


@dataclass(frozen=True, slots=True)
class Release:
    """Give ``lock`` up. Output: True if ``owner`` held it (now free), False if refused."""

    owner: Hashable
    lock: Hashable = None


@dataclass(frozen=True, slots=True)
class MutexModel:
    """A non-reentrant lock per name. State: the owner holding it, or None.

    At most one owner holds a lock at a time; a release that reports success
    by an owner that does not hold it is illegal. Acquire returning False is a
    refused try-lock, legal only while the lock is held. A blocking acquire that
    timed out is an unknown outcome: the checker may place it once the lock is
    free, or leave it out.
    """

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        match input:
            case Acquire(owner):
                free = state is None
                return _cas_result(free, output), owner if free else state
            case Release(owner):
                holds = state is not None and state == owner
                return _cas_result(holds, output), None if holds else state
        raise ValueError(f"not a mutex operation: {input!r}")

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        return partition_by(history, _lock_name)

    def describe_partition(self, history: Sequence[Operation]) -> str:
        return f"lock={_lock_name(history[0].input)!r}" if history else "empty"

    def describe_operation(self, input: Any, output: Any) -> str:
        verb = "acquire" if isinstance(input, Acquire) else "release"
        return f"{verb}({input.owner!r}) -> {output!r}"

    def describe_state(self, state: Hashable) -> str:
        return "free" if state is None else f"held by {state!r}"


def _lock_name(input: Any) -> Hashable:
    if not isinstance(input, Acquire | Release):
        raise ValueError(f"not a mutex operation: {input!r}")
    return input.lock
