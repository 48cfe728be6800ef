"""The ``http`` built-in agent against a real HTTP server on 127.0.0.1 (and through a real node)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from raftmesh import DAG
from raftmesh.agents import TaskContext
from raftmesh.agents._builtin import AgentInputError
from raftmesh.agents._http import MAX_RESPONSE_BODY_BYTES, HttpCallFailed, http_agent, idempotency_key
from raftmesh.consensus import limits
from raftmesh.localcluster import LocalCluster

from .http_server import _Server, local_http_server


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    with local_http_server() as srv:
        yield srv


def ctx_for(
    inp: Any, run_id: str = "r-1", task_id: str = "t1", attempt: int = 1, token: int = 1
) -> TaskContext:
    log = logging.LoggerAdapter(logging.getLogger("raftmesh.agent.http"), {})
    return TaskContext(run_id, task_id, attempt, token, "n1", inp, {}, run_id, log)


def call(inp: Any, **kw: Any) -> Any:
    return asyncio.run(http_agent(ctx_for(inp, **kw)))


def last_seen(server: _Server) -> dict[str, Any]:
    with server.lock:
        return server.seen[-1]


def test_get_json_outputs_status_headers_and_decoded_body(server: _Server) -> None:
    out = call({"url": server.url + "/json"})
    assert out["status"] == 200
    assert out["body"] == {"ok": True, "items": [1, 2, 3]}
    assert out["headers"]["x-custom"] == "yes"
    assert "set-cookie" not in out["headers"]  # a session credential: outputs are replicated
    assert limits.encoded_size(out) < limits.MAX_TASK_OUTPUT_BYTES
    text = call({"url": server.url + "/text", "method": "get"})
    assert text["body"] == "plain words"


def test_post_json_and_text_bodies_and_headers_reach_the_server(server: _Server) -> None:
    out = call(
        {"method": "POST", "url": server.url + "/echo", "json": {"a": [1, "b"]}, "headers": {"X-Team": "sre"}}
    )
    seen = out["body"]
    assert seen["method"] == "POST"
    assert seen["body"] == '{"a":[1,"b"]}'
    assert seen["headers"]["X-Team"] == "sre"
    assert seen["headers"]["Content-Type"] == "application/json"
    out = call({"method": "PUT", "url": server.url + "/echo", "body": "raw text"})
    assert out["body"]["body"] == "raw text"
    ctx = ctx_for({"method": "POST", "url": server.url + "/echo", "json_from": "writer"})
    ctx.upstream = {"writer": {"report": "# Incident"}}
    out = asyncio.run(http_agent(ctx))
    assert out["body"]["body"] == '{"report":"# Incident"}'


def test_idempotency_key_is_stable_across_attempts_and_lineage_is_separate(server: _Server) -> None:
    call({"url": server.url + "/echo"}, attempt=1, token=5)
    first = last_seen(server)["headers"]
    call({"url": server.url + "/echo"}, attempt=2, token=9)
    second = last_seen(server)["headers"]
    call({"url": server.url + "/echo"}, task_id="t2")
    other = last_seen(server)["headers"]
    assert first["Idempotency-Key"] == second["Idempotency-Key"] == idempotency_key("r-1", "t1")
    assert other["Idempotency-Key"] != first["Idempotency-Key"]
    assert first["Raftmesh-Attempt"] == "1; token=5; node=n1"
    assert second["Raftmesh-Attempt"] == "2; token=9; node=n1"
    # very long ids still give a bounded key, distinct per task
    long_a, long_b = idempotency_key("r" * 128, "a" * 128), idempotency_key("r" * 128, "b" * 128)
    assert len(long_a) <= 255 and long_a != long_b


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_fail_for_good(server: _Server, status: int) -> None:
    with pytest.raises(HttpCallFailed) as exc:
        call({"url": f"{server.url}/status/{status}"})
    assert exc.value.retryable is False
    assert f"HTTP {status}" in str(exc.value)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_timeouts_rate_limits_and_server_errors_are_retryable(server: _Server, status: int) -> None:
    with pytest.raises(HttpCallFailed) as exc:
        call({"url": f"{server.url}/status/{status}"})
    assert exc.value.retryable is True


def test_connection_errors_and_timeouts_are_retryable(server: _Server) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpCallFailed) as exc:
        call({"url": f"http://127.0.0.1:{port}/"})
    assert exc.value.retryable is True
    with pytest.raises(HttpCallFailed) as exc:
        call({"url": server.url + "/slow/3", "timeout_s": 0.3})
    assert exc.value.retryable is True and "timed out" in str(exc.value)


def test_response_body_is_size_limited(server: _Server) -> None:
    ok = call({"url": f"{server.url}/bytes/{MAX_RESPONSE_BODY_BYTES}"})
    assert len(ok["body"]) == MAX_RESPONSE_BODY_BYTES
    with pytest.raises(HttpCallFailed) as exc:
        call({"url": f"{server.url}/bytes/{MAX_RESPONSE_BODY_BYTES + 1}"})
    assert exc.value.retryable is False and "over" in str(exc.value)
    with pytest.raises(HttpCallFailed):
        call({"url": f"{server.url}/bytes/101", "max_body_bytes": 100})
    assert MAX_RESPONSE_BODY_BYTES * 2 < limits.MAX_TASK_OUTPUT_BYTES


@pytest.mark.parametrize(
    ("inp", "says"),
    [
        ("https://x", "input must be a map"),
        ({"url": "ftp://example.com/f"}, "http:// or https://"),
        ({"url": "http://"}, "with a host"),
        ({"url": "http://h/", "method": "BREW"}, "method must be one of"),
        ({"url": "http://h/", "headers": {"X-A": "a\r\nInjected: 1"}}, "control characters"),
        ({"url": "http://h/", "headers": {"bad name": "v"}}, "not a header name"),
        ({"url": "http://h/", "headers": {f"X-{i}": "v" for i in range(65)}}, "at most 64 headers"),
        ({"url": "http://h/", "headers": {"X-A": "v" * 9000}}, "at most 8192"),
        ({"url": "http://h/", "json": {}, "body": "x"}, "one of json, body and json_from"),
        ({"url": "http://h/", "json_from": "nodep"}, "not a dependency"),
        ({"url": "http://h/", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://h/", "max_body_bytes": 10**9}, "max_body_bytes"),
        ({"url": "http://h/", "verb": "GET"}, "unknown input key"),
    ],
)
def test_bad_input_is_a_clear_non_retryable_error(inp: Any, says: str) -> None:
    with pytest.raises(AgentInputError, match=says) as exc:
        call(inp)
    assert exc.value.retryable is False


def test_secret_headers_come_from_the_environment_and_are_never_echoed(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETS_TOKEN", "Bearer s3cr3t-value")
    out = call({"url": server.url + "/echo", "headers_env": {"Authorization": "TICKETS_TOKEN"}})
    assert last_seen(server)["headers"]["Authorization"] == "Bearer s3cr3t-value"
    assert out["status"] == 200
    with pytest.raises(HttpCallFailed) as exc:  # the server puts the secret in its error body
        call({"url": server.url + "/echo-secret/500", "headers_env": {"Authorization": "TICKETS_TOKEN"}})
    assert "s3cr3t" not in str(exc.value) and "***" in str(exc.value)
    with pytest.raises(AgentInputError, match="MISSING_VAR"):
        call({"url": server.url + "/echo", "headers_env": {"Authorization": "MISSING_VAR"}})


@pytest.mark.e2e
def test_retried_call_keeps_its_key_and_client_errors_are_not_retried(
    server: _Server, make_cluster: Callable[..., LocalCluster]
) -> None:
    """Through a real node: the task's retries re-run a 503, with the same key every attempt."""
    cluster = make_cluster(1)
    client = cluster.client()
    dag = DAG("http-flaky")  # a failed task fails its run: one run per case
    dag.task("flaky", "http", input={"url": server.url + "/flaky/2"}, retries=3)
    flaky = client.run(dag, timeout_s=60).tasks["flaky"]
    assert flaky.status == "SUCCEEDED", flaky.error
    assert flaky.attempt == 3
    assert flaky.output["status"] == 200 and flaky.output["body"] == {"call": 3}
    dag = DAG("http-missing")
    dag.task("missing", "http", input={"url": server.url + "/status/404"}, retries=3)
    missing = client.run(dag, timeout_s=60).tasks["missing"]
    with server.lock:
        calls = [r["headers"] for r in server.seen if r["path"] == "/flaky/2"]
        missing_calls = [
            r for r in server.seen if r["headers"].get("Idempotency-Key", "").endswith(":missing")
        ]
    assert len(calls) == 3
    assert len({h["Idempotency-Key"] for h in calls}) == 1
    assert [h["Raftmesh-Attempt"].split(";")[0] for h in calls] == ["1", "2", "3"]
    assert missing.status == "FAILED" and missing.attempt == 1 and "HTTP 404" in missing.error
    assert len(missing_calls) == 1
