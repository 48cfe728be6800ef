"""The ``llm`` built-in agent: an OpenAI-compatible chat-completions call with a tool-calling loop.

Input (every key optional but a prompt or messages)::

    {"prompt": "Triage this alert", "system": "You are an SRE",   # or "messages": [{role, content}]
     "model": "gpt-4o-mini", "base_url": "https://api.openai.com/v1", "api_key_env": "RAFTMESH_LLM_API_KEY_OPS",
     "tools": ["search_logs", "http", {"name": "echo", "description": "...", "parameters": {...}}],
     "max_steps": 8, "response_format": {"type": "json_object"},
     "temperature": 0, "max_tokens": 800, "timeout_s": 120,
     "price_per_1m_tokens": {"input": 0.15, "output": 0.6}, "include_upstream": true}

The endpoint comes from the input or the node's environment (``RAFTMESH_LLM_BASE_URL``,
``RAFTMESH_LLM_MODEL``, ``RAFTMESH_LLM_API_KEY``; ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` as
fallbacks). The key is never part of a task input: the input is replicated to every node's
Raft log and snapshots and shown by ``raftmesh get``, so submit refuses an ``llm`` task whose
input carries ``api_key``. A task may instead name which node variable holds its key
(``api_key_env``, restricted to ``RAFTMESH_LLM_*`` names so a task cannot read other secrets);
the node's default key is only sent to the node's own base URL. Keys are redacted from
every error and never logged.

Tools are ``@raftmesh.tool`` functions of this process, else agent types of the node's
registry (called in-line with a context derived from the task's: same run, fencing token and
cancellation, the model's arguments as input, and a ``task_id`` per tool and arguments so an
``http`` tool's idempotency key differs between calls). ``max_steps`` bounds the model calls. Each
step's token usage is reported (``ctx.report_usage``). A 429 is retried in the agent after
``Retry-After`` (or an exponential backoff) plus jitter, a bounded number of times; then the
attempt fails retryably, like 408, 5xx and network errors; other 4xx fail it for good.

Uses ``httpx`` rather than the ``openai`` package: the wire format is a few documented JSON
fields, ``httpx`` is already needed by ``http``, and it lets the agent bound the response size,
read ``Retry-After`` and own the retry policy (the SDK retries on its own, hiding 429s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..consensus.commands import NO_USAGE
from ._builtin import AgentInputError
from ._context import SyncTaskContext, TaskContext
from ._http import read_bounded, tls_context
from ._sync_clients import SyncKv, SyncLocks, loop_call
from ._tools import TOOL_NAME_RE, TOOL_THREADS, ToolInputError, get_tool

MAX_STEPS = 32
DEFAULT_MAX_STEPS = 8
MAX_TOOLS = 64
MAX_TOOL_CALLS_PER_STEP = 16
"""Tool calls the agent runs in one model reply; the rest are answered with an error."""
MAX_TOOL_RESULT_CHARS = 16_000
"""One tool's result as given back to the model (clipped, the model is told how much more)."""
MAX_UPSTREAM_CHARS = 64_000
"""Upstream outputs as given to the model (clipped likewise)."""
MAX_CONVERSATION_CHARS = 512_000
"""Characters of all messages sent in one call; a conversation that grows past it fails the attempt."""
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
"""One chat-completions response body."""
MAX_RATE_LIMIT_RETRIES = 10
DEFAULT_RATE_LIMIT_RETRIES = 4
MAX_RETRY_AFTER_S = 60.0
"""A longer ``Retry-After`` fails the attempt retryably (the task's backoff takes over)."""
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0
DEFAULT_TIMEOUT_S = 120.0
MAX_TIMEOUT_S = 600.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_KEY_ENV_PREFIX = "RAFTMESH_LLM_"

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_INPUT_KEYS = frozenset(
    {
        "prompt",
        "system",
        "messages",
        "model",
        "base_url",
        "api_key_env",
        "tools",
        "max_steps",
        "response_format",
        "temperature",
        "max_tokens",
        "seed",
        "timeout_s",
        "price_per_1m_tokens",
        "include_upstream",
        "rate_limit_retries",
    }
)

