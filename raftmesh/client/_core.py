"""The client's policy, once, for both drivers (``raftmesh.Client`` and ``raftmesh.aio.Client``).

An operation is a generator (an ``Op``) that builds its requests, yields one ``Rpc`` effect
per attempt (or a ``Sleep`` for the backoff between attempts) and parses what it is sent
back: the response, or the ``grpc.RpcError`` the attempt ended with. So which codes are
retried, the backoff and its jitter, the rotation to the next address, the retry deadline,
the request ids and idempotency keys kept across attempts, and the audit's "ask the other
nodes for a complete answer" live here and in the op functions; a driver only performs the
effects, blocking (``_client.Client._drive``) or awaiting (``raftmesh.aio``).

Streams (run watch, KV watch, topic subscriptions) are ``StreamPlan`` state machines: the
plan names the address and request of each (re)connection (a KV watch resumes after the
last revision it delivered), turns each message into an item or skips it (heartbeats,
duplicates), and decides on an error whether to reconnect (and after what delay) or raise.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from ..errors import RaftmeshError, error_for_code
from ._security import Credentials

T = TypeVar("T")
P = ParamSpec("P")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""What any call is retried on (on the next node): every write carries its request id."""
STREAM_SILENCE_S = 5.0
"""Servers send a heartbeat every second on idle streams; this much silence means the node stalled."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT_S = 0.5
"""A connection attempt to a node (TCP, TLS, HTTP/2 settings) fails after this (``Client(
connect_timeout_s=)``): a paused node's kernel accepts the TCP connection, and grpc's default
attempt waits 20 s for an answer."""
PING_TIMEOUT_S = 0.5
"""A keepalive ping unanswered this long breaks the connection (``Client(ping_timeout_s=)``):
its calls fail UNAVAILABLE and are retried on the next node."""
KEEPALIVE_TIME_MS = 250
"""How often each connection asks to ping its node; grpc (1.85) clients send pings 1 s apart at
the most, whatever this says (its ping rate policy: "minimum wait: 1000ms")."""


def channel_options(
    connect_timeout_s: float = CONNECT_TIMEOUT_S, ping_timeout_s: float = PING_TIMEOUT_S
) -> list[tuple[str, Any]]:
    """The options of every channel a client opens to a node.

    A frozen node (SIGSTOP, a partition: TCP still accepts, nothing answers) holds a call about
    ``ping_timeout_s`` + up to 1 s, not its whole deadline (``timeout_s``, 10 s: every call
    waited that long before, measured with 3 local nodes and one SIGSTOPped): the call fails
    UNAVAILABLE and the op moves to the next node with the same request id or idempotency key.

    - connecting: an attempt (TCP + TLS + HTTP/2 settings) longer than ``connect_timeout_s``
      fails (grpc's default: 20 s);
    - connected: keepalive pings on every connection, busy or idle, about one a second (grpc's
      floor). grpc 1.85 times a keepalive ping out after ``grpc.http2.ping_timeout_ms``
      (default 60 s), older ones after ``keepalive_timeout_ms``: both are set. A long call
      (``wait``, ``RunToEnd``, a lock wait, a big submit) is not cut short: a live node answers
      pings from grpc's own threads, whatever its Python is doing.

    The nodes accept pings this often (``raftmesh.node.runtime.GRPC_OPTIONS``).
    """
    connect_ms = max(1, int(connect_timeout_s * 1000))
    ping_ms = max(1, int(ping_timeout_s * 1000))
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.min_reconnect_backoff_ms", connect_ms),  # grpc's minimum connect timeout
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", ping_ms),
        ("grpc.http2.ping_timeout_ms", ping_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", KEEPALIVE_TIME_MS),
    ]


CHANNEL_OPTIONS: list[tuple[str, Any]] = channel_options()
"""The default ``channel_options()``."""


@dataclass(frozen=True)
class Rpc:
    """One attempt of a unary call: ``service`` ("Cluster", "Kv", "Locks", "Messages")."""

    service: str
    method: str
    request: Any
    timeout_s: float | None
    addr: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = Rpc | Sleep
Op = Generator[Effect, Any, T]
"""An operation: send it the response (or the ``grpc.RpcError``) of each ``Rpc`` it yields."""


def backoff(attempt: int) -> float:
    """Exponential from 100 ms to 1 s, with jitter so clients that failed together spread out."""
    return min(1.0, 0.05 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0)


_TLS_FAILURES = ("handshake failed", "CERTIFICATE_VERIFY_FAILED", "Hostname Verification")
"""What grpc's connection errors say when the TLS handshake, not the node, failed."""


def translate(exc: grpc.RpcError) -> RaftmeshError:
    """The ``raftmesh.errors`` class of a failed call (``grpc.aio`` errors are ``RpcError`` too)."""
    code = exc.code()
    details = exc.details() or str(code)
    if code == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _TLS_FAILURES):
        details += (
            " (TLS: --ca / RAFTMESH_CA must be the CA that signed the nodes' certificates, and they "
            "must cover the address's host, or set RAFTMESH_SERVER_NAME)"
        )
    return error_for_code(code.name if code else "UNKNOWN", details)


