"""KV commands: transactions (put, delete, get, compare-and-set) and leases.

Processors over an ``ApplyContext`` (see ``context.py``); the store itself (``kv.py``)
is the data layer and returns the events of each write, which are emitted here.
"""

from __future__ import annotations

from typing import Any

from . import limits, messages, values
from .codes import Code
from .commands import MAX_ORIGIN_FIELD, Compare, Fence, KvLease, KvOp, KvTxn
from .context import ApplyContext
from .kv import Entry
from .results import (
    DeleteResponse,
    GetResponse,
    KvChanged,
    KvLeaseResult,
    KvLeaseRevoked,
    KvTxnResult,
    OpResponse,
    PutResponse,
    Record,
    Rejected,
    Result,
)
from .state import TaskStatus

_TARGETS = ("value", "version", "mod", "create")
_OPS = ("=", "!=", "<", ">")
_KINDS = ("put", "delete", "get")


def _record(e: Entry | None) -> Record | None:
    return None if e is None else Record(e.value, e.mod_revision, e.create_revision, e.version, e.lease)


def _compare_holds(c: Compare, e: Entry | None) -> bool:
    if c.target == "value":
        left: Any = e.value if e else None
    elif c.target == "version":
        left = e.version if e else 0
    elif c.target == "mod":
        left = e.mod_revision if e else 0
    else:
        left = e.create_revision if e else 0
    right = c.operand
    if c.op == "=":
        return bool(left == right)
    if c.op == "!=":
        return bool(left != right)
    try:
        return bool(left < right) if c.op == "<" else bool(left > right)
    except TypeError:
        return False


def fence_error(ctx: ApplyContext, fence: Fence | None) -> str:
    """ "" if the fence's holder (lock grant, task attempt or actor activation) is still current,
    else why the write is fenced out."""
    if fence is None:
        return ""
    st = ctx.state
    if fence.actor:
        return messages.fence_error(st.messages, fence.actor, fence.token)
    if fence.lock:
        lock = st.locks.locks.get(fence.lock)
        last = lock.last_token if lock else 0
        if fence.token <= 0 or fence.token > last:  # tokens start at 1; 0 is "none"
            return f"token {fence.token} was never granted for lock {fence.lock!r}"
        if fence.token < last:
            return f"fenced: lock {fence.lock!r} has a newer grant (token {last} > {fence.token})"
        return ""
    t = st.task(fence.run_id, fence.task_id)
    if t is None or t.token != fence.token or t.status is not TaskStatus.RUNNING:
        return f"fenced: task {fence.run_id}/{fence.task_id} attempt with token {fence.token} is no longer running"
    return ""


def validate_txn(ctx: ApplyContext, cmd: KvTxn) -> str:
    kv = ctx.state.kv
    if len(cmd.compares) + len(cmd.success) + len(cmd.failure) > limits.MAX_TXN_OPS:
        return f"a transaction has at most {limits.MAX_TXN_OPS} comparisons and operations"
    for c in cmd.compares:
        why = limits.name_error("key", c.key, limits.MAX_KV_KEY_CHARS)
        if why:
            return why
        if c.target not in _TARGETS:
            return f"compare target {c.target!r} must be value, version, mod or create"
        if c.op not in _OPS:
            return f"compare op {c.op!r} must be =, !=, < or >"
        why = values.problem(c.operand)
        if why:
            return f"compare {c.key!r}: operand {why}"
    for op in (*cmd.success, *cmd.failure):
        why = limits.name_error("key", op.key, limits.MAX_KV_KEY_CHARS)
        if why:
            return why
        if op.kind not in _KINDS:
            return f"op kind {op.kind!r} must be put, delete or get"
        if op.kind == "put":
            why = values.problem(op.value)
            if why:
                return f"value of {op.key!r}: {why}"
            size = limits.encoded_size(op.value)
            if size > limits.MAX_KV_VALUE_BYTES:
                return (
                    f"value of {op.key!r} is {size} bytes encoded; the limit is {limits.MAX_KV_VALUE_BYTES}"
                )
            if op.lease and op.lease not in kv.leases:
                return f"lease {op.lease} does not exist (expired or revoked)"
    return fence_shape_error(cmd.fence)


def fence_shape_error(fence: Fence | None) -> str:
    """ "" if a fence's names are well-formed (whether it still holds is ``fence_error``'s)."""
    if fence is not None and fence.lock:
        why = limits.name_error("fence lock", fence.lock, limits.MAX_LOCK_NAME_CHARS)
        if why:
            return why
    if fence is not None and fence.actor:
        return limits.address_error("fence actor", fence.actor)
    return ""


