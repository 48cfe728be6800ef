"""Tests of the linearizability checker (raftmesh.verify).

Hand-written histories pin the verdicts that matter (stale reads, split
brain on a lock, a CAS winning twice, unknown outcomes); seeded random
histories from a sequential simulation check speed and, against a brute-force
oracle and an unpartitioned model, that the search neither misses a
linearization nor invents one. A failing seed is in the test id.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

import raftmesh.verify as verify
from raftmesh.verify import (
    UNKNOWN_OUTPUT,
    Acquire,
    Cas,
    CasVersion,
    CheckResult,
    Delete,
    Event,
    EventKind,
    Get,
    HistoryError,
    KvModel,
    Model,
    MutexModel,
    Operation,
    Put,
    Release,
    Verdict,
    VersionedKvModel,
    check_events,
    check_operations,
    operations_from_events,
)

KV = KvModel()
VKV = VersionedKvModel()
MUTEX = MutexModel()


def op(client: Hashable, input: Any, output: Any, call: float, ret: float) -> Operation:
    return Operation(client, input, output, call, ret)


def check(model: Model[Any], history: Sequence[Operation]) -> CheckResult:
    return check_operations(model, history, timeout_s=30.0)


def assert_valid_linearization(model: Model[Any], result: CheckResult) -> None:
    """An OK verdict must come with an order that replays through the model and respects real time."""
    for report in result.partitions:
        order = report.linearization
        known = {o for o in report.operations if not o.outcome_unknown}
        assert known <= set(order)
        state = model.init()
        for o in order:
            ok, state = model.step(state, o.input, o.output)
            assert ok, verify.describe(model, o)
        for a, b in itertools.combinations(order, 2):
            assert not b.return_time < a.call_time, f"{b} returned before {a} was called"


# --- hand-written histories -------------------------------------------------------------


def test_empty_history_is_ok() -> None:
    result = check(KV, [])
    assert result.result is Verdict.OK
    assert result.partitions == ()


def test_sequential_history_is_ok_in_its_own_order() -> None:
    history = [
        op(0, Put("x", 1), None, 0, 1),
        op(1, Get("x"), 1, 2, 3),
        op(0, Cas("x", 1, 2), True, 4, 5),
        op(1, Cas("x", 1, 3), False, 6, 7),
        op(1, Get("x"), 2, 8, 9),
        op(0, Delete("x"), None, 10, 11),
        op(1, Get("x"), None, 12, 13),
    ]
    result = check(KV, history)
    assert result.ok, result.explain(KV)
    assert result.partitions[0].linearization == tuple(history)


def test_tuple_inputs_are_accepted() -> None:
    history = [
        op(0, ("put", "x", 1), None, 0, 1),
        op(1, ("cas", "x", 1, 2), True, 2, 3),
        op(1, ("get", "x"), 2, 4, 5),
        op(0, ("delete", "x"), None, 6, 7),
        op(0, ("get", "x"), 3, 8, 9),
    ]
    result = check(KV, history)
    assert result.result is Verdict.ILLEGAL
    assert result.failures[0].label == "key='x'"


def test_overlapping_reads_and_writes_that_admit_an_order() -> None:
    # The read of 1 overlaps the write; the read of None is before it took effect.
    history = [
        op(0, Put("x", 1), None, 0, 10),
        op(1, Get("x"), 1, 2, 5),
        op(2, Get("x"), None, 3, 4),
        op(3, Put("x", 2), None, 6, 12),
        op(1, Get("x"), 1, 7, 8),
        op(2, Get("x"), 2, 11, 13),
    ]
    result = check(KV, history)
    assert result.ok, result.explain(KV)
    assert_valid_linearization(KV, result)
    order = result.partitions[0].linearization
    assert order.index(history[2]) < order.index(history[0]) < order.index(history[1])


def test_equal_times_count_as_concurrent() -> None:
    # The get is called at the instant the put returns: they overlap, either order is fine.
    history = [op(0, Put("x", 1), None, 0, 5), op(1, Get("x"), None, 5, 6)]
    assert check(KV, history).ok


def test_stale_read_after_a_completed_write_is_illegal() -> None:
    history = [
        op(0, Put("x", 1), None, 0, 1),
        op(0, Put("x", 2), None, 2, 3),
        op(1, Get("x"), 1, 4, 5),
    ]
    result = check(KV, history)
    assert result.result is Verdict.ILLEGAL
    [failure] = result.failures
    assert failure.label == "key='x'"
    assert failure.linearization == tuple(history[:2])
    assert failure.stuck == (history[2],)
    assert failure.state == "value=2"
    text = result.explain(KV)
    assert "get('x') -> 1" in text and "key='x'" in text


def test_reads_seeing_two_writes_in_opposite_orders_are_illegal() -> None:
    history = [
        op(0, Put("x", 1), None, 0, 10),
        op(1, Put("x", 2), None, 0, 10),
        op(2, Get("x"), 1, 1, 2),
        op(2, Get("x"), 2, 3, 4),
        op(3, Get("x"), 2, 1, 2),
        op(3, Get("x"), 1, 3, 4),
    ]
    assert check(KV, history).result is Verdict.ILLEGAL
    # Either client alone is fine: the contradiction needs both.
    assert check(KV, history[:4]).ok
    assert check(KV, history[:2] + history[4:]).ok


def test_cas_succeeding_twice_from_the_same_value_is_illegal() -> None:
    history = [
        op(0, Put("x", 0), None, 0, 1),
        op(1, Cas("x", 0, 1), True, 2, 5),
        op(2, Cas("x", 0, 2), True, 2, 5),
    ]
    assert check(KV, history).result is Verdict.ILLEGAL
    one_wins = [*history[:2], replace(history[2], output=False)]
    result = check(KV, one_wins)
    assert result.ok
    assert result.partitions[0].linearization[1:] == (one_wins[1], one_wins[2])


def test_mutex_held_by_two_clients_at_once_is_illegal() -> None:
    history = [
        op("a", Acquire("a"), True, 0, 1),
        op("b", Acquire("b"), True, 2, 3),
        op("b", Release("b"), True, 4, 5),
        op("a", Release("a"), True, 10, 11),
    ]
    result = check(MUTEX, history)
    assert result.result is Verdict.ILLEGAL
    assert "acquire('b') -> True" in result.explain(MUTEX)


def test_mutex_handoff_and_refused_try_lock_are_ok() -> None:
    history = [
        op("a", Acquire("a"), True, 0, 1),
        op("b", Acquire("b"), False, 2, 3),  # try-lock refused while a holds it
        op("b", Acquire("b"), True, 4, 8),  # blocks until a releases
        op("a", Release("a"), True, 5, 6),
        op("b", Release("b"), True, 9, 10),
    ]
    result = check(MUTEX, history)
    assert result.ok, result.explain(MUTEX)
    assert_valid_linearization(MUTEX, result)


def test_mutex_release_by_a_non_holder() -> None:
    acquired = op("a", Acquire("a"), True, 0, 1)
    assert check(MUTEX, [acquired, op("b", Release("b"), True, 2, 3)]).result is Verdict.ILLEGAL
    assert check(MUTEX, [acquired, op("b", Release("b"), False, 2, 3)]).ok
    assert check(MUTEX, [op("a", Acquire("a"), False, 0, 1)]).result is Verdict.ILLEGAL


def test_mutex_partitions_by_lock_name() -> None:
    history = [
        op("a", Acquire("a", lock="l1"), True, 0, 1),
        op("b", Acquire("b", lock="l2"), True, 2, 3),  # another lock: no conflict
        op("c", Acquire("c", lock="l1"), True, 2, 3),  # l1 is held by a: conflict
    ]
    result = check(MUTEX, history)
    assert result.result is Verdict.ILLEGAL
    assert [(p.label, p.result) for p in result.partitions] == [
        ("lock='l1'", Verdict.ILLEGAL),
        ("lock='l2'", Verdict.OK),
    ]


# --- unknown outcomes ---------------------------------------------------------------------


def _timed_out_write_then_reads(*reads: Any) -> list[Operation]:
    history = [op(0, Put("x", 1), None, 0, 1), Operation.timed_out(1, Put("x", 2), 2)]
    history += [op(2, Get("x"), value, 5 + 2 * i, 6 + 2 * i) for i, value in enumerate(reads)]
    return history


@pytest.mark.parametrize(
    ("reads", "verdict"),
    [
        ((2,), Verdict.OK),  # it took effect
        ((1,), Verdict.OK),  # it did not (or not yet)
        ((1, 1, 2, 2), Verdict.OK),  # it took effect late
        ((2, 1), Verdict.ILLEGAL),  # once seen, it cannot be undone
        ((3,), Verdict.ILLEGAL),  # nobody wrote 3
    ],
)
def test_a_timed_out_write_may_or_may_not_have_happened(reads: tuple[Any, ...], verdict: Verdict) -> None:
    assert check(KV, _timed_out_write_then_reads(*reads)).result is verdict


def test_a_timed_out_write_cannot_take_effect_before_its_call() -> None:
    history = [Operation.timed_out(1, Put("x", 2), 10), op(2, Get("x"), 2, 0, 5)]
    assert check(KV, history).result is Verdict.ILLEGAL


def test_unknown_outcomes_that_no_state_accepts_are_left_out() -> None:
    # a holds the lock to the end, so b's timed-out acquire can never be placed; that is
    # no violation, it just did not happen. Likewise a CAS whose expected value never held.
    locks = [op("a", Acquire("a"), True, 0, 1), Operation.timed_out("b", Acquire("b"), 2)]
    assert check(MUTEX, locks).ok
    kv = [op(0, Put("x", 1), None, 0, 1), Operation.timed_out(1, Cas("x", 7, 8), 2)]
    result = check(KV, kv)
    assert result.ok
    assert result.partitions[0].linearization == (kv[0],)


def test_a_timed_out_cas_may_have_won() -> None:
    history = [
        op(0, Put("x", 1), None, 0, 1),
        Operation.timed_out(1, Cas("x", 1, 2), 2),
        op(2, Get("x"), 2, 5, 6),
        op(2, Get("x"), 2, 7, 8),
    ]
    assert check(KV, history).ok


def test_unknown_output_with_a_known_return_took_effect() -> None:
    history = [op(0, Put("x", 1), None, 0, 1), op(0, Put("x", 2), UNKNOWN_OUTPUT, 2, 3)]
    assert check(KV, [*history, op(1, Get("x"), 2, 4, 5)]).ok
    assert check(KV, [*history, op(1, Get("x"), 1, 4, 5)]).result is Verdict.ILLEGAL


# --- versioned KV ---------------------------------------------------------------------------


def test_versioned_kv_counts_writes_and_compares_versions() -> None:
    history = [
        op(0, Get("k"), (None, 0), 0, 1),
        op(0, Put("k", "a"), 1, 2, 3),
        op(1, CasVersion("k", 1, "b"), True, 4, 5),
        op(2, CasVersion("k", 1, "c"), False, 4, 5),
        op(1, Get("k"), ("b", 2), 6, 7),
        op(2, Delete("k"), None, 8, 9),  # a client that does not report the version
        op(1, Get("k"), (None, 3), 10, 11),
        op(1, ("cas_version", "k", 3, "d"), True, 12, 13),
    ]
    result = check(VKV, history)
    assert result.ok, result.explain(VKV)
    assert result.partitions[0].state == "value='d' version=4"


def test_versioned_kv_rejects_a_version_that_went_backwards() -> None:
    history = [
        op(0, Put("k", "a"), 1, 0, 1),
        op(0, Put("k", "a"), 2, 2, 3),
        op(1, Get("k"), ("a", 1), 4, 5),  # same value, but the version betrays a stale replica
    ]
    assert check(KV, [replace(o, output=None if o.client_id == 0 else "a") for o in history]).ok
    assert check(VKV, history).result is Verdict.ILLEGAL


# --- partitioning, events, timeouts, validation ---------------------------------------------


def test_keys_are_checked_independently() -> None:
    x = [op(0, Put("x", 1), None, 0, 1), op(1, Get("x"), 1, 2, 3)]
    y = [op(0, Put("y", 1), None, 0, 1), op(0, Put("y", 2), None, 2, 3), op(1, Get("y"), 1, 4, 5)]
    result = check(KV, x + y)
    assert result.result is Verdict.ILLEGAL
    assert [(p.label, p.result) for p in result.partitions] == [
        ("key='x'", Verdict.OK),
        ("key='y'", Verdict.ILLEGAL),
    ]
    assert [f.label for f in result.failures] == ["key='y'"]
    # Interleaved in time with an unrelated key, x is still fine on its own.
    assert check(KV, x + y[:2]).ok


def test_event_list_form() -> None:
    events = [
        Event(EventKind.CALL, 0, "w", Put("x", 1)),
        Event(EventKind.CALL, 1, "r", Get("x")),
        Event(EventKind.RETURN, 1, "r", 1),
        Event(EventKind.RETURN, 0, "w", None),
        Event(EventKind.CALL, 2, "lost", Put("x", 2)),  # never returns: unknown outcome
        Event(EventKind.CALL, 1, "r2", Get("x")),
        Event(EventKind.RETURN, 1, "r2", 2),
    ]
    ops = operations_from_events(events)
    assert [(o.call_time, o.return_time) for o in ops] == [(1, 2), (0, 3), (5, 6), (4, math.inf)]
    assert check_events(KV, events).ok
    stale = [*events[:-1], Event(EventKind.RETURN, 1, "r2", None)]
    assert check_events(KV, stale).result is Verdict.ILLEGAL


def test_malformed_event_lists_are_rejected() -> None:
    with pytest.raises(HistoryError):
        operations_from_events([Event(EventKind.RETURN, 0, "a", None)])
    call = Event(EventKind.CALL, 0, "a", Get("x"))
    with pytest.raises(HistoryError):
        operations_from_events([call, call])


@pytest.mark.parametrize(
    ("call", "ret", "output"),
    [(5, 4, None), (math.inf, math.inf, UNKNOWN_OUTPUT), (math.nan, 1, None), (0, math.inf, None)],
)
def test_malformed_operations_are_rejected(call: float, ret: float, output: Any) -> None:
    with pytest.raises(HistoryError):
        Operation(0, Get("x"), output, call, ret)


def test_inputs_a_model_does_not_know_are_errors() -> None:
    with pytest.raises(ValueError):
        check(KV, [op(0, ("increment", "x"), None, 0, 1)])
    with pytest.raises(ValueError):
        check(MUTEX, [op(0, Get("x"), None, 0, 1)])


class JumpingClock:
    """Reads ``start`` for the first ``reads_before_jump`` calls, then far in the future."""

    def __init__(self, reads_before_jump: int) -> None:
        self.reads = 0
        self.reads_before_jump = reads_before_jump

    def __call__(self) -> float:
        self.reads += 1
        return 0.0 if self.reads <= self.reads_before_jump else 1e9


def test_a_search_past_its_deadline_is_unknown() -> None:
    history = random_kv_history(random.Random(1), clients=3, ops_per_client=20, keys=("x", "y"))
    result = check_operations(KV, history, timeout_s=1.0, clock=JumpingClock(1))
    assert result.result is Verdict.UNKNOWN
    assert [p.result for p in result.partitions] == [Verdict.UNKNOWN, Verdict.UNKNOWN]


def test_illegal_outranks_a_later_timeout() -> None:
    stale = [op(0, Put("x", 1), None, 0, 1), op(0, Put("x", 2), None, 2, 3), op(1, Get("x"), 1, 4, 5)]
    fine = [op(0, Put("y", 1), None, 0, 1)]
    # Reads: start, the first partition's one deadline check; the second partition sees the jump.
    result = check_operations(KV, stale + fine, timeout_s=1.0, clock=JumpingClock(2))
    assert [p.result for p in result.partitions] == [Verdict.ILLEGAL, Verdict.UNKNOWN]
    assert result.result is Verdict.ILLEGAL


def test_public_api() -> None:
    assert set(verify.__all__) == {
        "UNKNOWN_OUTPUT", "Acquire", "Cas", "CasVersion", "CheckResult", "Delete", "Event",
        "EventKind", "Get", "HistoryError", "KvModel", "KvOp", "Model", "MutexModel", "Operation",
        "PartitionReport", "Put", "Release", "Verdict", "VersionedKvModel", "as_kv_op",
        "check_events", "check_operations", "describe", "operations_from_events", "partition_by",
    }  # fmt: skip


# --- random histories from a sequential simulation -----------------------------------------


@dataclass(frozen=True)
class _Slot:
    """An operation's interval before its input is chosen; ``at`` is when it takes effect (None: never)."""

    client: int
    call: float
    ret: float
    at: float | None