def parse_addresses(addresses: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A list, or a comma-separated string; None reads ``RAFTMESH_ADDRESSES``."""
    import os

    from ..errors import InvalidArgument

    if addresses is None:
        addresses = os.environ.get("RAFTMESH_ADDRESSES", "")
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    out = [a.strip() for a in addresses if a and a.strip()]
    if not out:
        raise InvalidArgument("no node addresses: pass host:port,... or set RAFTMESH_ADDRESSES")
    return out


class Conn:
    """What both clients share: the addresses, the one the next call goes to, the timeouts."""

    def __init__(
        self,
        addresses: str | list[str] | tuple[str, ...] | None = None,
        *,
        timeout_s: float = 10.0,
        retry_deadline_s: float = 30.0,
        token: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        credentials: Credentials | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> None:
        """``token``/``ca``/``cert``/``key`` (or a ``Credentials``) secure the calls; each one not
        given is read from ``RAFTMESH_TOKEN`` / ``RAFTMESH_CA`` / ``RAFTMESH_CERT`` / ``RAFTMESH_KEY``.
        ``connect_timeout_s`` and ``ping_timeout_s`` bound how long a frozen node holds a call
        before it moves on to the next node (``channel_options``)."""
        self.addresses = parse_addresses(addresses)
        self.credentials = credentials or Credentials.resolve(token, ca, cert, key)
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        for name, v in (("connect_timeout_s", connect_timeout_s), ("ping_timeout_s", ping_timeout_s)):
            if not 0 < v <= 3600:
                raise ValueError(f"{name} must be between 0 (exclusive) and 3600 seconds, got {v!r}")
        self.channel_options = channel_options(connect_timeout_s, ping_timeout_s)
        self._current = random.randrange(len(self.addresses))
        self.client_id = uuid.uuid4().hex[:12]
        self._last_watch_addr = self.addresses[self._current]
        self._without_run_to_end: set[str] = set()
        """Addresses that answered ``RunToEnd`` UNIMPLEMENTED: ``run`` streams there at once."""
        self._open()

    def _open(self) -> None:
        """The driver's own state (its channels, sub-clients); channels open on first use."""

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self.addresses)

    def _failover(
        self,
        service: str,
        method: str,
        request: Any,
        timeout_s: float | None = None,
        *,
        retryable: frozenset[grpc.StatusCode] = RETRYABLE,
        deadline_s: float | None = None,
    ) -> Op[Any]:
        """One call with failover: a retryable failure moves to the next address after a backoff,
        until ``deadline_s`` (default ``retry_deadline_s``). ``request``: the request, or a
        function making the one each attempt sends."""
        deadline = time.monotonic() + (self.retry_deadline_s if deadline_s is None else deadline_s)
        attempt = 0
        while True:
            req = request() if callable(request) else request
            reply = yield Rpc(
                service, method, req, timeout_s or self.timeout_s, self.addresses[self._current]
            )
            if not isinstance(reply, grpc.RpcError):
                return reply
            if reply.code() not in retryable or time.monotonic() >= deadline:
                raise translate(reply) from None
            self._rotate()
            attempt += 1
            yield Sleep(backoff(attempt))

    def _once(self, addr: str, service: str, method: str, request: Any, timeout_s: float) -> Op[Any]:
        """One attempt at one node (no failover); its error translated."""
        reply = yield Rpc(service, method, request, timeout_s, addr)
        if isinstance(reply, grpc.RpcError):
            raise translate(reply) from None
        return reply


