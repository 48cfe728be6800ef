"""The ``llm`` built-in agent and ``@raftmesh.tool``, against the fake OpenAI-compatible server run
as a real process (``python -m raftmesh.testing.fake_llm``), and through a real node."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

import raftmesh
from raftmesh import DAG
from raftmesh.agents import AgentRegistry, SyncTaskContext, TaskContext, default_registry
from raftmesh.agents._builtin import AgentInputError
from raftmesh.agents._llm import MAX_TOOL_RESULT_CHARS, LlmCallFailed, llm_agent, tool_call_id
from raftmesh.agents._tools import ToolInputError, check_args, get_tool
from raftmesh.consensus.commands import Usage
from raftmesh.errors import InvalidArgument
from raftmesh.localcluster import LocalCluster
from raftmesh.testing import FakeLLM

from .http_server import local_http_server

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM(api_key=KEY) as f:
        yield f


@pytest.fixture(autouse=True)
def endpoint(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's environment points at the fake server; each test starts with no rules."""
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RAFTMESH_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAFTMESH_LLM_BASE_URL", fake.base_url)
    monkeypatch.setenv("RAFTMESH_LLM_API_KEY", KEY)
    fake.set_script([])


@raftmesh.tool
def lookup_service(service: Literal["checkout", "search"], window_min: int = 15) -> dict[str, Any]:
    """Error rate of a service over the last minutes.

    (This paragraph is not part of the description.)
    """
    return {
        "service": service,
        "window_min": window_min,
        "error_rate": 0.12 if service == "checkout" else 0.0,
    }


@raftmesh.tool(name="big_tool", description="Returns far too much text.")
async def big(n: int, ctx: TaskContext) -> str:
    assert ctx.task_id  # the calling attempt's context
    return "y" * n


def ctx_for(
    inp: Any, registry: AgentRegistry | None = None, upstream: dict[str, Any] | None = None
) -> TaskContext:
    log = logging.LoggerAdapter(logging.getLogger("raftmesh.agent.llm"), {})
    return TaskContext(
        "r-1", "t1", 1, 1, "n1", inp, upstream or {}, "r-1", log, agents=registry or default_registry()
    )


def run(ctx: TaskContext) -> Any:
    return asyncio.run(llm_agent(ctx))


def bodies(fake: FakeLLM) -> list[dict[str, Any]]:
    return [r["body"] for r in fake.requests()]


def test_tool_schema_is_derived_from_type_hints() -> None:
    t = get_tool("lookup_service")
    assert t is not None
    assert t.description == "Error rate of a service over the last minutes."
    assert t.parameters == {
        "type": "object",
        "properties": {"service": {"enum": ["checkout", "search"]}, "window_min": {"type": "integer"}},
        "required": ["service"],
        "additionalProperties": False,
    }
    b = get_tool("big_tool")
    assert b is not None and b.wants_ctx and "ctx" not in b.parameters["properties"]
    with pytest.raises(ToolInputError, match="missing"):
        check_args(t.parameters, {})
    with pytest.raises(ToolInputError, match="unknown"):
        check_args(t.parameters, {"service": "search", "x": 1})
    with pytest.raises(ToolInputError, match="does not fit"):
        check_args(t.parameters, {"service": "billing"})

    def no_hints(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ValueError, match="needs a type hint"):
        raftmesh.tool(no_hints)
    with pytest.raises(ValueError, match="letters, digits"):
        raftmesh.tool(name="ns.search")(lookup_service)


def test_a_prompt_gives_the_final_message_and_reports_usage(fake: FakeLLM) -> None:
    fake.set_script(
        [{"reply": {"content": "All good."}, "usage": {"prompt_tokens": 11, "completion_tokens": 3}}]
    )
    ctx = ctx_for(
        {
            "prompt": "Status?",
            "system": "Be brief",
            "model": "m1",
            "price_per_1m_tokens": {"input": 1e5, "output": 2e5},
        }
    )
    assert run(ctx) == "All good."
    assert ctx.usage == Usage(11, 3, pytest.approx(11 * 0.1 + 3 * 0.2))
    (req,) = fake.requests()
    assert req["authorized"] is True
    assert req["body"]["model"] == "m1"
    assert req["body"]["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Status?"},
    ]


