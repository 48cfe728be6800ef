"""The synchronous Python client: fails over between nodes and retries safely.

Every call may be retried: writes carry an idempotency key (submit) or are
idempotent by nature (cancel), so UNAVAILABLE and DEADLINE_EXCEEDED are retried
on the next node with exponential backoff and jitter until ``retry_deadline_s``.
That policy, and every request and answer, is ``_core`` and the op modules' (shared with
``raftmesh.aio.Client``); this module only performs their effects, blocking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from .. import tracing
from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc
from . import _audit, _runs
from ._core import (
    MAX_MESSAGE_BYTES,
    RETRYABLE,
    SKIP,
    STREAM_SILENCE_S,
    Conn,
    Op,
    Sleep,
    StreamPlan,
    parse_addresses,
    sync_op,
    translate,
)
from ._dag import DAG
from ._runs import task_pb
from ._types import RunEvent, RunInfo

if TYPE_CHECKING:
    from ._messages import MessagesClient

__all__ = ["MAX_MESSAGE_BYTES", "STREAM_SILENCE_S", "Client", "Watchdog", "parse_addresses", "task_pb"]

_RETRYABLE = RETRYABLE
_translate = translate

STUBS: dict[str, Any] = {
    "Cluster": pb_grpc.ClusterStub,
    "Kv": pb_grpc.KvStub,
    "Locks": pb_grpc.LocksStub,
    "Messages": pb_grpc.MessagesStub,
}
"""The stub of each service an ``Rpc`` effect names (both drivers)."""


class Watchdog:
    """Cancels a streaming call that receives nothing for ``silence_s`` (a paused or cut-off node).

    One thread per process checks every open stream each ``CHECK_S``: a thread of its own per
    stream cost every ``wait`` and ``run`` a thread start (py-spy of a client running single
    tasks back to back on a loaded machine: ``Thread.start`` ~3% of its time, waiting for the
    new thread to be scheduled)."""

    CHECK_S = 0.5
    _open: set[Watchdog] = set()
    _lock = threading.Lock()
    _wake = threading.Condition(_lock)
    _thread: threading.Thread | None = None

    def __init__(self, call: Any, silence_s: float = STREAM_SILENCE_S) -> None:
        self._call = call
        self._silence_s = silence_s
        self._last = time.monotonic()
        self.fired = False
        cls = type(self)
        with cls._lock:
            cls._open.add(self)
            cls._wake.notify()
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._watch_all, daemon=True, name="stream-watchdog")
                cls._thread.start()

    def feed(self) -> None:
        self._last = time.monotonic()

    @classmethod
    def _watch_all(cls) -> None:
        while True:
            with cls._lock:
                while not cls._open:
                    cls._wake.wait()
                dogs = list(cls._open)
            now = time.monotonic()
            for dog in dogs:
                if now - dog._last > dog._silence_s:
                    dog.fired = True
                    dog.close()
                    dog._call.cancel()
            time.sleep(cls.CHECK_S)

    def close(self) -> None:
        cls = type(self)
        with cls._lock:
            cls._open.discard(self)


class Driver:
    """Performs ops and streams blocking; ``Client`` and its sub-clients share the client's."""

    _conn: Client

    def _drive(self, op: Op[Any]) -> Any:
        c = self._conn
        try:
            effect = next(op)
            while True:
                reply: Any = None
                if isinstance(effect, Sleep):
                    time.sleep(effect.seconds)
                else:
                    unary = c._method(effect.service, effect.method, effect.addr)
                    try:
                        reply = unary(effect.request, timeout=effect.timeout_s, metadata=c._metadata())
                    except grpc.RpcError as exc:
                        reply = exc
                effect = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def _stream(self, plan: StreamPlan) -> Iterator[Any]:
        c = self._conn
        while True:
            opened = plan.start()
            if opened is None:
                return
            addr, request, timeout = opened
            dog: Watchdog | None = None
            try:
                streaming = c._method(plan.service, plan.method, addr)
                call = streaming(request, timeout=timeout, metadata=c._metadata())
                plan.attach(call)
                dog = Watchdog(call)
                for msg in call:
                    dog.feed()
                    item = plan.accept(msg)
                    if item is not SKIP:
                        yield item
                    if plan.done:
                        return
                delay = plan.ended()
                if delay is None:
                    return
            except grpc.RpcError as exc:
                delay = plan.failed(exc.code(), exc, dog is not None and dog.fired)
                if delay is None:
                    return
            finally:
                if dog is not None:
                    dog.close()
            time.sleep(delay)


