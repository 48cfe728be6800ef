"""Linearizability checking of concurrent histories: the Wing-Gong-Lowe search, as porcupine does it.

A history is a set of operations, each with a call time and a return time as a
client observed them. It is *linearizable* with respect to a sequential model
when there is one total order of the operations that (a) the model accepts,
each operation producing the output that was observed, and (b) respects real
time: an operation that returned before another was called comes first.

The search (Wing & Gong 1993, with Lowe's memoisation, in the form of
github.com/anishathalye/porcupine):

- The call and return of every operation become entries of a doubly linked
  list sorted by time, calls before returns at equal times (such operations
  count as concurrent, the lenient reading of equal clocks).
- Scanning from the head, every call met before the first return is an
  operation that may take effect next (nothing that must precede it is still
  pending). The search tries one: if the model accepts it, it is *lifted*
  out of the list (call and return), pushed on a stack with the state before
  it, and the scan restarts from the head. Reaching a return entry means the
  operation it belongs to was never placed in time: backtrack by popping the
  stack, *unlifting* that operation, and trying the entry after it.
- A cache of (set of linearized operations, model state) pairs prunes the
  search: two paths that placed the same operations and reached the same state
  have the same future, so the second is cut. This is why states must be
  hashable and compare by value.
- P-compositionality (Horn & Kroening 2015): the model splits the history
  into independent parts (a KV store by key) and each is searched alone, which
  turns one exponential search into several small ones.

Unknown outcomes. A client that timed out does not know whether its operation
took effect. Such an operation has ``return_time = inf`` and the output
``UNKNOWN_OUTPUT``: it may take effect at any point after its call, or never.
Porcupine lets it be linearized "at the end"; that works only when the model
accepts it in whatever final state it meets (a timed-out lock acquire while the
lock is held would be refused). Here the search instead succeeds as soon as
every operation with a known return is placed, so an unknown-outcome operation
is either placed where the model accepts it or left out. An ILLEGAL verdict is
therefore never caused by an operation that may simply not have happened.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from ..errors import InvalidArgument

Time = int | float
"""A call or return time: any totally ordered clock reading (ticks, seconds)."""

_DEADLINE_CHECK_MASK: Final = 0x3FF
"""Read the clock once every 1024 search steps: a clock read costs more than a step."""


class _Unknown(enum.Enum):
    UNKNOWN_OUTPUT = "UNKNOWN_OUTPUT"

    def __repr__(self) -> str:
        return self.value


UNKNOWN_OUTPUT: Final = _Unknown.UNKNOWN_OUTPUT
"""The output of an operation whose response was never seen; models accept any output for it."""


class HistoryError(InvalidArgument, ValueError):
    """A history is malformed (a return before its call, a return with no call...)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation: what was asked, what came back, and when.

    ``return_time = inf`` marks an unknown outcome (the client timed out): the
    operation may have taken effect at any time after its call, or not at all,
    and its output must be ``UNKNOWN_OUTPUT``. ``UNKNOWN_OUTPUT`` with a finite
    return time means the operation did take effect by then but its output was
    not observed.
    """

    client_id: Hashable
    input: Any
    output: Any
    call_time: Time
    return_time: Time

    def __post_init__(self) -> None:
        if math.isnan(self.call_time) or math.isnan(self.return_time):
            raise HistoryError(f"NaN time in {self!r}")
        if math.isinf(self.call_time):
            raise HistoryError(f"call time must be finite in {self!r}")
        if self.return_time < self.call_time:
            raise HistoryError(f"return before call in {self!r}")
        if self.return_time == math.inf and self.output is not UNKNOWN_OUTPUT:
            raise HistoryError(f"an operation that never returned has no output: {self!r}")

    @classmethod
    def timed_out(cls, client_id: Hashable, input: Any, call_time: Time) -> Operation:
        """An operation whose outcome is unknown: it may or may not have taken effect."""
        return cls(client_id, input, UNKNOWN_OUTPUT, call_time, math.inf)

    @property
    def outcome_unknown(self) -> bool:
        """True if the operation may never have taken effect."""
        return self.return_time == math.inf


class EventKind(enum.Enum):
    CALL = "call"
    RETURN = "return"


@dataclass(frozen=True, slots=True)
class Event:
    """The event-list form of a history: calls and returns in the order they happened.

    ``op_id`` pairs a return with its call; ``value`` is the input of a call or
    the output of a return. A call without a return is an unknown outcome.
    """

    kind: EventKind
    client_id: Hashable
    op_id: Hashable
    value: Any


S = TypeVar("S", bound=Hashable)


class Model(Protocol[S]):
    """A sequential specification. States must be hashable and compare by value.

    ``step`` must be pure: the search calls it many times on the same state.
    """

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, input: Any, output: Any) -> tuple[bool, S]:
        """Apply ``input`` to ``state``: (whether ``output`` is what the model returns, next state).

        ``output`` may be ``UNKNOWN_OUTPUT``, which must be accepted.
        """
        ...

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        """Split into sub-histories that can be checked independently (e.g. one per key)."""
        ...

    def describe_partition(self, history: Sequence[Operation]) -> str:
        """Name a sub-history returned by ``partition`` (e.g. ``key='x'``) for reports."""
        ...

    def describe_operation(self, input: Any, output: Any) -> str:
        """One line for an operation in reports, e.g. ``get('x') -> 3``."""
        ...

    def describe_state(self, state: S) -> str:
        """One line for a state in reports."""
        ...


class Verdict(enum.Enum):
    OK = "ok"
    """A linearization exists."""
    ILLEGAL = "illegal"
    """No linearization exists."""
    UNKNOWN = "unknown"
    """The search ran out of time before deciding."""


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """The outcome of searching one partition.

    ``linearization`` is a complete linearization when ``result`` is OK
    (unknown-outcome operations that were left out do not appear), else the
    longest linearizable prefix the search found. For ILLEGAL, ``stuck`` lists
    the operations that could come next after that prefix in real-time order,
    none of which the model accepts there (or whose acceptance led nowhere):
    the place to look first. ``state`` describes the model state after
    ``linearization``.
    """

    label: str
    result: Verdict
    operations: tuple[Operation, ...]
    linearization: tuple[Operation, ...]
    stuck: tuple[Operation, ...]
    state: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a whole history, with one report per partition.

    ILLEGAL wins over UNKNOWN: one partition proven illegal settles the history
    even if another timed out. Partitions not reached before the deadline are
    reported UNKNOWN.
    """

    result: Verdict
    partitions: tuple[PartitionReport, ...]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.result is Verdict.OK

    @property
    def failures(self) -> tuple[PartitionReport, ...]:
        """Reports of the partitions proven not linearizable."""
        return tuple(p for p in self.partitions if p.result is Verdict.ILLEGAL)

    def explain(self, model: Model[Any]) -> str:
        """A readable account of each illegal partition, for a test failure message."""
        lines = [f"{self.result.name} ({len(self.partitions)} partitions, {self.elapsed_s:.3f}s)"]
        for report in self.failures:
            lines.append(f"partition {report.label}: {len(report.operations)} operations")
            lines.append(f"  longest linearizable prefix ({len(report.linearization)} operations):")
            lines.extend(f"    {describe(model, op)}" for op in report.linearization)
            lines.append(f"  state after it: {report.state}")
            lines.append("  none of these can be linearized next:")
            lines.extend(f"    {describe(model, op)}" for op in report.stuck)
        return "\n".join(lines)


