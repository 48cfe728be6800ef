"""The replicated lock table (``raftmesh.consensus.locks`` driven by the pure state machine).

Modes, FIFO, priority with aging, wait timeouts and leases expiring only on applied
ticks, stale tokens, all-or-nothing multi-lock requests, deadlock cycles, and locks
declared by tasks. Every applied command is also checked for index and encoding
round-trip equality (``Cluster.apply``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from raftmesh.consensus import CancelRun, ClusterState, Code, RunStatus, StateMachine, TaskStatus, limits
from raftmesh.consensus.commands import (
    Activate,
    ActorOffer,
    Deactivate,
    Fence,
    KvOp,
    LockAcquire,
    LockRelease,
    NodeDown,
    RegisterNode,
    decode_command,
    encode_command,
)
from raftmesh.consensus.locks import SHARED, LockTable, task_owner
from raftmesh.consensus.placement import plan_assignments
from raftmesh.consensus.results import (
    AssignResult,
    ItemRejected,
    LockAcquireResult,
    LockCancelResult,
    LockChanged,
    LockKeepAliveResult,
    LockReleaseResult,
    expect,
)
from tests.coord import T0, Coord
from tests.test_machine import spec

S = SHARED


@pytest.fixture
def c() -> Coord:
    return Coord()


# ---- modes ---------------------------------------------------------------------


def test_shared_holders_coexist_and_exclude_exclusive(c: Coord) -> None:
    t1 = c.granted(c.acquire("a", ("L", S)))
    t2 = c.granted(c.acquire("b", ("L", S)))
    assert t2 > t1
    assert c.holders("L") == {"a": t1, "b": t2}
    # An exclusive request is refused while any shared holder remains.
    cmd = c.acquire("x", "L")
    res = c.unchanged(cmd, Code.OK)
    assert res == LockAcquireResult(cmd.request_id, granted=False, waiting=False, token=0)
    c.ok(c.release("a", "L", t1))
    c.unchanged(c.acquire("x", "L"), Code.OK)
    c.ok(c.release("b", "L", t2))
    t3 = c.granted(c.acquire("x", "L"))
    assert c.holders("L") == {"x": t3}
    assert c.lock("L").last_token == t3


def test_exclusive_holder_excludes_shared_and_exclusive(c: Coord) -> None:
    t = c.granted(c.acquire("a", "L"))
    for owner, mode in (("b", S), ("c", "exclusive")):
        v = expect(c.unchanged(c.acquire(owner, ("L", mode)), Code.OK), LockAcquireResult)
        assert (v.granted, v.waiting) == (False, False)
    # Another lock is independent.
    c.granted(c.acquire("b", "M"))
    assert c.holders("L") == {"a": t}


def test_held_against_says_whether_only_a_release_can_let_the_owner_in(c: Coord) -> None:
    """What the Locks service asks before holding an acquire back (it must not hold one that a
    priority or a free lock would grant at once)."""
    lt = c.st.locks
    X = "exclusive"
    assert not lt.held_against("b", (("L", X),))  # no such lock
    t = c.granted(c.acquire("a", "L"))
    assert lt.held_against("b", (("L", X),)) and lt.held_against("b", (("L", S),))
    assert lt.held_against("b", (("M", X), ("L", S)))  # one of several
    assert not lt.held_against("a", (("L", X),))  # its own grant: the command answers at once
    c.ok(c.release("a", "L", t))
    assert not lt.held_against("b", (("L", X),))  # free (its last_token record stays)
    c.granted(c.acquire("a", ("L", S)))
    assert not lt.held_against("b", (("L", S),))  # shared with shared
    assert lt.held_against("b", (("L", X),))
    assert not lt.held_against("a", (("L", X),))  # an upgrade by the only holder
    c.granted(c.acquire("b", ("L", S)))
    assert lt.held_against("a", (("L", X),))  # another shared holder
    # A waiter's own hold on nothing does not count: only the holder's release lets y in.
    tx = c.granted(c.acquire("x", "Q"))
    c.waits(c.acquire("y", "Q", wait=5000))
    assert lt.held_against("y", (("Q", X),))
    c.ok(c.release("x", "Q", tx))
    assert "y" in c.holders("Q") and not lt.held_against("y", (("Q", X),))


def test_an_acquire_is_held_back_long_only_behind_a_waiter_that_stays_ahead_of_it(c: Coord) -> None:
    """The Locks service's hold (node/coordination_service.py): none for a lock it could get now,
    short with nobody queued ahead, long behind a queued waiter its priority does not overtake."""
    from raftmesh.node.coordination_service import LOCK_COALESCE_QUEUED_S, LOCK_COALESCE_S, _hold_for

    X = "exclusive"
    assert _hold_for(c.st, "new", "x", (("L", X),), 0, c.ts) == 0.0  # free
    t = c.granted(c.acquire("a", "L"))
    assert _hold_for(c.st, "new", "x", (("L", X),), 0, c.ts) == LOCK_COALESCE_S  # held, nobody queued
    b_cmd = c.acquire("b", "L", wait=60_000, prio=1)
    c.waits(b_cmd)
    now = c.ts
    # b's own retry (same request id) is queued already: its place is not a waiter ahead of it.
    assert _hold_for(c.st, b_cmd.request_id, "b", (("L", X),), 1, now) == 0.0
    assert _hold_for(c.st, "new", "x", (("L", X),), 0, now) == LOCK_COALESCE_QUEUED_S
    assert _hold_for(c.st, "new", "x", (("L", X),), 1, now) == LOCK_COALESCE_QUEUED_S  # same priority, later
    assert _hold_for(c.st, "new", "x", (("L", X),), 2, now) == LOCK_COALESCE_S  # would overtake b
    assert _hold_for(c.st, "new", "a", (("L", X),), 0, now) == 0.0  # its own grant: answered at once
    c.ok(c.release("a", "L", t))  # b is granted: nobody queued
    assert _hold_for(c.st, "new", "x", (("L", X),), 0, now) == LOCK_COALESCE_S


def test_try_lock_does_not_enqueue_and_changes_nothing(c: Coord) -> None:
    t = c.granted(c.acquire("a", "L"))
    try_cmd = c.acquire("b", "L", "M", wait=0)
    c.unchanged(try_cmd, Code.OK)
    assert c.queue("L") == [] and c.st.locks.waiting == {}
    assert "M" not in c.st.locks.locks  # all or nothing: M was not taken either
    assert try_cmd.request_id not in c.st.dedup
    # Nothing was remembered: the same request id is granted once the lock is free.
    c.ok(c.release("a", "L", t))
    assert c.granted(try_cmd) > t
    assert c.holders("L") == c.holders("M") == {"b": c.st.revision}


def test_lock_requests_are_validated(c: Coord) -> None:
    bad = [
        LockAcquire(c.rid(), T0, "", (("L", "exclusive"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "has space", (("L", "exclusive"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "o" * (limits.MAX_ID_CHARS + 1), (("L", "exclusive"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"), ("L", "shared")), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "upgradable"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("", "exclusive"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L\n", "exclusive"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L" * (limits.MAX_KV_KEY_CHARS + 1), "shared"),), 1000, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"),), limits.MIN_LOCK_TTL_MS - 1, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"),), limits.MAX_LOCK_TTL_MS + 1, 0, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"),), 1000, -1, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"),), 1000, limits.MAX_LOCK_PRIORITY + 1, 0),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"),), 1000, 0, -1),
        LockAcquire(c.rid(), T0, "a", (("L", "exclusive"),), 1000, 0, limits.MAX_LOCK_WAIT_MS + 1),
        LockAcquire(
            c.rid(),
            T0,
            "a",
            tuple((f"L{i}", "shared") for i in range(limits.MAX_LOCKS_PER_REQUEST + 1)),
            1000,
        ),
    ]
    for cmd in bad:
        c.unchanged(cmd, Code.INVALID_ARGUMENT)
    c.ok(c.acquire("a", "L", ttl=limits.MIN_LOCK_TTL_MS, prio=limits.MAX_LOCK_PRIORITY))
    # Holding or already waiting for a lock, or reusing a lock request id.
    res = c.unchanged(c.acquire("a", "L", wait=1000), Code.FAILED_PRECONDITION)
    assert "already holds" in res.message
    w = c.acquire("b", "L", wait=1000)
    c.waits(w)
    res = c.unchanged(c.acquire("b", "L", "M", wait=1000), Code.FAILED_PRECONDITION)
    assert "already waiting" in res.message
    c.ok(c.cancel(w.request_id))
    # A retry of the request id returns its first result (dedup) and changes nothing.
    res = c.unchanged(c.acquire("c", "L", wait=1000, rid=w.request_id), Code.OK)
    assert expect(res, LockAcquireResult).waiting is True
    # Once dedup has forgotten it, the id is still known to the lock table: refused.
    c.st.dedup.clear()
    res = c.unchanged(c.acquire("c", "L", wait=1000, rid=w.request_id), Code.FAILED_PRECONDITION)
    assert "already used" in res.message


# ---- queueing --------------------------------------------------------------------


def test_waiters_are_served_fifo_with_growing_tokens(c: Coord) -> None:
    token = c.granted(c.acquire("h", "L"))
    waiters = [c.acquire(f"w{i}", "L", wait=60_000, ts=T0 + i) for i in range(4)]
    for w in waiters:
        c.waits(w)
    assert c.queue("L") == [w.request_id for w in waiters]
    owner = "h"
    for w in waiters:
        n = len(c.events)
        c.ok(c.release(owner, "L", token))
        assert c.lock_events(n) == [LockChanged(c.st.revision, w.request_id, w.owner, True, c.st.revision)]
        assert c.st.revision > token
        owner, token = w.owner, c.st.revision
        assert c.holders("L") == {owner: token}
        assert c.lock("L").last_token == token
        status = c.st.locks.status(w.request_id)
        assert status is not None and (status.granted, status.token) == (True, token)
    c.ok(c.release(owner, "L", token))
    assert c.holders("L") == {} and c.queue("L") == []
    assert c.lock("L").last_token == token  # the record survives release: it fences old writes


def test_writer_is_not_starved_by_a_stream_of_readers(c: Coord) -> None:
    r0 = c.granted(c.acquire("r0", ("L", S)))
    w = c.acquire("w", "L", wait=60_000)
    c.waits(w)
    # Readers arriving after the writer queue behind it, although they fit the shared holder.
    readers = [c.acquire(f"r{i}", ("L", S), wait=60_000) for i in range(1, 4)]
    for r in readers:
        c.waits(r)
    # Even a try-lock reader does not slip in.
    assert expect(c.unchanged(c.acquire("r9", ("L", S)), Code.OK), LockAcquireResult).granted is False
    n = len(c.events)
    c.ok(c.release("r0", "L", r0))
    rev = c.st.revision
    assert c.holders("L") == {"w": rev}
    assert [e.request_id for e in c.lock_events(n)] == [w.request_id]
    n = len(c.events)
    c.ok(c.release("w", "L", rev))
    # The writer's release admits every reader behind it at once (one grant, one token).
    rev = c.st.revision
    assert c.holders("L") == {"r1": rev, "r2": rev, "r3": rev}
    assert [(e.request_id, e.granted, e.token) for e in c.lock_events(n)] == [
        (r.request_id, True, rev) for r in readers
    ]


def test_a_shared_waiter_behind_an_exclusive_one_waits_for_its_turn(c: Coord) -> None:
    t = c.granted(c.acquire("h", "L"))
    w = c.acquire("w", "L", wait=60_000)
    r = c.acquire("r", ("L", S), wait=60_000)
    c.waits(w)
    c.waits(r)
    c.ok(c.release("h", "L", t))
    assert c.holders("L") == {"w": c.st.revision}
    assert c.queue("L") == [r.request_id]


def test_priority_overtakes_only_waiters_that_arrived_less_than_its_aging_window_earlier(c: Coord) -> None:
    aging = limits.LOCK_AGING_MS
    c.granted(c.acquire("h", "L"))
    # (Applied in time order: a waiter's arrival is the state's time when it is applied.)
    w0 = c.acquire("w0", "L", wait=600_000, prio=0, ts=T0)
    # Priority 1, half an aging window after w0: ahead of w0 (order key T0 - aging/2).
    p_half = c.acquire("p_half", "L", wait=600_000, prio=1, ts=T0 + aging // 2)
    # Priority 2 arriving 2*aging - 1 ms later overtakes w0; exactly 2*aging later it does not.
    p_in = c.acquire("p_in", "L", wait=600_000, prio=2, ts=T0 + 2 * aging - 1)
    p_out = c.acquire("p_out", "L", wait=600_000, prio=2, ts=T0 + 2 * aging)
    # The maximum priority arriving MAX_LOCK_PRIORITY * aging after w0 does not overtake it.
    p_max = c.acquire("p_max", "L", wait=600_000, prio=limits.MAX_LOCK_PRIORITY, ts=T0 + 100 * aging)
    for cmd in (w0, p_half, p_in, p_out, p_max):
        c.waits(cmd)
    expected = ["p_half", "p_in", "w0", "p_out", "p_max"]
    assert [c.st.locks.waiting[r].owner for r in c.queue("L")] == expected
    # Grants follow that order.
    owner = "h"
    for nxt in expected:
        c.ok(c.release(owner, "L", c.holders("L")[owner]))
        assert list(c.holders("L")) == [nxt]
        owner = nxt


def test_a_new_high_priority_request_takes_a_free_lock_before_older_low_priority_waiters(c: Coord) -> None:
    # Mixed modes: the lock is shared-held, an exclusive waiter of priority 0 queues; a shared
    # request of priority 1 within the aging window is ordered before it and fits the holder.
    c.granted(c.acquire("h", ("L", S), ts=T0))
    c.waits(c.acquire("w", "L", wait=60_000, ts=T0))
    t = c.granted(c.acquire("p", ("L", S), prio=1, ts=T0 + limits.LOCK_AGING_MS - 1))
    assert c.holders("L")["p"] == t
    # A priority-1 reader outside the window queues behind the writer.
    c.waits(c.acquire("q", ("L", S), prio=1, wait=60_000, ts=T0 + limits.LOCK_AGING_MS))


# ---- time: wait timeouts and leases --------------------------------------------------


def test_wait_timeout_expires_only_on_an_applied_tick_past_the_deadline(c: Coord) -> None:
    t = c.granted(c.acquire("h", "L", ttl=limits.MAX_LOCK_TTL_MS, ts=T0))
    w = c.acquire("w", "L", wait=1000, ts=T0)
    c.waits(w)
    deadline = T0 + 1000
    assert c.st.next_deadline_ms() == deadline
    c.ok(c.tick(deadline - 1))
    assert w.request_id in c.st.locks.waiting
    # Other commands carrying a later time move the clock but never expire the wait.
    c.granted(c.acquire("x", "M", ts=deadline + 5000))
    c.ok(c.put("k", 1))
    c.ok(c.release("h", "L", t, keep_alive=True, ts=deadline + 6000))
    assert w.request_id in c.st.locks.waiting and c.st.time_ms == deadline + 6000
    n = len(c.events)
    # A tick expires against the state's time, even if its own ts lags.
    c.ok(c.tick(deadline - 500))
    assert w.request_id not in c.st.locks.waiting and c.queue("L") == []
    [ev] = c.lock_events(n)
    assert (ev.request_id, ev.owner, ev.granted, ev.token, ev.code) == (
        w.request_id,
        "w",
        False,
        0,
        Code.DEADLINE_EXCEEDED,
    )
    out = c.st.locks.status(w.request_id)
    assert out is not None and (out.granted, out.code) == (False, Code.DEADLINE_EXCEEDED)
    assert c.holders("L") == {"h": t}
    # The timed-out waiter is not granted later, and its request id cannot be reused.
    c.ok(c.release("h", "L", t))
    assert c.holders("L") == {}
    res = c.unchanged(c.acquire("w", "L", rid=w.request_id), Code.OK)  # a retry: the first result
    assert expect(res, LockAcquireResult).waiting is True


def test_wait_deadline_is_inclusive_on_the_tick(c: Coord) -> None:
    c.granted(c.acquire("h", "L", ts=T0))
    w = c.acquire("w", "L", wait=700, ts=T0)
    c.waits(w)
    c.ok(c.tick(T0 + 699))
    assert w.request_id in c.st.locks.waiting
    c.ok(c.tick(T0 + 700))
    assert w.request_id not in c.st.locks.waiting


def test_lease_expiry_by_tick_releases_and_grants_the_next_waiter(c: Coord) -> None:
    t1 = c.granted(c.acquire("a", "L", ttl=1000, ts=T0))
    w = c.acquire("b", "L", wait=60_000, ts=T0)
    c.waits(w)
    assert c.st.next_deadline_ms() == T0 + 1000
    c.ok(c.put("k", "v", fence=None))  # a later command of any other kind expires nothing
    c.granted(c.acquire("x", "M", ts=T0 + 50_000))
    assert c.holders("L") == {"a": t1}
    n = len(c.events)
    c.ok(c.tick(T0 + 999))  # the state time is already past; ticks expire against it
    rev = c.st.revision
    assert c.holders("L") == {"b": rev}
    assert c.lock_events(n) == [LockChanged(rev, w.request_id, "b", True, rev)]
    assert rev > t1
    # The expired holder can neither renew nor release.
    for keep in (True, False):
        res = c.unchanged(c.release("a", "L", t1, keep_alive=keep), Code.ABORTED)
        assert "does not hold" in res.message


def test_lease_expires_at_its_deadline_only(c: Coord) -> None:
    t = c.granted(c.acquire("a", "L", ttl=1000, ts=T0))
    c.ok(c.tick(T0 + 999))
    assert c.holders("L") == {"a": t}
    c.ok(c.tick(T0 + 1000))
    assert c.holders("L") == {}
    assert c.st.next_deadline_ms() is None


def test_keep_alive_extends_the_lease(c: Coord) -> None:
    t = c.granted(c.acquire("a", "L", ttl=1000, ts=T0))
    res = c.ok(c.release("a", "L", t, keep_alive=True, ts=T0 + 800))
    assert res == LockKeepAliveResult(token=t, deadline_ms=T0 + 1800)
    assert c.holder("L", "a").deadline_ms == T0 + 1800
    assert c.st.next_deadline_ms() == T0 + 1800
    c.ok(c.tick(T0 + 1500))
    assert c.holders("L") == {"a": t}  # the token does not change on renewal
    c.ok(c.tick(T0 + 1799))
    assert c.holders("L") == {"a": t}
    c.ok(c.tick(T0 + 1800))
    assert c.holders("L") == {}


def test_keep_alive_at_the_same_time_keeps_indexes_equal(c: Coord) -> None:
    # Renewing without time passing leaves the deadline where it was; the maintained
    # deadline heap must still equal the rebuilt one (Coord checks after each command).
    t = c.granted(c.acquire("a", "L", ttl=1000, ts=T0))
    c.ok(c.release("a", "L", t, keep_alive=True, ts=T0))
    c.ok(c.release("a", "L", t))
    c.granted(c.acquire("a", "L", ttl=1000, ts=T0))  # the same owner, lock and deadline again
    c.ok(c.tick(T0 + 1000))
    assert c.holders("L") == {}


def test_release_or_keep_alive_with_a_stale_token_is_rejected(c: Coord) -> None:
    t1 = c.granted(c.acquire("a", "L"))
    c.ok(c.release("a", "L", t1))
    t2 = c.granted(c.acquire("a", "L"))
    assert t2 > t1
    for keep in (False, True):
        res = c.unchanged(c.release("a", "L", t1, keep_alive=keep), Code.ABORTED)
        assert "stale token" in res.message
        c.unchanged(c.release("a", "L", t2 + 5, keep_alive=keep), Code.ABORTED)
        c.unchanged(c.release("b", "L", t2, keep_alive=keep), Code.ABORTED)  # not the holder
        c.unchanged(c.release("a", "nope", t2, keep_alive=keep), Code.ABORTED)
    assert c.holders("L") == {"a": t2}
    res = c.ok(c.release("a", "L", t2))
    assert res == LockReleaseResult(token=t2)
    c.unchanged(c.release("a", "L", t2), Code.ABORTED)  # released twice


def test_tokens_strictly_increase_per_lock_across_grants(c: Coord) -> None:
    seen: list[int] = []
    for i in range(5):
        owner = f"o{i % 2}"
        t = c.granted(c.acquire(owner, "L", ttl=1000, ts=c.ts))
        seen.append(t)
        c.ok(c.put(f"noise{i}", i))  # other commands raise the revision between grants
        if i % 2:
            c.ok(c.release(owner, "L", t))
        else:
            c.ts += 1000
            c.ok(c.tick(c.ts))  # released by expiry
    assert seen == sorted(set(seen))
    assert c.lock("L").last_token == seen[-1]


# ---- several locks at once -----------------------------------------------------------


def test_multi_lock_request_is_all_or_nothing(c: Coord) -> None:
    t2 = c.granted(c.acquire("a", "L2"))
    m = c.acquire("m", "L1", "L2", "L3", wait=60_000)
    c.waits(m)
    # While it waits, it holds none of them.
    assert c.holders("L1") == {} and c.holders("L3") == {}
    assert c.queue("L1") == c.queue("L2") == c.queue("L3") == [m.request_id]
    n = len(c.events)
    c.ok(c.release("a", "L2", t2))
    rev = c.st.revision
    assert c.holders("L1") == c.holders("L2") == c.holders("L3") == {"m": rev}
    assert c.lock_events(n) == [LockChanged(rev, m.request_id, "m", True, rev)]
    # Released one by one, with the one token.
    c.ok(c.release("m", "L1", rev))
    assert c.holders("L2") == {"m": rev}


def test_multi_lock_request_does_not_overtake_conflicting_earlier_waiters(c: Coord) -> None:
    ta = c.granted(c.acquire("a", "L2"))
    w = c.acquire("w", "L2", wait=60_000, ts=T0)
    m = c.acquire("m", "L1", "L2", wait=60_000, ts=T0 + 1)
    c.waits(w)
    c.waits(m)
    # L1 is free but m waits on it: a later request for L1 queues behind m (no overtaking).
    late = c.acquire("z", "L1", wait=60_000, ts=T0 + 2)
    c.waits(late)
    c.ok(c.release("a", "L2", ta))
    tw = c.st.revision
    assert c.holders("L2") == {"w": tw}
    assert c.holders("L1") == {}  # m does not take L1 alone
    c.ok(c.release("w", "L2", tw))
    tm = c.st.revision
    assert c.holders("L1") == c.holders("L2") == {"m": tm}
    c.ok(c.release("m", "L1", tm))
    assert c.holders("L1") == {"z": c.st.revision}


def test_multi_lock_shared_and_exclusive_mix(c: Coord) -> None:
    c.granted(c.acquire("r", ("L1", S)))
    # Shared on L1 and exclusive on L2: compatible with the shared holder of L1.
    t = c.granted(c.acquire("m", ("L1", S), ("L2", "exclusive")))
    assert c.holders("L1") == {"r": t - 1, "m": t} and c.holders("L2") == {"m": t}
    assert c.holder("L1", "m").mode == S and c.holder("L2", "m").mode == "exclusive"


# ---- deadlocks -----------------------------------------------------------------------


def _abort_event(c: Coord, n: int) -> LockChanged:
    aborted = [e for e in c.lock_events(n) if e.code is Code.ABORTED]
    assert len(aborted) == 1, c.lock_events(n)
    return aborted[0]


def test_deadlock_of_two_aborts_the_youngest_request(c: Coord) -> None:
    c.granted(c.acquire("A", "L1"))
    tb = c.granted(c.acquire("B", "L2"))
    ra = c.acquire("A", "L2", wait=60_000, ts=T0)
    c.waits(ra)
    n = len(c.events)
    rb = c.acquire("B", "L1", wait=60_000, ts=T0 + 1)
    v = expect(c.ok(rb), LockAcquireResult)
    assert (v.granted, v.waiting, v.end_code) == (False, False, Code.ABORTED)
    msg = v.end_message
    assert "deadlock" in msg and rb.request_id in msg
    assert "A waits for B on lock 'L2'" in msg and "B waits for A on lock 'L1'" in msg
    ev = _abort_event(c, n)
    assert (ev.request_id, ev.owner, ev.message) == (rb.request_id, "B", msg)
    assert rb.request_id not in c.st.locks.waiting
    assert ra.request_id in c.st.locks.waiting  # the survivor still waits for B's lock
    assert c.st.locks.find_cycle(whole=True) is None
    # B, told of the deadlock, releases L2: A's request completes.
    c.ok(c.release("B", "L2", tb))
    assert c.holders("L2") == {"A": c.st.revision}


def test_deadlock_of_two_aborts_the_lowest_priority_request_first(c: Coord) -> None:
    c.granted(c.acquire("A", "L1"))
    c.granted(c.acquire("B", "L2"))
    ra = c.acquire("A", "L2", wait=60_000, prio=1, ts=T0)
    c.waits(ra)
    n = len(c.events)
    rb = c.acquire("B", "L1", wait=60_000, prio=5, ts=T0 + 1)
    c.waits(rb)  # the older request has the lower priority: it is the victim
    ev = _abort_event(c, n)
    assert (ev.request_id, ev.owner) == (ra.request_id, "A")
    assert "A waits for B on lock 'L2'" in ev.message and "B waits for A on lock 'L1'" in ev.message
    out = c.st.locks.status(ra.request_id)
    assert out is not None and out.code is Code.ABORTED


def test_deadlock_of_three_is_broken_and_names_the_cycle(c: Coord) -> None:
    for owner, name in (("A", "L1"), ("B", "L2"), ("C", "L3")):
        c.granted(c.acquire(owner, name))
    ra = c.acquire("A", "L2", wait=60_000, prio=3, ts=T0)
    rb = c.acquire("B", "L3", wait=60_000, prio=2, ts=T0 + 1)
    c.waits(ra)
    c.waits(rb)
    n = len(c.events)
    rc = c.acquire("C", "L1", wait=60_000, prio=3, ts=T0 + 2)
    c.waits(rc)
    ev = _abort_event(c, n)
    assert (ev.request_id, ev.owner) == (rb.request_id, "B")  # lowest priority, though not youngest
    for part in ("A waits for B on lock 'L2'", "B waits for C on lock 'L3'", "C waits for A on lock 'L1'"):
        assert part in ev.message
    assert set(c.st.locks.waiting) == {ra.request_id, rc.request_id}
    assert c.st.locks.find_cycle(whole=True) is None


def test_deadlock_of_three_with_equal_priorities_aborts_the_youngest(c: Coord) -> None:
    for owner, name in (("A", "L1"), ("B", "L2"), ("C", "L3")):
        c.granted(c.acquire(owner, name))
    reqs = [c.acquire("A", "L2", wait=60_000), c.acquire("B", "L3", wait=60_000)]
    for r in reqs:
        c.waits(r)
    n = len(c.events)
    rc = c.acquire("C", "L1", wait=60_000)
    assert expect(c.ok(rc), LockAcquireResult).end_code is Code.ABORTED
    assert _abort_event(c, n).request_id == rc.request_id


def test_deadlock_victim_is_a_request_of_the_cycle(c: Coord) -> None:
    # A also waits, with the lowest priority, for a lock held outside the cycle: aborting
    # that request would not break the cycle and must not happen.
    c.granted(c.acquire("A", "L1"))
    c.granted(c.acquire("B", "L2"))
    c.granted(c.acquire("X", "L9"))
    side = c.acquire("A", "L9", wait=60_000, prio=0)
    c.waits(side)
    ra = c.acquire("A", "L2", wait=60_000, prio=5)
    c.waits(ra)
    n = len(c.events)
    rb = c.acquire("B", "L1", wait=60_000, prio=5)
    c.ok(rb)
    assert _abort_event(c, n).request_id == rb.request_id
    assert side.request_id in c.st.locks.waiting and ra.request_id in c.st.locks.waiting


def test_deadlock_through_a_queued_writer_is_detected(c: Coord) -> None:
    # A holds L1 shared; W waits for L1 exclusively (FIFO: it blocks later readers);
    # B holds L2 and asks for L1 shared: it fits A but must queue behind W. Now A asks
    # for L2: A waits for B, B waits for W (queue order), W waits for A. A cycle.
    c.granted(c.acquire("A", ("L1", S)))
    c.granted(c.acquire("B", "L2"))
    w = c.acquire("W", "L1", wait=60_000, ts=T0)
    rb = c.acquire("B", ("L1", S), wait=60_000, ts=T0 + 1)
    c.waits(w)
    c.waits(rb)
    n = len(c.events)
    ra = c.acquire("A", "L2", wait=60_000, ts=T0 + 2)
    c.ok(ra)
    ev = _abort_event(c, n)
    assert ev.request_id == ra.request_id  # the youngest of the three
    for part in ("A waits for B on lock 'L2'", "B waits for W on lock 'L1'", "W waits for A on lock 'L1'"):
        assert part in ev.message
    assert c.st.locks.find_cycle(whole=True) is None


def test_deadlock_closed_by_an_immediate_grant_is_detected(c: Coord) -> None:
    # Found by the simulation. o2 waits for L1+L2 (both exclusive) behind a shared holder of
    # L1; o0 waits for L2 shared, queued behind o2. Then o0 takes L1 shared at once (its
    # priority orders it before o2's request): o2 now waits for o0, and o0 for o2.
    c.granted(c.acquire("o3", ("L1", S), ts=T0))
    m = c.acquire("o2", "L1", "L2", wait=60_000, ts=T0)
    r = c.acquire("o0", ("L2", S), wait=60_000, ts=T0)
    c.waits(m)
    c.waits(r)
    n = len(c.events)
    c.granted(c.acquire("o0", ("L1", S), prio=3, ts=T0 + 2000))
    assert c.st.locks.find_cycle(whole=True) is None
    ev = _abort_event(c, n)
    assert ev.request_id == r.request_id  # equal priorities: the younger of the two waiters
    assert "o0 waits for o2 on lock 'L2'" in ev.message and "o2 waits for o0 on lock 'L1'" in ev.message


def test_the_deadlock_search_follows_the_command_not_the_number_of_waiters(
    c: Coord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200 owners each hold one lock and 200 others wait on them: a graph with 200 edges that
    # no command below touches. Each command's search reaches only the owners waiting on the
    # locks it enqueued on or granted (the whole graph was rebuilt on every command before).
    for i in range(200):
        c.granted(c.acquire(f"h{i}", f"busy{i}"))
        c.waits(c.acquire(f"w{i}", f"busy{i}", wait=60_000))
    looked_at: list[str] = []
    real = LockTable._edges

    def counting(self: LockTable, owner: str) -> list[tuple[str, str]]:
        looked_at.append(owner)
        return real(self, owner)

    monkeypatch.setattr(LockTable, "_edges", counting)
    token = c.granted(c.acquire("A", "L"))
    c.waits(c.acquire("B", "L", wait=60_000))
    assert sorted(set(looked_at)) == ["A", "B"]
    looked_at.clear()
    c.ok(c.release("A", "L", token))  # hands L to B
    assert c.holders("L") == {"B": c.st.revision}
    assert len(looked_at) <= 2 and set(looked_at) <= {"A", "B"}
    # The same search still finds a cycle made through the untouched part of the graph.
    c.granted(c.acquire("C", "L3"))
    c.waits(c.acquire("h0", "L3", wait=60_000))
    rc = c.acquire("C", "busy0", wait=60_000, ts=T0 + 5)
    assert expect(c.ok(rc), LockAcquireResult).end_code is Code.ABORTED
    assert c.st.locks.find_cycle(whole=True) is None


def test_deadlock_is_broken_identically_on_every_replica(c: Coord) -> None:
    cmds = [
        c.acquire("A", "L1"),
        c.acquire("B", "L2"),
        c.acquire("C", "L3"),
        c.acquire("A", "L2", wait=60_000, prio=1),
        c.acquire("B", "L3", wait=60_000, prio=1),
        c.acquire("C", "L1", wait=60_000, prio=1),
        c.acquire("D", "L1", "L3", wait=60_000, prio=0),
        c.tick(T0 + 100),
    ]
    leader = StateMachine()
    outcomes = [leader.apply(cmd) for cmd in cmds]
    assert any(isinstance(e, LockChanged) and e.code is Code.ABORTED for _, evs in outcomes for e in evs)
    for cut in range(len(cmds)):
        replica = StateMachine()
        for cmd in cmds[:cut]:
            replica.apply(cmd)
        restored = StateMachine()
        restored.restore(replica.snapshot())
        assert [restored.apply(cmd) for cmd in cmds[cut:]] == outcomes[cut:]
        assert restored.digest() == leader.digest()
        assert restored.state.index_snapshot() == leader.state.index_snapshot()


# ---- cancel --------------------------------------------------------------------------


def test_cancel_of_a_waiting_request_removes_it_and_admits_those_behind(c: Coord) -> None:
    t0 = c.granted(c.acquire("r0", ("L", S)))
    w = c.acquire("w", "L", wait=60_000)
    r1 = c.acquire("r1", ("L", S), wait=60_000)
    c.waits(w)
    c.waits(r1)
    n = len(c.events)
    res = c.ok(c.cancel(w.request_id))
    assert res == LockCancelResult(cancelled=True, released=())
    rev = c.st.revision
    assert w.request_id not in c.st.locks.waiting
    assert [(e.request_id, e.granted, e.code) for e in c.lock_events(n)] == [
        (w.request_id, False, Code.CANCELLED),
        (r1.request_id, True, Code.OK),
    ]
    assert c.holders("L") == {"r0": t0, "r1": rev}
    out = c.st.locks.status(w.request_id)
    assert out is not None and out.code is Code.CANCELLED
    # Cancelling again, or an unknown request, changes nothing.
    assert c.unchanged(c.cancel(w.request_id), Code.OK) == LockCancelResult(cancelled=False, released=())
    assert c.unchanged(c.cancel("nope"), Code.OK) == LockCancelResult(cancelled=False)


def test_cancel_of_a_granted_request_releases_it(c: Coord) -> None:
    m = c.acquire("m", "L1", "L2")
    t = c.granted(m)
    w = c.acquire("w", "L2", wait=60_000)
    c.waits(w)
    res = c.ok(c.cancel(m.request_id))
    assert res == LockCancelResult(cancelled=True, released=("L1", "L2"))
    assert c.holders("L1") == {}
    assert c.holders("L2") == {"w": c.st.revision} and c.st.revision > t
    # The released grant's token is stale now.
    c.unchanged(c.release("m", "L1", t), Code.ABORTED)


# ---- task-declared locks ------------------------------------------------------------------


@pytest.fixture
def tc() -> Coord:
    c = Coord()
    c.ok(c.register("n1", slots=4))
    c.ok(c.register("n2", slots=4))
    return c


def test_tasks_declaring_the_same_exclusive_lock_never_run_concurrently(tc: Coord) -> None:
    c = tc
    c.ok(c.submit("r1", [spec("a", locks=(("db", "exclusive"),))]))
    c.ok(c.submit("r2", [spec("b", locks=(("db", "exclusive"),))]))
    plan = plan_assignments(c.st, c.ts, {})
    assert [(a.run_id, a.task_id) for a in plan] == [("r1", "a")]  # one plan never holds both
    # One command naming both: the second is rejected.
    res = c.ok(c.assign(("r1", "a", "n1"), ("r2", "b", "n2")))
    assert res == AssignResult(
        token=c.st.revision,
        accepted=1,
        rejected=(ItemRejected("r2", "b", "lock 'db' is planned for another task in this command"),),
    )
    a = c.task("r1", "a")
    owner = task_owner("r1", "a", 1)
    assert c.holders("db") == {owner: a.token}
    assert c.holder("db", owner).ttl_ms == 0  # no lease: the attempt's end releases it
    # While a runs: b is neither planned nor assignable.
    assert plan_assignments(c.st, c.ts, {}) == []
    res = c.unchanged(c.assign(("r2", "b", "n2")), Code.FAILED_PRECONDITION)
    assert "locks are held" in res.message
    # a completes: the lock is released in that same command, and b can run.
    c.ok(c.complete("r1", "a"))
    assert c.holders("db") == {}
    assert [(p.run_id, p.task_id) for p in plan_assignments(c.st, c.ts, {})] == [("r2", "b")]
    c.ok(c.assign(("r2", "b", "n2")))
    assert c.holders("db") == {task_owner("r2", "b", 1): c.task("r2", "b").token}


def test_shared_task_locks_run_together_but_exclude_an_exclusive_one(tc: Coord) -> None:
    c = tc
    c.ok(c.submit("r1", [spec("a", locks=(("db", S),)), spec("b", locks=(("db", S),))]))
    c.ok(c.submit("r2", [spec("x", locks=(("db", "exclusive"), ("cache", S)))]))
    plan = plan_assignments(c.st, c.ts, {})
    assert [(p.run_id, p.task_id) for p in plan] == [("r1", "a"), ("r1", "b")]
    c.ok(c.assign(("r1", "a", "n1"), ("r1", "b", "n2")))
    assert len(c.holders("db")) == 2
    c.unchanged(c.assign(("r2", "x", "n1")), Code.FAILED_PRECONDITION)
    c.ok(c.complete("r1", "a"))
    c.unchanged(c.assign(("r2", "x", "n1")), Code.FAILED_PRECONDITION)
    c.ok(c.complete("r1", "b"))
    assert [(p.run_id, p.task_id) for p in plan_assignments(c.st, c.ts, {})] == [("r2", "x")]
    c.ok(c.assign(("r2", "x", "n1")))
    x = c.task("r2", "x")
    assert c.holders("db") == c.holders("cache") == {task_owner("r2", "x", 1): x.token}


def test_task_lock_waits_for_client_holders_and_waiters(tc: Coord) -> None:
    c = tc
    t = c.granted(c.acquire("client", "db"))
    c.ok(c.submit("r1", [spec("a", locks=(("db", "exclusive"),))]))
    assert plan_assignments(c.st, c.ts, {}) == []
    c.unchanged(c.assign(("r1", "a", "n1")), Code.FAILED_PRECONDITION)
    w = c.acquire("client2", "db", wait=60_000)
    c.waits(w)
    c.ok(c.release("client", "db", t))
    # The client waiter got it; the task still waits (a task's locks never jump the queue).
    assert list(c.holders("db")) == ["client2"]
    assert plan_assignments(c.st, c.ts, {}) == []
    c.ok(c.release("client2", "db", c.holders("db")["client2"]))
    assert len(plan_assignments(c.st, c.ts, {})) == 1
    c.ok(c.assign(("r1", "a", "n1")))


def _start_locked_task_with_waiter(c: Coord, **kw: object) -> LockAcquire:
    c.ok(c.submit("r1", [spec("a", locks=(("db", "exclusive"),), **kw)]))
    c.ok(c.assign(("r1", "a", "n1")))
    owner = task_owner("r1", "a", c.task("r1", "a").attempt)
    assert list(c.holders("db")) == [owner]
    w = c.acquire("client", "db", wait=600_000)
    c.waits(w)
    return w


def _granted_in_last_command(c: Coord, w: LockAcquire, n: int) -> None:
    rev = c.st.revision
    assert c.holders("db") == {"client": rev}
    assert c.lock_events(n) == [LockChanged(rev, w.request_id, "client", True, rev)]


def test_completion_releases_task_locks_in_the_same_command(tc: Coord) -> None:
    w = _start_locked_task_with_waiter(tc)
    n = len(tc.events)
    tc.ok(tc.complete("r1", "a"))
    assert tc.task("r1", "a").status is TaskStatus.SUCCEEDED
    _granted_in_last_command(tc, w, n)


def test_failure_with_retry_releases_task_locks(tc: Coord) -> None:
    w = _start_locked_task_with_waiter(tc, retries=2)
    n = len(tc.events)
    tc.ok(tc.fail("r1", "a"))
    assert tc.task("r1", "a").status is TaskStatus.READY
    _granted_in_last_command(tc, w, n)
    # The retry cannot start while the client holds the lock.
    assert plan_assignments(tc.st, tc.ts, {}) == []
    tc.unchanged(tc.assign(("r1", "a", "n1")), Code.FAILED_PRECONDITION)


def test_node_down_requeue_releases_task_locks(tc: Coord) -> None:
    w = _start_locked_task_with_waiter(tc)
    n = len(tc.events)
    tc.ok(NodeDown(tc.rid(), tc.ts, "n1", "inc-1", "lost"))
    assert tc.task("r1", "a").status is TaskStatus.READY
    _granted_in_last_command(tc, w, n)


def test_timeout_and_cancel_release_task_locks(tc: Coord) -> None:
    w = _start_locked_task_with_waiter(tc, timeout_ms=100, retries=1)
    n = len(tc.events)
    tc.ok(tc.tick(tc.ts + 100))
    assert tc.task("r1", "a").status is TaskStatus.READY
    _granted_in_last_command(tc, w, n)
    tc.ok(tc.release("client", "db", tc.holders("db")["client"]))
    tc.ok(tc.assign(("r1", "a", "n1")))
    assert list(tc.holders("db")) == [task_owner("r1", "a", 2)]
    tc.ok(CancelRun(tc.rid(), tc.ts, "r1", "stop"))
    assert tc.st.runs["r1"].status is RunStatus.CANCELLED
    assert tc.holders("db") == {}


def test_stale_attempt_cannot_touch_the_next_attempts_lock(tc: Coord) -> None:
    c = tc
    c.ok(c.submit("r1", [spec("a", locks=(("db", "exclusive"),), retries=1)]))
    c.ok(c.assign(("r1", "a", "n1")))
    old = c.task("r1", "a").token
    c.ok(c.fail("r1", "a"))
    c.ok(c.assign(("r1", "a", "n2")))
    new = c.task("r1", "a").token
    assert new > old and c.holders("db") == {task_owner("r1", "a", 2): new}
    # A KV write fenced by the first attempt's lock grant is stale.
    c.unchanged(c.put("k", 1, fence=Fence("db", old)), Code.ABORTED)
    c.ok(c.put("k", 1, fence=Fence("db", new)))


def test_task_held_lock_cannot_be_released_or_renewed_by_a_client(tc: Coord) -> None:
    c = tc
    c.ok(c.submit("r1", [spec("a", locks=(("db", "exclusive"),))]))
    c.ok(c.submit("r2", [spec("b", locks=(("db", "exclusive"),))]))
    c.ok(c.assign(("r1", "a", "n1")))
    owner = task_owner("r1", "a", 1)
    token = c.task("r1", "a").token
    c.unchanged(c.release(owner, "db", token, keep_alive=True), Code.FAILED_PRECONDITION)
    # Only the attempt's end frees it: otherwise b could start while a still runs.
    c.unchanged(c.release(owner, "db", token), Code.FAILED_PRECONDITION)
    c.unchanged(c.cancel(owner), Code.FAILED_PRECONDITION)
    assert c.holders("db") == {owner: token}
    assert plan_assignments(c.st, c.ts, {}) == []


# ---- encoding ---------------------------------------------------------------------------


def test_lock_table_round_trips_through_the_canonical_encoding(tc: Coord) -> None:
    c = tc
    c.granted(c.acquire("a", ("L1", S), ttl=5000))
    c.granted(c.acquire("b", ("L1", S), ttl=7000))
    c.waits(c.acquire("w", "L1", "L2", wait=9000, prio=3))
    x = c.acquire("x", ("L1", S), wait=1000)
    c.waits(x)
    c.waits(c.acquire("v", ("L1", S), wait=1000))
    c.ok(c.cancel(x.request_id))
    c.ok(c.tick(c.ts))
    c.ok(c.submit("r1", [spec("t", locks=(("db", "exclusive"),))]))
    c.ok(c.assign(("r1", "t", "n1")))
    c.ok(c.txn(success=(KvOp("put", "k", {"v": [1, 2]}),)))
    copy = ClusterState.decode(c.st.encode())
    assert copy.digest() == c.st.digest()
    assert copy.index_snapshot() == c.st.index_snapshot()
    assert copy.locks.encode() == c.st.locks.encode()
    assert copy.encode() == c.st.encode()
    assert copy.next_deadline_ms() == c.st.next_deadline_ms()


def test_a_lock_request_fenced_by_a_stale_actor_epoch_is_rejected(c: Coord) -> None:
    c.ok(RegisterNode(c.rid(), c.ts, "n9", "n9:1", "n9:2", (), 1, "i9", actors=(ActorOffer("room"),)))
    c.ok(Activate(c.rid(), c.ts, address="room/a"))
    epoch = c.st.messages.activations["room/a"].epoch
    stale, current = Fence(actor="room/a", token=epoch - 1), Fence(actor="room/a", token=epoch)

    def acquire(owner: str, fence: Fence) -> LockAcquire:
        return LockAcquire(
            c.rid(), c.ts, owner=owner, items=(("L", "exclusive"),), ttl_ms=10_000, fence=fence
        )

    res = c.unchanged(acquire("actor:room/a@old", stale), Code.ABORTED)
    assert "room/a" in res.message
    c.unchanged(acquire("actor:x", Fence(actor="bad address")), Code.INVALID_ARGUMENT)
    got = c.ok(acquire(f"actor:room/a@{epoch}", current))
    assert isinstance(got, LockAcquireResult) and got.granted
    owner = f"actor:room/a@{epoch}"
    renew = LockRelease(c.rid(), c.ts, owner=owner, name="L", token=got.token, keep_alive=True, fence=current)
    assert isinstance(c.ok(renew), LockKeepAliveResult)
    # The activation is given a newer epoch: its old holder may not extend the lock, only free it.
    c.ok(Deactivate(c.rid(), c.ts, node_id="n9", address="room/a", epoch=epoch))
    c.ok(Activate(c.rid(), c.ts, address="room/a"))
    assert c.st.messages.activations["room/a"].epoch > epoch
    c.unchanged(replace(renew, request_id=c.rid()), Code.ABORTED)
    assert isinstance(c.ok(replace(renew, request_id=c.rid(), keep_alive=False)), LockReleaseResult)


def test_lock_commands_without_a_fence_encode_as_before() -> None:
    acq = LockAcquire("r", 1, owner="o", items=(("L", "exclusive"),), ttl_ms=10_000)
    rel = LockRelease("r", 1, owner="o", name="L", token=3)
    for cmd in (acq, rel):
        assert "fence" not in cmd.to_map()
        assert decode_command(encode_command(cmd)) == cmd
        fenced = replace(cmd, fence=Fence(actor="room/a", token=7))
        assert decode_command(encode_command(fenced)) == fenced