_rng = random.Random()  # jitter only; nothing replicated depends on it


class LlmCallFailed(Exception):
    """The endpoint refused, failed or answered something unusable."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _bad(msg: str) -> AgentInputError:
    return AgentInputError(f"llm: {msg}")


def input_secret_error(agent: str, inp: Any) -> str:
    """Why a task input must not be submitted ("" if fine): an ``llm`` input carrying a key."""
    if agent == "llm" and isinstance(inp, dict) and "api_key" in inp:
        return (
            "llm: the task input may not carry api_key (a task input is replicated to every node's log and "
            "snapshots and shown by `raftmesh get`); set RAFTMESH_LLM_API_KEY on the nodes, or name a node "
            "variable with api_key_env"
        )
    return ""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    url: str
    model: str
    key: str = dataclasses.field(repr=False)


def _endpoint(inp: dict[str, Any]) -> _Endpoint:
    env = os.environ
    node_base = env.get("RAFTMESH_LLM_BASE_URL") or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    base = inp.get("base_url", node_base)
    if (
        not isinstance(base, str)
        or urlsplit(base).scheme not in ("http", "https")
        or not urlsplit(base).hostname
    ):
        raise _bad(f"base_url {str(base)[:80]!r} must be an http:// or https:// URL")
    model = inp.get("model") or env.get("RAFTMESH_LLM_MODEL")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise _bad("no model: give input.model or set RAFTMESH_LLM_MODEL on the nodes")
    var = inp.get("api_key_env")
    if var is not None:
        if not isinstance(var, str) or not var.startswith(API_KEY_ENV_PREFIX):
            raise _bad(
                f"api_key_env must name a node environment variable starting with {API_KEY_ENV_PREFIX}"
            )
        if var not in env:
            raise _bad(f"api_key_env: {var} is not set on node")
        key = env[var]
    elif base.rstrip("/") == node_base.rstrip("/"):
        key = env.get("RAFTMESH_LLM_API_KEY") or env.get("OPENAI_API_KEY") or ""
    else:
        key = ""  # the node's key goes to the node's endpoint only, not to a URL a task names
    return _Endpoint(base.rstrip("/") + "/chat/completions", model, key)


def _messages(inp: dict[str, Any], upstream: dict[str, Any]) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    system = inp.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _bad("system must be a string")
        msgs.append({"role": "system", "content": system})
    given = inp.get("messages", [])
    if not isinstance(given, list):
        raise _bad('messages must be a list like [{"role": "user", "content": "..."}]')
    for i, m in enumerate(given):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise _bad(f"messages[{i}] must be {{'role': one of {sorted(_ROLES)}, 'content': a string}}")
        msgs.append(dict(m))
    prompt = inp.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise _bad("prompt must be a string")
        msgs.append({"role": "user", "content": prompt})
    if upstream and inp.get("include_upstream", True):
        text = _clip(json.dumps(upstream, indent=1, default=str), MAX_UPSTREAM_CHARS)
        msgs.append({"role": "user", "content": f"Results of the tasks this one depends on (JSON):\n{text}"})
    if not any(m["role"] == "user" for m in msgs):
        raise _bad("give a prompt or user messages")
    return msgs


def _tool_entry(t: Any, ctx: TaskContext) -> tuple[str, dict[str, Any]]:
    """(name, OpenAI tools entry) of one ``tools`` item: a name, or {name, description, parameters}."""
    spec: dict[str, Any] = t if isinstance(t, dict) else {"name": t}
    name = spec.get("name")
    if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
        raise _bad(f"tools: {str(name)[:40]!r} is not a tool name (1-64 letters, digits, _ or -)")
    if name == "llm":
        raise _bad("tools: llm may not call itself as a tool")
    td = get_tool(name)
    if td is not None:
        return name, td.schema()
    registry = ctx.agents
    adef = registry.get(name) if registry is not None else None
    if adef is None:
        raise _bad(
            f"tools: {name!r} is neither a @raftmesh.tool function nor an agent type on node {ctx.node_id}"
        )
    if adef.isolation == "process":
        # A tool runs in-line in this node process: its memory and CPU limits would not hold.
        raise _bad(f"tools: agent {name!r} runs isolated in a worker process; run it as a task of its own")
    desc = spec.get("description", f"Runs the {name!r} agent; the arguments object is its input.")
    params = spec.get("parameters", {"type": "object"})
    if not isinstance(desc, str) or not isinstance(params, dict):
        raise _bad(f"tools[{name!r}]: description must be a string and parameters a JSON schema object")
    return name, {"type": "function", "function": {"name": name, "description": desc, "parameters": params}}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"…({len(text) - limit} more characters)"


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def _sync_context(ctx: TaskContext, changes: dict[str, Any]) -> SyncTaskContext:
    """``ctx`` as a plain-``def`` agent expects it (``SyncTaskContext``), with ``changes``."""
    fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(TaskContext) if f.init} | changes
    del fields["cancelled"]  # the sync view has its own threading.Event
    if ctx.kv is not None and ctx.locks is not None:
        call = loop_call(ctx.kv, ctx.locks, asyncio.get_running_loop())
        fields |= {"kv": SyncKv(call), "locks": SyncLocks(call)}
    sub = SyncTaskContext(**fields)
    if ctx.cancelled.is_set():
        sub.cancelled.set()
    return sub


async def _call_tool(ctx: TaskContext, name: str, raw_args: Any) -> str:
    """The tool's result as text for the model; a failing tool is reported to the model, not raised."""
    try:
        args = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
        if args is None:
            args = {}
    except ValueError as exc:
        return f"error: the arguments are not JSON ({exc})"
    try:
        td = get_tool(name)
        if td is not None:
            if td.wants_ctx and not inspect.iscoroutinefunction(td.fn):
                # a plain def runs in a thread: it gets the blocking view, like a thread agent
                view = _sync_context(ctx, {"usage": NO_USAGE})
                result = await td.call(args, view)
                u = view.usage
                ctx.report_usage(tokens_in=u.tokens_in, tokens_out=u.tokens_out, cost=u.cost)
            else:
                result = await td.call(args, ctx)
        else:
            adef = ctx.agents.get(name) if ctx.agents is not None else None
            if adef is None or name == "llm":
                return f"error: there is no tool named {name!r}"
            changes: dict[str, Any] = {
                "task_id": tool_call_id(ctx.task_id, name, args),
                "input": args,
                "upstream": {},
                "usage": NO_USAGE,
            }
            sub: TaskContext
            if inspect.iscoroutinefunction(adef.fn):
                sub = dataclasses.replace(ctx, **changes)
                result = await adef.fn(sub)
            else:
                # A plain def gets what it gets as a thread agent: blocking kv/locks, a threading.Event.
                sub = _sync_context(ctx, changes)
                try:
                    result = await TOOL_THREADS.run(functools.partial(adef.fn, sub))
                except asyncio.CancelledError:
                    sub.cancelled.set()
                    raise
                if inspect.isawaitable(result):
                    result = await result
            u = sub.usage
            ctx.report_usage(tokens_in=u.tokens_in, tokens_out=u.tokens_out, cost=u.cost)
    except asyncio.CancelledError:
        raise
    except ToolInputError as exc:
        return f"error: {exc}"
    except Exception as exc:
        ctx.logger.info("llm: tool %s failed: %s", name, type(exc).__name__)
        return _clip(f"error: {type(exc).__name__}: {exc}", MAX_TOOL_RESULT_CHARS)
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    return _clip(text, MAX_TOOL_RESULT_CHARS)


