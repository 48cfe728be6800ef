"""KV and lock clients handed to a running agent (``ctx.kv``, ``ctx.locks``).

Every write an agent makes is fenced by its attempt's token: once the cluster
has moved the task elsewhere (node down, timeout, cancel), the old attempt's
writes are rejected by the state machine with ``Aborted``, so a zombie attempt
cannot clobber the work of its successor.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..consensus.commands import Compare, Fence, KvOp, KvTxn, LockAcquire, LockRelease
from ..consensus.locks import task_owner
from ..consensus.raft import RaftMember
from ..consensus.results import DeleteResponse, KvTxnResult, LockAcquireResult, LockReleaseResult, expect
from .proposer import Proposer, now_ms


class TaskKv:
    def __init__(
        self, raft: RaftMember, proposer: Proposer, run_id: str, task_id: str, attempt: int, token: int
    ) -> None:
        self._raft = raft
        self._proposer = proposer
        self.fence = Fence(run_id=run_id, task_id=task_id, token=token)

    async def get(self, key: str) -> Any:
        """The current value (linearizable), or None."""
        await self._proposer.barrier()
        with self._raft.lock:
            e = self._raft.machine.state.kv.get(key)
            return None if e is None else e.value

    async def _txn(self, cmd: KvTxn) -> KvTxnResult:
        return expect(await self._proposer.propose(cmd), KvTxnResult)

    async def put(self, key: str, value: Any) -> int:
        """Write, fenced by this attempt; returns the new mod_revision."""
        v = await self._txn(
            KvTxn(uuid.uuid4().hex, now_ms(), success=(KvOp("put", key, value),), fence=self.fence)
        )
        return v.revision

    async def delete(self, key: str) -> bool:
        v = await self._txn(
            KvTxn(uuid.uuid4().hex, now_ms(), success=(KvOp("delete", key),), fence=self.fence)
        )
        [r] = v.responses
        assert isinstance(r, DeleteResponse)
        return r.deleted

    async def cas(self, key: str, expected_revision: int, value: Any) -> bool:
        v = await self._txn(
            KvTxn(
                uuid.uuid4().hex,
                now_ms(),
                compares=(Compare(key, "mod", "=", expected_revision),),
                success=(KvOp("put", key, value),),
                fence=self.fence,
            )
        )
        return v.succeeded


class TaskLocks:
    """Locks held by this attempt (owner ``task:<run>/<task>#<attempt>``); released by TTL or explicitly."""

    def __init__(self, proposer: Proposer, run_id: str, task_id: str, attempt: int) -> None:
        self._proposer = proposer
        self.owner = task_owner(run_id, task_id, attempt) + ":agent"

    async def try_acquire(self, name: str, *, ttl_s: float = 30.0, mode: str = "exclusive") -> int | None:
        """The fencing token, or None if the lock is not free now."""
        cmd = LockAcquire(
            uuid.uuid4().hex, now_ms(), owner=self.owner, items=((name, mode),), ttl_ms=int(ttl_s * 1000)
        )
        out = expect(await self._proposer.propose(cmd), LockAcquireResult)
        return out.token if out.granted else None

    async def release(self, name: str, token: int) -> None:
        res = await self._proposer.propose(
            LockRelease(uuid.uuid4().hex, now_ms(), owner=self.owner, name=name, token=token)
        )
        expect(res, LockReleaseResult)