def test_tool_loop_with_a_python_tool_reports_usage_per_step(fake: FakeLLM) -> None:
    fake.set_script(
        [
            {
                "when": {"tool_result": False},
                "reply": {"tool_calls": [{"name": "lookup_service", "arguments": {"service": "checkout"}}]},
                "usage": {"prompt_tokens": 20, "completion_tokens": 5},
            },
            {
                "when": {"tool_result": True},
                "reply": {"content": "checkout is failing"},
                "usage": {"prompt_tokens": 40, "completion_tokens": 4},
            },
        ]
    )
    ctx = ctx_for({"prompt": "Which service fails?", "model": "m", "tools": ["lookup_service"]})
    assert run(ctx) == "checkout is failing"
    assert ctx.usage == Usage(60, 9, 0.0)
    first, second = bodies(fake)
    assert first["tools"][0]["function"]["name"] == "lookup_service"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["service"]
    tool_msg = second["messages"][-1]
    assert (
        tool_msg["role"] == "tool"
        and tool_msg["tool_call_id"] == second["messages"][-2]["tool_calls"][0]["id"]
    )
    assert json.loads(tool_msg["content"]) == {"service": "checkout", "window_min": 15, "error_rate": 0.12}


def test_tool_loop_with_an_agent_type_as_tool(fake: FakeLLM) -> None:
    reg = default_registry()

    async def runbook(ctx: TaskContext) -> Any:
        ctx.report_usage(tokens_in=7, cost=0.5)  # a tool's own usage counts for the calling attempt
        return {"runbook": f"restart {ctx.input['service']}", "run": ctx.run_id, "task": ctx.task_id}

    reg.register("runbook", runbook)
    fake.set_script(
        [
            {
                "when": {"tool_result": False},
                "reply": {
                    "tool_calls": [
                        {"name": "runbook", "arguments": {"service": "checkout"}},
                        {"name": "nope", "arguments": {}},
                    ]
                },
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
        ]
    )
    params = {"type": "object", "properties": {"service": {"type": "string"}}}
    ctx = ctx_for(
        {
            "prompt": "Fix it",
            "model": "m",
            "tools": [{"name": "runbook", "description": "Runbooks", "parameters": params}],
        },
        reg,
    )
    out = run(ctx)  # the default reply summarises once a tool result is in
    assert "restart checkout" in out
    _, second = bodies(fake)
    assert second["tools"][0]["function"] == {
        "name": "runbook",
        "description": "Runbooks",
        "parameters": params,
    }
    results = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    task = tool_call_id("t1", "runbook", {"service": "checkout"})
    assert json.loads(results[0]) == {"runbook": "restart checkout", "run": "r-1", "task": task}
    assert results[1].startswith("error: 'nope' is not one of the tools offered")
    assert ctx.usage.tokens_in >= 1 + 7 and ctx.usage.cost == 0.5


def test_http_as_a_tool_gets_one_idempotency_key_per_call(fake: FakeLLM) -> None:
    with local_http_server() as srv:
        calls = [{"name": "http", "arguments": {"url": f"{srv.url}/{p}"}} for p in ("echo", "json", "echo")]
        fake.set_script([{"when": {"tool_result": False}, "reply": {"tool_calls": calls}}])
        for _ in range(2):  # the second run stands for a retried attempt of the same task
            run(ctx_for({"prompt": "fetch", "model": "m", "tools": ["http"]}))
        with srv.lock:
            keys = [r["headers"]["Idempotency-Key"] for r in srv.seen]
    assert len(keys) == 6
    first, again = keys[:3], keys[3:]
    assert first[0] != first[1] and first[0] == first[2]  # the same call made twice is one effect
    assert again == first


def test_tool_errors_and_big_results_go_back_to_the_model(fake: FakeLLM) -> None:
    fake.set_script(
        [
            {
                "when": {"tool_result": False},
                "reply": {
                    "tool_calls": [
                        {"name": "lookup_service", "arguments": {"service": "billing"}},
                        {"name": "big_tool", "arguments": {"n": MAX_TOOL_RESULT_CHARS + 10}},
                        {"name": "lookup_service", "arguments": "{not json"},
                    ]
                },
            }
        ]
    )
    run(ctx_for({"prompt": "go", "model": "m", "tools": ["lookup_service", "big_tool"]}))
    _, second = bodies(fake)
    bad, big_result, not_json = (m["content"] for m in second["messages"] if m["role"] == "tool")
    assert bad.startswith("error: argument 'service'")
    assert big_result.startswith("y" * 100) and big_result.endswith("…(10 more characters)")
    assert not_json.startswith("error: the arguments are not JSON")


def test_max_steps_bounds_the_loop(fake: FakeLLM) -> None:
    fake.set_script(
        [{"reply": {"tool_calls": [{"name": "lookup_service", "arguments": {"service": "search"}}]}}]
    )
    with pytest.raises(LlmCallFailed, match="max_steps=3") as exc:
        run(ctx_for({"prompt": "loop", "model": "m", "tools": ["lookup_service"], "max_steps": 3}))
    assert exc.value.retryable is False
    assert len(fake.requests()) == 3


def test_rate_limits_back_off_honouring_retry_after(fake: FakeLLM) -> None:
    fake.set_script([{"status": 429, "retry_after": 0.3, "times": 2}, {"reply": {"content": "done"}}])
    ctx = ctx_for({"prompt": "hi", "model": "m"})
    t0 = time.monotonic()
    assert run(ctx) == "done"
    assert time.monotonic() - t0 >= 0.6  # waited at least what the server asked, twice
    assert len(fake.requests()) == 3
    fake.set_script([{"status": 429}])  # no Retry-After: exponential backoff with jitter
    with pytest.raises(LlmCallFailed, match="rate limited") as exc:
        run(ctx_for({"prompt": "hi", "model": "m", "rate_limit_retries": 2}))
    assert exc.value.retryable is True
    assert len(fake.requests()) == 3


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (404, False), (408, True), (500, True), (503, True)]
)
def test_error_statuses(fake: FakeLLM, status: int, retryable: bool) -> None:
    fake.set_script([{"status": status, "message": "scripted"}])
    with pytest.raises(LlmCallFailed) as exc:
        run(ctx_for({"prompt": "hi", "model": "m"}))
    assert exc.value.retryable is retryable and f"HTTP {status}" in str(exc.value)


