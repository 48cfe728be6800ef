"""The ``Kv`` and ``Locks`` gRPC services (every node serves them).

Writes are commands through the log (retried with the caller's request id);
reads are linearizable through the read barrier unless ``stale_ok``. A lock
acquire that has to wait is parked on this node until the applied log grants,
aborts (deadlock) or times it out; if the caller's deadline passes first, the
request is cancelled through the log so that nothing is granted to nobody.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .. import calls
from ..consensus import limits
from ..consensus.codes import Code
from ..consensus.commands import Compare, Fence, KvLease, KvOp, KvTxn, LockAcquire, LockCancel, LockRelease
from ..consensus.kv import DELETE, Entry, KvEvent
from ..consensus.locks import EXCLUSIVE
from ..consensus.results import (
    DeleteResponse,
    GetResponse,
    KvChanged,
    KvLeaseResult,
    KvLeaseRevoked,
    KvTxnResult,
    LockAcquireResult,
    LockKeepAliveResult,
    LockReleaseResult,
    Record,
    Result,
    expect,
)
from ..consensus.state import ClusterState
from ..errors import Aborted, InvalidArgument, OutOfRange, PermissionDenied
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ..security.ownership import check_key, restricted
from ..security.roles import Role
from . import convert, rpc
from .access import NodeAccess
from .lock_waits import LockWaits
from .proposer import new_request_id
from .service import STREAM_HEARTBEAT_S
from .watch import RESYNC, WatchHub


def _entry_pb(key: str, e: Entry | None) -> pb.KvEntry:
    if e is None:
        return pb.KvEntry(key=key, found=False)
    return pb.KvEntry(
        key=key,
        found=True,
        value_json=convert.dump_json(e.value) or "null",
        mod_revision=e.mod_revision,
        create_revision=e.create_revision,
        version=e.version,
        lease=e.lease,
    )


def _record_pb(key: str, r: Record | None) -> pb.KvEntry:
    if r is None:
        return pb.KvEntry(key=key, found=False)
    return pb.KvEntry(
        key=key,
        found=True,
        value_json=convert.dump_json(r.value) or "null",
        mod_revision=r.mod_revision,
        create_revision=r.create_revision,
        version=r.version,
        lease=r.lease,
    )


def _request_id(given: str, prefix: str) -> str:
    """The caller's request id (checked: it is kept in the replicated dedup table), or a new one."""
    why = limits.request_id_error("request_id", given)
    if why:
        raise InvalidArgument(why)
    # 128 bits of the OS's CSPRNG like new_request_id's uuid4 (unguessable: the id keys the dedup
    # table), drawn 4 KiB at a time rather than a getrandom() call each, which lets go of the GIL
    # mid-call (calls._random_bytes), and no UUID object.
    return given or f"{prefix}{calls.new_trace_id()}"


def _fence(f: pb.Fence, present: bool) -> Fence | None:
    if not present:
        return None
    if bool(f.lock) == bool(f.run_id):
        raise InvalidArgument("a fence names either a lock (lock, token) or a task (run_id, task_id, token)")
    return Fence(f.lock, f.token, f.run_id, f.task_id)


def _txn_response(res: Result) -> pb.KvTxnResponse:
    txn = expect(res, KvTxnResult)
    out = []
    for r in txn.responses:
        if isinstance(r, GetResponse):
            out.append(pb.KvOpResult(kind="get", entry=_record_pb(r.key, r.record)))
        elif isinstance(r, DeleteResponse):
            out.append(pb.KvOpResult(kind="delete", deleted=r.deleted))
        else:
            out.append(
                pb.KvOpResult(kind="put", entry=_record_pb(r.key, r.prev), mod_revision=r.mod_revision)
            )
    return pb.KvTxnResponse(succeeded=txn.succeeded, revision=txn.revision, results=out)


