"""The SDK's KV and lock clients (``client.kv``, ``client.lock(...)``)."""

from __future__ import annotations

import builtins
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ..errors import Aborted, DeadlineExceeded, InvalidArgument, RaftmeshError
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from ._client import Watchdog

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


class KvClient:
    """``client.kv``: linearizable reads by default, every write retried safely with one request id."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def _stub(self, addr: str) -> pb_grpc.KvStub:
        return pb_grpc.KvStub(self._c._channel(addr))

    def _call(self, method: str, request: Any) -> Any:
        return self._c._call(method, request, stub=self._stub)

    def get(self, key: str, *, stale_ok: bool = False) -> KvEntry | None:
        return KvEntry.from_pb(self._call("Get", pb.KvGetRequest(key=key, stale_ok=stale_ok)).entry)

    def list(self, prefix: str = "", *, limit: int = 1000, stale_ok: bool = False) -> builtins.list[KvEntry]:
        resp = self._call("List", pb.KvListRequest(prefix=prefix, limit=limit, stale_ok=stale_ok))
        return [e for e in (KvEntry.from_pb(x) for x in resp.entries) if e is not None]

    def put(self, key: str, value: Any, *, lease: int = 0, fence: pb.Fence | None = None) -> int:
        """Write ``value``; returns the new mod_revision. ``fence`` rejects the write (Aborted) if stale."""
        req = pb.KvPutRequest(key=key, value_json=_dumps(value), lease=lease, request_id=uuid.uuid4().hex)
        if fence is not None:
            req.fence.CopyFrom(fence)
        return int(self._call("Put", req).results[0].mod_revision)

    def delete(self, key: str, *, fence: pb.Fence | None = None) -> bool:
        req = pb.KvDeleteRequest(key=key, request_id=uuid.uuid4().hex)
        if fence is not None:
            req.fence.CopyFrom(fence)
        return bool(self._call("Delete", req).results[0].deleted)

    def cas(self, key: str, expected_revision: int, value: Any, *, fence: pb.Fence | None = None) -> bool:
        """Write only if the key's mod_revision is ``expected_revision`` (0: the key must not exist)."""
        res = self.txn(
            compares=[(key, "mod", "=", expected_revision)],
            success=[("put", key, value)],
            failure=[],
            fence=fence,
        )
        return res.succeeded

    def txn(
        self,
        compares: builtins.list[tuple[str, str, str, Any]],
        success: builtins.list[tuple[Any, ...]],
        failure: builtins.list[tuple[Any, ...]] | None = None,
        *,
        fence: pb.Fence | None = None,
    ) -> TxnResult:
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
        resp = self._call("Txn", req)
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

    def lease_grant(self, ttl_s: float) -> int:
        req = pb.KvLeaseRequest(action="grant", ttl_ms=int(ttl_s * 1000), request_id=uuid.uuid4().hex)
        return int(self._call("Lease", req).lease)

    def lease_keep_alive(self, lease: int) -> None:
        self._call("Lease", pb.KvLeaseRequest(action="keep_alive", lease=lease, request_id=uuid.uuid4().hex))

    def lease_revoke(self, lease: int) -> builtins.list[str]:
        resp = self._call(
            "Lease", pb.KvLeaseRequest(action="revoke", lease=lease, request_id=uuid.uuid4().hex)
        )
        return list(resp.deleted)

    def watch(
        self, key: str = "", *, prefix: str = "", from_revision: int = 0, timeout_s: float | None = None
    ) -> Iterator[WatchEvent]:
        """Changes after ``from_revision`` (0: from now); reconnects to other nodes without gaps."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = from_revision
        attempt = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            addr = self._c.addresses[self._c._current]
            try:
                stream = self._stub(addr).Watch(
                    pb.KvWatchRequest(key=key, prefix=prefix, from_revision=last), timeout=remaining
                )
                dog = Watchdog(stream)
                try:
                    for ev in stream:
                        dog.feed()
                        attempt = 0
                        if not ev.kind:
                            continue  # heartbeat
                        last = ev.revision
                        yield WatchEvent(ev.revision, ev.kind, ev.entry.key, KvEntry.from_pb(ev.entry))
                    return
                finally:
                    dog.close()
            except grpc.RpcError as exc:
                code = exc.code()
                if (
                    code == grpc.StatusCode.DEADLINE_EXCEEDED
                    and deadline is not None
                    and time.monotonic() >= deadline
                ):
                    return
                if code not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    from ._client import _translate

                    raise _translate(exc) from None
            self._c._rotate()
            attempt += 1
            time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)))


MAX_REMEMBERED_LEASES = 10_000
"""Lease handles a ``Client`` keeps for grants it got (``client.locks.release`` finds them)."""


class Lease:
    """A held lock. Renewed in the background until released; ``token`` fences writes."""

    def __init__(
        self,
        client: Client,
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
        self.handle = handle or client.locks.lease_of(owner, token)
        """The secret lease handle the node made at Acquire: renewals and the release name it."""
        self.lost = threading.Event()
        """Set if a renewal was rejected: the lease expired and the lock may have a new holder."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lock-keepalive-{names[0]}", daemon=True)
        self._thread.start()

    def fence(self, name: str | None = None) -> pb.Fence:
        """A fence for KV writes guarded by this lock."""
        return fence_pb(lock=name or self.names[0], token=self.token)

    def _renew(self) -> None:
        interval = max(0.1, self.ttl_ms / 3000)
        while not self._stop.wait(interval):
            for name in self.names:
                try:
                    self._c.locks.keep_alive(self.owner, name, self.token, lease=self.handle)
                except Aborted:
                    self.lost.set()
                    return
                except RaftmeshError:
                    continue  # transient; the next round retries before the TTL runs out

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for name in self.names:
            try:
                self._c.locks.release(self.owner, name, self.token, lease=self.handle)
            except Aborted:
                self.lost.set()  # it had expired; someone else may hold it now