def test_a_slow_endpoint_times_out_retryably(fake: FakeLLM) -> None:
    fake.set_script([{"delay_s": 2, "reply": {"content": "late"}}])
    with pytest.raises(LlmCallFailed, match="timed out") as exc:
        run(ctx_for({"prompt": "hi", "model": "m", "timeout_s": 0.3}))
    assert exc.value.retryable is True


def test_response_format_json(fake: FakeLLM) -> None:
    rf = {"type": "json_object"}
    out = run(ctx_for({"prompt": "Summarise", "model": "m", "response_format": rf}))
    assert isinstance(out, dict) and out["summary"].startswith("Summary of: Summarise")
    assert bodies(fake)[-1]["response_format"] == rf
    fake.set_script([{"reply": {"content": "not { json"}}])
    with pytest.raises(LlmCallFailed, match="not JSON") as exc:
        run(ctx_for({"prompt": "Summarise", "model": "m", "response_format": rf}))
    assert exc.value.retryable is True


def test_upstream_outputs_reach_the_model(fake: FakeLLM) -> None:
    run(ctx_for({"prompt": "Review", "model": "m"}, upstream={"logs": "disk full on db-2"}))
    msgs = bodies(fake)[-1]["messages"]
    assert "disk full on db-2" in msgs[-1]["content"]
    run(ctx_for({"prompt": "Review", "model": "m", "include_upstream": False}, upstream={"logs": "x"}))
    assert len(bodies(fake)[-1]["messages"]) == 1