class KvService(pb_grpc.KvServicer):
    def __init__(self, node: NodeAccess, hub: WatchHub) -> None:
        self.node = node
        self._hub = hub

    async def _read_barrier(self, stale_ok: bool, context: grpc.aio.ServicerContext) -> None:
        if not stale_ok:
            await self.node.barrier(context)

    async def _txn(self, cmd: KvTxn, context: grpc.aio.ServicerContext) -> pb.KvTxnResponse:
        return _txn_response(await self.node.propose(cmd, context))

    def _check_lease(self, lease_id: int) -> None:
        """A lease granted to a principal is attached to, renewed and revoked by it only (an
        operator or admin: any); an open cluster's, or older, leases by anyone."""
        call = calls.current()
        if not lease_id or call is None or call.role in _ANY_LEASE:
            return
        holder = self.node.reads.read(lambda st: le.principal if (le := st.kv.leases.get(lease_id)) else "")
        if holder and holder != call.principal:
            raise PermissionDenied(
                f"lease {lease_id} was granted to another principal: {call.principal} may attach keys "
                "to, renew and revoke only its own leases"
            )

    @staticmethod
    def _check_key(key: str) -> None:
        why = limits.name_error("key", key, limits.MAX_KV_KEY_CHARS)
        if why:
            raise InvalidArgument(why)
        check_key(key)  # a token limited to namespaces: keys under NAMESPACE/ only

    @rpc.unary
    async def Get(self, request: pb.KvGetRequest, context: grpc.aio.ServicerContext) -> pb.KvGetResponse:
        self._check_key(request.key)
        await self._read_barrier(request.stale_ok, context)
        # Entries are replaced, never changed in place, by apply: a reference is a copy.
        entry, revision = self.node.reads.read(lambda st: (st.kv.get(request.key), st.revision))
        return pb.KvGetResponse(entry=_entry_pb(request.key, entry), revision=revision)

    @rpc.unary
    async def List(self, request: pb.KvListRequest, context: grpc.aio.ServicerContext) -> pb.KvListResponse:
        limit = request.limit or 1000
        if limit > limits.MAX_KV_LIST:
            raise InvalidArgument(f"limit must be at most {limits.MAX_KV_LIST}")
        check_key(request.prefix)
        await self._read_barrier(request.stale_ok, context)
        items, revision = self.node.reads.read(
            lambda st: (st.kv.list_prefix(request.prefix, limit), st.revision)
        )
        return pb.KvListResponse(entries=[_entry_pb(k, e) for k, e in items], revision=revision)

    @rpc.unary
    async def Put(self, request: pb.KvPutRequest, context: grpc.aio.ServicerContext) -> pb.KvTxnResponse:
        self._check_key(request.key)
        value = convert.load_json("value_json", request.value_json)
        self._check_lease(request.lease)
        op = KvOp("put", request.key, value, request.lease)
        cmd = KvTxn(
            _request_id(request.request_id, "kv-"),
            self.node.clock.now_ms(),
            success=(op,),
            fence=_fence(request.fence, request.HasField("fence")),
        )
        return await self._txn(cmd, context)

    @rpc.unary
    async def Delete(
        self, request: pb.KvDeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.KvTxnResponse:
        self._check_key(request.key)
        cmd = KvTxn(
            _request_id(request.request_id, "kv-"),
            self.node.clock.now_ms(),
            success=(KvOp("delete", request.key),),
            fence=_fence(request.fence, request.HasField("fence")),
        )
        return await self._txn(cmd, context)

    @rpc.unary
    async def Txn(self, request: pb.KvTxnRequest, context: grpc.aio.ServicerContext) -> pb.KvTxnResponse:
        compares = tuple(
            Compare(
                c.key, c.target, c.op, convert.load_json(f"compare {c.key!r} operand_json", c.operand_json)
            )
            for c in request.compares
        )

        def ops(items: Any) -> tuple[KvOp, ...]:
            return tuple(
                KvOp(
                    o.kind, o.key, convert.load_json(f"{o.kind} {o.key!r} value_json", o.value_json), o.lease
                )
                for o in items
            )

        for key in [c.key for c in request.compares] + [o.key for o in (*request.success, *request.failure)]:
            check_key(key)
        for o in (*request.success, *request.failure):
            self._check_lease(o.lease)
        cmd = KvTxn(
            _request_id(request.request_id, "kv-"),
            self.node.clock.now_ms(),
            compares=compares,
            success=ops(request.success),
            failure=ops(request.failure),
            fence=_fence(request.fence, request.HasField("fence")),
        )
        return await self._txn(cmd, context)

    @rpc.unary
    async def Lease(
        self, request: pb.KvLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.KvLeaseResponse:
        action = request.action or "grant"
        if action != "grant":
            self._check_lease(request.lease)
        if action == "revoke" and restricted():
            # A revoke deletes the lease's keys: a token limited to namespaces may revoke only a
            # lease whose keys (now) are all in them. O(keys of the lease). The refusal names no
            # key: another namespace's key names are not this caller's to learn.
            keys = self.node.reads.read(lambda st: sorted(_lease_keys(st, request.lease)))
            try:
                for key in keys:
                    check_key(key)
            except PermissionDenied:
                raise PermissionDenied(
                    f"lease {request.lease} holds keys outside the namespaces this token may use; "
                    "revoking it would delete them (an operator or admin may)"
                ) from None
        cmd = KvLease(
            _request_id(request.request_id, "kl-"),
            self.node.clock.now_ms(),
            lease=request.lease,
            ttl_ms=request.ttl_ms,
            action=action,
            principal=_acquirer() if action == "grant" else "",
        )
        res = await self.node.propose(cmd, context)
        if isinstance(res, KvLeaseRevoked):
            return pb.KvLeaseResponse(lease=res.lease, deleted=list(res.deleted))
        lease = expect(res, KvLeaseResult)
        return pb.KvLeaseResponse(lease=lease.lease, ttl_ms=lease.ttl_ms, deadline_ms=lease.deadline_ms)

    @rpc.stream
    async def Watch(
        self, request: pb.KvWatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KvWatchEvent]:
        node = self.node
        exact = bool(request.key)
        target = request.key or request.prefix
        if request.key and request.prefix:
            raise InvalidArgument("watch either a key or a prefix, not both")
        check_key(target)

        def history(st: ClusterState, since: int) -> tuple[int, list[KvEvent] | None, int]:
            """(revision to watch from, the events after it, compacted); O(events returned)."""
            if since == 0:
                return st.revision, [], st.kv.compacted
            return since, st.kv.events_since(since, target, exact), st.kv.compacted

        q = self._hub.subscribe_kv()
        try:
            await self._read_barrier(False, context)
            last = request.from_revision
            while True:
                last, backlog, compacted = node.reads.read(functools.partial(history, since=last))
                if backlog is None:
                    raise OutOfRange(
                        f"revision {last} is compacted (history starts after {compacted}); read the current value "
                        "and watch from its revision",
                    )
                for ev in backlog or []:
                    yield _watch_event(ev)
                    last = ev.revision
                while True:
                    try:
                        async with asyncio.timeout(STREAM_HEARTBEAT_S):
                            item = await q.get()
                    except TimeoutError:
                        yield pb.KvWatchEvent(revision=last)  # heartbeat: no kind, no entry
                        continue
                    if item is RESYNC:
                        break  # re-read from the history: no gap, no duplicate
                    assert isinstance(item, KvChanged)
                    ev = item.event
                    if ev.revision <= last:
                        continue
                    if (ev.key == target) if exact else ev.key.startswith(target):
                        yield _watch_event(ev)
                        last = ev.revision
        finally:
            self._hub.unsubscribe_kv(q)


def _lease_keys(st: ClusterState, lease_id: int) -> set[str]:
    lease = st.kv.leases.get(lease_id)
    return set(lease.keys) if lease is not None else set()


def _watch_event(ev: KvEvent) -> pb.KvWatchEvent:
    if ev.kind == DELETE:
        entry = pb.KvEntry(
            key=ev.key, found=False, mod_revision=ev.mod_revision, create_revision=ev.create_revision
        )
    else:
        entry = pb.KvEntry(
            key=ev.key,
            found=True,
            value_json=convert.dump_json(ev.value) or "null",
            mod_revision=ev.mod_revision,
            create_revision=ev.create_revision,
            version=ev.version,
        )
    return pb.KvWatchEvent(revision=ev.revision, kind=ev.kind, entry=entry)


LOCK_COALESCE_S = 0.003
"""How long an acquire that has to wait anyway is held back at most before it is proposed (see
``LocksService._hold_back``)..."""
LOCK_COALESCE_QUEUED_S = 0.05
"""... and one that a waiter already queued will be ahead of (let go earlier when none is)."""
MAX_HELD_BACK = 4096
"""Acquires held back at once on one node; more are proposed at once (the hold is an optimisation)."""


@dataclass(eq=False)
class _Held:
    future: asyncio.Future[None]
    items: tuple[tuple[str, str], ...]
    priority: int
    due: float


class LocksService(pb_grpc.LocksServicer):
    def __init__(self, node: NodeAccess, waits: LockWaits) -> None:
        self.node = node
        self._waits = waits
        self._held: list[_Held] = []
        self._held_timer: asyncio.TimerHandle | None = None
        waits.on_change = self._recheck

    async def _hold_back(self, items: tuple[tuple[str, str], ...], priority: int, hold_s: float) -> None:
        """Hold an acquire that has to wait anyway until the next lock command is proposed on this
        node (or ``hold_s``): both then go out in one log entry (the proposer batches what is
        queued in the same turn).

        Under contention a holder's release and the previous holder's next acquire reach the node
        a moment apart and went out as two entries, two fsyncs on each node per cycle; the release
        is the one the next waiter's grant waits for. Only an acquire that another owner's grant
        blocks now is held (no priority gets it the lock before a release). With nobody ahead of
        it in the queue it is held briefly: the release it waits for may be proposed on another
        node. Behind a queued waiter (by the queue's order, priority and age), it cannot be granted
        before the holder's and that waiter's releases apply, so it is held until the next lock
        command here (the next holder's release, when the acquire arrived just after the previous
        one), or until an applied change leaves no waiter ahead of it, or ``hold_s``.
        """
        if len(self._held) >= MAX_HELD_BACK:
            return
        loop = asyncio.get_running_loop()
        held = _Held(loop.create_future(), items, priority, loop.time() + hold_s)
        self._held.append(held)
        self._waits.watching = True
        if self._held_timer is None or held.due < self._held_timer.when():
            self._arm(held.due)
        await held.future

    def _arm(self, due: float) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
        self._held_timer = asyncio.get_running_loop().call_at(due, self._expire)

    def _let_go(self, keep: Callable[[_Held], bool] | None = None) -> None:
        """Propose the held-back acquires (those ``keep`` refuses; default all) now. Called just
        before a lock command is proposed here: they resume in the next loop turn, before the
        proposer takes its batch."""
        if not self._held:
            return
        go = self._held if keep is None else [h for h in self._held if not keep(h)]
        self._held = [] if keep is None else [h for h in self._held if keep(h)]
        resumed = False
        for h in go:
            if not h.future.done():
                h.future.set_result(None)
                resumed = True
        if resumed:
            # The command proposed next here waits for them, rather than going out alone at once.
            self.node.writer.gather_this_turn()
        self._waits.watching = bool(self._held)
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if self._held:
            self._arm(min(h.due for h in self._held))

    def _expire(self) -> None:
        self._held_timer = None
        now = asyncio.get_running_loop().time()
        self._let_go(lambda h: h.due - now > 0.0005 and not h.future.done())

    def _recheck(self) -> None:
        """An applied entry changed a lock (a grant, an abort): let go of the held acquires that no
        queued waiter is ahead of any more (they may be next)."""
        if not self._held:
            return
        held = self._held
        now = self.node.clock.now_ms()
        queued = self.node.reads.read(lambda st: [_queued_ahead(st, h.items, h.priority, now) for h in held])
        keep = {id(h) for h, q in zip(held, queued, strict=True) if q}
        self._let_go(lambda h: id(h) in keep)

    @rpc.unary
    async def Acquire(
        self, request: pb.LockAcquireRequest, context: grpc.aio.ServicerContext
    ) -> pb.LockAcquireResponse:
        node = self.node
        rid = _request_id(request.request_id, "lk-")
        items = tuple((i.name, i.mode or EXCLUSIVE) for i in request.locks)
        for name, _ in items:
            check_key(name)
        waiter = self._waits.waiter(rid)
        try:
            now = node.clock.now_ms()
            hold = (
                node.reads.read(lambda st: _hold_for(st, rid, request.owner, items, request.priority, now))
                if request.wait_ms
                else 0.0
            )
            if hold:
                await self._hold_back(items, request.priority, hold)
            else:
                self._let_go()
            cmd = LockAcquire(
                rid,
                self.node.clock.now_ms(),
                owner=request.owner,
                items=items,
                ttl_ms=request.ttl_ms,
                priority=request.priority,
                wait_ms=request.wait_ms,
                lease=secrets.token_hex(16),  # made here, so only this caller ever learns it
                principal=_acquirer(),
            )
            v = expect(await node.propose(cmd, context), LockAcquireResult)
            # A replayed request id gets the first Acquire's answer from the dedup table: only
            # its own principal may have that grant's lease, or wait on (and cancel) it.
            mine, outcome = node.reads.read(
                lambda st: (_acquired_by(st, rid, cmd.principal), st.locks.status(rid))
            )
            if not mine:
                raise PermissionDenied(
                    f"lock request id {rid!r} was used by another caller; use a new request id"
                )
            if outcome is None and v.waiting:
                budget = request.wait_ms / 1000
                remaining = context.time_remaining()
                if remaining is not None:
                    budget = min(budget, float(remaining) - 0.2)
                try:
                    async with asyncio.timeout(max(0.0, budget)):
                        outcome = await waiter  # this call's own future: the applied grant resumes it
                except TimeoutError:
                    outcome = node.reads.read(lambda st: st.locks.status(rid))
                    if outcome is None:
                        # Give up through the log, so a grant cannot land on a caller that left.
                        self._let_go()
                        await node.writer.propose(
                            LockCancel(new_request_id("lc-"), node.clock.now_ms(), lock_request_id=rid)
                        )
                        return pb.LockAcquireResponse(granted=False, request_id=rid)
            if outcome is None:
                return pb.LockAcquireResponse(
                    granted=v.granted,
                    token=v.token,
                    request_id=rid,
                    lease=_lock_lease(node, rid, request.owner) if v.granted else "",
                )
            if outcome.granted:
                deadline_ms, lease = node.reads.read(lambda st: _grant_info(st, rid, request.owner))
                return pb.LockAcquireResponse(
                    granted=True, token=outcome.token, request_id=rid, deadline_ms=deadline_ms, lease=lease
                )
            if outcome.code is Code.ABORTED:
                raise Aborted(outcome.message)
            return pb.LockAcquireResponse(granted=False, request_id=rid)
        finally:
            self._waits.drop(rid, waiter)

    async def _release(
        self, request: pb.LockReleaseRequest, keep_alive: bool, context: Any
    ) -> pb.LockReleaseResponse:
        if not request.name or not request.owner:
            raise InvalidArgument("owner and name are required")
        if not request.lease:
            raise InvalidArgument(
                "lease is required: the lease handle Acquire returned (LockAcquireResponse.lease)"
            )
        if len(request.lease) > limits.MAX_ID_CHARS:
            raise InvalidArgument(f"lease is longer than {limits.MAX_ID_CHARS} characters")
        check_key(request.name)
        self._let_go()  # held-back acquires go in the same log entry
        cmd = LockRelease(
            _request_id(request.request_id, "lr-"),
            self.node.clock.now_ms(),
            owner=request.owner,
            name=request.name,
            token=request.token,
            keep_alive=keep_alive,
            lease=request.lease,
        )
        res = await self.node.propose(cmd, context)
        if isinstance(res, LockKeepAliveResult):
            return pb.LockReleaseResponse(token=res.token, deadline_ms=res.deadline_ms)
        return pb.LockReleaseResponse(token=expect(res, LockReleaseResult).token)

    @rpc.unary
    async def Release(
        self, request: pb.LockReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.LockReleaseResponse:
        return await self._release(request, False, context)

    @rpc.unary
    async def KeepAlive(
        self, request: pb.LockReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.LockReleaseResponse:
        return await self._release(request, True, context)

    @rpc.unary
    async def List(
        self, request: pb.LockListRequest, context: grpc.aio.ServicerContext
    ) -> pb.LockListResponse:
        check_key(request.prefix)
        if not request.stale_ok:
            await self.node.barrier(context)
        return pb.LockListResponse(locks=self.node.reads.read(lambda st: _lock_infos(st, request.prefix)))


def _hold_for(
    st: ClusterState, rid: str, owner: str, items: tuple[tuple[str, str], ...], priority: int, now_ms: int
) -> float:
    """How long an acquire of ``items`` may be held back on this node (0: propose it now). A retry
    of a request already in the table is never held: it is queued already (its own place would
    count as a waiter ahead of it)."""
    if rid in st.locks.waiting or st.locks.holder_of(rid) is not None:
        return 0.0
    if not st.locks.held_against(owner, items):
        return 0.0
    return LOCK_COALESCE_QUEUED_S if _queued_ahead(st, items, priority, now_ms) else LOCK_COALESCE_S


def _queued_ahead(st: ClusterState, items: tuple[tuple[str, str], ...], priority: int, now_ms: int) -> bool:
    """Whether the first waiter queued for one of the locks would stay ahead of a request of
    ``priority`` enqueued now (the queue's order: age, less LOCK_AGING_MS per point of priority)."""
    lt = st.locks
    key = now_ms - priority * limits.LOCK_AGING_MS
    for name, _ in items:
        lk = lt.locks.get(name)
        if (
            lk is not None
            and lk.queue
            and (r := lt.waiting.get(lk.queue[0])) is not None
            and r.order[0] <= key
        ):
            return True
    return False


def _grant_info(st: ClusterState, request_id: str, owner: str) -> tuple[int, str]:
    """(lease deadline, lease handle) of the grant made under ``request_id``; the handle for its
    owner only (a retry repeating the request id gets the first Acquire's)."""
    held = st.locks.holder_of(request_id)
    if held is None:
        return 0, ""
    return held[1].deadline_ms, held[1].lease if held[1].owner == owner else ""


_ANY_LEASE = frozenset({Role.OPERATOR.label, Role.ADMIN.label, Role.NODE.label})
"""Roles that may attach to, renew and revoke any principal's KV lease."""


def _acquirer() -> str:
    """The principal recorded on a lock request ("" on an open cluster: everyone is anonymous,
    and a table without principals encodes as before)."""
    call = calls.current()
    if call is None or call.principal == calls.ANONYMOUS:
        return ""
    return call.principal


def _acquired_by(st: ClusterState, request_id: str, principal: str) -> bool:
    """Whether the lock request ``request_id`` (waiting or holding) was made by ``principal``;
    True when it recorded none (an open cluster's, or older) or holds nothing any more."""
    lt = st.locks
    req = lt.waiting.get(request_id)
    if req is not None:
        return not req.principal or req.principal == principal
    held = lt.holder_of(request_id)
    return held is None or not held[1].principal or held[1].principal == principal


def _lock_lease(node: NodeAccess, request_id: str, owner: str) -> str:
    """The lease handle of the grant made under ``request_id`` (the first Acquire's, when a
    retry repeats the request id), for its owner only."""

    def lease(st: ClusterState) -> str:
        held = st.locks.holder_of(request_id)
        return held[1].lease if held is not None and held[1].owner == owner else ""

    return node.reads.read(lease)


def _lock_infos(st: ClusterState, prefix: str) -> list[pb.LockInfo]:
    """Encoded under the apply lock: O(answer), and a lock record is a few scalars per holder."""
    lt = st.locks
    out = []
    for name in sorted(lt.locks):
        if not name.startswith(prefix):
            continue
        lock = lt.locks[name]
        out.append(
            pb.LockInfo(
                name=name,
                holders=[
                    pb.LockHolder(owner=h.owner, mode=h.mode, token=h.token, deadline_ms=h.deadline_ms)
                    for h in lock.holders.values()
                ],
                waiters=[lt.waiting[r].owner for r in lock.queue],
                last_token=lock.last_token,
            )
        )
    return out