class LockClient:
    """``client.locks``: the raw lock API (``client.lock(...)`` is the context manager)."""

    def __init__(self, client: Client) -> None:
        self._c = client
        self._leases: OrderedDict[tuple[str, int], str] = OrderedDict()
        """(owner, token) -> lease handle of grants this client got (bounded; oldest dropped)."""
        self._leases_lock = threading.Lock()

    def _stub(self, addr: str) -> pb_grpc.LocksStub:
        return pb_grpc.LocksStub(self._c._channel(addr))

    def lease_of(self, owner: str, token: int) -> str:
        """The lease handle this client was given for ``owner``'s grant ``token`` ("" if none)."""
        with self._leases_lock:
            return self._leases.get((owner, token), "")

    def _remember(self, owner: str, token: int, lease: str) -> None:
        with self._leases_lock:
            self._leases[(owner, token)] = lease
            while len(self._leases) > MAX_REMEMBERED_LEASES:
                self._leases.popitem(last=False)

    def _lease(self, owner: str, token: int, lease: str | None) -> str:
        handle = lease if lease is not None else self.lease_of(owner, token)
        if not handle:
            raise InvalidArgument(
                f"no lease handle for {owner!r}'s grant {token}: pass lease= (Acquire's lease; the CLI "
                "prints it with `lock acquire --json` and takes it as --lease)"
            )
        return handle

    def acquire(
        self,
        names: builtins.list[str] | str,
        *,
        owner: str,
        ttl_s: float = 10.0,
        mode: str = "exclusive",
        wait_s: float = 30.0,
        priority: int = 0,
        request_id: str | None = None,
    ) -> tuple[bool, int, str]:
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
        resp = self._c._call("Acquire", req, stub=self._stub, timeout_s=wait_s + self._c.timeout_s)
        if resp.granted and resp.lease:
            self._remember(owner, int(resp.token), resp.lease)
        return resp.granted, int(resp.token), rid

    def release(self, owner: str, name: str, token: int, *, lease: str | None = None) -> None:
        """Release ``name``; ``lease``: the grant's handle (default: the one this client was given)."""
        req = pb.LockReleaseRequest(
            owner=owner,
            name=name,
            token=token,
            request_id=uuid.uuid4().hex,
            lease=self._lease(owner, token, lease),
        )
        self._c._call("Release", req, stub=self._stub)

    def keep_alive(self, owner: str, name: str, token: int, *, lease: str | None = None) -> int:
        req = pb.LockReleaseRequest(
            owner=owner,
            name=name,
            token=token,
            request_id=uuid.uuid4().hex,
            lease=self._lease(owner, token, lease),
        )
        return int(self._c._call("KeepAlive", req, stub=self._stub).deadline_ms)

    def list(self, prefix: str = "") -> builtins.list[dict[str, Any]]:
        resp = self._c._call("List", pb.LockListRequest(prefix=prefix), stub=self._stub)
        return [
            {
                "name": lk.name,
                "holders": [
                    {"owner": h.owner, "mode": h.mode, "token": h.token, "deadline_ms": h.deadline_ms}
                    for h in lk.holders
                ],
                "waiters": list(lk.waiters),
                "last_token": lk.last_token,
            }
            for lk in resp.locks
        ]


class LockContext:
    """``with client.lock("db:orders", ttl_s=10) as lease: ...``"""

    def __init__(self, client: Client, names: list[str], **kw: Any) -> None:
        self._c = client
        self._names = names
        self._kw = kw
        self.lease: Lease | None = None

    def __enter__(self) -> Lease:
        owner = self._kw.pop("owner", None) or f"{self._c.client_id}:{os.getpid()}:{threading.get_ident()}"
        ttl_s = float(self._kw.get("ttl_s", 10.0))
        granted, token, rid = self._c.locks.acquire(self._names, owner=owner, **self._kw)
        if not granted:
            raise DeadlineExceeded(
                f"lock(s) {self._names} not granted within {self._kw.get('wait_s', 30.0)} s"
            )
        self.lease = Lease(self._c, owner, self._names, token, int(ttl_s * 1000), rid)
        return self.lease

    def __exit__(self, *exc: object) -> None:
        if self.lease is not None:
            self.lease.release()
