"""What the hot-path changes keep: the interceptor wraps a method's handler once yet gives every
call its own ids, a generated request id is unique and uuid-shaped, the node log filter masks
the longest secret whole, the audit archive counts a re-applied row's bytes once, and a node's
log records skip the caller lookup yet keep every field the JSON line carries."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from typing import Any

import grpc

from raftmesh import calls
from raftmesh.consensus.commands import Origin
from raftmesh.log_format import JsonFormatter, skip_unused_record_fields
from raftmesh.node import interceptor as icp
from raftmesh.redaction import MASK, SecretsFilter, contains_secret, secret
from raftmesh.storage.audit import AuditArchive

from .test_audit import Audited
from .test_machine import spec


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


class _Context:
    """The two ServicerContext methods the interceptor reads on a successful call."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._md = metadata

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._md

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


def test_a_methods_handler_is_wrapped_once_and_every_call_still_gets_its_own_call() -> None:
    seen: list[calls.Call | None] = []

    async def behaviour(request: Any, context: Any) -> str:
        seen.append(calls.current())
        return f"ok {request}"

    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    other = grpc.unary_unary_rpc_method_handler(behaviour)
    current = [handler]

    async def continuation(details: Any) -> Any:
        return current[0]

    inter = icp.CallInterceptor()
    method = "/raftmesh.v1.Cluster/GetRun"

    async def main() -> list[Any]:
        a = await inter.intercept_service(continuation, _Details(method))
        b = await inter.intercept_service(continuation, _Details(method))
        current[0] = other  # another handler object for the method: wrapped anew, not the stale one
        c = await inter.intercept_service(continuation, _Details(method))
        assert (await a.unary_unary(1, _Context([("x-request-id", "req-given")]))) == "ok 1"
        assert (await b.unary_unary(2, _Context([]))) == "ok 2"
        assert (await b.unary_unary(3, _Context([]))) == "ok 3"
        return [a, b, c]

    a, b, c = asyncio.run(main())
    assert a is b and c is not a
    ids = [x.request_id for x in seen if x]
    assert ids[0] == "req-given"
    traces = [x.trace_id for x in seen if x]
    assert len(seen) == 3 and len(set(ids)) == 3 and len(set(traces)) == 3
    assert all(x is not None and x.method == method for x in seen)


def test_an_unknown_method_is_not_wrapped_or_kept() -> None:
    async def continuation(details: Any) -> Any:
        return None

    inter = icp.CallInterceptor()
    assert asyncio.run(inter.intercept_service(continuation, _Details("/no.Such/Method"))) is None
    assert inter._wrapped == {}


def test_generated_request_ids_are_uuid_shaped_and_unique_and_a_callers_valid_id_is_kept() -> None:
    ids = [icp._request_id(None) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert icp._request_id("abc-1") == "abc-1"
    assert icp._request_id("x" * (icp.MAX_REQUEST_ID_CHARS + 1)) != "x" * (icp.MAX_REQUEST_ID_CHARS + 1)
    assert icp._request_id("bad\nid") != "bad\nid"


def test_node_log_records_skip_the_caller_walk_and_keep_every_json_field(monkeypatch: Any) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("n1"))
    logger = logging.getLogger("raftmesh.test.lean")
    logger.addHandler(handler)
    logger.propagate = False
    monkeypatch.setattr(logger, "level", logging.INFO)
    records: list[logging.LogRecord] = []
    handler.addFilter(lambda r: records.append(r) or True)
    try:
        skip_unused_record_fields()
        with calls.bound(calls.Call(trace_id="t" * 32, request_id="req-1", principal="node:n1")):
            logger.info("attempt %d of %s/%s started", 1, "r1", "a", extra={"run_id": "r1", "task_id": "a"})
    finally:
        logger.removeHandler(handler)
    rec = records[0]
    assert rec.funcName == "(unknown function)" and rec.threadName is None and rec.processName is None
    line = json.loads(out.getvalue())
    assert line["msg"] == "attempt 1 of r1/a started" and line["node"] == "n1"
    assert (line["run_id"], line["task_id"], line["trace_id"], line["request_id"]) == (
        "r1",
        "a",
        "t" * 32,
        "req-1",
    )


def test_a_json_lines_time_is_its_records_own_across_seconds_and_back() -> None:
    f = JsonFormatter("n1")  # it keeps the last second's text: each line still gets its own
    for created, ts in (
        (1_700_000_000.25, "2023-11-14T22:13:20.250Z"),
        (1_700_000_000.75, "2023-11-14T22:13:20.750Z"),
        (1_700_000_001.5, "2023-11-14T22:13:21.500Z"),
        (1_700_000_000.125, "2023-11-14T22:13:20.125Z"),
    ):
        rec = logging.LogRecord("n", logging.INFO, "f", 1, "m", (), None)
        rec.created, rec.msecs = created, (created - int(created)) * 1000
        assert json.loads(f.format(rec))["ts"] == ts


def test_contains_secret_finds_one_at_any_depth_and_nothing_else() -> None:
    assert not contains_secret({"value": 1, "l": [1, "a", {"x": None}], "s": "$secret"})
    assert not contains_secret(None) and not contains_secret("$secret")
    assert contains_secret(secret("tok"))
    assert contains_secret({"a": [{"b": secret(12345)}]})
    assert contains_secret([1, [2, [secret("x")]]])


def test_the_log_filter_masks_the_longest_secret_whole_in_messages_and_arguments() -> None:
    f = SecretsFilter(["tok", "tok-secret-value", ""])
    rec = logging.LogRecord("n", logging.INFO, "f", 1, "a=%s b=%s", ("tok-secret-value", "tok"), None)
    assert f.filter(rec)
    assert rec.getMessage() == f"a={MASK} b={MASK}"
    plain = logging.LogRecord("n", logging.INFO, "f", 1, "nothing %s", ("here",), None)
    assert f.filter(plain) and plain.args == ("here",)  # untouched when nothing matched


def test_a_re_applied_trail_leaves_its_rows_and_counts_their_bytes_once(tmp_path: Any) -> None:
    arch = AuditArchive(str(tmp_path))
    try:
        c = Audited(arch)
        c.ok(c.register("n1"))
        c.ok(c.submit("r1", [spec("a"), spec("b", "a")], key="k"), Origin("token:t", "q", "0" * 31 + "1"))
        c.run_task("r1", "a")
        assert arch.flush()
        before = (arch._total, [r.kind for r in arch.timeline("r1").rows])
        # A restart: the archive reopens at the revision it committed with its rows, and the
        # node re-applies the log from the start.
        arch.close()
        arch = AuditArchive(str(tmp_path))
        arch.applied(c.trail)
        assert arch.flush()
        assert (arch._total, [r.kind for r in arch.timeline("r1").rows]) == before
        assert before[0] > 0 and "completed" in before[1]
    finally:
        arch.close()