def _slots(rng: random.Random, clients: int, ops_per_client: int, timeout_rate: float) -> list[_Slot]:
    slots = []
    for client in range(clients):
        t = rng.uniform(0, 2)
        for _ in range(ops_per_client):
            if rng.random() < timeout_rate:
                # The client gives up after 10; the operation may land later, or never.
                at = t + rng.uniform(0, 20) if rng.random() < 0.5 else None
                slots.append(_Slot(client, t, math.inf, at))
                t += 10 + rng.uniform(0, 2)
            else:
                ret = t + rng.uniform(0.5, 8)
                slots.append(_Slot(client, t, ret, rng.uniform(t, ret)))
                t = ret + rng.uniform(0, 2)
    return slots


def random_kv_history(
    rng: random.Random,
    clients: int,
    ops_per_client: int,
    keys: Sequence[str],
    timeout_rate: float = 0.0,
) -> list[Operation]:
    """A linearizable history by construction: operations take effect one at a time inside
    their intervals, in a sequential store, and see what it returns. Written values are unique
    so that a corrupted read has exactly one explanation."""
    store: dict[str, int | None] = dict.fromkeys(keys)
    fresh = itertools.count(1)
    history: list[Operation] = []
    slots = _slots(rng, clients, ops_per_client, timeout_rate)
    for s in sorted(slots, key=lambda s: math.inf if s.at is None else s.at):
        key = rng.choice(keys)
        if s.at is None:
            history.append(Operation.timed_out(s.client, Put(key, next(fresh)), s.call))
            continue
        roll = rng.random()
        current = store[key]
        output: Any
        if roll < 0.35:
            inp: Any = Put(key, next(fresh))
            store[key], output = inp.value, None
        elif roll < 0.75:
            inp, output = Get(key), current
        elif roll < 0.9:
            expected = current if rng.random() < 0.6 else rng.randrange(1, 10)
            inp = Cas(key, expected, next(fresh))
            output = current == expected
            if output:
                store[key] = inp.new
        else:
            inp, output = Delete(key), None
            store[key] = None
        if s.ret == math.inf:
            output = UNKNOWN_OUTPUT
        history.append(Operation(s.client, inp, output, s.call, s.ret))
    history.sort(key=lambda o: (o.client_id, o.call_time))
    return history


