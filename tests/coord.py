"""A test harness for the lock table and KV store of the pure state machine.

``Coord`` extends the ``Cluster`` of ``test_machine`` (fresh request ids, an index and
round-trip check after every applied command) with builders for lock and KV commands.
"""

from __future__ import annotations

from typing import Any

from raftmesh.consensus import Code, Result
from raftmesh.consensus.commands import (
    Compare,
    Fence,
    KvLease,
    KvOp,
    KvTxn,
    LockAcquire,
    LockCancel,
    LockRelease,
)
from raftmesh.consensus.locks import EXCLUSIVE, Holder, Lock
from raftmesh.consensus.results import (
    GetResponse,
    KvChanged,
    KvTxnResult,
    LockAcquireResult,
    LockChanged,
    Record,
    expect,
)
from tests.test_machine import T0, Cluster

__all__ = ["T0", "Coord"]

Item = str | tuple[str, str]


class Coord(Cluster):
    # ---- locks ---------------------------------------------------------------

    def acquire(
        self,
        owner: str,
        *items: Item,
        ttl: int = 10_000,
        prio: int = 0,
        wait: int = 0,
        ts: int | None = None,
        rid: str | None = None,
    ) -> LockAcquire:
        """``items`` are lock names (exclusive) or (name, mode) pairs."""
        its = tuple((i, EXCLUSIVE) if isinstance(i, str) else i for i in items)
        return LockAcquire(rid or self.rid(), self.ts if ts is None else ts, owner, its, ttl, prio, wait)

    def release(
        self, owner: str, name: str, token: int, keep_alive: bool = False, ts: int | None = None
    ) -> LockRelease:
        return LockRelease(self.rid(), self.ts if ts is None else ts, owner, name, token, keep_alive)

    def cancel(self, lock_request_id: str, ts: int | None = None) -> LockCancel:
        return LockCancel(self.rid(), self.ts if ts is None else ts, lock_request_id)

    def granted(self, cmd: LockAcquire) -> int:
        """Apply an acquire that must be granted at once; returns its token."""
        v = expect(self.ok(cmd), LockAcquireResult)
        assert v.granted and not v.waiting, v
        assert v.token == self.st.revision
        return v.token

    def waits(self, cmd: LockAcquire) -> None:
        """Apply an acquire that must be queued."""
        v = self.ok(cmd)
        assert v == LockAcquireResult(cmd.request_id, granted=False, waiting=True, token=0), v
        assert cmd.request_id in self.st.locks.waiting

    def lock(self, name: str) -> Lock:
        return self.st.locks.locks[name]

    def holders(self, name: str) -> dict[str, int]:
        """owner -> token of the current holders of ``name`` (empty if free)."""
        lock = self.st.locks.locks.get(name)
        return {o: h.token for o, h in lock.holders.items()} if lock else {}

    def holder(self, name: str, owner: str) -> Holder:
        return self.lock(name).holders[owner]

    def queue(self, name: str) -> list[str]:
        lock = self.st.locks.locks.get(name)
        return list(lock.queue) if lock else []

    def lock_events(self, since: int = 0) -> list[LockChanged]:
        return [e for e in self.events[since:] if isinstance(e, LockChanged)]

    # ---- kv ------------------------------------------------------------------

    def txn(
        self,
        compares: tuple[Compare, ...] = (),
        success: tuple[KvOp, ...] = (),
        failure: tuple[KvOp, ...] = (),
        fence: Fence | None = None,
        ts: int | None = None,
    ) -> KvTxn:
        return KvTxn(self.rid(), self.ts if ts is None else ts, compares, success, failure, fence)

    def put(self, key: str, value: Any, lease: int = 0, fence: Fence | None = None) -> KvTxn:
        return self.txn(success=(KvOp("put", key, value, lease),), fence=fence)

    def delete(self, key: str, fence: Fence | None = None) -> KvTxn:
        return self.txn(success=(KvOp("delete", key),), fence=fence)

    def lease(self, action: str, lease: int = 0, ttl: int = 0, ts: int | None = None) -> KvLease:
        return KvLease(self.rid(), self.ts if ts is None else ts, lease, ttl, action)

    def kv_events(self, since: int = 0) -> list[KvChanged]:
        return [e for e in self.events[since:] if isinstance(e, KvChanged)]

    def get(self, key: str) -> Record | None:
        """A read through the log (a txn of one get): changes nothing. None: no such key."""
        res: Result = self.unchanged(self.txn(success=(KvOp("get", key),)), Code.OK)
        [out] = expect(res, KvTxnResult).responses
        assert isinstance(out, GetResponse) and out.key == key
        return out.record

    def read(self, key: str) -> Record:
        """``get`` of a key that must exist."""
        record = self.get(key)
        assert record is not None, key
        return record
