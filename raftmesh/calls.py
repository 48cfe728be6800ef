"""Who is calling and under which trace: the context of one request, wherever it is served.

A node binds a ``Call`` for every gRPC call it serves (``raftmesh.node.interceptor``);
the agent host binds one for every attempt and actor turn (principal ``node:ID``, the
run's or message's trace). Whatever runs inside reads it with ``current()``: the proposer
stamps it on every command as its ``Origin`` (so the audit timeline says who did what),
log lines carry its ids (``raftmesh.log_format``), and services check its principal.

Trace ids are W3C trace context: 32 lowercase hex digits (not all zero), taken from a
caller's ``traceparent`` metadata or made fresh; ``traceparent`` builds the header an
outgoing call carries.
"""

from __future__ import annotations

import contextvars
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the client and the CLI bind calls too, and never need the command classes
    from .consensus.commands import Origin

ANONYMOUS = "anonymous"
"""The principal of a call on a cluster that checks no credentials."""

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_RE = re.compile(r"[0-9a-f]{32}")


_POOL_BYTES = 4096
_pool = bytearray()
_pool_lock = threading.Lock()


def _random_bytes(n: int) -> bytes:
    """``n`` bytes of the OS's CSPRNG, drawn 4 KiB at a time: ids stay unpredictable (a request id
    made for a caller keys the replicated dedup table, so guessing one would let another client's
    command pre-empt it), but most ids make no ``getrandom`` system call, which lets go of the
    GIL: on a busy node the Raft thread took it, so the event loop waited for it back in the
    middle of every gRPC call (py-spy: ``new_trace_id`` was as many samples on the loop as the
    rest of the interceptor under 16 clients' puts)."""
    global _pool
    with _pool_lock:
        if len(_pool) < n:
            _pool = bytearray(os.urandom(max(_POOL_BYTES, n)))
        out = bytes(_pool[-n:])
        del _pool[-n:]
    return out


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool = bytearray()  # a forked child must not hand out its parent's next ids
    _pool_lock = threading.Lock()  # nor wait for a lock another thread of its parent held


os.register_at_fork(after_in_child=_forget_pool)


def new_trace_id() -> str:
    return _random_bytes(16).hex()


def new_span_id() -> str:
    return _random_bytes(8).hex()


def valid_trace_id(value: str) -> bool:
    return bool(_TRACE_RE.fullmatch(value)) and value != "0" * 32


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """(trace id, parent span id) from a W3C ``traceparent`` header; None if it is not one.

    Version ``ff`` and all-zero ids are invalid (W3C trace context, section 3.2).
    """
    m = _TRACEPARENT_RE.fullmatch(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace, span = m.group(2), m.group(3)
    if trace == "0" * 32 or span == "0" * 16:
        return None
    return trace, span


def traceparent(trace_id: str, span_id: str = "", sampled: bool = True) -> str:
    """The ``traceparent`` header value for an outgoing call under ``trace_id``."""
    return f"00-{trace_id}-{span_id or new_span_id()}-{'01' if sampled else '00'}"


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the code serving it sees it."""

    principal: str = ANONYMOUS
    """``token:SUBJECT`` (a bearer token's subject), ``cert:CN`` (a client certificate),
    ``node:ID`` (a node acting for itself or its agents) or ``anonymous``."""
    role: str = "admin"
    """The principal's role (``raftmesh.security.roles``); an open cluster treats everyone as admin."""
    namespaces: tuple[str, ...] = ("*",)
    """Namespaces the principal may touch; ``*`` is every one."""
    request_id: str = ""
    trace_id: str = ""
    span_id: str = ""
    """The caller's span (from ``traceparent``), the parent of spans made for this call."""
    method: str = ""
    """The full gRPC method (``/raftmesh.v1.Cluster/SubmitRun``), "" outside a gRPC call."""
    extra: dict[str, str] = field(default_factory=dict)

    def origin(self) -> Origin:
        from .consensus.commands import MAX_ORIGIN_FIELD, Origin

        m = MAX_ORIGIN_FIELD
        return Origin(self.principal[:m], self.request_id[:m], self.trace_id[:m])

    def may_use(self, namespace: str) -> bool:
        return "*" in self.namespaces or namespace in self.namespaces


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("raftmesh_call", default=None)


def current() -> Call | None:
    """The call being served in this context (None: the node acting on its own)."""
    return _CURRENT.get()


@contextmanager
def bound(call: Call) -> Iterator[Call]:
    """Serve ``call`` in this context (and in tasks created inside it)."""
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


def bind(call: Call) -> contextvars.Token[Call | None]:
    """Set ``call`` for the rest of this context (an interceptor's handler); ``unbind`` undoes it."""
    return _CURRENT.set(call)


def unbind(token: contextvars.Token[Call | None]) -> None:
    _CURRENT.reset(token)