class Client(Conn, Driver):
    """``Client(["127.0.0.1:7001", ...])`` or ``Client()`` with ``RAFTMESH_ADDRESSES`` set."""

    def _open(self) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        """Per address, the channel that adds the token and trace itself (``_channel``)."""
        self._open_lock = threading.Lock()
        self._plain: dict[str, grpc.Channel] = {}
        """Per address, the channel the driver's calls go on, passing ``_metadata()`` themselves."""
        self._methods: dict[tuple[str, str, str], Any] = {}
        """(service, method, address) -> grpc's callable, made once: a stub per call built every
        method's callable (~0.05 ms), and the channel's Python interceptor cost ~0.15 ms a call."""
        from ._coord import KvClient, LockClient

        self.kv = KvClient(self)
        """Versioned KV store: get/put/delete/cas/txn/list/watch/leases."""
        self.locks = LockClient(self)
        """The raw lock API; prefer ``lock(...)``."""
        self._messages: MessagesClient | None = None

    @property
    def _conn(self) -> Client:  # type: ignore[override]
        return self

    @property
    def messages(self) -> MessagesClient:
        """Agent messaging: send/request/publish/subscribe, dead letters, activations."""
        if self._messages is None:  # imported on first use: it loads the message codec
            from ._messages import MessagesClient

            self._messages = MessagesClient(self)
        return self._messages

    # ---- plumbing --------------------------------------------------------------

    def _stub(self, addr: str) -> pb_grpc.ClusterStub:
        return pb_grpc.ClusterStub(self._channel(addr))

    def _plain_channel(self, addr: str) -> grpc.Channel:
        ch = self._plain.get(addr)
        if ch is None:
            with self._open_lock:  # two threads' first calls to a node make one channel, not two
                ch = self._plain.get(addr)
                if ch is None:
                    ch = self._plain[addr] = self.credentials.plain_channel(
                        addr, options=self.channel_options
                    )
        return ch

    def _channel(self, addr: str) -> grpc.Channel:
        """A channel whose every call carries the token and its trace (``_stub``'s callers)."""
        ch = self._channels.get(addr)
        if ch is None:
            # every call carries its trace (raftmesh.tracing)
            ch = self.credentials.with_metadata(self._plain_channel(addr), tracing.client_metadata)
            self._channels[addr] = ch
        return ch

    def _method(self, service: str, method: str, addr: str) -> Any:
        """grpc's callable for ``service.method`` at ``addr``; its calls pass ``_metadata()``."""
        key = (service, method, addr)
        call = self._methods.get(key)
        if call is None:
            call = self._methods[key] = getattr(STUBS[service](self._plain_channel(addr)), method)
        return call

    def _metadata(self) -> list[tuple[str, str]]:
        """The token and the trace of a call made now (raftmesh.tracing)."""
        return self.credentials.metadata() + tracing.client_metadata()

    def close(self) -> None:
        for ch in self._plain.values():  # the intercepted channels share these
            ch.close()
        self._plain.clear()
        self._channels.clear()
        self._methods.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- runs (the ops and their docs: _runs.py) -------------------------------------

    submit = sync_op(_runs.submit)
    get = sync_op(_runs.get)
    list_runs = sync_op(_runs.list_runs)
    audit = sync_op(_audit.audit)
    cancel = sync_op(_runs.cancel)
    dead_letters = sync_op(_runs.dead_letters)
    retry = sync_op(_runs.retry)
    approve = sync_op(_runs.approve)
    approvals = sync_op(_runs.approvals)
    pause = sync_op(_runs.pause)
    resume = sync_op(_runs.resume)
    rerun = sync_op(_runs.rerun)
    status = sync_op(_runs.status)
    whoami = sync_op(_runs.whoami)
    status_of = sync_op(_runs.status_of)

    def watch(
        self, run_id: str, *, timeout_s: float | None = None, status_only: bool = False
    ) -> Iterator[RunEvent]:
        """Events of a run until it ends: a snapshot first (again after any reconnect), then changes.

        ``status_only`` streams just the run's status (a snapshot without tasks, then run events).
        """
        return self._stream(_runs.RunWatch(self, run_id, timeout_s, status_only))

    def watch_runs(
        self,
        *,
        limit: int = 100,
        status: str | None = None,
        namespace: str = "",
        timeout_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every run the caller may see, live: ``{"snapshot": [summary, ...]}`` first (the ``limit``
        newest, again after any reconnect or resync), then ``{"run": summary}`` for each run whose
        status or progress changed (a new run too; at most one per run per ~200 ms). Summaries
        are ``list_runs`` dicts. Endless: ``timeout_s`` ends the iteration quietly after that long;
        a node that fails, stalls or stops is left for the next one, as ``watch`` does."""
        return self._stream(_runs.RunsWatch(self, limit, status, namespace, timeout_s))

    def wait(self, run_id: str, *, timeout_s: float | None = None) -> RunInfo:
        """Block until the run ends; returns it with every task's output."""
        plan = _runs.RunWatch(self, run_id, timeout_s, status_only=True, final_run=True)
        for _ in self._stream(plan):
            pass
        if plan.final is not None:
            return plan.final
        return self._drive(_runs.ended(self, run_id))

    def run(self, dag: DAG | dict[str, Any], *, timeout_s: float | None = None, **kw: Any) -> RunInfo:
        """Submit and wait, in one call to a node (``RunToEnd``; a node without it: the stream
        ``SubmitAndWatchRun``, then submit + wait); ``kw`` as ``submit``'s."""
        req = _runs.submit_request(dag, **kw)
        plan = _runs.SubmitWatch(self, req, timeout_s)
        with tracing.pinned(kw.get("trace_id") or ""):
            run: RunInfo | None = self._drive(_runs.run_to_end(self, req, timeout_s))
            if run is not None:
                return run
            for _ in self._stream(plan):
                pass
        if plan.final is not None:
            return plan.final
        if plan.unsupported:  # an older node: the same request (idempotency key) as two calls
            return self.wait(
                self.submit(dag, **{**kw, "idempotency_key": req.idempotency_key}), timeout_s=timeout_s
            )
        return self._drive(_runs.ended(self, plan.run_id))

    # ---- locks ---------------------------------------------------------------------------

    def lock(
        self,
        names: str | list[str],
        *,
        ttl_s: float = 10.0,
        mode: str = "exclusive",
        wait_s: float = 30.0,
        priority: int = 0,
        owner: str | None = None,
    ) -> Any:
        """``with client.lock("db:orders", ttl_s=10) as lease:`` — held (and renewed) inside the block.

        ``lease.token`` is the fencing token; ``lease.fence()`` guards KV writes with it.
        Several names are acquired all at once. Raises ``DeadlineExceeded`` if not granted
        within ``wait_s`` and ``Aborted`` if chosen as a deadlock victim.
        """
        from ._coord import LockContext

        return LockContext(
            self,
            [names] if isinstance(names, str) else list(names),
            ttl_s=ttl_s,
            mode=mode,
            wait_s=wait_s,
            priority=priority,
            owner=owner,
        )
