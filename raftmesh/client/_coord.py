"""The SDK's KV and lock clients (``client.kv``, ``client.lock(...)``).

``Kv`` and ``Locks`` hold the operations (``_core.Op``s) both clients run; ``KvWatch`` is the
KV watch's reconnect plan (it resumes after the last revision it delivered); ``LeaseBase``
and ``lock_enter`` are what a held lock is, whichever driver renews it (a thread here, an
asyncio task in ``raftmesh.aio``)."""

from __future__ import annotations

import builtins
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ..errors import Aborted, DeadlineExceeded, InvalidArgument, RaftmeshError
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ._client import Driver
from ._core import SKIP, Conn, Op, StreamPlan, SubClient, sync_op

if TYPE_CHECKING:
    from ._client import Client


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"value is not JSON-serializable: {exc}") from exc


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: Any
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_pb(cls, e: pb.KvEntry) -> KvEntry | None:
        if not e.found:
            return None
        return cls(
            e.key,
            json.loads(e.value_json) if e.value_json else None,
            e.mod_revision,
            e.create_revision,
            e.version,
            e.lease,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "mod_revision": self.mod_revision,
            "create_revision": self.create_revision,
            "version": self.version,
            "lease": self.lease,
        }


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    results: list[dict[str, Any]]


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    kind: str
    key: str
    entry: KvEntry | None


def fence_pb(lock: str = "", token: int = 0, run_id: str = "", task_id: str = "") -> pb.Fence:
    return pb.Fence(lock=lock, token=token, run_id=run_id, task_id=task_id)


class Kv:
    """The KV operations: linearizable reads by default, every write retried safely with one request id."""

    @staticmethod
    def get(c: Conn, key: str, *, stale_ok: bool = False) -> Op[KvEntry | None]:
        resp = yield from c._failover("Kv", "Get", pb.KvGetRequest(key=key, stale_ok=stale_ok))
        return KvEntry.from_pb(resp.entry)

    @staticmethod
    def list(
        c: Conn, prefix: str = "", *, limit: int = 1000, stale_ok: bool = False
    ) -> Op[builtins.list[KvEntry]]:
        resp = yield from c._failover(
            "Kv", "List", pb.KvListRequest(prefix=prefix, limit=limit, stale_ok=stale_ok)
        )
        return [e for e in (KvEntry.from_pb(x) for x in resp.entries) if e is not None]

    @staticmethod
    def put(c: Conn, key: str, value: Any, *, lease: int = 0, fence: pb.Fence | None = None) -> Op[int]:
        """Write ``value``; returns the new mod_revision. ``fence`` rejects the write (Aborted) if stale."""
        req = pb.KvPutRequest(key=key, value_json=_dumps(value), lease=lease, request_id=uuid.uuid4().hex)
        if fence is not None:
            req.fence.CopyFrom(fence)
        return int((yield from c._failover("Kv", "Put", req)).results[0].mod_revision)

    @staticmethod
    def delete(c: Conn, key: str, *, fence: pb.Fence | None = None) -> Op[bool]:
        req = pb.KvDeleteRequest(key=key, request_id=uuid.uuid4().hex)
        if fence is not None:
            req.fence.CopyFrom(fence)
        return bool((yield from c._failover("Kv", "Delete", req)).results[0].deleted)

    @staticmethod
    def cas(
        c: Conn, key: str, expected_revision: int, value: Any, *, fence: pb.Fence | None = None
    ) -> Op[bool]:
        """Write only if the key's mod_revision is ``expected_revision`` (0: the key must not exist)."""
        res = yield from Kv.txn(
            c,
            compares=[(key, "mod", "=", expected_revision)],
            success=[("put", key, value)],
            failure=[],
            fence=fence,
        )
        return res.succeeded

    @staticmethod
    def txn(
        c: Conn,
        compares: builtins.list[tuple[str, str, str, Any]],
        success: builtins.list[tuple[Any, ...]],
        failure: builtins.list[tuple[Any, ...]] | None = None,
        *,
        fence: pb.Fence | None = None,
    ) -> Op[TxnResult]:
        """etcd-style: ``compares`` = [(key, "value"|"version"|"mod"|"create", "="|"!="|"<"|">", operand)];
        ops = [("put", key, value[, lease]) | ("delete", key) | ("get", key)]."""

        def op(t: tuple[Any, ...]) -> pb.KvOperation:
            kind, key = t[0], t[1]
            value = _dumps(t[2]) if kind == "put" else ""
            return pb.KvOperation(kind=kind, key=key, value_json=value, lease=t[3] if len(t) > 3 else 0)

        req = pb.KvTxnRequest(
            compares=[pb.KvCompare(key=k, target=t, op=o, operand_json=_dumps(v)) for k, t, o, v in compares],
            success=[op(x) for x in success],
            failure=[op(x) for x in (failure or [])],
            request_id=uuid.uuid4().hex,
        )
        if fence is not None:
            req.fence.CopyFrom(fence)
        resp = yield from c._failover("Kv", "Txn", req)
        results = []
        for r in resp.results:
            d: dict[str, Any] = {"kind": r.kind}
            if r.kind == "get":
                e = KvEntry.from_pb(r.entry)
                d["entry"] = e.to_json() if e else None
            elif r.kind == "put":
                d["mod_revision"] = r.mod_revision
            else:
                d["deleted"] = r.deleted
            results.append(d)
        return TxnResult(resp.succeeded, resp.revision, results)

    @staticmethod
    def lease_grant(c: Conn, ttl_s: float) -> Op[int]:
        req = pb.KvLeaseRequest(action="grant", ttl_ms=int(ttl_s * 1000), request_id=uuid.uuid4().hex)
        return int((yield from c._failover("Kv", "Lease", req)).lease)

    @staticmethod
    def lease_keep_alive(c: Conn, lease: int) -> Op[None]:
        req = pb.KvLeaseRequest(action="keep_alive", lease=lease, request_id=uuid.uuid4().hex)
        yield from c._failover("Kv", "Lease", req)

    @staticmethod
    def lease_revoke(c: Conn, lease: int) -> Op[builtins.list[str]]:
        req = pb.KvLeaseRequest(action="revoke", lease=lease, request_id=uuid.uuid4().hex)
        return list((yield from c._failover("Kv", "Lease", req)).deleted)


