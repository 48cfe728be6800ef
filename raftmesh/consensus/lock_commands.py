"""Lock commands: acquire, release or renew, cancel; and the locks a task attempt holds.

Processors over an ``ApplyContext`` (see ``context.py``); the lock table itself
(``locks.py``) is the data layer. Every change that frees a lock ends in ``settle``,
which grants the waiters that can now run and breaks any deadlock.
"""

from __future__ import annotations

import heapq
import hmac

from . import kv_commands, limits
from .codes import Code
from .commands import MAX_ORIGIN_FIELD, LockAcquire, LockCancel, LockRelease
from .context import ApplyContext
from .locks import EXCLUSIVE, MODES, Request, task_owner
from .results import (
    LockAcquireResult,
    LockCancelResult,
    LockChanged,
    LockKeepAliveResult,
    LockReleaseResult,
    Rejected,
    Result,
)
from .state import TaskState


def _validate_acquire(cmd: LockAcquire) -> str:
    why = limits.name_error("owner", cmd.owner, limits.MAX_ID_CHARS)
    if why:
        return why
    if not 1 <= len(cmd.items) <= limits.MAX_LOCKS_PER_REQUEST:
        return f"a request names 1 to {limits.MAX_LOCKS_PER_REQUEST} locks"
    names = [n for n, _ in cmd.items]
    if len(set(names)) != len(names):
        return "a lock is named twice in one request"
    for name, mode in cmd.items:
        why = limits.name_error("lock name", name, limits.MAX_LOCK_NAME_CHARS)
        if why:
            return why
        if mode not in MODES:
            return f"lock mode {mode!r} must be one of {list(MODES)}"
    if not limits.MIN_LOCK_TTL_MS <= cmd.ttl_ms <= limits.MAX_LOCK_TTL_MS:
        return f"ttl_ms must be between {limits.MIN_LOCK_TTL_MS} and {limits.MAX_LOCK_TTL_MS}"
    if not 0 <= cmd.priority <= limits.MAX_LOCK_PRIORITY:
        return f"lock priority must be between 0 and {limits.MAX_LOCK_PRIORITY}"
    if not 0 <= cmd.wait_ms <= limits.MAX_LOCK_WAIT_MS:
        return f"wait_ms must be between 0 and {limits.MAX_LOCK_WAIT_MS}"
    if len(cmd.lease) > limits.MAX_ID_CHARS:
        return f"lease is longer than {limits.MAX_ID_CHARS} characters"
    if len(cmd.principal) > MAX_ORIGIN_FIELD:
        return f"principal is longer than {MAX_ORIGIN_FIELD} characters"
    return ""


def acquire(ctx: ApplyContext, cmd: LockAcquire) -> Result:
    lt = ctx.state.locks
    why = _validate_acquire(cmd) or kv_commands.fence_shape_error(cmd.fence)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    fenced = kv_commands.fence_error(ctx, cmd.fence)
    if fenced:
        return Rejected(Code.ABORTED, fenced)
    for name, _ in cmd.items:
        lock = lt.locks.get(name)
        if lock is not None and cmd.owner in lock.holders:
            return Rejected(Code.FAILED_PRECONDITION, f"owner {cmd.owner!r} already holds lock {name!r}")
        if lock is not None and any(lt.waiting[r].owner == cmd.owner for r in lock.queue):
            return Rejected(
                Code.FAILED_PRECONDITION, f"owner {cmd.owner!r} is already waiting for lock {name!r}"
            )
    if cmd.request_id in lt.waiting or cmd.request_id in lt.ended:
        return Rejected(Code.FAILED_PRECONDITION, f"lock request {cmd.request_id!r} was already used")
    now = ctx.now_ms
    items = tuple(sorted(cmd.items))
    probe = Request(
        cmd.request_id,
        cmd.owner,
        items,
        cmd.ttl_ms,
        cmd.priority,
        now,
        0,
        lt.seq + 1,
        cmd.lease,
        cmd.principal,
    )
    if lt.can_grant(cmd.owner, items, ahead_of=probe):
        rev = ctx.advance()
        lt.grant(cmd.owner, items, rev, cmd.request_id, cmd.ttl_ms, now, cmd.lease, cmd.principal)
        # A grant that overtook a waiter (priority) can close a wait-for cycle.
        lt.touched.update(name for name, _ in items)
        settle(ctx)
        return LockAcquireResult(cmd.request_id, granted=True, waiting=False, token=rev)
    if cmd.wait_ms == 0:
        return LockAcquireResult(cmd.request_id, granted=False, waiting=False, token=0)
    if len(lt.waiting) >= limits.MAX_LOCK_WAITERS:
        return Rejected(
            Code.RESOURCE_EXHAUSTED, f"{limits.MAX_LOCK_WAITERS} lock requests are already waiting"
        )
    ctx.advance()
    lt.seq += 1
    probe.seq = lt.seq
    probe.wait_deadline_ms = now + cmd.wait_ms
    lt.enqueue(probe)
    settle(ctx)
    out = lt.status(cmd.request_id)
    if out is None:
        return LockAcquireResult(cmd.request_id, granted=False, waiting=True, token=0)
    return LockAcquireResult(cmd.request_id, out.granted, False, out.token, out.code, out.message)


