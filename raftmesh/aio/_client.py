"""``raftmesh.aio.Client``: the async driver of the client's shared operations.

It performs the ``Rpc`` and ``Sleep`` effects the ops in ``raftmesh.client`` yield by awaiting
``grpc.aio`` calls, and follows their ``StreamPlan``s for the streams; what is retried, where,
after how long and with which request ids is decided there, once for both clients.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from .. import tracing
from ..client import _audit, _runs
from ..client._client import STUBS
from ..client._coord import (
    Kv,
    KvWatch,
    LeaseBase,
    LockClientBase,
    Locks,
    WatchEvent,
    default_owner,
    lock_enter,
)
from ..client._core import (
    SKIP,
    STREAM_SILENCE_S,
    Conn,
    Op,
    Sleep,
    StreamPlan,
    SubClient,
    bound_signature,
)
from ..client._dag import DAG
from ..client._messages import Messages, MessagesBase, SubscriptionBase, check_topic
from ..client._types import RunEvent, RunInfo
from ..consensus.commands import Message

T = TypeVar("T")
P = ParamSpec("P")


def async_op(
    op: Callable[Concatenate[Any, P], Op[T]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    """A coroutine method running ``op`` on the client's ``_conn`` with its ``_drive``."""

    @functools.wraps(op)
    async def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._drive(op(self._conn, *args, **kwargs))

    method.__signature__ = bound_signature(op, lambda t: t)  # type: ignore[attr-defined]
    return method


class AsyncDriver:
    """Performs ops and streams on the loop; ``Client`` and its sub-clients share the client's."""

    _conn: Client

    async def _drive(self, op: Op[Any]) -> Any:
        c = self._conn
        try:
            effect = next(op)
            while True:
                reply: Any = None
                if isinstance(effect, Sleep):
                    await asyncio.sleep(effect.seconds)
                else:
                    unary = getattr(STUBS[effect.service](c._channel(effect.addr)), effect.method)
                    try:
                        reply = await unary(effect.request, timeout=effect.timeout_s, metadata=c._metadata())
                    except grpc.RpcError as exc:
                        reply = exc
                effect = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    async def _stream(self, plan: StreamPlan) -> AsyncIterator[Any]:
        c = self._conn
        while (opened := plan.start()) is not None:
            addr, request, timeout = opened
            streaming = getattr(STUBS[plan.service](c._channel(addr)), plan.method)
            call = streaming(request, timeout=timeout, metadata=c._metadata())
            plan.attach(call)
            messages = aiter(call)
            try:
                while True:
                    try:
                        # The watchdog: a node that stalls sends no heartbeat for this long.
                        async with asyncio.timeout(STREAM_SILENCE_S):
                            msg = await anext(messages, None)
                    except TimeoutError:
                        delay = plan.failed(grpc.StatusCode.CANCELLED, None, True)
                        break
                    if msg is None:
                        delay = plan.ended()
                        break
                    item = plan.accept(msg)
                    if item is not SKIP:
                        yield item
                    if plan.done:
                        return
            except grpc.RpcError as exc:
                delay = plan.failed(exc.code(), exc, False)
            except asyncio.CancelledError:
                # grpc.aio ends a read of a call cancelled by ``close()`` so; a cancelled task re-raises.
                task = asyncio.current_task()
                if not plan.closed or (task is not None and task.cancelling()):
                    raise
                return
            finally:
                call.cancel()
            if delay is None:
                return
            await asyncio.sleep(delay)


