"""Trace ids from the client to the run, every attempt, message, command and log line, and
the OpenTelemetry spans a node exports (``raftmesh.tracing``, ``raftmesh.node.otel``).

The unit tests check where a client call's trace comes from, the log fields, the derived
span ids and that the agent thread pool runs in the caller's context. The end-to-end test
runs a real node with ``--archive-applied`` and ``--otel-endpoint`` pointed at an OTLP/HTTP
receiver in this process, submits a run under a given trace id and follows it: the run,
each attempt's ``ctx.trace_id`` (async, thread and process agents) and the call bound where
it runs, the message an attempt sends and the actor turn handling it, the node's JSON log
lines, every command the run caused (from the applied-entry archive) and the run and
attempt spans with their parent links.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from raftmesh import DAG, calls, tracing
from raftmesh.agents._pools import ThreadPool
from raftmesh.client import Client
from raftmesh.consensus.commands import (
    AckMessage,
    Complete,
    KvTxn,
    SendMessages,
    SubmitRun,
    decode_batch,
)
from raftmesh.consensus.raft import batch_payload
from raftmesh.errors import InvalidArgument
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.log_format import JsonFormatter
from raftmesh.storage.archive import read_archive

HERE = os.path.dirname(os.path.abspath(__file__))
AGENTS = os.path.join(HERE, "tracing_agents.py")


def _traceparent_of(md: list[tuple[str, str]]) -> tuple[str, str]:
    (key, value), *rest = md
    assert key == "traceparent" and rest == []
    parsed = calls.parse_traceparent(value)
    assert parsed is not None, value
    return parsed


# ---- where a client call's trace comes from ------------------------------------------------


def test_a_call_gets_a_new_trace_each_time_when_nothing_gives_one() -> None:
    a, _ = _traceparent_of(tracing.client_metadata())
    b, _ = _traceparent_of(tracing.client_metadata())
    assert calls.valid_trace_id(a) and calls.valid_trace_id(b) and a != b


def test_new_trace_and_span_ids_are_w3c_and_make_no_getrandom_call_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every gRPC call a node serves without a traceparent gets a new trace id: ``os.urandom``
    per id let go of the GIL mid-call (the Raft thread took it on a busy node). The ids still
    come from the OS's CSPRNG, drawn 4 KiB at a time."""
    real, drawn = os.urandom, []

    def counted(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    traces = {calls.new_trace_id() for _ in range(1000)}
    spans = {calls.new_span_id() for _ in range(1000)}
    assert len(traces) == 1000 and all(calls.valid_trace_id(t) for t in traces)
    assert len(spans) == 1000 and all(len(s) == 16 and int(s, 16) for s in spans)
    assert calls.parse_traceparent(calls.traceparent(calls.new_trace_id())) is not None
    assert len(drawn) <= 1000 * (16 + 8) // 4096 + 2 and all(n >= 4096 for n in drawn), drawn


def test_a_pinned_trace_wins_over_the_bound_call_and_ends_with_its_block() -> None:
    pinned, bound = calls.new_trace_id(), calls.new_trace_id()
    with calls.bound(tracing.node_call("n1", bound, "00f067aa0ba902b7")):
        assert _traceparent_of(tracing.client_metadata()) == (bound, "00f067aa0ba902b7")
        with tracing.pinned(pinned):
            assert _traceparent_of(tracing.client_metadata())[0] == pinned
        assert _traceparent_of(tracing.client_metadata())[0] == bound


def test_the_callers_active_opentelemetry_span_gives_the_trace_and_the_parent() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        sc = span.get_span_context()
        got = _traceparent_of(tracing.client_metadata())
    assert got == (format(sc.trace_id, "032x"), format(sc.span_id, "016x"))
    assert _traceparent_of(tracing.client_metadata())[0] != got[0]  # no span active any more


def test_submit_refuses_a_trace_id_that_is_not_w3c() -> None:
    with Client(["127.0.0.1:1"]) as c:
        for bad in ("abc", "0" * 32, "A" * 32, "g" * 32):
            with pytest.raises(InvalidArgument, match="32 lowercase hex"):
                c.submit(DAG("x"), trace_id=bad)


# ---- what carries it ----------------------------------------------------------------------


def _formatted(fmt: JsonFormatter, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    record = logging.LogRecord("raftmesh.test", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    for k, v in (extra or {}).items():
        setattr(record, k, v)
    out: dict[str, Any] = json.loads(fmt.format(record))
    return out


def test_json_log_lines_carry_the_bound_calls_ids_and_a_records_own_trace_wins() -> None:
    fmt = JsonFormatter("n1")
    plain = _formatted(fmt)
    assert "trace_id" not in plain and "principal" not in plain and plain["msg"] == "hello x"
    trace = calls.new_trace_id()
    with calls.bound(calls.Call(principal="token:alice", request_id="r-1", trace_id=trace)):
        line = _formatted(fmt)
        assert (line["trace_id"], line["request_id"], line["principal"]) == (trace, "r-1", "token:alice")
        other = calls.new_trace_id()
        assert _formatted(fmt, {"trace_id": other})["trace_id"] == other
    assert _formatted(fmt, {"trace_id": trace, "run_id": "r"})["trace_id"] == trace  # no call bound


def test_span_ids_are_derived_alike_everywhere_and_differ_per_attempt() -> None:
    t = "4bf92f3577b34da6a3ce929d0e0e4736"
    run = tracing.run_span_id(t, "run-1")
    assert run == tracing.run_span_id(t, "run-1") and len(run) == 16 and int(run, 16) != 0
    spans = {tracing.attempt_span_id(t, "run-1", "a", n) for n in (1, 2)} | {
        tracing.attempt_span_id(t, "run-1", "b", 1),
        tracing.attempt_span_id(t, "run-2", "a", 1),
        run,
    }
    assert len(spans) == 5
    assert calls.parse_traceparent(calls.traceparent(t, run)) == (t, run)


def test_the_agent_thread_pool_runs_a_function_in_the_callers_context() -> None:
    pool = ThreadPool(2)
    trace = calls.new_trace_id()

    async def main() -> tuple[str, str]:
        def seen() -> str:
            call = calls.current()
            return call.trace_id if call is not None else ""

        with calls.bound(tracing.node_call("n1", trace)):
            inside = await pool.run(seen)
        return inside, await pool.run(seen)

    try:
        assert asyncio.run(main()) == (trace, "")
    finally:
        pool.close()


class _RecordingWriter:
    """Applies each command at once (a one-node log) and keeps the call it was proposed
    under: what the node's proposer stamps as the command's origin."""

    def __init__(self, sm: Any) -> None:
        self.sm = sm
        self.proposed: list[tuple[Any, calls.Call | None]] = []

    async def propose(self, cmd: Any, timeout_s: float | None = None) -> Any:
        self.proposed.append((cmd, calls.current()))
        res, _ = self.sm.apply(cmd)
        return res

    async def barrier(self, timeout_s: float | None = None) -> None:
        return None


class _Spans:
    """A ``tracing.SpanSink`` that keeps what the host reports."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, ...]] = []

    def attempt_ended(self, *args: Any) -> None:
        self.attempts.append(args)

    def run_ended(self, *args: Any) -> None:
        raise AssertionError("the host reports attempts only")

    def shutdown(self) -> None:
        pass


def test_attempts_of_two_traces_reported_in_one_flush_go_out_under_their_own_traces() -> None:
    from raftmesh.agents import AgentHost, AgentRegistry
    from raftmesh.clock import ManualClock
    from raftmesh.consensus.commands import Assign, Assignment, Origin, TaskSpec
    from raftmesh.consensus.machine import StateMachine
    from raftmesh.consensus.state import TaskStatus
    from tests.test_node_units import reads_of, register

    sm = StateMachine()
    register(sm, "n1")
    traces = {"r1": calls.new_trace_id(), "r2": calls.new_trace_id()}
    for i, (run_id, trace) in enumerate(traces.items()):
        res, _ = sm.apply(
            SubmitRun(
                f"s{i}",
                2,
                run_id=run_id,
                tasks=(TaskSpec("t0", "echo"),),
                origin=Origin("token:alice", f"req-{i}", trace),
            )
        )
        assert res.ok, res
    assert sm.state.runs["r1"].trace_id == traces["r1"]

    async def echo(ctx: Any) -> Any:
        call = calls.current()
        return [ctx.trace_id, call.trace_id if call else "", call.principal if call else ""]

    async def scenario() -> None:
        registry = AgentRegistry()
        registry.register("echo", echo)
        writer = _RecordingWriter(sm)
        host = AgentHost("n1", "i1", registry, reads_of(sm), writer, ManualClock())
        host.spans = spans
        res, _ = sm.apply(Assign("a1", 3, (Assignment("r1", "t0", "n1", 1), Assignment("r2", "t0", "n1", 1))))
        assert res.ok, res
        host._reconcile()
        for _ in range(100):  # both finish before the reporter runs: one flush for the two
            if len(host._reports) == 2:
                break
            await asyncio.sleep(0)
        assert len(host._reports) == 2
        reporter = asyncio.get_running_loop().create_task(host._report_loop())
        for _ in range(100):
            done = all(sm.state.runs[r].tasks["t0"].status is TaskStatus.SUCCEEDED for r in traces)
            if done and len(spans.attempts) == 2:  # the spans go once the commands are applied
                break
            await asyncio.sleep(0)
        reporter.cancel()
        completes = [(cmd, call) for cmd, call in writer.proposed if isinstance(cmd, Complete)]
        assert len(completes) == 2
        for cmd, call in completes:
            (item,) = cmd.items
            assert call is not None and call.trace_id == traces[item.run_id] and call.principal == "node:n1"
            assert call.span_id == tracing.attempt_span_id(traces[item.run_id], item.run_id, "t0", 1)
            assert item.output == [traces[item.run_id], traces[item.run_id], "node:n1"]

    spans = _Spans()
    asyncio.run(scenario())
    got = {(a[1], a[2], a[7]) for a in spans.attempts}
    assert got == {(traces["r1"], "r1", "succeeded"), (traces["r2"], "r2", "succeeded")}


# ---- end to end: a real node, its archive, its log and its spans ---------------------------


class _Receiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps every span it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        spans: list[Any] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.GzipFile(fileobj=io.BytesIO(body)).read()
                req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with lock:
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            spans.extend(ss.spans)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._spans, self._lock = spans, lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self, trace_id: str) -> list[Any]:
        with self._lock:
            return [s for s in self._spans if s.trace_id.hex() == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    rx = _Receiver()
    try:
        yield rx
    finally:
        rx.close()


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def _log_lines(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                out.append(d)
    return out


@pytest.mark.e2e
def test_a_clients_trace_reaches_attempts_messages_commands_log_lines_and_spans(
    make_cluster: Callable[..., LocalCluster], receiver: _Receiver
) -> None:
    repo = os.path.dirname(HERE)
    c = make_cluster(
        1,
        agents_modules=[AGENTS],
        extra_args=["--archive-applied", "--otel-endpoint", receiver.url, "--log-level", "debug"],
        env={"OTEL_BSP_SCHEDULE_DELAY": "100", "PYTHONPATH": repo},
    )
    c.wait_ready()
    client = c.client(retry_deadline_s=60)
    trace = calls.new_trace_id()
    dag = DAG("traced")
    dag.task("a", "traced_async")
    dag.task("t", "traced_thread", deps=["a"])
    dag.task("p", "traced_process", deps=["a"])
    run_id = client.submit(dag, trace_id=trace)
    run = client.wait(run_id, timeout_s=90)
    assert run.status == "SUCCEEDED", run.to_json()
    assert run.trace_id == trace and run.to_json()["trace_id"] == trace

    # ctx.trace_id, and the call bound where the agent runs (the loop, a thread, a worker process)
    for task_id in ("a", "t", "p"):
        assert run.tasks[task_id].output == {"ctx": trace, "bound": trace}, task_id

    # the message the attempt sent carries the trace, and the actor's turn runs under it
    sink = wait_until(lambda: client.kv.list("sink/"), 30, "the trace_sink actor handles the message")
    assert [e.value for e in sink] == [{"message": trace, "turn": trace}]

    # under the caller's active OpenTelemetry span, a submit without a trace id takes its trace,
    # and so does a message a client sends (the node takes it from the call's traceparent)
    from opentelemetry.sdk.trace import TracerProvider

    with TracerProvider().get_tracer("test").start_as_current_span("caller") as span:
        other = DAG("under-span")
        other.task("x", "traced_thread")
        run2 = client.submit(other)
        client.messages.send("trace_sink/c", {"from": "client"}, durable=True)
    span_trace = format(span.get_span_context().trace_id, "032x")
    assert client.wait(run2, timeout_s=60).trace_id == span_trace
    sink = wait_until(lambda: len(client.kv.list("sink/")) == 2, 30, "the client's message is handled")
    assert {"message": span_trace, "turn": span_trace} in [e.value for e in client.kv.list("sink/")]

    # the spans: the run's (from the leader) and each attempt's, a child of the run's
    run_span = tracing.run_span_id(trace, run_id)

    def exported() -> list[Any] | None:
        spans = receiver.spans(trace)
        names = sorted(s.name for s in spans)
        return spans if names == ["raftmesh.attempt"] * 3 + ["raftmesh.run"] else None

    spans = wait_until(exported, 30, "the run span and three attempt spans are exported")
    (rs,) = [s for s in spans if s.name == "raftmesh.run"]
    assert rs.span_id.hex() == run_span and rs.parent_span_id == b""
    assert _attrs(rs)["raftmesh.run_id"] == run_id and _attrs(rs)["raftmesh.status"] == "SUCCEEDED"
    attempts = {_attrs(s)["raftmesh.task_id"]: s for s in spans if s.name == "raftmesh.attempt"}
    assert set(attempts) == {"a", "t", "p"}
    for task_id, s in attempts.items():
        a = _attrs(s)
        assert s.parent_span_id.hex() == run_span
        assert s.span_id.hex() == tracing.attempt_span_id(trace, run_id, task_id, 1)
        assert (a["raftmesh.node"], a["raftmesh.attempt"], a["raftmesh.outcome"]) == ("n1", 1, "succeeded")
        assert a["raftmesh.agent"] == f"traced_{dict(a='async', t='thread', p='process')[task_id]}"
        assert s.start_time_unix_nano <= s.end_time_unix_nano
    assert wait_until(lambda: receiver.spans(span_trace), 30, "the second run's spans")

    # the node's JSON log lines during the attempts carry the trace and who acted
    lines = _log_lines(c.nodes["n1"].log_path)
    for name in ("traced_async", "traced_thread", "traced_process"):
        (said,) = [d for d in lines if d.get("msg") == f"traced agent {name}" and d.get("run_id") == run_id]
        assert said["trace_id"] == trace and said["principal"] == "node:n1", said
    started = [d for d in lines if str(d.get("msg", "")).startswith("attempt 1 of " + run_id)]
    assert len(started) >= 6  # started and finished, for each of the three
    assert all(d["trace_id"] == trace and d["principal"] == "node:n1" for d in started), started

    # every command the run caused carries the trace as its origin (the applied-entry archive)
    c.stop_node("n1")
    seen: dict[str, int] = {}
    for entry in read_archive(c.nodes["n1"].data_dir).entries.values():
        payload = batch_payload(entry)
        for cmd in decode_batch(payload) if payload is not None else ():
            origin = getattr(cmd, "origin", None)
            if isinstance(cmd, SubmitRun) and cmd.run_id == run_id:
                kind = "submit"
            elif isinstance(cmd, Complete) and any(it.run_id == run_id for it in cmd.items):
                kind = "complete"
                assert {it.run_id for it in cmd.items} == {run_id}  # a command has one origin
            elif isinstance(cmd, KvTxn) and cmd.fence is not None and cmd.fence.run_id == run_id:
                kind = "kv"
            elif isinstance(cmd, SendMessages) and any(m.target == "trace_sink/k" for m in cmd.messages):
                kind = "send"
                assert all(m.trace_id == trace for m in cmd.messages)
            elif isinstance(cmd, AckMessage) and any(
                o.key.startswith("sink/") and o.value["message"] == trace for o in cmd.kv
            ):
                kind = "ack"
            else:
                continue
            assert origin is not None and origin.trace == trace, (kind, cmd)
            if kind != "submit":
                assert origin.principal == "node:n1", (kind, origin)
            seen[kind] = seen.get(kind, 0) + 1
    assert seen.keys() == {"submit", "complete", "kv", "send", "ack"}, seen
    assert seen["kv"] == 3


def test_the_cli_refuses_a_bad_trace_id_as_a_usage_error(tmp_path: Any, capsys: Any) -> None:
    from raftmesh.cli.main import main

    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"name": "x", "tasks": [{"id": "a", "agent": "echo"}]}))
    code = main(["--addresses", "127.0.0.1:1", "submit", str(dag), "--trace-id", "not-hex"])
    assert code == 2
    assert "32 lowercase hex digits" in capsys.readouterr().err


def test_an_ambient_otlp_endpoint_without_the_extra_warns_and_the_flag_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    from raftmesh.node.main import otel_spans_for

    log = logging.getLogger("raftmesh.test.otel")
    monkeypatch.setitem(sys.modules, "raftmesh.node.otel", None)  # the otel extra is not installed
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert otel_spans_for("n1", None, "http://collector:4318", log) is None
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in caplog.text and "raftmesh[otel]" in caplog.text
    with pytest.raises(InvalidArgument, match="raftmesh\\[otel\\]"):
        otel_spans_for("n1", "http://collector:4318", None, log)
    assert otel_spans_for("n1", None, None, log) is None
    # Not a URL: the same (the flag refuses, the environment warns).
    monkeypatch.delitem(sys.modules, "raftmesh.node.otel")
    assert otel_spans_for("n1", None, "collector:4318", log) is None
    with pytest.raises(InvalidArgument, match="http://"):
        otel_spans_for("n1", "collector:4318", None, log)
