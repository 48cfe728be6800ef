"""Lock and KV commands of the state machine (a mixin of ``StateMachine``).

Kept apart from run scheduling so each file fits in a head; the same rules hold:
validate completely, then mutate; never raise; a command that changes nothing
leaves the revision alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import limits
from .commands import Compare, Fence, KvLease, KvOp, KvTxn, LockAcquire, LockCancel, LockRelease
from .kv import Entry, KvEvent, value_size
from .locks import EXCLUSIVE, MODES, LockOutcome, Request

if TYPE_CHECKING:
    from .machine import Result
    from .state import ClusterState, TaskState


@dataclass(frozen=True, slots=True)
class LockChanged:
    """A waiting request was granted or ended (the node serving that waiter wakes up)."""

    revision: int
    request_id: str
    owner: str
    granted: bool
    token: int
    code: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class KvChanged:
    revision: int
    event: KvEvent


def check_name(what: str, value: str, max_chars: int) -> str:
    """ "" if ``value`` is a usable key/lock name, else what is wrong with it."""
    if not value:
        return f"{what} must not be empty"
    if len(value) > max_chars:
        return f"{what} {value[:40]!r}... is longer than {max_chars} characters"
    if not value.isprintable() or any(c.isspace() for c in value):
        return f"{what} {value[:40]!r} may not contain spaces or control characters"
    return ""


def task_owner(run_id: str, task_id: str, attempt: int) -> str:
    return f"task:{run_id}/{task_id}#{attempt}"


def _ok(value: Any) -> Result:
    from .machine import Result

    return Result(value=value)


def _reject(code: str, message: str) -> Result:
    from .machine import Result

    return Result(code, message)


def _entry_json(key: str, e: Entry | None) -> dict[str, Any]:
    if e is None:
        return {"key": key, "found": False}
    return {
        "key": key,
        "found": True,
        "value": e.value,
        "mod_revision": e.mod_revision,
        "create_revision": e.create_revision,
        "version": e.version,
        "lease": e.lease,
    }


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


class CoordinationMixin:
    state: ClusterState
    _events: list[Any]
    _released: set[str]

    def _advance(self, cmd: Any) -> int:  # provided by StateMachine
        raise NotImplementedError

    # ---- locks ------------------------------------------------------------------

    def _lock_acquire(self, cmd: LockAcquire) -> Result:
        st = self.state
        lt = st.locks
        why = check_name("owner", cmd.owner, limits.MAX_ID_CHARS)
        if not why and not 1 <= len(cmd.items) <= limits.MAX_LOCKS_PER_REQUEST:
            why = f"a request names 1 to {limits.MAX_LOCKS_PER_REQUEST} locks"
        names = [n for n, _ in cmd.items]
        if not why and len(set(names)) != len(names):
            why = "a lock is named twice in one request"
        for name, mode in cmd.items:
            why = why or check_name("lock name", name, limits.MAX_KV_KEY_CHARS)
            if not why and mode not in MODES:
                why = f"lock mode {mode!r} must be one of {list(MODES)}"
        if not why and not limits.MIN_LOCK_TTL_MS <= cmd.ttl_ms <= limits.MAX_LOCK_TTL_MS:
            why = f"ttl_ms must be between {limits.MIN_LOCK_TTL_MS} and {limits.MAX_LOCK_TTL_MS}"
        if not why and not 0 <= cmd.priority <= limits.MAX_LOCK_PRIORITY:
            why = f"lock priority must be between 0 and {limits.MAX_LOCK_PRIORITY}"
        if not why and not 0 <= cmd.wait_ms <= limits.MAX_LOCK_WAIT_MS:
            why = f"wait_ms must be between 0 and {limits.MAX_LOCK_WAIT_MS}"
        if why:
            return _reject("INVALID_ARGUMENT", why)
        for name in names:
            lock = lt.locks.get(name)
            if lock is not None and cmd.owner in lock.holders:
                return _reject("FAILED_PRECONDITION", f"owner {cmd.owner!r} already holds lock {name!r}")
            if lock is not None and any(lt.waiting[r].owner == cmd.owner for r in lock.queue):
                return _reject(
                    "FAILED_PRECONDITION", f"owner {cmd.owner!r} is already waiting for lock {name!r}"
                )
        if cmd.request_id in lt.waiting or cmd.request_id in lt.ended:
            return _reject("FAILED_PRECONDITION", f"lock request {cmd.request_id!r} was already used")
        now = max(st.time_ms, cmd.ts_ms)
        items = tuple(sorted(cmd.items))
        probe = Request(cmd.request_id, cmd.owner, items, cmd.ttl_ms, cmd.priority, now, 0, lt.seq + 1)
        if lt.can_grant(cmd.owner, items, ahead_of=probe):
            rev = self._advance(cmd)
            lt.grant(cmd.owner, items, rev, cmd.request_id, cmd.ttl_ms, now)
            # A grant that overtook a waiter (priority) can close a wait-for cycle.
            self._settle_locks(rev)
            return _ok({"request_id": cmd.request_id, "granted": True, "waiting": False, "token": rev})
        if cmd.wait_ms == 0:
            return _ok({"request_id": cmd.request_id, "granted": False, "waiting": False, "token": 0})
        if len(lt.waiting) >= limits.MAX_LOCK_WAITERS:
            return _reject(
                "RESOURCE_EXHAUSTED", f"{limits.MAX_LOCK_WAITERS} lock requests are already waiting"
            )
        rev = self._advance(cmd)
        lt.seq += 1
        probe.seq = lt.seq
        probe.wait_deadline_ms = now + cmd.wait_ms
        lt.enqueue(probe)
        self._settle_locks(rev)
        out = lt.status(cmd.request_id)
        if out is None:
            return _ok({"request_id": cmd.request_id, "granted": False, "waiting": True, "token": 0})
        return _ok(
            {
                "request_id": cmd.request_id,
                "granted": out.granted,
                "waiting": False,
                "token": out.token,
                "code": out.code,
                "message": out.message,
            }
        )

    def _lock_release(self, cmd: LockRelease) -> Result:
        lt = self.state.locks
        lock = lt.locks.get(cmd.name)
        h = lock.holders.get(cmd.owner) if lock else None
        if h is None:
            return _reject("ABORTED", f"{cmd.owner!r} does not hold lock {cmd.name!r} (expired or released)")
        if h.token != cmd.token:
            return _reject(
                "ABORTED", f"stale token {cmd.token} for lock {cmd.name!r}; the current grant is {h.token}"
            )
        if not h.ttl_ms:
            # Only the attempt's end frees a task's lock (else another task could run alongside).
            return _reject(
                "FAILED_PRECONDITION",
                f"lock {cmd.name!r} is held by a task attempt: it has no lease and is released when the attempt ends",
            )
        if cmd.keep_alive:
            rev = self._advance(cmd)
            now = self.state.time_ms
            h.deadline_ms = now + h.ttl_ms
            import heapq

            heapq.heappush(lt.deadlines, (h.deadline_ms, 0, cmd.name, cmd.owner))
            return _ok({"deadline_ms": h.deadline_ms, "token": h.token})
        rev = self._advance(cmd)
        lt.release(cmd.name, cmd.owner)
        self._released.add(cmd.name)
        self._settle_locks(rev)
        return _ok({"released": True, "token": h.token})

    def _lock_cancel(self, cmd: LockCancel) -> Result:
        lt = self.state.locks
        rid = cmd.lock_request_id
        if rid in lt.waiting:
            rev = self._advance(cmd)
            r = lt.dequeue(rid, "CANCELLED", "the waiter gave up")
            assert r is not None
            self._released.update(n for n, _ in r.items)
            self._events.append(LockChanged(rev, rid, r.owner, False, 0, "CANCELLED", "the waiter gave up"))
            self._settle_locks(rev)
            return _ok({"cancelled": True, "released": []})
        out = lt.status(rid)
        if out is not None and out.granted:
            names = lt.held_names(rid)
            if any(not lt.locks[n].holders[out.owner].ttl_ms for n in names):
                return _reject(
                    "FAILED_PRECONDITION", f"{rid!r} is a task attempt's grant; the attempt's end releases it"
                )
            rev = self._advance(cmd)
            lt.release_owner(out.owner, names)
            self._released.update(names)
            self._settle_locks(rev)
            return _ok({"cancelled": True, "released": sorted(names)})
        return _ok({"cancelled": False, "released": []})

    def _settle_locks(self, rev: int) -> None:
        """Grant what released locks allow, then break any deadlock (repeat until stable)."""
        lt = self.state.locks
        now = self.state.time_ms
        while True:
            if self._released:
                names, self._released = self._released, set()
                for out in lt.grant_waiters(names, rev, now):
                    self._events.append(LockChanged(rev, out.request_id, out.owner, True, out.token))
            cycle = lt.find_cycle()
            if cycle is None:
                return
            victim = lt.victim(cycle)
            n = len(cycle)
            desc = "; ".join(
                f"{o} waits for {cycle[(i + 1) % n][0]} on lock {lk!r}" for i, (o, lk) in enumerate(cycle)
            )
            msg = f"deadlock: {desc}; aborted the request {victim.request_id} of {victim.owner} (lowest priority, youngest)"
            lt.dequeue(victim.request_id, "ABORTED", msg)
            self._released.update(name for name, _ in victim.items)
            self._events.append(LockChanged(rev, victim.request_id, victim.owner, False, 0, "ABORTED", msg))

    def _expire_locks(self, now: int, rev: int) -> int:
        import heapq

        lt = self.state.locks
        n = 0
        while True:
            d = lt.next_deadline_ms()
            if d is None or d > now:
                break
            _, kind, key, owner = heapq.heappop(lt.deadlines)
            if kind == 0:
                lt.release(key, owner)
                self._released.add(key)
            else:
                r = lt.dequeue(key, "DEADLINE_EXCEEDED", "gave up waiting: the wait timeout passed")
                if r is not None:
                    self._released.update(name for name, _ in r.items)
                    self._events.append(
                        LockChanged(rev, key, owner, False, 0, "DEADLINE_EXCEEDED", "wait timed out")
                    )
            n += 1
        self._settle_locks(rev)
        return n

    # ---- task-declared locks -----------------------------------------------------

    def _task_locks_free(self, t: TaskState, run_id: str, planned: dict[str, str]) -> str:
        """ "" if the task's locks can be granted now (given ``planned`` grants of this command)."""
        if not t.spec.locks:
            return ""
        owner = task_owner(run_id, t.spec.id, t.attempt + 1)
        for name, mode in t.spec.locks:
            other = planned.get(name)
            if other is not None and (mode == EXCLUSIVE or other == EXCLUSIVE):
                return f"lock {name!r} is planned for another task in this command"
        if not self.state.locks.can_grant(owner, tuple(sorted(t.spec.locks)), ahead_of=None):
            return "its locks are held or awaited"
        return ""

    def _grant_task_locks(self, t: TaskState, run_id: str, rev: int) -> None:
        if t.spec.locks:
            owner = task_owner(run_id, t.spec.id, t.attempt)
            self.state.locks.grant(owner, tuple(sorted(t.spec.locks)), rev, owner, 0, self.state.time_ms)

    def _release_task_locks(self, t: TaskState, run_id: str) -> None:
        if t.spec.locks:
            owner = task_owner(run_id, t.spec.id, t.attempt)
            self._released.update(self.state.locks.release_owner(owner, [n for n, _ in t.spec.locks]))

    # ---- kv ----------------------------------------------------------------------

    def _fence_error(self, fence: Fence | None) -> str:
        if fence is None:
            return ""
        if fence.lock:
            lock = self.state.locks.locks.get(fence.lock)
            last = lock.last_token if lock else 0
            if fence.token <= 0 or fence.token > last:  # tokens start at 1; 0 is "none"
                return f"token {fence.token} was never granted for lock {fence.lock!r}"
            if fence.token < last:
                return f"fenced: lock {fence.lock!r} has a newer grant (token {last} > {fence.token})"
            return ""
        run = self.state.runs.get(fence.run_id)
        t = run.tasks.get(fence.task_id) if run else None
        if t is None or t.token != fence.token or t.status.value != "RUNNING":
            return f"fenced: task {fence.run_id}/{fence.task_id} attempt with token {fence.token} is no longer running"
        return ""

    def _validate_txn(self, cmd: KvTxn) -> str:
        kv = self.state.kv
        if len(cmd.compares) + len(cmd.success) + len(cmd.failure) > limits.MAX_TXN_OPS:
            return f"a transaction has at most {limits.MAX_TXN_OPS} comparisons and operations"
        for c in cmd.compares:
            why = check_name("key", c.key, limits.MAX_KV_KEY_CHARS)
            if why:
                return why
            if c.target not in ("value", "version", "mod", "create"):
                return f"compare target {c.target!r} must be value, version, mod or create"
            if c.op not in ("=", "!=", "<", ">"):
                return f"compare op {c.op!r} must be =, !=, < or >"
        for op in (*cmd.success, *cmd.failure):
            why = check_name("key", op.key, limits.MAX_KV_KEY_CHARS)
            if why:
                return why
            if op.kind not in ("put", "delete", "get"):
                return f"op kind {op.kind!r} must be put, delete or get"
            if op.kind == "put":
                size = value_size(op.value)
                if size > limits.MAX_KV_VALUE_BYTES:
                    return f"value of {op.key!r} is {size} bytes encoded; the limit is {limits.MAX_KV_VALUE_BYTES}"
                if op.lease and op.lease not in kv.leases:
                    return f"lease {op.lease} does not exist (expired or revoked)"
        if cmd.fence is not None and cmd.fence.lock:
            why = check_name("fence lock", cmd.fence.lock, limits.MAX_KV_KEY_CHARS)
            if why:
                return why
        return ""

    def _kv_txn(self, cmd: KvTxn) -> Result:
        why = self._validate_txn(cmd)
        if why:
            return _reject("INVALID_ARGUMENT", why)
        fenced = self._fence_error(cmd.fence)
        if fenced:
            return _reject("ABORTED", fenced)
        kv = self.state.kv
        ok = all(_compare_holds(c, kv.get(c.key)) for c in cmd.compares)
        ops: tuple[KvOp, ...] = cmd.success if ok else cmd.failure
        # Walk the branch once: does it change anything (a delete of a missing key does not),
        # and how many keys does the store hold afterwards?
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
            return _reject("RESOURCE_EXHAUSTED", f"the store holds its limit of {limits.MAX_KV_KEYS} keys")
        rev = self._advance(cmd) if changes else self.state.revision
        responses: list[dict[str, Any]] = []
        for o in ops:
            if o.kind == "get":
                responses.append({"kind": "get", **_entry_json(o.key, kv.get(o.key))})
            elif o.kind == "put":
                prev, e = kv.put(o.key, o.value, rev, o.lease)
                responses.append(
                    {
                        "kind": "put",
                        "key": o.key,
                        "mod_revision": rev,
                        "version": e.version,
                        "prev": _entry_json(o.key, prev),
                    }
                )
            else:
                prev = kv.delete(o.key, rev)
                responses.append({"kind": "delete", "key": o.key, "deleted": prev is not None})
        return _ok({"succeeded": ok, "revision": rev, "responses": responses})

    def _kv_lease(self, cmd: KvLease) -> Result:
        kv = self.state.kv
        if cmd.action == "grant":
            if not limits.MIN_KV_LEASE_TTL_MS <= cmd.ttl_ms <= limits.MAX_KV_LEASE_TTL_MS:
                return _reject(
                    "INVALID_ARGUMENT",
                    f"ttl_ms must be between {limits.MIN_KV_LEASE_TTL_MS} and {limits.MAX_KV_LEASE_TTL_MS}",
                )
            rev = self._advance(cmd)
            lease = kv.grant_lease(rev, cmd.ttl_ms, self.state.time_ms)
            return _ok({"lease": lease.id, "ttl_ms": lease.ttl_ms, "deadline_ms": lease.deadline_ms})
        if cmd.lease not in kv.leases:
            return _reject("NOT_FOUND", f"lease {cmd.lease} does not exist (expired or revoked)")
        if cmd.action == "keep_alive":
            self._advance(cmd)
            kept = kv.keep_alive(cmd.lease, self.state.time_ms)
            assert kept is not None
            return _ok({"lease": kept.id, "ttl_ms": kept.ttl_ms, "deadline_ms": kept.deadline_ms})
        if cmd.action == "revoke":
            rev = self._advance(cmd)
            deleted = kv.revoke(cmd.lease, rev)
            return _ok({"lease": cmd.lease, "deleted": deleted})
        return _reject("INVALID_ARGUMENT", f"lease action {cmd.action!r} must be grant, keep_alive or revoke")

    def _expire_kv(self, now: int, rev: int) -> int:
        return len(self.state.kv.expire(now, rev))


__all__ = ["CoordinationMixin", "KvChanged", "LockChanged", "LockOutcome", "check_name", "task_owner"]