class KvWatch(StreamPlan):
    """``kv.watch``: changes after ``from_revision`` (0: from now); reconnects to other nodes
    without gaps (each reconnection asks from the last revision delivered); ends quietly at
    ``timeout_s``."""

    service = "Kv"
    method = "Watch"

    def __init__(self, c: Conn, key: str, prefix: str, from_revision: int, timeout_s: float | None) -> None:
        super().__init__(c, timeout_s)
        self.key = key
        self.prefix = prefix
        self.last = from_revision

    def start(self) -> tuple[str, Any, float | None] | None:
        opened = super().start()
        if opened is not None and opened[2] == 0:
            return None  # timeout_s passed: the watch ends quietly
        return opened

    def request(self) -> pb.KvWatchRequest:
        return pb.KvWatchRequest(key=self.key, prefix=self.prefix, from_revision=self.last)

    def parse(self, ev: pb.KvWatchEvent) -> Any:
        if not ev.kind:
            return SKIP  # heartbeat
        self.last = ev.revision
        return WatchEvent(ev.revision, ev.kind, ev.entry.key, KvEntry.from_pb(ev.entry))

    def failed(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> float | None:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.deadline is not None and self.remaining() == 0:
            return None
        return super().failed(code, exc, silent)

    def check(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> None:
        # Any cancellation reconnects: the watch resumes from its last revision, so nothing is lost.
        super().check(code, exc, silent or code == grpc.StatusCode.CANCELLED)


class KvClient(SubClient, Driver):
    """``client.kv``: linearizable reads by default, every write retried safely with one request id."""

    get = sync_op(Kv.get)
    list = sync_op(Kv.list)
    put = sync_op(Kv.put)
    delete = sync_op(Kv.delete)
    cas = sync_op(Kv.cas)
    txn = sync_op(Kv.txn)
    lease_grant = sync_op(Kv.lease_grant)
    lease_keep_alive = sync_op(Kv.lease_keep_alive)
    lease_revoke = sync_op(Kv.lease_revoke)

    def watch(
        self, key: str = "", *, prefix: str = "", from_revision: int = 0, timeout_s: float | None = None
    ) -> Iterator[WatchEvent]:
        """Changes after ``from_revision`` (0: from now); reconnects to other nodes without gaps."""
        return self._stream(KvWatch(self._c, key, prefix, from_revision, timeout_s))


MAX_REMEMBERED_LEASES = 10_000
"""Lease handles a ``Client`` keeps for grants it got (``client.locks.release`` finds them)."""


class LeaseBook:
    """(owner, token) -> lease handle of grants a client got (bounded; oldest dropped)."""

    def __init__(self) -> None:
        self._leases: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, owner: str, token: int) -> str:
        with self._lock:
            return self._leases.get((owner, token), "")

    def remember(self, owner: str, token: int, lease: str) -> None:
        with self._lock:
            self._leases[(owner, token)] = lease
            while len(self._leases) > MAX_REMEMBERED_LEASES:
                self._leases.popitem(last=False)

    def handle(self, owner: str, token: int, lease: str | None) -> str:
        handle = lease if lease is not None else self.get(owner, token)
        if not handle:
            raise InvalidArgument(
                f"no lease handle for {owner!r}'s grant {token}: pass lease= (Acquire's lease; the CLI "
                "prints it with `lock acquire --json` and takes it as --lease)"
            )
        return handle


def lease_book(c: Conn) -> LeaseBook:
    """The client's book of lease handles (made on first use)."""
    book: LeaseBook | None = getattr(c, "_lease_book", None)
    if book is None:
        book = LeaseBook()
        c._lease_book = book  # type: ignore[attr-defined]
    return book


def _lease_request(c: Conn, owner: str, name: str, token: int, lease: str | None) -> pb.LockReleaseRequest:
    """A release or keepalive of one grant (one request id for every attempt of the call)."""
    return pb.LockReleaseRequest(
        owner=owner,
        name=name,
        token=token,
        request_id=uuid.uuid4().hex,
        lease=lease_book(c).handle(owner, token, lease),
    )


class Locks:
    """The lock operations (``client.locks``)."""

    @staticmethod
    def acquire(
        c: Conn,
        names: builtins.list[str] | str,
        *,
        owner: str,
        ttl_s: float = 10.0,
        mode: str = "exclusive",
        wait_s: float = 30.0,
        priority: int = 0,
        request_id: str | None = None,
    ) -> Op[tuple[bool, int, str]]:
        """(granted, token, request_id). Raises Aborted if chosen as a deadlock victim."""
        names = [names] if isinstance(names, str) else names
        rid = request_id or uuid.uuid4().hex
        req = pb.LockAcquireRequest(
            owner=owner,
            locks=[pb.LockItem(name=n, mode=mode) for n in names],
            ttl_ms=int(ttl_s * 1000),
            wait_ms=int(wait_s * 1000),
            priority=priority,
            request_id=rid,
        )
        resp = yield from c._failover("Locks", "Acquire", req, wait_s + c.timeout_s)
        if resp.granted and resp.lease:
            lease_book(c).remember(owner, int(resp.token), resp.lease)
        return resp.granted, int(resp.token), rid

    @staticmethod
    def release(c: Conn, owner: str, name: str, token: int, *, lease: str | None = None) -> Op[None]:
        """Release ``name``; ``lease``: the grant's handle (default: the one this client was given)."""
        yield from c._failover("Locks", "Release", _lease_request(c, owner, name, token, lease))

    @staticmethod
    def keep_alive(c: Conn, owner: str, name: str, token: int, *, lease: str | None = None) -> Op[int]:
        req = _lease_request(c, owner, name, token, lease)
        return int((yield from c._failover("Locks", "KeepAlive", req)).deadline_ms)

    @staticmethod
    def list(c: Conn, prefix: str = "") -> Op[builtins.list[dict[str, Any]]]:
        resp = yield from c._failover("Locks", "List", pb.LockListRequest(prefix=prefix))
        return [
            {
                "name": lk.name,
                "holders": [
                    {"owner": h.owner, "mode": h.mode, "token": h.token, "deadline_ms": h.deadline_ms}
                    for h in lk.holders
                ],
                "waiters": builtins.list(lk.waiters),
                "last_token": lk.last_token,
            }
            for lk in resp.locks
        ]


class LockClientBase(SubClient):
    """What both lock clients are beside their ops: the lease handles this client was given."""

    def lease_of(self, owner: str, token: int) -> str:
        """The lease handle this client was given for ``owner``'s grant ``token`` ("" if none)."""
        return lease_book(self._c).get(owner, token)


class LockClient(LockClientBase, Driver):
    """``client.locks``: the raw lock API (``client.lock(...)`` is the context manager)."""

    acquire = sync_op(Locks.acquire)
    release = sync_op(Locks.release)
    keep_alive = sync_op(Locks.keep_alive)
    list = sync_op(Locks.list)


class LeaseBase:
    """A held lock: ``token`` fences writes; renewed until released (by the driver's renewer)."""

    def __init__(
        self,
        client: Any,
        owner: str,
        names: list[str],
        token: int,
        ttl_ms: int,
        request_id: str,
        handle: str = "",
    ) -> None:
        self._c = client
        self.owner = owner
        self.names = names
        self.token = token
        self.ttl_ms = ttl_ms
        self.request_id = request_id
        self.handle = handle or lease_book(client).get(owner, token)
        """The secret lease handle the node made at Acquire: renewals and the release name it."""
        self._start()

    def _start(self) -> None:
        """Start renewing it (the driver's way)."""

    @property
    def interval_s(self) -> float:
        """How often it is renewed: a third of its TTL, so two renewals may fail before it expires."""
        return max(0.1, self.ttl_ms / 3000)

    def fence(self, name: str | None = None) -> pb.Fence:
        """A fence for KV writes guarded by this lock."""
        return fence_pb(lock=name or self.names[0], token=self.token)

    def renew(self) -> Op[bool]:
        """One round of renewals; True if one was rejected (the lease expired: lost)."""
        for name in self.names:
            try:
                yield from Locks.keep_alive(self._c, self.owner, name, self.token, lease=self.handle)
            except Aborted:
                return True
            except RaftmeshError:
                continue  # transient; the next round retries before the TTL runs out
        return False

    def unlock(self) -> Op[bool]:
        """Release every name; True if one had expired (someone else may hold it now)."""
        lost = False
        for name in self.names:
            try:
                yield from Locks.release(self._c, self.owner, name, self.token, lease=self.handle)
            except Aborted:
                lost = True
        return lost


class Lease(LeaseBase):
    """A held lock. Renewed in the background until released; ``token`` fences writes."""

    def _start(self) -> None:
        self.lost = threading.Event()
        """Set if a renewal was rejected: the lease expired and the lock may have a new holder."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"lock-keepalive-{self.names[0]}", daemon=True
        )
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._c._drive(self.renew()):
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._c._drive(self.unlock()):
            self.lost.set()


def lock_enter(c: Conn, names: list[str], owner: str, kw: dict[str, Any]) -> Op[tuple[str, int, str]]:
    """Acquire for ``client.lock(...)``: (owner, token, request id), or DeadlineExceeded."""
    granted, token, rid = yield from Locks.acquire(c, names, owner=owner, **kw)
    if not granted:
        raise DeadlineExceeded(f"lock(s) {names} not granted within {kw.get('wait_s', 30.0)} s")
    return owner, token, rid


def default_owner(c: Conn, holder: int) -> str:
    """A lock owner for this client and process, per ``holder`` (a thread, an asyncio task)."""
    return f"{c.client_id}:{os.getpid()}:{holder}"


class LockContext:
    """``with client.lock("db:orders", ttl_s=10) as lease: ...``"""

    def __init__(self, client: Client, names: list[str], **kw: Any) -> None:
        self._c = client
        self._names = names
        self._kw = kw
        self.lease: Lease | None = None

    def __enter__(self) -> Lease:
        owner = self._kw.pop("owner", None) or default_owner(self._c, threading.get_ident())
        ttl_s = float(self._kw.get("ttl_s", 10.0))
        owner, token, rid = self._c._drive(lock_enter(self._c, self._names, owner, self._kw))
        self.lease = Lease(self._c, owner, self._names, token, int(ttl_s * 1000), rid)
        return self.lease

    def __exit__(self, *exc: object) -> None:
        if self.lease is not None:
            self.lease.release()