SKIP: Any = object()
"""What ``StreamPlan.accept`` returns for a message that is no item (a heartbeat, a duplicate)."""


class SubClient:
    """``client.kv``, ``client.locks``, ``client.messages``: ops driven with their client's driver."""

    def __init__(self, client: Any) -> None:
        self._c = self._conn = client


class StreamPlan:
    """The reconnect state machine of one server stream (see the module doc)."""

    service = ""
    method = ""

    def __init__(self, conn: Conn, timeout_s: float | None) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self.deadline: float | None = None
        """Set when the stream first opens (``timeout_s`` counts from the first iteration)."""
        self.done = False
        """Set by ``accept`` when the item it returned is the last one."""
        self.closed = False
        """Set by ``close``: the consumer ended the stream (no reconnection)."""
        self.call: Any = None
        self._attempt = 0

    def request(self) -> Any:
        raise NotImplementedError

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def start(self) -> tuple[str, Any, float | None] | None:
        """(address, request, timeout) of the next connection; None: the stream is over."""
        if self.closed:
            return None
        if self.deadline is None and self.timeout_s is not None:
            self.deadline = time.monotonic() + self.timeout_s
        return self.conn.addresses[self.conn._current], self.request(), self.remaining()

    def attach(self, call: Any) -> None:
        """The driver opened ``call``; a ``close`` from now on cancels it."""
        self.call = call
        if self.closed:
            call.cancel()

    def close(self) -> None:
        self.closed = True
        if self.call is not None:
            self.call.cancel()

    def accept(self, msg: Any) -> Any:
        """The item ``msg`` is, or ``SKIP``."""
        self._attempt = 0
        return self.parse(msg)

    def parse(self, msg: Any) -> Any:
        raise NotImplementedError

    def failed(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> float | None:
        """A connection broke (``silent``: the driver cancelled it after ``STREAM_SILENCE_S`` of
        nothing). The delay before reconnecting to the next node, None to end quietly, or raises."""
        if self.closed:
            return None
        self.check(code, exc, silent)
        self.conn._rotate()
        self._attempt += 1
        return backoff(self._attempt)

    def ended(self) -> float | None:
        """The node ended the stream normally: None ends it here too (a finite stream), a delay
        reconnects to the next node after it (an endless one the node stopped serving)."""
        return None

    def check(self, code: grpc.StatusCode, exc: grpc.RpcError | None, silent: bool) -> None:
        """Raises unless ``code`` is worth a reconnection."""
        if code not in RETRYABLE and not (code == grpc.StatusCode.CANCELLED and silent):
            raise stream_error(code, exc)


def stream_error(code: grpc.StatusCode, exc: grpc.RpcError | None) -> RaftmeshError:
    return translate(exc) if exc is not None else error_for_code(code.name, "the stream went silent")


def bound_signature(op: Callable[..., Any], returns: Callable[[str], str]) -> inspect.Signature:
    """``op``'s signature as a method of a client: ``self`` first, the ``Op[T]`` return as ``returns(T)``."""
    sig = inspect.signature(op)
    params = list(sig.parameters.values())
    ret = sig.return_annotation
    if isinstance(ret, str) and ret.startswith("Op[") and ret.endswith("]"):
        ret = returns(ret[3:-1])
    return sig.replace(parameters=[params[0].replace(name="self"), *params[1:]], return_annotation=ret)


def sync_op(op: Callable[Concatenate[Any, P], Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """A blocking client method running ``op`` on the client's ``_conn`` with its ``_drive``."""

    @functools.wraps(op)
    def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._drive(op(self._conn, *args, **kwargs))

    method.__signature__ = bound_signature(op, lambda t: t)  # type: ignore[attr-defined]
    return method