def describe(model: Model[Any], op: Operation) -> str:
    """``[call, return] client c: <model's description>``."""
    ret = "inf" if op.outcome_unknown else op.return_time
    return f"[{op.call_time}, {ret}] client {op.client_id!r}: {model.describe_operation(op.input, op.output)}"


def check_operations(
    model: Model[Any],
    history: Iterable[Operation],
    timeout_s: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    The history is partitioned by ``model.partition`` and each part searched in
    turn. ``timeout_s`` bounds the whole check (None: no bound); on expiry the
    verdict is UNKNOWN unless a partition was already proven ILLEGAL. ``clock``
    is injectable so tests can make time jump.
    """
    start = clock()
    deadline = None if timeout_s is None else start + timeout_s
    reports: list[PartitionReport] = []
    timed_out = False
    for sub in model.partition(list(history)):
        label = model.describe_partition(sub)
        if timed_out:
            reports.append(PartitionReport(label, Verdict.UNKNOWN, tuple(sub), (), (), ""))
            continue
        report = _check_partition(model, label, sub, deadline, clock)
        timed_out = report.result is Verdict.UNKNOWN
        reports.append(report)
    verdicts = {r.result for r in reports}
    if Verdict.ILLEGAL in verdicts:
        result = Verdict.ILLEGAL
    elif Verdict.UNKNOWN in verdicts:
        result = Verdict.UNKNOWN
    else:
        result = Verdict.OK
    return CheckResult(result, tuple(reports), clock() - start)


def check_events(
    model: Model[Any],
    events: Iterable[Event],
    timeout_s: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """``check_operations`` on an event list (see ``operations_from_events``)."""
    return check_operations(model, operations_from_events(events), timeout_s, clock=clock)


def operations_from_events(events: Iterable[Event]) -> list[Operation]:
    """Pair calls with returns; an event's position in the list is its time.

    A call with no return becomes an unknown-outcome operation.
    """
    calls: dict[Hashable, tuple[int, Event]] = {}
    done: set[Hashable] = set()
    ops: list[Operation] = []
    for index, event in enumerate(events):
        if event.kind is EventKind.CALL:
            if event.op_id in calls or event.op_id in done:
                raise HistoryError(f"operation id {event.op_id!r} is called twice")
            calls[event.op_id] = (index, event)
        else:
            if event.op_id not in calls:
                raise HistoryError(f"return of {event.op_id!r} without a pending call")
            call_index, call = calls.pop(event.op_id)
            done.add(event.op_id)
            ops.append(Operation(call.client_id, call.value, event.value, call_index, index))
    ops.extend(Operation.timed_out(c.client_id, c.value, i) for i, c in calls.values())
    return ops


_HEAD: Final = 0
_NONE: Final = -1


def _check_partition(
    model: Model[Any],
    label: str,
    ops: Sequence[Operation],
    deadline: float | None,
    clock: Callable[[], float],
) -> PartitionReport:
    """The WGL search over one partition, on a linked list kept in index arrays.

    Node 0 is the head sentinel; node k >= 1 is the k-th entry in time order.
    Arrays rather than node objects keep the inner loop cheap in Python.
    """
    n = len(ops)
    # Calls (0) sort before returns (1) at equal times; the op index makes the order total.
    entries = sorted(
        [(op.call_time, 0, i) for i, op in enumerate(ops)]
        + [(op.return_time, 1, i) for i, op in enumerate(ops)]
    )
    size = 2 * n + 1
    op_of = [_NONE] * size
    match = [_NONE] * size  # call node -> its return node; _NONE for return nodes
    nxt = [*range(1, size), _NONE]
    prv = [_NONE, *range(size - 1)]
    return_node = [0] * n
    for node, (_, kind, i) in enumerate(entries, start=1):
        op_of[node] = i
        if kind == 1:
            return_node[i] = node
    for node, (_, kind, i) in enumerate(entries, start=1):
        if kind == 0:
            match[node] = return_node[i]

    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    unknown = [op.outcome_unknown for op in ops]
    step = model.step

    state = model.init()
    linearized = 0  # bitset of placed operations
    cache: set[tuple[int, Any]] = set()
    calls: list[tuple[int, Any]] = []  # (call node, state before it)
    to_place = sum(1 for u in unknown if not u)  # operations with a known return still unplaced
    longest: list[int] = []
    longest_state = state
    steps = 0
    entry = nxt[_HEAD]
    while to_place > 0:
        if deadline is not None and steps & _DEADLINE_CHECK_MASK == 0 and clock() >= deadline:
            if len(calls) > len(longest):
                longest, longest_state = [op_of[node] for node, _ in calls], state
            return _report(model, label, ops, Verdict.UNKNOWN, longest, longest_state, ())
        steps += 1
        ret = match[entry]
        if ret != _NONE:
            i = op_of[entry]
            ok, new_state = step(state, inputs[i], outputs[i])
            # An unknown-outcome operation that leaves the state as it is can as well be
            # left out; placing it would only multiply the sets the cache must tell apart.
            if ok and not (unknown[i] and new_state == state):
                new_linearized = linearized | (1 << i)
                key = (new_linearized, new_state)
                if key not in cache:
                    cache.add(key)
                    calls.append((entry, state))
                    state = new_state
                    linearized = new_linearized
                    if not unknown[i]:
                        to_place -= 1
                    _lift(entry, ret, nxt, prv)
                    entry = nxt[_HEAD]
                    continue
            entry = nxt[entry]
        else:
            # A return reached: its operation should have been placed before now.
            if len(calls) > len(longest):
                longest, longest_state = [op_of[node] for node, _ in calls], state
            if not calls:
                stuck = _next_candidates(ops, set(longest))
                return _report(model, label, ops, Verdict.ILLEGAL, longest, longest_state, stuck)
            entry, state = calls.pop()
            i = op_of[entry]
            linearized &= ~(1 << i)
            if not unknown[i]:
                to_place += 1
            _unlift(entry, match[entry], nxt, prv)
            entry = nxt[entry]
    placed = [op_of[node] for node, _ in calls]
    return _report(model, label, ops, Verdict.OK, placed, state, ())


def _lift(call: int, ret: int, nxt: list[int], prv: list[int]) -> None:
    """Unlink an operation's call and return. A call always has a successor (its return)."""
    nxt[prv[call]] = nxt[call]
    prv[nxt[call]] = prv[call]
    nxt[prv[ret]] = nxt[ret]
    if nxt[ret] != _NONE:
        prv[nxt[ret]] = prv[ret]


def _unlift(call: int, ret: int, nxt: list[int], prv: list[int]) -> None:
    """Relink in the reverse order of ``_lift``, so each node finds its old neighbours."""
    nxt[prv[ret]] = ret
    if nxt[ret] != _NONE:
        prv[nxt[ret]] = ret
    nxt[prv[call]] = call
    prv[nxt[call]] = call


def _next_candidates(ops: Sequence[Operation], placed: set[int]) -> tuple[Operation, ...]:
    """Unplaced operations that real time allows next: called no later than the first pending return."""
    rest = [i for i in range(len(ops)) if i not in placed]
    first_return = min((ops[i].return_time for i in rest if not ops[i].outcome_unknown), default=math.inf)
    candidates = [ops[i] for i in rest if ops[i].call_time <= first_return]
    return tuple(sorted(candidates, key=lambda op: (op.call_time, op.return_time)))


def _report(
    model: Model[Any],
    label: str,
    ops: Sequence[Operation],
    result: Verdict,
    order: list[int],
    state: Any,
    stuck: tuple[Operation, ...],
) -> PartitionReport:
    return PartitionReport(
        label=label,
        result=result,
        operations=tuple(ops),
        linearization=tuple(ops[i] for i in order),
        stuck=stuck,
        state=model.describe_state(state),
    )