def test_api_key_never_appears_in_outputs_errors_or_logs(
    fake: FakeLLM, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    fake.set_script(
        [
            {
                "when": {"tool_result": False},
                "times": 1,
                "reply": {"tool_calls": [{"name": "lookup_service", "arguments": {"service": "search"}}]},
            },
            {"status": 500, "times": 1, "message": f"upstream said: your key {KEY} is odd"},
        ]
    )
    with pytest.raises(LlmCallFailed) as exc:
        run(ctx_for({"prompt": "hi", "model": "m", "tools": ["lookup_service"]}))
    assert KEY not in str(exc.value) and "***" in str(exc.value)
    out = run(ctx_for({"prompt": "hi", "model": "m"}))
    assert KEY not in json.dumps(out)
    monkeypatch.setenv("RAFTMESH_LLM_API_KEY", "sk-wrong-key-42")
    with pytest.raises(LlmCallFailed, match="HTTP 401") as exc:
        run(ctx_for({"prompt": "hi", "model": "m"}))
    assert exc.value.retryable is False and "sk-wrong-key-42" not in str(exc.value)
    assert caplog.records and KEY not in caplog.text and "sk-wrong-key-42" not in caplog.text


def test_key_rules(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AgentInputError, match="may not carry api_key") as exc:
        run(ctx_for({"prompt": "hi", "model": "m", "api_key": KEY}))
    assert KEY not in str(exc.value)
    with pytest.raises(AgentInputError, match="RAFTMESH_LLM_"):
        run(ctx_for({"prompt": "hi", "model": "m", "api_key_env": "AWS_SECRET_ACCESS_KEY"}))
    # the node's key goes to the node's endpoint only, not to a URL the task names
    other = fake.base_url.replace("127.0.0.1", "localhost")
    with pytest.raises(LlmCallFailed, match="HTTP 401"):
        run(ctx_for({"prompt": "hi", "model": "m", "base_url": other}))
    assert fake.requests()[-1]["authorized"] is False
    monkeypatch.setenv("RAFTMESH_LLM_API_KEY_OPS", KEY)
    assert run(
        ctx_for({"prompt": "hi", "model": "m", "base_url": other, "api_key_env": "RAFTMESH_LLM_API_KEY_OPS"})
    )
    monkeypatch.delenv("RAFTMESH_LLM_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the fallback name
    monkeypatch.setenv("RAFTMESH_LLM_MODEL", "from-env")
    run(ctx_for({"prompt": "hi"}))
    assert fake.requests()[-1]["authorized"] is True and bodies(fake)[-1]["model"] == "from-env"


@pytest.mark.parametrize(
    ("inp", "says"),
    [
        ({"model": "m"}, "prompt or user messages"),
        ({"prompt": "x"}, "no model"),
        ({"prompt": "x", "model": "m", "max_steps": 0}, "max_steps"),
        ({"prompt": "x", "model": "m", "tools": ["no_such_tool"]}, "neither a @raftmesh.tool"),
        ({"prompt": "x", "model": "m", "tools": ["llm"]}, "may not call itself"),
        ({"prompt": "x", "model": "m", "response_format": {"type": "yaml"}}, "response_format"),
        ({"prompt": "x", "model": "m", "messages": [{"role": "boss", "content": "x"}]}, r"messages\[0\]"),
        ({"prompt": "x", "model": "m", "base_url": "file:///etc"}, "base_url"),
        ({"prompt": "x", "model": "m", "promt": "typo"}, "unknown input key"),
    ],
)
def test_bad_input_is_a_clear_non_retryable_error(inp: Any, says: str) -> None:
    with pytest.raises(AgentInputError, match=says) as exc:
        run(ctx_for(inp))
    assert exc.value.retryable is False


def test_a_process_isolated_agent_is_not_a_tool() -> None:
    reg = default_registry()

    async def heavy(ctx: TaskContext) -> Any:
        return None

    reg.register("heavy", heavy, isolation="process", memory_mb=256)
    with pytest.raises(AgentInputError, match="worker process"):
        run(ctx_for({"prompt": "x", "model": "m", "tools": ["heavy"]}, reg))


def test_fake_server_process_lists_models_and_stops_on_sigterm(tmp_path: Any) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"rules": [{"when": {"model": "scripted-1"}, "reply": {"content": "x"}}]}))
    f = FakeLLM(script_path=str(script))
    try:
        with urllib.request.urlopen(f.base_url + "/models", timeout=10) as resp:
            models = [m["id"] for m in json.loads(resp.read())["data"]]
        assert models == ["fake", "scripted-1"]
        os.kill(f.pid, signal.SIGTERM)
        assert f.proc.wait(10) == 0
    finally:
        f.stop()
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": 3}')
    p = subprocess.run(
        [sys.executable, "-m", "raftmesh.testing.fake_llm", "--script", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and "list of rules" in p.stderr


@pytest.mark.e2e
def test_llm_task_with_an_agent_tool_through_a_real_node(
    fake: FakeLLM, make_cluster: Callable[..., LocalCluster]
) -> None:
    cluster = make_cluster(
        1,
        env={"RAFTMESH_LLM_BASE_URL": fake.base_url, "RAFTMESH_LLM_API_KEY": KEY, "RAFTMESH_LLM_MODEL": "m"},
    )
    client = cluster.client()
    echo_tool = {
        "name": "echo",
        "description": "Echoes its input",
        "parameters": {"type": "object", "properties": {"note": {"type": "string"}}},
    }
    dag = DAG("triage")
    dag.task("facts", "echo", input={"alert": "checkout 5xx"})
    dag.task("analyst", "llm", input={"prompt": "Triage the alert", "tools": [echo_tool]}, deps=["facts"])
    run_info = client.run(dag, timeout_s=60)
    t = run_info.tasks["analyst"]
    assert t.status == "SUCCEEDED", t.error
    assert "tool result 1" in t.output and "Triage the alert" in t.output
    first, second = bodies(fake)
    assert "checkout 5xx" in first["messages"][-1]["content"]  # the upstream output
    assert json.loads(second["messages"][-1]["content"]) == {"note": "Results of the tasks this one"}
    # a key in a task input is refused at submit: it never enters the replicated log
    bad = DAG("leak")
    bad.task("a", "llm", input={"prompt": "x", "api_key": KEY})
    with pytest.raises(InvalidArgument, match="may not carry api_key") as exc:
        client.submit(bad)
    assert KEY not in str(exc.value)
    assert all(KEY not in json.dumps(r) for r in client.list_runs())
    with open(cluster.nodes["n1"].log_path, encoding="utf-8") as f:
        node_log = f.read()
    assert "analyst" in node_log and KEY not in node_log


def test_a_plain_def_agent_as_a_tool_gets_the_context_a_thread_agent_gets(fake: FakeLLM) -> None:
    """It runs off the loop with a ``SyncTaskContext`` (a ``threading.Event`` to poll; blocking
    kv/locks when the attempt has them), not the async context whose calls return coroutines."""
    reg = default_registry()
    seen: list[Any] = []

    def inventory(ctx: SyncTaskContext) -> Any:
        seen.append((type(ctx).__name__, ctx.cancelled.is_set(), threading.current_thread().name))
        ctx.report_usage(tokens_out=3)
        return {"hosts": 4, "task": ctx.task_id}

    reg.register("inventory", inventory)
    fake.set_script(
        [
            {
                "when": {"tool_result": False},
                "reply": {"tool_calls": [{"name": "inventory", "arguments": {}}]},
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
        ]
    )
    ctx = ctx_for({"prompt": "How many hosts?", "model": "m", "tools": [{"name": "inventory"}]}, reg)
    run(ctx)
    ((kind, cancelled, thread),) = seen
    assert (kind, cancelled) == ("SyncTaskContext", False) and thread != "MainThread"
    results = [m["content"] for m in bodies(fake)[1]["messages"] if m["role"] == "tool"]
    assert json.loads(results[0]) == {"hosts": 4, "task": tool_call_id("t1", "inventory", {})}
    assert ctx.usage.tokens_out >= 1 + 3


@raftmesh.tool
def count_hosts(region: str, ctx: SyncTaskContext) -> dict[str, Any]:
    """Hosts in a region."""
    ctx.report_usage(cost=0.25)
    return {"region": region, "ctx": type(ctx).__name__, "cancelled": ctx.cancelled.is_set()}


def test_a_plain_def_tool_taking_ctx_gets_the_blocking_view(fake: FakeLLM) -> None:
    fake.set_script(
        [
            {
                "when": {"tool_result": False},
                "reply": {"tool_calls": [{"name": "count_hosts", "arguments": {"region": "eu"}}]},
            }
        ]
    )
    ctx = ctx_for({"prompt": "Hosts in eu?", "model": "m", "tools": ["count_hosts"]})
    run(ctx)
    results = [m["content"] for m in bodies(fake)[1]["messages"] if m["role"] == "tool"]
    assert json.loads(results[0]) == {"region": "eu", "ctx": "SyncTaskContext", "cancelled": False}
    assert ctx.usage.cost == 0.25  # the tool's usage counts for the calling attempt
