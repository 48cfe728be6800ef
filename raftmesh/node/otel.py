"""OpenTelemetry spans for runs and attempts, exported over OTLP/HTTP (``raftmesh node --otel-endpoint``).

Imported only when an endpoint is configured: a node without one pays nothing for OpenTelemetry
(it is the ``otel`` extra, not a dependency).

Spans (README Tracing):
- ``raftmesh.run``: one per run, from its submission to its end (cluster time), emitted by
  the node that leads when the run's end is applied (every node applies it; one reports it).
- ``raftmesh.attempt``: one per task attempt, from its start to its report (this node's
  wall clock), emitted by the node that ran it, a child of its run's span.

Both span ids are derived from the trace and the run/task/attempt (``raftmesh.tracing``), so
nodes agree on them without talking and the attempts of a run nest under it wherever each
ran. Spans are built finished (``ReadableSpan``: their ids and times are ours, not a
tracer's) and handed to a ``BatchSpanProcessor``: exporting happens on its thread, never
on the node's loop, and a full queue drops spans rather than waiting.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .. import tracing
from ..consensus.commands import Usage

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
SCOPE = InstrumentationScope("raftmesh")


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector ``endpoint`` (the base URL, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is: ``/v1/traces`` is added unless it is there)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )


class OtelSpans:
    """This node's spans (``tracing.SpanSink``), batched to an OTLP/HTTP collector."""

    def __init__(self, node_id: str, endpoint: str, timeout_s: float = 5.0) -> None:
        self.node_id = node_id
        self.url = traces_url(endpoint)
        self._resource = Resource.create({"service.name": "raftmesh", "service.instance.id": node_id})
        self._processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url, timeout=timeout_s))

    def _emit(
        self,
        name: str,
        trace_id: str,
        span_id: str,
        parent_id: str,
        start_ns: int,
        end_ns: int,
        ok: bool,
        error: str,
        attributes: dict[str, Any],
    ) -> None:
        if not trace_id:  # a run submitted before trace ids: nothing to hang it on
            return
        span = ReadableSpan(
            name,
            context=_context(trace_id, span_id),
            parent=_context(trace_id, parent_id) if parent_id else None,
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode.OK) if ok else Status(StatusCode.ERROR, error[:500]),
            start_time=start_ns,
            end_time=max(end_ns, start_ns),
            instrumentation_scope=SCOPE,
        )
        self._processor.on_end(span)

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
    ) -> None:
        self._emit(
            "raftmesh.attempt",
            trace_id,
            tracing.attempt_span_id(trace_id, run_id, task_id, attempt) if trace_id else "",
            tracing.run_span_id(trace_id, run_id) if trace_id else "",
            start_ns,
            time.time_ns(),
            outcome == "succeeded",
            error or outcome,
            {
                "raftmesh.node": node_id,
                "raftmesh.run_id": run_id,
                "raftmesh.task_id": task_id,
                "raftmesh.attempt": attempt,
                "raftmesh.agent": agent,
                "raftmesh.outcome": outcome,
                "raftmesh.usage.tokens_in": usage.tokens_in,
                "raftmesh.usage.tokens_out": usage.tokens_out,
                "raftmesh.usage.cost": usage.cost,
            },
        )

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
    ) -> None:
        self._emit(
            "raftmesh.run",
            trace_id,
            tracing.run_span_id(trace_id, run_id) if trace_id else "",
            "",
            created_ms * 1_000_000,
            finished_ms * 1_000_000,
            status == "SUCCEEDED",
            error or reason or status,
            {
                "raftmesh.node": self.node_id,
                "raftmesh.run_id": run_id,
                "raftmesh.run_name": name,
                "raftmesh.status": status,
                "raftmesh.reason": reason,
                "raftmesh.tasks": tasks,
                "raftmesh.usage.tokens_in": usage.tokens_in,
                "raftmesh.usage.tokens_out": usage.tokens_out,
                "raftmesh.usage.cost": usage.cost,
            },
        )

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop the exporter thread."""
        try:
            self._processor.shutdown()
        except Exception:
            log.exception("the OpenTelemetry exporter did not shut down cleanly")