class Client(Conn, AsyncDriver):
    """``async with raftmesh.aio.Client([...]) as client:`` (or ``RAFTMESH_ADDRESSES``); the
    constructor is ``raftmesh.Client``'s. Channels open on first use, on the running loop."""

    def _open(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.kv = KvClient(self)
        """Versioned KV store: get/put/delete/cas/txn/list/watch/leases."""
        self.locks = LockClient(self)
        """The raw lock API; prefer ``async with lock(...)``."""
        self.messages = MessagesClient(self)
        """Agent messaging: send/request/publish/subscribe, dead letters, activations."""

    @property
    def _conn(self) -> Client:  # type: ignore[override]
        return self

    def _channel(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = self.credentials.aio_channel(addr, self.channel_options)
        return ch

    def _metadata(self) -> list[tuple[str, str]]:
        """The token and the trace of a call made now (raftmesh.tracing)."""
        return self.credentials.metadata() + tracing.client_metadata()

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        for ch in channels:
            await ch.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- runs (the ops and their docs: raftmesh/client/_runs.py) -----------------------

    submit = async_op(_runs.submit)
    get = async_op(_runs.get)
    list_runs = async_op(_runs.list_runs)
    audit = async_op(_audit.audit)
    cancel = async_op(_runs.cancel)
    dead_letters = async_op(_runs.dead_letters)
    retry = async_op(_runs.retry)
    approve = async_op(_runs.approve)
    approvals = async_op(_runs.approvals)
    pause = async_op(_runs.pause)
    resume = async_op(_runs.resume)
    rerun = async_op(_runs.rerun)
    status = async_op(_runs.status)
    whoami = async_op(_runs.whoami)
    status_of = async_op(_runs.status_of)

    def watch(
        self, run_id: str, *, timeout_s: float | None = None, status_only: bool = False
    ) -> AsyncIterator[RunEvent]:
        """``async for event in client.watch(run_id)``: a snapshot first (again after any
        reconnect), then changes, until the run ends (``status_only``: just the run's status)."""
        return self._stream(_runs.RunWatch(self, run_id, timeout_s, status_only))

    def watch_runs(
        self,
        *,
        limit: int = 100,
        status: str | None = None,
        namespace: str = "",
        timeout_s: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """``async for change in client.watch_runs()``: ``{"snapshot": [summary, ...]}`` first
        (again after any reconnect or resync), then ``{"run": summary}`` per changed run;
        endless, ``timeout_s`` ends it quietly (as ``raftmesh.Client.watch_runs``)."""
        return self._stream(_runs.RunsWatch(self, limit, status, namespace, timeout_s))

    async def wait(self, run_id: str, *, timeout_s: float | None = None) -> RunInfo:
        """Until the run ends; returns it with every task's output."""
        plan = _runs.RunWatch(self, run_id, timeout_s, status_only=True, final_run=True)
        async for _ in self._stream(plan):
            pass
        if plan.final is not None:
            return plan.final
        return await self._drive(_runs.ended(self, run_id))

    async def run(self, dag: DAG | dict[str, Any], *, timeout_s: float | None = None, **kw: Any) -> RunInfo:
        """Submit and wait, in one call to a node (``RunToEnd``; a node without it: the stream
        ``SubmitAndWatchRun``, then submit + wait); ``kw`` as ``submit``'s."""
        req = _runs.submit_request(dag, **kw)
        plan = _runs.SubmitWatch(self, req, timeout_s)
        with tracing.pinned(kw.get("trace_id") or ""):
            run: RunInfo | None = await self._drive(_runs.run_to_end(self, req, timeout_s))
            if run is not None:
                return run
            async for _ in self._stream(plan):
                pass
        if plan.final is not None:
            return plan.final
        if plan.unsupported:  # an older node: the same request (idempotency key) as two calls
            run_id = await self.submit(dag, **{**kw, "idempotency_key": req.idempotency_key})
            return await self.wait(run_id, timeout_s=timeout_s)
        return await self._drive(_runs.ended(self, plan.run_id))

    def lock(
        self,
        names: str | list[str],
        *,
        ttl_s: float = 10.0,
        mode: str = "exclusive",
        wait_s: float = 30.0,
        priority: int = 0,
        owner: str | None = None,
    ) -> LockContext:
        """``async with client.lock("db:orders", ttl_s=10) as lease:`` — held, and renewed by an
        asyncio task, inside the block (the default owner is per task: two tasks exclude each
        other). ``lease.token`` fences writes (``lease.fence()``). Raises ``DeadlineExceeded`` if
        not granted within ``wait_s`` and ``Aborted`` if chosen as a deadlock victim."""
        return LockContext(
            self,
            [names] if isinstance(names, str) else list(names),
            dict(ttl_s=ttl_s, mode=mode, wait_s=wait_s, priority=priority),
            owner,
        )


class KvClient(SubClient, AsyncDriver):
    """``client.kv``: as ``raftmesh.Client.kv``, every call a coroutine."""

    get = async_op(Kv.get)
    list = async_op(Kv.list)
    put = async_op(Kv.put)
    delete = async_op(Kv.delete)
    cas = async_op(Kv.cas)
    txn = async_op(Kv.txn)
    lease_grant = async_op(Kv.lease_grant)
    lease_keep_alive = async_op(Kv.lease_keep_alive)
    lease_revoke = async_op(Kv.lease_revoke)

    def watch(
        self, key: str = "", *, prefix: str = "", from_revision: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[WatchEvent]:
        """``async for ev in client.kv.watch(...)``: changes after ``from_revision`` (0: from now);
        reconnects to other nodes without gaps; ends at ``timeout_s``."""
        return self._stream(KvWatch(self._c, key, prefix, from_revision, timeout_s))


class LockClient(LockClientBase, AsyncDriver):
    """``client.locks``: the raw lock API (``async with client.lock(...)`` is the context manager)."""

    acquire = async_op(Locks.acquire)
    release = async_op(Locks.release)
    keep_alive = async_op(Locks.keep_alive)
    list = async_op(Locks.list)


class Lease(LeaseBase):
    """A held lock, renewed by an asyncio task until ``await release()``; ``token`` fences writes."""

    def _start(self) -> None:
        self.lost = asyncio.Event()
        """Set if a renewal was rejected: the lease expired and the lock may have a new holder."""
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew(), name=f"lock-keepalive-{self.names[0]}"
        )

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if await self._c._drive(self.renew()):
                self.lost.set()
                return

    async def release(self) -> None:
        self._renewer.cancel()
        # The renewer's own end (cancelled, or an error it died of) must not skip the unlock,
        # while a cancellation aimed at the caller (an enclosing timeout) still propagates:
        # gather returns the renewer's outcome, and raises only if this task is cancelled.
        await asyncio.gather(self._renewer, return_exceptions=True)
        if await self._c._drive(self.unlock()):
            self.lost.set()


class LockContext:
    """``async with client.lock("db:orders", ttl_s=10) as lease: ...``"""

    def __init__(self, client: Client, names: list[str], kw: dict[str, Any], owner: str | None) -> None:
        self._c = client
        self._names = names
        self._kw = kw
        self._owner = owner
        self.lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        owner = self._owner or default_owner(self._c, id(asyncio.current_task()))
        owner, token, rid = await self._c._drive(lock_enter(self._c, self._names, owner, self._kw))
        self.lease = Lease(self._c, owner, self._names, token, int(float(self._kw["ttl_s"]) * 1000), rid)
        return self.lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.lease is not None:
            await self.lease.release()


class MessagesClient(MessagesBase, AsyncDriver):
    """``client.messages``: as ``raftmesh.Client.messages``, every call a coroutine."""

    send = async_op(Messages.send)
    publish = async_op(Messages.publish)
    request = async_op(Messages.request)
    dead_letters = async_op(Messages.dead_letters)
    subscribe_actor = async_op(Messages.subscribe_actor)
    activations = async_op(Messages.activations)

    def subscribe(self, topic: str, *, from_start: bool = False) -> Subscription:
        """``async with client.messages.subscribe(topic) as sub: async for m in sub``: the topic's
        publishes as they come (``from_start``: its retained durable ones first); reconnects
        to another node if its node fails (as the sync client's)."""
        check_topic(topic)
        return Subscription(self, topic, from_start)


class Subscription(SubscriptionBase):
    """An open ``subscribe``: ``async for`` its messages; ``close()`` ends it."""

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._m._stream(self._plan)