def release(ctx: ApplyContext, cmd: LockRelease) -> Result:
    """Release, or (``keep_alive``) renew the lease of, a lock held under a lease."""
    lt = ctx.state.locks
    if cmd.keep_alive:
        why = kv_commands.fence_shape_error(cmd.fence)
        if why:
            return Rejected(Code.INVALID_ARGUMENT, why)
        fenced = kv_commands.fence_error(ctx, cmd.fence)
        if fenced:
            return Rejected(Code.ABORTED, fenced)
    lock = lt.locks.get(cmd.name)
    h = lock.holders.get(cmd.owner) if lock else None
    if h is None:
        return Rejected(Code.ABORTED, f"{cmd.owner!r} does not hold lock {cmd.name!r} (expired or released)")
    if h.token != cmd.token:
        return Rejected(
            Code.ABORTED, f"stale token {cmd.token} for lock {cmd.name!r}; the current grant is {h.token}"
        )
    if not hmac.compare_digest(h.lease.encode(), cmd.lease.encode()):
        # Owner and token are not secret (List shows them): the lease handle proves the caller
        # is the one the grant was made for. Nothing changes.
        return Rejected(
            Code.PERMISSION_DENIED,
            f"wrong lease handle for lock {cmd.name!r}: pass the lease its Acquire returned "
            "(--lease, or LockAcquireResponse.lease)",
        )
    if not h.ttl_ms:
        # Only the attempt's end frees a task's lock (else another task could run alongside).
        return Rejected(
            Code.FAILED_PRECONDITION,
            f"lock {cmd.name!r} is held by a task attempt: it has no lease and is released when the attempt ends",
        )
    ctx.advance()
    if cmd.keep_alive:
        h.deadline_ms = ctx.state.time_ms + h.ttl_ms
        heapq.heappush(lt.deadlines, (h.deadline_ms, 0, cmd.name, cmd.owner))
        return LockKeepAliveResult(h.token, h.deadline_ms)
    lt.release(cmd.name, cmd.owner)
    ctx.released.add(cmd.name)
    settle(ctx)
    return LockReleaseResult(h.token)


def cancel(ctx: ApplyContext, cmd: LockCancel) -> Result:
    """The waiter gave up: drop its request, or release what it was granted meanwhile."""
    lt = ctx.state.locks
    rid = cmd.lock_request_id
    if rid in lt.waiting:
        rev = ctx.advance()
        why = "the waiter gave up"
        r = lt.dequeue(rid, Code.CANCELLED, why)
        assert r is not None
        ctx.released.update(n for n, _ in r.items)
        ctx.emit(LockChanged(rev, rid, r.owner, False, 0, Code.CANCELLED, why))
        settle(ctx)
        return LockCancelResult(cancelled=True)
    out = lt.status(rid)
    if out is not None and out.granted:
        names = lt.held_names(rid)
        if any(not lt.locks[n].holders[out.owner].ttl_ms for n in names):
            return Rejected(
                Code.FAILED_PRECONDITION, f"{rid!r} is a task attempt's grant; the attempt's end releases it"
            )
        ctx.advance()
        lt.release_owner(out.owner, names)
        ctx.released.update(names)
        settle(ctx)
        return LockCancelResult(cancelled=True, released=tuple(sorted(names)))
    return LockCancelResult(cancelled=False)


