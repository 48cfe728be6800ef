"""KV and lock clients handed to a running agent (``ctx.kv``, ``ctx.locks``).

Every write an agent makes is fenced by its attempt's token: once the cluster
has moved the task elsewhere (node down, timeout, cancel), the old attempt's
writes are rejected by the state machine with ``Aborted``, so a zombie attempt
cannot clobber the work of its successor.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..clock import Clock
from ..consensus.codes import Code
from ..consensus.commands import Command, Compare, Fence, KvOp, KvTxn, LockAcquire, LockRelease
from ..consensus.locks import task_owner
from ..consensus.results import (
    DeleteResponse,
    KvTxnResult,
    LockAcquireResult,
    LockReleaseResult,
    Rejected,
    Result,
    expect,
)
from ..consensus.state import ClusterState
from ..errors import PermissionDenied, StaleToken

T = TypeVar("T")


def check_run_key(namespace: str, key: str, what: str = "key") -> None:
    """A run in a namespace (``RunState.namespace``) reaches only KV keys and lock names under
    ``NAMESPACE/``: its submitter's token may be limited to it, and the node writes for it."""
    if namespace and not key.startswith(namespace + "/"):
        raise PermissionDenied(
            f"{what} {key[:80]!r} is outside this run's namespace: a task of a run in namespace "
            f"{namespace!r} may use only keys and locks under {namespace + '/'!r}"
        )


class Writer(Protocol):
    """How the agent host writes: the node's proposer (``raftmesh.node.proposer``)."""

    async def propose(self, cmd: Command, timeout_s: float | None = None) -> Result: ...

    async def barrier(self, timeout_s: float | None = None) -> None: ...


class Reader(Protocol):
    """How the agent host reads: the node's read view (``raftmesh.node.reads``)."""

    def read(self, fn: Callable[[ClusterState], T]) -> T: ...


class TaskKv:
    """The KV store as an attempt sees it; a write after the attempt was fenced raises ``StaleToken``."""

    def __init__(
        self,
        reads: Reader,
        writer: Writer,
        clock: Clock,
        run_id: str,
        task_id: str,
        attempt: int,
        token: int,
        namespace: str = "",
    ) -> None:
        self._namespace = namespace
        self._reads = reads
        self._writer = writer
        self._clock = clock
        self.fence = Fence(run_id=run_id, task_id=task_id, token=token)

    async def get(self, key: str) -> Any:
        """The current value (linearizable), or None."""
        check_run_key(self._namespace, key)
        await self._writer.barrier()

        def value(st: ClusterState) -> Any:
            e = st.kv.get(key)
            return None if e is None else e.value

        return self._reads.read(value)

    async def _txn(self, cmd: KvTxn) -> KvTxnResult:
        for key in [c.key for c in cmd.compares] + [op.key for op in cmd.success + cmd.failure]:
            check_run_key(self._namespace, key)
        res = await self._writer.propose(cmd)
        if isinstance(res, Rejected) and res.code is Code.ABORTED:
            raise StaleToken(res.message)  # the only way a fenced write aborts: a newer attempt exists
        return expect(res, KvTxnResult)

    async def put(self, key: str, value: Any) -> int:
        """Write, fenced by this attempt; returns the new mod_revision."""
        v = await self._txn(
            KvTxn(
                uuid.uuid4().hex, self._clock.now_ms(), success=(KvOp("put", key, value),), fence=self.fence
            )
        )
        return v.revision

    async def delete(self, key: str) -> bool:
        v = await self._txn(
            KvTxn(uuid.uuid4().hex, self._clock.now_ms(), success=(KvOp("delete", key),), fence=self.fence)
        )
        [r] = v.responses
        assert isinstance(r, DeleteResponse)
        return r.deleted

    async def cas(self, key: str, expected_revision: int, value: Any) -> bool:
        v = await self._txn(
            KvTxn(
                uuid.uuid4().hex,
                self._clock.now_ms(),
                compares=(Compare(key, "mod", "=", expected_revision),),
                success=(KvOp("put", key, value),),
                fence=self.fence,
            )
        )
        return v.succeeded


class TaskLocks:
    """Locks held by this attempt (owner ``task:<run>/<task>#<attempt>``); released by TTL or explicitly."""

    def __init__(
        self, writer: Writer, clock: Clock, run_id: str, task_id: str, attempt: int, namespace: str = ""
    ) -> None:
        self._namespace = namespace
        self._writer = writer
        self._clock = clock
        self.owner = task_owner(run_id, task_id, attempt) + ":agent"

    async def try_acquire(self, name: str, *, ttl_s: float = 30.0, mode: str = "exclusive") -> int | None:
        """The fencing token, or None if the lock is not free now."""
        check_run_key(self._namespace, name, "lock")
        cmd = LockAcquire(
            uuid.uuid4().hex,
            self._clock.now_ms(),
            owner=self.owner,
            items=((name, mode),),
            ttl_ms=int(ttl_s * 1000),
        )
        out = expect(await self._writer.propose(cmd), LockAcquireResult)
        return out.token if out.granted else None

    async def release(self, name: str, token: int) -> None:
        res = await self._writer.propose(
            LockRelease(uuid.uuid4().hex, self._clock.now_ms(), owner=self.owner, name=name, token=token)
        )
        expect(res, LockReleaseResult)
