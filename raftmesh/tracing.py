"""Trace ids from the client to every attempt, message and log line (W3C trace context).

Where a trace starts: a client call carries ``traceparent`` metadata (``client_metadata``):
the trace id pinned for this context (``pinned``: ``Client.submit(trace_id=...)``), else the
caller's active OpenTelemetry span, else the call the code runs under (an agent calling its
node's API stays in its attempt's trace), else a new trace per call. A node's interceptor
binds that trace on the ``calls.Call`` it serves; a SubmitRun's origin makes it the run's
trace (``RunState.trace_id``); the agent host binds ``node_call`` around each attempt.

Span ids are derived from the trace and what the span is about (``run_span_id``,
``attempt_span_id``) so every node names a run's and an attempt's span alike without
talking to the others: the attempt spans of a run are children of its run span wherever
each one ran.
"""

from __future__ import annotations

import contextvars
import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from . import calls

if TYPE_CHECKING:  # annotations only: clients import this module and never build a Usage
    from .consensus.commands import Usage

_PINNED: contextvars.ContextVar[str] = contextvars.ContextVar("raftmesh_trace_pinned", default="")


@contextmanager
def pinned(trace_id: str) -> Iterator[None]:
    """Calls made in this context carry ``trace_id`` ("" changes nothing)."""
    token = _PINNED.set(trace_id) if trace_id else None
    try:
        yield
    finally:
        if token is not None:
            _PINNED.reset(token)


def _otel_span() -> tuple[str, str] | None:
    """The caller's active OpenTelemetry span (trace id, span id), without importing
    OpenTelemetry: a caller with an active span has imported it already."""
    trace_mod = sys.modules.get("opentelemetry.trace")
    if trace_mod is None:
        return None
    try:
        sc = trace_mod.get_current_span().get_span_context()
    except Exception:  # a broken or foreign OpenTelemetry install must not break a call
        return None
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


def outgoing() -> tuple[str, str]:
    """(trace id, parent span id or "") that a call made now belongs to."""
    trace = _PINNED.get()
    if trace:
        return trace, ""
    otel = _otel_span()
    if otel is not None:
        return otel
    call = calls.current()
    if call is not None and call.trace_id:
        return call.trace_id, call.span_id
    return calls.new_trace_id(), ""


def client_metadata() -> list[tuple[str, str]]:
    """The ``traceparent`` metadata of a client call made now (``Credentials.channel(extra=)``)."""
    trace, span = outgoing()
    return [("traceparent", calls.traceparent(trace, span))]


def _span_id(*parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return digest if digest != "0" * 16 else "1" * 16


def run_span_id(trace_id: str, run_id: str) -> str:
    """The span id of run ``run_id``'s span (the same on every node)."""
    return _span_id("run", trace_id, run_id)


def attempt_span_id(trace_id: str, run_id: str, task_id: str, attempt: int) -> str:
    """The span id of one attempt's span (the same on every node); its parent is the run's."""
    return _span_id("attempt", trace_id, run_id, task_id, str(attempt))


def node_call(node_id: str, trace_id: str, span_id: str = "") -> calls.Call:
    """The call a node's own work for a trace runs under (an attempt, an actor turn): its
    commands' origin is ``node:ID`` with that trace, and its log lines carry the trace."""
    return calls.Call(principal=f"node:{node_id}", role="node", trace_id=trace_id, span_id=span_id)


class SpanSink(Protocol):
    """Where a node's spans go (``raftmesh.node.otel.OtelSpans``); called on the node's loop,
    so it must not block (the exporter batches on a thread of its own)."""

    def attempt_ended(
        self,
        node_id: str,
        trace_id: str,
        run_id: str,
        task_id: str,
        attempt: int,
        agent: str,
        start_ns: int,
        outcome: str,
        error: str,
        usage: Usage,
    ) -> None: ...

    def run_ended(
        self,
        trace_id: str,
        run_id: str,
        name: str,
        status: str,
        reason: str,
        error: str,
        created_ms: int,
        finished_ms: int,
        tasks: int,
        usage: Usage,
    ) -> None: ...

    def shutdown(self) -> None: ...
