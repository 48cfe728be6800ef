"""The replicated lock table: the data layer (``lock_commands`` applies commands to it).

- Modes: ``shared`` (any number of shared holders) and ``exclusive``.
- A grant's fencing token is the revision of the command that granted it; it only
  grows, per lock and globally. ``last_token`` survives release, so a KV write
  fenced with an older token of that lock is rejected.
- Holders acquired by clients carry a lease (``ttl_ms``), renewed by keep-alive and
  released when an applied tick passes the deadline. Holders acquired for a task
  (owner ``task:<run>/<task>#<attempt>``) have no lease: the attempt's end releases
  them in the same command that commits its result.
- Waiters are ordered by ``order_key = enqueued_ms - priority * AGING_MS`` then
  arrival: one point of priority is worth ``AGING_MS`` of waiting, so a waiter is
  overtaken only by higher-priority waiters that arrive within a bounded time after
  it (no starvation). A request of several locks is granted all at once or not at
  all, and only when no conflicting waiter is ahead of it on any of its locks.
- Deadlocks: after every change the wait-for graph (waiting owner -> owners holding
  what it waits for, or queued ahead of it with a conflicting mode) is searched from the
  owners waiting on the locks the change touched (a new cycle passes through one); each
  cycle is broken deterministically by aborting the lowest-priority, then youngest,
  waiting request in it, with a message naming the cycle.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import limits
from .codes import Code

SHARED = "shared"
EXCLUSIVE = "exclusive"
MODES = (SHARED, EXCLUSIVE)


def task_owner(run_id: str, task_id: str, attempt: int) -> str:
    """The owner name under which a task attempt holds the locks its task declares."""
    return f"task:{run_id}/{task_id}#{attempt}"


@dataclass(slots=True)
class Holder:
    owner: str
    mode: str
    token: int
    request_id: str
    ttl_ms: int
    """0: no lease (held by a task attempt)."""
    deadline_ms: int
    lease: str = ""
    """The secret handle its release and renewals must name ("" the node's own holders);
    never shown by any list or status answer."""
    principal: str = ""
    """Who acquired it (``LockAcquire.principal``); "" for the node's own and older holders."""

    def encode(self) -> list[Any]:
        out: list[Any] = [self.owner, self.mode, self.token, self.request_id, self.ttl_ms, self.deadline_ms]
        # Each only when set: a table without handles or principals encodes (and digests) as before.
        if self.lease or self.principal:
            out.append(self.lease)
        if self.principal:
            out.append(self.principal)
        return out

    @classmethod
    def decode(cls, v: list[Any]) -> Holder:
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6] if len(v) > 6 else "", v[7] if len(v) > 7 else "")


@dataclass(slots=True)
class Lock:
    name: str
    holders: dict[str, Holder] = field(default_factory=dict)
    """owner -> holder, in grant order."""
    queue: list[str] = field(default_factory=list)
    """Request ids waiting for this lock, sorted by (order_key, seq)."""
    last_token: int = 0

    def encode(self) -> list[Any]:
        return [self.name, [h.encode() for h in self.holders.values()], list(self.queue), self.last_token]

    @classmethod
    def decode(cls, v: list[Any]) -> Lock:
        holders = [Holder.decode(h) for h in v[1]]
        return cls(v[0], {h.owner: h for h in holders}, list(v[2]), v[3])


@dataclass(slots=True)
class Request:
    request_id: str
    owner: str
    items: tuple[tuple[str, str], ...]
    """(lock name, mode), sorted by name."""
    ttl_ms: int
    priority: int
    enqueued_ms: int
    wait_deadline_ms: int
    """0: wait forever."""
    seq: int
    lease: str = ""
    """Given to the holder it becomes (``Holder.lease``)."""
    principal: str = ""
    """Who asked (``LockAcquire.principal``), passed on to the holder."""

    @property
    def order(self) -> tuple[int, int]:
        return (self.enqueued_ms - self.priority * limits.LOCK_AGING_MS, self.seq)

    def encode(self) -> list[Any]:
        return (
            [
                self.request_id,
                self.owner,
                [list(i) for i in self.items],
                self.ttl_ms,
                self.priority,
                self.enqueued_ms,
                self.wait_deadline_ms,
                self.seq,
            ]
            + ([self.lease] if self.lease or self.principal else [])
            + ([self.principal] if self.principal else [])
        )

    @classmethod
    def decode(cls, v: list[Any]) -> Request:
        return cls(
            v[0],
            v[1],
            tuple((i[0], i[1]) for i in v[2]),
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            v[8] if len(v) > 8 else "",
            v[9] if len(v) > 9 else "",
        )