def settle(ctx: ApplyContext) -> None:
    """Grant what released locks allow, then break any deadlock (repeat until stable)."""
    lt = ctx.state.locks
    rev = ctx.state.revision
    now = ctx.state.time_ms
    while True:
        if ctx.released:
            names, ctx.released = ctx.released, set()
            for out in lt.grant_waiters(names, rev, now):
                ctx.emit(LockChanged(rev, out.request_id, out.owner, True, out.token))
        cycle = lt.find_cycle()
        if cycle is None:
            return
        victim = lt.victim(cycle)
        n = len(cycle)
        desc = "; ".join(
            f"{o} waits for {cycle[(i + 1) % n][0]} on lock {lk!r}" for i, (o, lk) in enumerate(cycle)
        )
        msg = f"deadlock: {desc}; aborted the request {victim.request_id} of {victim.owner} (lowest priority, youngest)"
        lt.dequeue(victim.request_id, Code.ABORTED, msg)
        ctx.released.update(name for name, _ in victim.items)
        ctx.emit(LockChanged(rev, victim.request_id, victim.owner, False, 0, Code.ABORTED, msg))


def expire(ctx: ApplyContext, now: int) -> int:
    """End lock leases and waits whose deadline ``now`` passed; how many ended."""
    lt = ctx.state.locks
    rev = ctx.state.revision
    n = 0
    while True:
        d = lt.next_deadline_ms()
        if d is None or d > now:
            break
        _, kind, key, owner = heapq.heappop(lt.deadlines)
        if kind == 0:
            lt.release(key, owner)
            ctx.released.add(key)
        else:
            r = lt.dequeue(key, Code.DEADLINE_EXCEEDED, "gave up waiting: the wait timeout passed")
            if r is not None:
                ctx.released.update(name for name, _ in r.items)
                ctx.emit(LockChanged(rev, key, owner, False, 0, Code.DEADLINE_EXCEEDED, "wait timed out"))
        n += 1
    settle(ctx)
    return n


# ---- locks declared by a task (held by its running attempt) ---------------------------


def task_locks_free(ctx: ApplyContext, t: TaskState, run_id: str, planned: dict[str, str]) -> str:
    """ "" if the task's locks can be granted now (given ``planned`` grants of this command)."""
    if not t.spec.locks:
        return ""
    owner = task_owner(run_id, t.spec.id, t.attempt + 1)
    for name, mode in t.spec.locks:
        other = planned.get(name)
        if other is not None and (mode == EXCLUSIVE or other == EXCLUSIVE):
            return f"lock {name!r} is planned for another task in this command"
    if not ctx.state.locks.can_grant(owner, tuple(sorted(t.spec.locks)), ahead_of=None):
        return "its locks are held or awaited"
    return ""


def grant_task_locks(ctx: ApplyContext, t: TaskState, run_id: str, rev: int) -> None:
    if t.spec.locks:
        owner = task_owner(run_id, t.spec.id, t.attempt)
        ctx.state.locks.grant(owner, tuple(sorted(t.spec.locks)), rev, owner, 0, ctx.state.time_ms)


def release_task_locks(ctx: ApplyContext, t: TaskState, run_id: str) -> None:
    if t.spec.locks:
        owner = task_owner(run_id, t.spec.id, t.attempt)
        ctx.released.update(ctx.state.locks.release_owner(owner, [n for n, _ in t.spec.locks]))