def txn(ctx: ApplyContext, cmd: KvTxn) -> Result:
    why = validate_txn(ctx, cmd)
    if why:
        return Rejected(Code.INVALID_ARGUMENT, why)
    fenced = fence_error(ctx, cmd.fence)
    if fenced:
        return Rejected(Code.ABORTED, fenced)
    kv = ctx.state.kv
    ok = all(_compare_holds(c, kv.get(c.key)) for c in cmd.compares)
    ops: tuple[KvOp, ...] = cmd.success if ok else cmd.failure
    changes, full = plan_ops(ctx, ops)
    if full:
        return Rejected(Code.RESOURCE_EXHAUSTED, full)
    rev = ctx.advance() if changes else ctx.state.revision
    return KvTxnResult(ok, rev, write_ops(ctx, ops, rev))


def plan_ops(ctx: ApplyContext, ops: tuple[KvOp, ...]) -> tuple[bool, str]:
    """Walk the ops once: do they change anything (a delete of a missing key does not), and
    ("" or why) would the store go over ``MAX_KV_KEYS``?"""
    kv = ctx.state.kv
    exists: dict[str, bool] = {}
    changes = False
    keys = len(kv.entries)
    for o in ops:
        if o.kind == "get":
            continue
        present = exists.get(o.key, o.key in kv.entries)
        if o.kind == "put":
            changes = True
            keys += 0 if present else 1
        elif present:
            changes = True
            keys -= 1
        exists[o.key] = o.kind == "put"
    if keys > len(kv.entries) and keys > limits.MAX_KV_KEYS:
        return changes, f"the store holds its limit of {limits.MAX_KV_KEYS} keys"
    return changes, ""


def write_ops(ctx: ApplyContext, ops: tuple[KvOp, ...], rev: int) -> tuple[OpResponse, ...]:
    """Apply validated ops at revision ``rev`` (emitting their events)."""
    kv = ctx.state.kv
    responses: list[OpResponse] = []
    for o in ops:
        if o.kind == "get":
            responses.append(GetResponse(o.key, _record(kv.get(o.key))))
        elif o.kind == "put":
            prev, e, ev = kv.put(o.key, o.value, rev, o.lease)
            ctx.emit(KvChanged(rev, ev))
            responses.append(PutResponse(o.key, rev, e.version, _record(prev)))
        else:
            gone = kv.delete(o.key, rev)
            if gone is not None:
                ctx.emit(KvChanged(rev, gone[1]))
            responses.append(DeleteResponse(o.key, gone is not None))
    return tuple(responses)


def lease(ctx: ApplyContext, cmd: KvLease) -> Result:
    """Grant, renew (``keep_alive``) or revoke a lease."""
    kv = ctx.state.kv
    if cmd.action == "grant":
        if not limits.MIN_KV_LEASE_TTL_MS <= cmd.ttl_ms <= limits.MAX_KV_LEASE_TTL_MS:
            return Rejected(
                Code.INVALID_ARGUMENT,
                f"ttl_ms must be between {limits.MIN_KV_LEASE_TTL_MS} and {limits.MAX_KV_LEASE_TTL_MS}",
            )
        if len(cmd.principal) > MAX_ORIGIN_FIELD:
            return Rejected(Code.INVALID_ARGUMENT, f"principal is longer than {MAX_ORIGIN_FIELD} characters")
        rev = ctx.advance()
        granted = kv.grant_lease(rev, cmd.ttl_ms, ctx.state.time_ms, cmd.principal)
        return KvLeaseResult(granted.id, granted.ttl_ms, granted.deadline_ms)
    if cmd.lease not in kv.leases:
        return Rejected(Code.NOT_FOUND, f"lease {cmd.lease} does not exist (expired or revoked)")
    if cmd.action not in ("keep_alive", "revoke"):
        return Rejected(
            Code.INVALID_ARGUMENT, f"lease action {cmd.action!r} must be grant, keep_alive or revoke"
        )
    rev = ctx.advance()
    if cmd.action == "keep_alive":
        kept = kv.keep_alive(cmd.lease, ctx.state.time_ms)
        assert kept is not None
        return KvLeaseResult(kept.id, kept.ttl_ms, kept.deadline_ms)
    deleted, events = kv.revoke(cmd.lease, rev)
    for ev in events:
        ctx.emit(KvChanged(rev, ev))
    return KvLeaseRevoked(cmd.lease, tuple(deleted))


def expire(ctx: ApplyContext, now: int) -> int:
    """Revoke the leases whose deadline ``now`` passed (deleting their keys); how many."""
    rev = ctx.state.revision
    expired, events = ctx.state.kv.expire(now, rev)
    for ev in events:
        ctx.emit(KvChanged(rev, ev))
    return len(expired)