@dataclass(frozen=True, slots=True)
class LockOutcome:
    """What happened to a request: granted (token), or ended without a grant (code, message)."""

    request_id: str
    owner: str
    granted: bool
    token: int = 0
    code: Code = Code.OK
    message: str = ""


@dataclass(slots=True)
class LockTable:
    locks: dict[str, Lock] = field(default_factory=dict)
    waiting: dict[str, Request] = field(default_factory=dict)
    ended: OrderedDict[str, list[Any]] = field(default_factory=OrderedDict)
    """request id -> [code, message] of requests that ended without a grant (bounded)."""
    seq: int = 0
    # derived
    deadlines: list[tuple[int, int, str, str]] = field(default_factory=list)
    """Heap of (deadline_ms, kind 0=holder 1=waiter, lock name or request id, owner); stale lazily."""
    by_request: dict[str, dict[str, None]] = field(default_factory=dict)
    """request id -> names held under it (so a lookup by request id is not a scan of every lock)."""
    waiting_by_owner: dict[str, dict[str, None]] = field(default_factory=dict)
    """owner -> ids of its waiting requests (the wait-for graph's edges out of an owner)."""
    touched: set[str] = field(default_factory=set)
    """Locks enqueued on or granted from their queue since the last ``find_cycle`` (where a
    new wait-for cycle can be); every command that adds one ends in ``settle``, which empties it."""

    # ---- encoding -----------------------------------------------------------

    def encode(self) -> list[Any]:
        return [
            [self.locks[k].encode() for k in sorted(self.locks)],
            [self.waiting[k].encode() for k in sorted(self.waiting)],
            [[k, v] for k, v in self.ended.items()],
            self.seq,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> LockTable:
        t = cls(
            {lk[0]: Lock.decode(lk) for lk in v[0]},
            {r[0]: Request.decode(r) for r in v[1]},
            OrderedDict((k, val) for k, val in v[2]),
            v[3],
        )
        t.rebuild()
        return t

    def rebuild(self) -> None:
        self.deadlines = []
        self.by_request = {}
        self.waiting_by_owner = {}
        self.touched = set()
        for lock in self.locks.values():
            for h in lock.holders.values():
                self.by_request.setdefault(h.request_id, {})[lock.name] = None
                if h.deadline_ms:
                    self.deadlines.append((h.deadline_ms, 0, lock.name, h.owner))
        for r in self.waiting.values():
            self.waiting_by_owner.setdefault(r.owner, {})[r.request_id] = None
            if r.wait_deadline_ms:
                self.deadlines.append((r.wait_deadline_ms, 1, r.request_id, r.owner))
        heapq.heapify(self.deadlines)

    # ---- queries ------------------------------------------------------------

    def status(self, request_id: str) -> LockOutcome | None:
        """Where a request stands: granted, ended, or None while it waits (or is unknown)."""
        if request_id in self.waiting:
            return None
        held = self.holder_of(request_id)
        if held is not None:
            return LockOutcome(request_id, held[1].owner, True, held[1].token)
        ended = self.ended.get(request_id)
        if ended is not None:
            return LockOutcome(request_id, "", False, 0, Code(ended[0]), ended[1])
        return None

    def held_against(self, owner: str, items: tuple[tuple[str, str], ...]) -> bool:
        """Whether another owner holds one of ``items`` in a conflicting mode now: no priority
        lets ``owner`` have it before a release. O(len(items)): an exclusive holder is the only one."""
        for name, mode in items:
            lock = self.locks.get(name)
            if lock is None or not lock.holders:
                continue
            first = next(iter(lock.holders.values()))
            if first.mode == EXCLUSIVE:
                if first.owner != owner:
                    return True
            elif mode == EXCLUSIVE and (len(lock.holders) > 1 or first.owner != owner):
                return True
        return False

    def holder_of(self, request_id: str) -> tuple[str, Holder] | None:
        """(a lock name, the holder) granted under ``request_id``, if it still holds anything."""
        names = self.by_request.get(request_id)
        if not names:
            return None
        name = next(iter(names))
        for h in self.locks[name].holders.values():
            if h.request_id == request_id:
                return name, h
        return None

    def held_names(self, request_id: str) -> list[str]:
        return sorted(self.by_request.get(request_id, ()))

    def _unindex(self, request_id: str, name: str) -> None:
        names = self.by_request.get(request_id)
        if names is not None:
            names.pop(name, None)
            if not names:
                del self.by_request[request_id]

    def next_deadline_ms(self) -> int | None:
        while self.deadlines and not self._live(self.deadlines[0]):
            heapq.heappop(self.deadlines)
        return self.deadlines[0][0] if self.deadlines else None

    def _live(self, e: tuple[int, int, str, str]) -> bool:
        deadline, kind, key, owner = e
        if kind == 0:
            lock = self.locks.get(key)
            h = lock.holders.get(owner) if lock else None
            return h is not None and h.deadline_ms == deadline
        r = self.waiting.get(key)
        return r is not None and r.wait_deadline_ms == deadline

    # ---- transitions (callers validated the inputs) ----------------------------

    def can_grant(
        self, owner: str, items: tuple[tuple[str, str], ...], ahead_of: Request | None = None
    ) -> bool:
        """True if every lock is compatible with its holders and no conflicting waiter is ahead.

        ``ahead_of`` is the request being considered (waiters ordered after it do not
        block it); None means "behind every waiter" (a task's locks never jump the queue).
        """
        for name, mode in items:
            lock = self.locks.get(name)
            if lock is None:
                continue
            for h in lock.holders.values():
                if h.owner != owner and (mode == EXCLUSIVE or h.mode == EXCLUSIVE):
                    return False
            for rid in lock.queue:
                w = self.waiting[rid]
                if ahead_of is not None and w.order >= ahead_of.order:
                    break
                wmode = dict(w.items)[name]
                if w.owner != owner and (mode == EXCLUSIVE or wmode == EXCLUSIVE):
                    return False
        return True

    def grant(
        self,
        owner: str,
        items: tuple[tuple[str, str], ...],
        token: int,
        request_id: str,
        ttl_ms: int,
        now: int,
        lease: str = "",
        principal: str = "",
    ) -> None:
        deadline = now + ttl_ms if ttl_ms else 0
        for name, mode in items:
            lock = self.locks.setdefault(name, Lock(name))
            old = lock.holders.get(owner)
            if old is not None:
                self._unindex(old.request_id, name)
            lock.holders[owner] = Holder(owner, mode, token, request_id, ttl_ms, deadline, lease, principal)
            self.by_request.setdefault(request_id, {})[name] = None
            lock.last_token = max(lock.last_token, token)
            if deadline:
                heapq.heappush(self.deadlines, (deadline, 0, name, owner))

    def enqueue(self, r: Request) -> None:
        self.waiting[r.request_id] = r
        self.waiting_by_owner.setdefault(r.owner, {})[r.request_id] = None
        for name, _ in r.items:
            self.touched.add(name)
            lock = self.locks.setdefault(name, Lock(name))
            lock.queue.append(r.request_id)
            lock.queue.sort(key=lambda rid: self.waiting[rid].order)
        if r.wait_deadline_ms:
            heapq.heappush(self.deadlines, (r.wait_deadline_ms, 1, r.request_id, r.owner))

    def dequeue(self, request_id: str, code: Code, message: str) -> Request | None:
        r = self.waiting.pop(request_id, None)
        if r is None:
            return None
        self._unwait(r)
        for name, _ in r.items:
            lock = self.locks.get(name)
            if lock is not None and request_id in lock.queue:
                lock.queue.remove(request_id)
                self._forget_if_idle(lock)
        self.ended[request_id] = [code.value, message]
        while len(self.ended) > limits.LOCK_ENDED_RETAINED:
            self.ended.popitem(last=False)
        return r

    def _unwait(self, r: Request) -> None:
        ids = self.waiting_by_owner.get(r.owner)
        if ids is not None:
            ids.pop(r.request_id, None)
            if not ids:
                del self.waiting_by_owner[r.owner]

    def release(self, name: str, owner: str) -> Holder | None:
        lock = self.locks.get(name)
        if lock is None:
            return None
        h = lock.holders.pop(owner, None)
        if h is not None:
            self._unindex(h.request_id, name)
        self._forget_if_idle(lock)
        return h

    def release_owner(self, owner: str, names: list[str]) -> list[str]:
        released = []
        for name in names:
            if self.release(name, owner) is not None:
                released.append(name)
        return released

    def _forget_if_idle(self, lock: Lock) -> None:
        # A free lock keeps its record (last_token fences old holders' KV writes) while the
        # table is under its size limit; past it, a lock that becomes idle is forgotten.
        if lock.holders or lock.queue or len(self.locks) <= limits.MAX_LOCK_RECORDS:
            return
        del self.locks[lock.name]

    def grant_waiters(self, names: set[str], token: int, now: int) -> list[LockOutcome]:
        """Grant, in order, the waiters of ``names`` that can now be granted."""
        granted: list[LockOutcome] = []
        progress = True
        while progress:
            progress = False
            candidates: dict[str, Request] = {}
            for name in sorted(names):
                lock = self.locks.get(name)
                if lock is None:
                    continue
                for rid in lock.queue:
                    candidates[rid] = self.waiting[rid]
            for r in sorted(candidates.values(), key=lambda r: r.order):
                if r.request_id not in self.waiting:
                    continue
                if self.can_grant(r.owner, r.items, ahead_of=r):
                    self.waiting.pop(r.request_id)
                    self._unwait(r)
                    for name, _ in r.items:
                        self.locks[name].queue.remove(r.request_id)
                        self.touched.add(name)
                    self.grant(r.owner, r.items, token, r.request_id, r.ttl_ms, now, r.lease, r.principal)
                    granted.append(LockOutcome(r.request_id, r.owner, True, token))
                    names.update(n for n, _ in r.items)
                    progress = True
        return granted

    # ---- deadlocks ----------------------------------------------------------------

    def _edges(self, owner: str) -> list[tuple[str, str]]:
        """[(owner it waits for, lock name)] of every waiting request of ``owner``, deterministic order."""
        out: list[tuple[str, str]] = []
        for rid in sorted(self.waiting_by_owner.get(owner, ()), key=lambda k: self.waiting[k].order):
            r = self.waiting[rid]
            for name, mode in r.items:
                lock = self.locks.get(name)
                if lock is None:
                    continue
                for h in lock.holders.values():
                    if h.owner != r.owner and (mode == EXCLUSIVE or h.mode == EXCLUSIVE):
                        out.append((h.owner, name))
                # A conflicting waiter ahead blocks it too (FIFO, as in ``can_grant``).
                for wid in lock.queue:
                    w = self.waiting[wid]
                    if w.order >= r.order:
                        break
                    if w.owner != r.owner and (mode == EXCLUSIVE or dict(w.items)[name] == EXCLUSIVE):
                        out.append((w.owner, name))
        return out

    def wait_for_graph(self) -> dict[str, list[tuple[str, str]]]:
        """owner -> [(owner it waits for, lock name)] over every waiter (for inspection and tests)."""
        g: dict[str, list[tuple[str, str]]] = {}
        for rid in sorted(self.waiting, key=lambda k: self.waiting[k].order):
            owner = self.waiting[rid].owner
            if owner not in g:
                edges = self._edges(owner)
                if edges:
                    g[owner] = edges
        return g

    def find_cycle(self, whole: bool = False) -> list[tuple[str, str]] | None:
        """A cycle as [(owner, lock it waits on)...] through a lock ``touched`` since the last call, or None.

        ``whole``: search from every waiting owner instead (a check of the invariant, for tests).

        The table has no cycle after every ``settle``, so a new one contains an edge added since:
        an edge out of a request enqueued on a touched lock, or into an owner granted a touched
        lock from its waiters. Both start at the owner of a request waiting on a touched lock, so
        the search starts there and walks only what those owners reach, computing each owner's
        edges once: the cost follows the command, not the number of waiters in the table.
        """
        touched, self.touched = self.touched, set()
        roots: dict[str, None] = {}
        if whole:
            touched = set(self.locks)
        for name in sorted(touched):
            lock = self.locks.get(name)
            if lock is not None:
                for rid in lock.queue:
                    roots[self.waiting[rid].owner] = None
        edges: dict[str, list[tuple[str, str]]] = {}
        state: dict[str, int] = {}
        for root in roots:
            if state.get(root):
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[tuple[str, str]] = []
            state[root] = 1
            while stack:
                node, i = stack[-1]
                out = edges.get(node)
                if out is None:
                    out = edges[node] = self._edges(node)
                if i >= len(out):
                    stack.pop()
                    state[node] = 2
                    if path:
                        path.pop()
                    continue
                stack[-1] = (node, i + 1)
                nxt, lock_name = out[i]
                if state.get(nxt) == 1:
                    cyc = [*path, (node, lock_name)]
                    start = next(k for k, (o, _) in enumerate(cyc) if o == nxt)
                    # The rest is searched again after the victim is dequeued (settle loops).
                    self.touched = touched
                    return cyc[start:]
                if not state.get(nxt):
                    state[nxt] = 1
                    path.append((node, lock_name))
                    stack.append((nxt, 0))
        return None

    def victim(self, cycle: list[tuple[str, str]]) -> Request:
        # Only the requests that make up the cycle's edges: another waiting request of one
        # of its owners would not break it.
        edges = set(cycle)
        cands = [
            self.waiting[rid]
            for owner in dict.fromkeys(o for o, _ in cycle)
            for rid in self.waiting_by_owner.get(owner, ())
            if any((owner, n) in edges for n, _ in self.waiting[rid].items)
        ]
        return min(cands, key=lambda r: (r.priority, -r.seq))
