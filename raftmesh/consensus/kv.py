"""The replicated, versioned KV store: the data layer (``kv_commands`` applies commands to it).

Like etcd's data model: every write gets ``mod_revision`` = the revision of the
command that made it; ``create_revision`` is kept until the key is deleted;
``version`` counts writes since creation. Leases (``ttl_ms``) hold keys that are
deleted when an applied tick passes the lease's deadline. A bounded history of
changes (``history``) lets a watch resume from any revision it still holds; older
revisions are compacted (the watcher must re-read). Every write returns the events it
recorded, for the command processor to emit.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import limits

PUT = "put"
DELETE = "delete"


@dataclass(slots=True)
class Entry:
    value: Any
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0

    def encode(self) -> list[Any]:
        return [self.value, self.mod_revision, self.create_revision, self.version, self.lease]

    @classmethod
    def decode(cls, v: list[Any]) -> Entry:
        return cls(v[0], v[1], v[2], v[3], v[4])


@dataclass(slots=True)
class Lease:
    id: int
    ttl_ms: int
    deadline_ms: int
    keys: set[str] = field(default_factory=set)
    principal: str = ""
    """Who was granted it ("" on an open cluster, and for leases granted before the field)."""

    def encode(self) -> list[Any]:
        out = [self.id, self.ttl_ms, self.deadline_ms, sorted(self.keys)]
        if self.principal:  # only when set: older leases encode (and digest) as before
            out.append(self.principal)
        return out

    @classmethod
    def decode(cls, v: list[Any]) -> Lease:
        return cls(v[0], v[1], v[2], set(v[3]), v[4] if len(v) > 4 else "")


@dataclass(frozen=True, slots=True)
class KvEvent:
    revision: int
    kind: str
    """"put" or "delete"."""
    key: str
    value: Any
    mod_revision: int
    create_revision: int
    version: int
    size: int

    def encode(self) -> list[Any]:
        return [
            self.revision,
            self.kind,
            self.key,
            self.value,
            self.mod_revision,
            self.create_revision,
            self.version,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> KvEvent:
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6], event_size(v[1], v[2], v[3]))


def event_size(kind: str, key: str, value: Any) -> int:
    """What an event counts against ``KV_HISTORY_BYTES`` (the same when recorded and decoded)."""
    return (limits.encoded_size(value) if kind == PUT else 0) + len(key)


@dataclass(slots=True)
class KvStore:
    entries: dict[str, Entry] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)
    history: deque[KvEvent] = field(default_factory=deque)
    compacted: int = 0
    """Events with revision <= compacted are no longer in ``history``."""
    # derived
    keys: list[str] = field(default_factory=list)
    """Sorted keys, for prefix listing."""
    history_bytes: int = 0
    lease_deadlines: list[tuple[int, int]] = field(default_factory=list)

    def encode(self) -> list[Any]:
        return [
            [[k, self.entries[k].encode()] for k in sorted(self.entries)],
            [self.leases[k].encode() for k in sorted(self.leases)],
            [e.encode() for e in self.history],
            self.compacted,
        ]

    @classmethod
    def decode(cls, v: list[Any]) -> KvStore:
        s = cls(
            {k: Entry.decode(e) for k, e in v[0]},
            {lease[0]: Lease.decode(lease) for lease in v[1]},
            deque(KvEvent.decode(e) for e in v[2]),
            v[3],
        )
        s.rebuild()
        return s

    def rebuild(self) -> None:
        self.keys = sorted(self.entries)
        self.history_bytes = sum(e.size for e in self.history)
        self.lease_deadlines = [(lease.deadline_ms, lease.id) for lease in self.leases.values()]
        heapq.heapify(self.lease_deadlines)

    # ---- reads --------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def list_prefix(self, prefix: str, limit: int) -> list[tuple[str, Entry]]:
        i = bisect.bisect_left(self.keys, prefix)
        out: list[tuple[str, Entry]] = []
        while i < len(self.keys) and self.keys[i].startswith(prefix) and len(out) < limit:
            k = self.keys[i]
            out.append((k, self.entries[k]))
            i += 1
        return out

    def events_since(self, revision: int, prefix: str, exact: bool) -> list[KvEvent] | None:
        """Changes after ``revision`` to ``prefix`` (or exactly that key); None if compacted."""
        if revision < self.compacted:
            return None
        out: list[KvEvent] = []
        for e in reversed(self.history):
            if e.revision <= revision:
                break
            if (e.key == prefix) if exact else e.key.startswith(prefix):
                out.append(e)
        out.reverse()
        return out

    # ---- writes (callers validated; ``rev`` is the command's revision) -------------

    def put(self, key: str, value: Any, rev: int, lease: int) -> tuple[Entry | None, Entry, KvEvent]:
        prev = self.entries.get(key)
        if prev is None:
            e = Entry(value, rev, rev, 1, lease)
            bisect.insort(self.keys, key)
        else:
            e = Entry(value, rev, prev.create_revision, prev.version + 1, lease)
            if prev.lease and prev.lease != lease and prev.lease in self.leases:
                self.leases[prev.lease].keys.discard(key)
        self.entries[key] = e
        if lease:
            self.leases[lease].keys.add(key)
        ev = KvEvent(rev, PUT, key, value, rev, e.create_revision, e.version, event_size(PUT, key, value))
        self._record(ev)
        return prev, e, ev

    def delete(self, key: str, rev: int) -> tuple[Entry, KvEvent] | None:
        """The deleted entry and its event, or None if the key did not exist."""
        prev = self.entries.pop(key, None)
        if prev is None:
            return None
        i = bisect.bisect_left(self.keys, key)
        del self.keys[i]
        if prev.lease and prev.lease in self.leases:
            self.leases[prev.lease].keys.discard(key)
        ev = KvEvent(rev, DELETE, key, None, rev, prev.create_revision, 0, event_size(DELETE, key, None))
        self._record(ev)
        return prev, ev

    def _record(self, ev: KvEvent) -> None:
        self.history.append(ev)
        self.history_bytes += ev.size
        while self.history and (
            len(self.history) > limits.KV_HISTORY_EVENTS or self.history_bytes > limits.KV_HISTORY_BYTES
        ):
            old = self.history.popleft()
            self.history_bytes -= old.size
            self.compacted = old.revision

    def grant_lease(self, lease_id: int, ttl_ms: int, now: int, principal: str = "") -> Lease:
        lease = Lease(lease_id, ttl_ms, now + ttl_ms, principal=principal)
        self.leases[lease_id] = lease
        heapq.heappush(self.lease_deadlines, (lease.deadline_ms, lease_id))
        return lease

    def keep_alive(self, lease_id: int, now: int) -> Lease | None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return None
        lease.deadline_ms = now + lease.ttl_ms
        heapq.heappush(self.lease_deadlines, (lease.deadline_ms, lease_id))
        return lease

    def revoke(self, lease_id: int, rev: int) -> tuple[list[str], list[KvEvent]]:
        """The keys the lease held (deleted with it) and the events of their deletion."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return [], []
        deleted = sorted(lease.keys)
        events: list[KvEvent] = []
        for k in deleted:
            e = self.entries.get(k)
            if e is not None and e.lease == lease_id:
                gone = self.delete(k, rev)
                if gone is not None:
                    events.append(gone[1])
        return deleted, events

    def next_deadline_ms(self) -> int | None:
        while self.lease_deadlines:
            deadline, lid = self.lease_deadlines[0]
            lease = self.leases.get(lid)
            if lease is not None and lease.deadline_ms == deadline:
                return deadline
            heapq.heappop(self.lease_deadlines)
        return None

    def expire(self, now: int, rev: int) -> tuple[list[int], list[KvEvent]]:
        """Revoke the leases whose deadline ``now`` passed: their ids and the deletions' events."""
        expired: list[int] = []
        events: list[KvEvent] = []
        while True:
            d = self.next_deadline_ms()
            if d is None or d > now:
                return expired, events
            _, lid = heapq.heappop(self.lease_deadlines)
            events.extend(self.revoke(lid, rev)[1])
            expired.append(lid)