def tool_call_id(task_id: str, tool: str, args: Any) -> str:
    """The ``task_id`` an agent called as a tool sees: one per (tool, arguments) of the task.

    An ``http`` tool derives its ``Idempotency-Key`` from it: two different calls in one
    conversation must not share a key, and the same call made again by a retried attempt
    should (its effect is then applied once).
    """
    digest = hashlib.sha256(json.dumps([tool, args], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{task_id}.{tool}.{digest}"


def _retry_after_s(resp: httpx.Response) -> float | None:
    v = resp.headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


async def _post(
    client: httpx.AsyncClient, ep: _Endpoint, body: dict[str, Any], tries_429: int
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if ep.key:
        headers["Authorization"] = f"Bearer {ep.key}"
    for i in range(tries_429 + 1):
        try:
            async with client.stream("POST", ep.url, headers=headers, json=body) as resp:
                content = await read_bounded(resp, MAX_RESPONSE_BYTES)
                if content is None:
                    raise LlmCallFailed(
                        f"llm: the response is over {MAX_RESPONSE_BYTES} bytes", retryable=False
                    )
        except httpx.TimeoutException:
            raise LlmCallFailed(f"llm: {ep.url} timed out", retryable=True) from None
        except httpx.TransportError as exc:
            raise LlmCallFailed(
                _redact(f"llm: {ep.url}: {type(exc).__name__}: {exc}", ep.key), True
            ) from None
        status = resp.status_code
        text = content.decode("utf-8", errors="replace")
        if status == 429:
            wait = _retry_after_s(resp)
            if i == tries_429 or (wait is not None and wait > MAX_RETRY_AFTER_S):
                raise LlmCallFailed(
                    f"llm: rate limited (429) {i + 1} time(s)"
                    + (f"; the server asks to wait {wait:g} s" if wait is not None else ""),
                    retryable=True,
                )
            if wait is None:
                wait = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**i) * _rng.uniform(0.5, 1.0)
            else:  # never earlier than asked; jitter so that parallel tasks do not come back together
                wait += _rng.uniform(0, 0.1 * wait + 0.05)
            await asyncio.sleep(wait)
            continue
        if status >= 400:
            retryable = status == 408 or status >= 500
            raise LlmCallFailed(
                _redact(f"llm: {ep.url}: HTTP {status}: {text[:300]}", ep.key)
                + ("" if retryable else " (a client error: not retried)"),
                retryable=retryable,
            )
        try:
            data = json.loads(text)
            msg = data["choices"][0]["message"]
            if not isinstance(msg, dict):
                raise TypeError("message is not an object")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmCallFailed(
                _redact(
                    f"llm: {ep.url} answered something that is not a chat completion ({exc}): {text[:200]}",
                    ep.key,
                ),
                retryable=True,
            ) from None
        return dict(data)
    raise AssertionError("unreachable")


def _options(inp: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(inp) - _INPUT_KEYS)
    if unknown:
        raise _bad(f"unknown input key(s) {unknown}; known: {sorted(_INPUT_KEYS)}")
    steps = inp.get("max_steps", DEFAULT_MAX_STEPS)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise _bad(f"max_steps must be an integer from 1 to {MAX_STEPS}")
    timeout = inp.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not _number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise _bad(f"timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
    tries = inp.get("rate_limit_retries", DEFAULT_RATE_LIMIT_RETRIES)
    if not isinstance(tries, int) or isinstance(tries, bool) or not 0 <= tries <= MAX_RATE_LIMIT_RETRIES:
        raise _bad(f"rate_limit_retries must be an integer from 0 to {MAX_RATE_LIMIT_RETRIES}")
    rf = inp.get("response_format")
    if rf is not None and (
        not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema")
    ):
        raise _bad('response_format must be {"type": "text" | "json_object" | "json_schema", ...}')
    price = inp.get("price_per_1m_tokens", {})
    if not isinstance(price, dict) or not all(
        k in ("input", "output") and _number(v) and 0 <= v < 1e6 for k, v in price.items()
    ):
        raise _bad('price_per_1m_tokens must be like {"input": 0.15, "output": 0.6} (non-negative numbers)')
    for k in ("temperature", "max_tokens", "seed"):
        if k in inp and not _number(inp[k]):
            raise _bad(f"{k} must be a number")
    tools = inp.get("tools", [])
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise _bad(f"tools must be a list of at most {MAX_TOOLS} tool names")
    return {
        "steps": steps,
        "timeout": float(timeout),
        "tries": tries,
        "rf": rf,
        "price": price,
        "tools": tools,
    }


def _size(msgs: Sequence[dict[str, Any]]) -> int:
    return sum(len(json.dumps(m)) for m in msgs)


async def llm_agent(ctx: TaskContext) -> Any:
    inp = ctx.input
    if not isinstance(inp, dict):
        raise _bad('input must be a map like {"prompt": "...", "model": "..."}')
    why = input_secret_error("llm", inp)
    if why:
        raise AgentInputError(why)
    opt = _options(inp)
    ep = _endpoint(inp)
    msgs = _messages(inp, ctx.upstream)
    tools = dict(_tool_entry(t, ctx) for t in opt["tools"])
    body: dict[str, Any] = {"model": ep.model}
    if tools:
        body["tools"] = list(tools.values())
    if opt["rf"] is not None:
        body["response_format"] = opt["rf"]
    for k in ("temperature", "max_tokens", "seed"):
        if k in inp:
            body[k] = inp[k]
    price = opt["price"]
    async with httpx.AsyncClient(timeout=opt["timeout"], verify=tls_context()) as client:
        for step in range(1, opt["steps"] + 1):
            if _size(msgs) > MAX_CONVERSATION_CHARS:
                raise LlmCallFailed(
                    f"llm: the conversation grew over {MAX_CONVERSATION_CHARS} characters at step {step}",
                    retryable=False,
                )
            data = await _post(client, ep, {**body, "messages": msgs}, opt["tries"])
            usage = data.get("usage") or {}
            tin = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
            tout = usage.get("completion_tokens", 0) if isinstance(usage, dict) else 0
            tin = tin if isinstance(tin, int) and tin >= 0 else 0
            tout = tout if isinstance(tout, int) and tout >= 0 else 0
            cost = (tin * price.get("input", 0) + tout * price.get("output", 0)) / 1e6
            ctx.report_usage(tokens_in=tin, tokens_out=tout, cost=cost)
            msg = data["choices"][0]["message"]
            calls = msg.get("tool_calls") or []
            if not isinstance(calls, list):
                calls = []
            ctx.logger.info(
                "llm step %d: %d token(s) in, %d out, %d tool call(s)", step, tin, tout, len(calls)
            )
            if not calls:
                return _final(msg.get("content"), opt["rf"])
            msgs.append({"role": "assistant", "content": msg.get("content"), "tool_calls": calls})
            for n, call in enumerate(calls):
                cid = call.get("id", f"call_{step}_{n}") if isinstance(call, dict) else f"call_{step}_{n}"
                fn = call.get("function", {}) if isinstance(call, dict) else {}
                name = fn.get("name", "") if isinstance(fn, dict) else ""
                if n >= MAX_TOOL_CALLS_PER_STEP:
                    result = (
                        f"error: at most {MAX_TOOL_CALLS_PER_STEP} tool calls per reply; this one was not run"
                    )
                elif name not in tools:
                    result = f"error: {name!r} is not one of the tools offered ({sorted(tools)})"
                else:
                    result = await _call_tool(ctx, name, fn.get("arguments"))
                msgs.append({"role": "tool", "tool_call_id": cid, "content": result})
    raise LlmCallFailed(
        f"llm: the model still called tools after max_steps={opt['steps']} model calls; raise max_steps or "
        "narrow the task",
        retryable=False,
    )


def _final(content: Any, rf: dict[str, Any] | None) -> Any:
    if not isinstance(content, str):
        content = ""
    if rf is None or rf.get("type") == "text":
        return content
    try:
        return json.loads(content)
    except ValueError as exc:
        # A model may answer well on the next try: the task's retries decide.
        raise LlmCallFailed(
            f"llm: response_format {rf.get('type')} was asked but the reply is not JSON ({exc}): {content[:200]!r}",
            retryable=True,
        ) from None