def random_mutex_history(rng: random.Random, clients: int, ops_per_client: int) -> list[Operation]:
    """Each client alternates acquire and release on one of two locks, as a sequential lock decides."""
    holder: dict[str, int | None] = {"l1": None, "l2": None}
    history = []
    for s in sorted(_slots(rng, clients, ops_per_client, 0.0), key=lambda s: s.at or 0.0):
        held = [name for name, h in holder.items() if h == s.client]
        if held:
            holder[held[0]] = None
            history.append(Operation(s.client, Release(s.client, held[0]), True, s.call, s.ret))
        else:
            lock = rng.choice(sorted(holder))
            won = holder[lock] is None
            if won:
                holder[lock] = s.client
            history.append(Operation(s.client, Acquire(s.client, lock), won, s.call, s.ret))
    return history


def _corrupt_with_a_stale_read(history: list[Operation]) -> list[Operation]:
    """Make a get return a value overwritten before it was called: put p1 < put p2 < get."""
    done = [o for o in history if not o.outcome_unknown]
    puts = sorted((o for o in done if isinstance(o.input, Put)), key=lambda o: o.call_time)
    gets = sorted((o for o in done if isinstance(o.input, Get)), key=lambda o: o.call_time)
    for g in gets[len(gets) // 2 :]:
        same_key = [p for p in puts if p.input.key == g.input.key and p.return_time < g.call_time]
        for p1, p2 in itertools.combinations(same_key, 2):
            if p1.return_time < p2.call_time and g.output != p1.input.value:
                return [replace(o, output=p1.input.value) if o is g else o for o in history]
    raise AssertionError("no stale read to plant")


def _corrupt_with_a_phantom_read(history: list[Operation]) -> list[Operation]:
    """Make a get in the middle return a value nobody wrote."""
    gets = [i for i, o in enumerate(history) if isinstance(o.input, Get) and not o.outcome_unknown]
    i = gets[len(gets) // 2]
    return [replace(o, output="phantom") if j == i else o for j, o in enumerate(history)]


@pytest.mark.parametrize("keys", [("k",), ("a", "b", "c")], ids=["one-key", "three-keys"])
def test_large_random_history_is_ok_and_fast(keys: tuple[str, ...]) -> None:
    history = random_kv_history(random.Random(2024), clients=5, ops_per_client=200, keys=keys)
    result = check_operations(KV, history, timeout_s=30.0)
    assert result.ok, result.explain(KV)
    assert result.elapsed_s < 5.0
    assert_valid_linearization(KV, result)


@pytest.mark.parametrize("timeout_rate", [0.0, 0.02], ids=["no-timeouts", "timeouts"])
@pytest.mark.parametrize("corrupt", [_corrupt_with_a_stale_read, _corrupt_with_a_phantom_read])
@pytest.mark.parametrize("keys", [("k",), ("a", "b", "c")], ids=["one-key", "three-keys"])
def test_corrupted_large_random_history_is_illegal(
    keys: tuple[str, ...], corrupt: Any, timeout_rate: float
) -> None:
    rng = random.Random(2024)
    history = corrupt(
        random_kv_history(rng, clients=5, ops_per_client=200, keys=keys, timeout_rate=timeout_rate)
    )
    result = check_operations(KV, history, timeout_s=30.0)
    assert result.result is Verdict.ILLEGAL
    assert result.elapsed_s < 5.0
    [failure] = result.failures
    assert failure.stuck


@pytest.mark.parametrize("seed", range(3))
def test_large_random_history_with_timeouts_is_ok(seed: int) -> None:
    history = random_kv_history(
        random.Random(seed), clients=5, ops_per_client=200, keys=("a", "b", "c"), timeout_rate=0.02
    )
    assert any(o.outcome_unknown for o in history)
    result = check_operations(KV, history, timeout_s=30.0)
    assert result.ok, result.explain(KV)
    assert_valid_linearization(KV, result)


def test_large_random_mutex_history_is_ok() -> None:
    history = random_mutex_history(random.Random(7), clients=5, ops_per_client=200)
    assert any(o.output is False for o in history)
    result = check_operations(MUTEX, history, timeout_s=30.0)
    assert result.ok, result.explain(MUTEX)
    assert_valid_linearization(MUTEX, result)


# --- the search against independent oracles --------------------------------------------------


def brute_force_linearizable(model: Model[Any], history: Sequence[Operation]) -> bool:
    """Try every order of every set of operations that keeps all known-outcome ones."""
    known = [o for o in history if not o.outcome_unknown]
    unknown = [o for o in history if o.outcome_unknown]
    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            for order in itertools.permutations(known + list(extra)):
                if any(b.return_time < a.call_time for a, b in itertools.combinations(order, 2)):
                    continue
                state, ok = model.init(), True
                for o in order:
                    ok, state = model.step(state, o.input, o.output)
                    if not ok:
                        break
                if ok:
                    return True
    return False


def small_random_history(rng: random.Random) -> list[Operation]:
    """Up to six operations on one key with small values, integer times (ties) and noise."""
    history = []
    for _ in range(rng.randint(1, 6)):
        call = rng.randrange(0, 8)
        inp = rng.choice([Put("x", rng.randrange(3)), Get("x"), Cas("x", rng.randrange(3), rng.randrange(3))])
        if rng.random() < 0.2:
            history.append(Operation.timed_out(rng.randrange(3), inp, call))
            continue
        output = {Put: None, Get: rng.choice([None, 0, 1, 2]), Cas: rng.random() < 0.5}[type(inp)]
        history.append(Operation(rng.randrange(3), inp, output, call, call + rng.randrange(0, 5)))
    return history


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    verdicts = []
    for seed in range(400):
        history = small_random_history(random.Random(seed))
        expected = brute_force_linearizable(KV, history)
        result = check(KV, history)
        assert result.ok == expected, f"seed {seed}: {history}"
        if result.ok:
            assert_valid_linearization(KV, result)
        verdicts.append(expected)
    assert 50 < sum(verdicts) < 350  # both verdicts well exercised


@dataclass(frozen=True)
class WholeStoreModel:
    """The KV model without partitioning: the state is the whole store, as a frozenset of items."""

    def init(self) -> frozenset[tuple[Hashable, Hashable]]:
        return frozenset()

    def step(self, state: frozenset[tuple[Hashable, Hashable]], input: Any, output: Any) -> tuple[bool, Any]:
        key = input.key
        store = dict(state)
        ok, value = KV.step(store.get(key), input, output)
        store[key] = value
        return ok, frozenset((k, v) for k, v in store.items() if v is not None)

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        return [list(history)]

    def describe_partition(self, history: Sequence[Operation]) -> str:
        return "all"

    def describe_operation(self, input: Any, output: Any) -> str:
        return KV.describe_operation(input, output)

    def describe_state(self, state: frozenset[tuple[Hashable, Hashable]]) -> str:
        return repr(sorted(state, key=repr))


@pytest.mark.parametrize("seed", range(30))
def test_partitioned_and_whole_store_checks_agree(seed: int) -> None:
    rng = random.Random(seed)
    history = random_kv_history(rng, clients=3, ops_per_client=5, keys=("a", "b", "c"), timeout_rate=0.1)
    if seed % 2:
        i = rng.randrange(len(history))
        if not history[i].outcome_unknown and isinstance(history[i].input, Get):
            history[i] = replace(history[i], output=rng.choice([None, 1, 2, 3]))
    whole = check(WholeStoreModel(), history)
    partitioned = check(KV, history)
    assert whole.result is partitioned.result, f"seed {seed}"
    assert len(partitioned.partitions) == len({o.input.key for o in history})
