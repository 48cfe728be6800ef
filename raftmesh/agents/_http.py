"""The ``http`` built-in agent: one HTTP(S) call per attempt, safe to retry.

Input::

    {"method": "POST", "url": "https://api.example.com/tickets",
     "headers": {"Accept": "application/json"},
     "headers_env": {"Authorization": "TICKETS_TOKEN"},   # value read from the node's environment
     "json": {...} | "body": "text" | "json_from": "<a dependency's task id>",
     "timeout_s": 30, "follow_redirects": false, "max_body_bytes": 262144}

``json_from`` sends the output of one of the task's dependencies as the JSON body (a
report written by an upstream task, say).

Output: ``{"status": 201, "headers": {name: value}, "body": <decoded JSON, or text>}``.

Retries. Every attempt of a task sends the same ``Idempotency-Key`` (made of the run and task
ids), so a server that de-duplicates (the IETF draft, Stripe's convention) applies a retried
call once. The attempt lineage goes in a separate ``Raftmesh-Attempt`` header (attempt number,
fencing token, node): if it were part of the key, every retry would look like a new request;
kept apart, a server can still log retries or refuse a call whose token is older than one it
has already seen (fencing an external system against a zombie attempt).

408, 429, 5xx, connection errors and timeouts fail the attempt retryably (the task's
``retries`` decide whether it runs again); any other 4xx fails it for good: the same request
would be refused again. Secrets (``headers_env``) come from the node's environment so they
never enter the replicated log; they are never echoed in outputs or errors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._builtin import AgentInputError
from ._context import TaskContext

MAX_URL_CHARS = 2048
MAX_REQUEST_HEADERS = 64
MAX_HEADER_NAME_CHARS = 128
MAX_HEADER_VALUE_CHARS = 8192
MAX_REQUEST_BODY_BYTES = 256 * 1024
"""A text body (a JSON body is already bounded by the task input limit)."""
MAX_RESPONSE_BODY_BYTES = 256 * 1024
"""Response body read per call; a larger one fails the attempt (well under the task output limit)."""
MAX_RESPONSE_HEADERS = 64
"""Response headers kept in the output (the rest are dropped, ``headers_dropped`` counts them)."""
DROPPED_RESPONSE_HEADERS = frozenset({"set-cookie", "set-cookie2"})
"""Session credentials: the output is replicated to every node and shown by ``raftmesh get``."""
MAX_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
MAX_IDEMPOTENCY_KEY_CHARS = 255
"""Longer keys (very long run and task ids) are replaced by their SHA-256."""

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 header field name
_INPUT_KEYS = frozenset(
    {
        "method",
        "url",
        "headers",
        "headers_env",
        "json",
        "json_from",
        "body",
        "timeout_s",
        "follow_redirects",
        "max_body_bytes",
    }
)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process (certifi's CAs, or SSL_CERT_FILE/SSL_CERT_DIR).

    httpx builds a new one for every client unless given one, loading the CA bundle each time:
    that cost ~20-100 ms per attempt, more than a whole call to a nearby server.
    """
    return httpx.create_ssl_context()


async def read_bounded(resp: httpx.Response, limit: int) -> bytes | None:
    """A streamed response's body, or None as soon as it grows over ``limit`` bytes (the
    rest is never buffered)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class HttpCallFailed(Exception):
    """The endpoint answered with an error status, or could not be reached."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def idempotency_key(run_id: str, task_id: str) -> str:
    """The same for every attempt of one task (and different for every task)."""
    key = f"raftmesh:{run_id}:{task_id}"
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        key = "raftmesh:" + hashlib.sha256(f"{run_id}\0{task_id}".encode()).hexdigest()
    return key


def attempt_lineage(ctx: TaskContext) -> str:
    """``Raftmesh-Attempt`` header value: attempt number, fencing token (rises with every attempt), node."""
    return f"{ctx.attempt}; token={ctx.token}; node={ctx.node_id}"


def _bad(msg: str) -> AgentInputError:
    return AgentInputError(f"http: {msg}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _headers(inp: dict[str, Any], key: str) -> dict[str, str]:
    h = inp.get(key, {})
    if not isinstance(h, dict):
        raise _bad(f"{key} must be a map of header name to string")
    for name, value in h.items():
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name) or len(name) > MAX_HEADER_NAME_CHARS:
            raise _bad(
                f"{key}: {str(name)[:40]!r} is not a header name (letters, digits, - and a few symbols)"
            )
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE_CHARS:
            raise _bad(f"{key}[{name!r}] must be a string of at most {MAX_HEADER_VALUE_CHARS} characters")
        if not value.isprintable() and key == "headers":
            raise _bad(f"headers[{name!r}] may not contain control characters (CR, LF, ...)")
    return h


def parse_input(inp: Any) -> dict[str, Any]:
    """The validated request, or ``AgentInputError`` saying what to fix (never retried)."""
    if not isinstance(inp, dict):
        raise _bad('input must be a map like {"method": "GET", "url": "https://..."}')
    unknown = sorted(set(inp) - _INPUT_KEYS)
    if unknown:
        raise _bad(f"unknown input key(s) {unknown}; known: {sorted(_INPUT_KEYS)}")
    method = inp.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _bad(f"method must be one of {sorted(METHODS)}")
    url = inp.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise _bad(f"url must be a string of 1 to {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(f"url {url[:80]!r} does not parse: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(f"url {url[:80]!r} must be http:// or https:// with a host")
    headers = _headers(inp, "headers")
    secret = _headers(inp, "headers_env")
    if len(headers) + len(secret) > MAX_REQUEST_HEADERS:
        raise _bad(f"at most {MAX_REQUEST_HEADERS} headers (headers and headers_env together)")
    if sum(k in inp for k in ("json", "body", "json_from")) > 1:
        raise _bad("give one of json, body and json_from")
    src = inp.get("json_from")
    if src is not None and not isinstance(src, str):
        raise _bad("json_from must be the task id of one of this task's dependencies")
    body = inp.get("body")
    if body is not None and (not isinstance(body, str) or len(body.encode()) > MAX_REQUEST_BODY_BYTES):
        raise _bad(f"body must be a string of at most {MAX_REQUEST_BODY_BYTES} bytes (or use json)")
    timeout = inp.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not _number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise _bad(f"timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
    follow = inp.get("follow_redirects", False)
    if not isinstance(follow, bool):
        raise _bad("follow_redirects must be true or false")
    limit = inp.get("max_body_bytes", MAX_RESPONSE_BODY_BYTES)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_RESPONSE_BODY_BYTES:
        raise _bad(f"max_body_bytes must be an integer in [0, {MAX_RESPONSE_BODY_BYTES}]")
    return {
        "method": method.upper(),
        "url": url,
        "headers": headers,
        "headers_env": secret,
        "json": inp.get("json"),
        "has_json": "json" in inp,
        "json_from": src,
        "body": body,
        "timeout_s": float(timeout),
        "follow_redirects": follow,
        "max_body_bytes": limit,
    }


def _secret_headers(names: dict[str, str]) -> dict[str, str]:
    out = {}
    for header, var in names.items():
        value = os.environ.get(var)
        if value is None:
            raise _bad(f"headers_env[{header!r}]: environment variable {var!r} is not set on this node")
        if not value.isprintable():
            raise _bad(f"headers_env[{header!r}]: environment variable {var!r} holds control characters")
        out[header] = value
    return out


def _redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def decode_body(content: bytes, content_type: str, charset: str | None) -> Any:
    """JSON when the server says so (and it parses), else text (undecodable bytes replaced)."""
    text = content.decode(charset or "utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


async def http_agent(ctx: TaskContext) -> Any:
    req = parse_input(ctx.input)
    secret = _secret_headers(req["headers_env"])
    secrets = list(secret.values())
    headers = {
        "Idempotency-Key": idempotency_key(ctx.run_id, ctx.task_id),
        "Raftmesh-Attempt": attempt_lineage(ctx),
        **req["headers"],  # a caller may supply its own Idempotency-Key (an API's own format)
        **secret,
    }
    kw: dict[str, Any] = {}
    if req["json_from"] is not None:
        if req["json_from"] not in ctx.upstream:
            raise _bad(f"json_from: {req['json_from']!r} is not a dependency of this task")
        kw["json"] = ctx.upstream[req["json_from"]]
    elif req["has_json"]:
        kw["json"] = req["json"]
    elif req["body"] is not None:
        kw["content"] = req["body"].encode()
    limit = req["max_body_bytes"]
    url, method = req["url"], req["method"]
    try:
        async with (
            httpx.AsyncClient(
                timeout=req["timeout_s"],
                follow_redirects=req["follow_redirects"],
                max_redirects=MAX_REDIRECTS,
                verify=tls_context(),
            ) as client,
            client.stream(method, url, headers=headers, **kw) as resp,
        ):
            content = await read_bounded(resp, limit)
            if content is None:
                # The status is known, but the body is not usable: the same call would be too big again.
                raise HttpCallFailed(
                    f"{method} {url}: response body is over {limit} bytes (status {resp.status_code}); "
                    "ask for less (paging, a filter) or raise max_body_bytes up to "
                    f"{MAX_RESPONSE_BODY_BYTES}",
                    retryable=False,
                )
    except httpx.TimeoutException as exc:
        raise HttpCallFailed(
            f"{method} {url}: timed out after {req['timeout_s']:g} s ({type(exc).__name__})", retryable=True
        ) from None
    except httpx.TooManyRedirects:
        raise HttpCallFailed(
            f"{method} {url}: more than {MAX_REDIRECTS} redirects", retryable=False
        ) from None
    except httpx.TransportError as exc:
        raise HttpCallFailed(
            _redact(f"{method} {url}: {type(exc).__name__}: {exc}", secrets), retryable=True
        ) from None
    status = resp.status_code
    body = decode_body(content, resp.headers.get("content-type", ""), resp.charset_encoding)
    if status >= 400:
        retryable = status in (408, 429) or status >= 500
        snippet = _redact(body if isinstance(body, str) else json.dumps(body), secrets)[:300]
        raise HttpCallFailed(
            f"{method} {url}: HTTP {status} {resp.reason_phrase}"
            + ("" if retryable else " (a client error: not retried)")
            + (f": {snippet}" if snippet else ""),
            retryable=retryable,
        )
    out_headers: dict[str, str] = {}
    for name, value in resp.headers.multi_items():
        if name in DROPPED_RESPONSE_HEADERS:
            continue
        if name in out_headers:
            out_headers[name] += ", " + value
        elif len(out_headers) < MAX_RESPONSE_HEADERS:
            out_headers[name] = value
    dropped = len({n for n, _ in resp.headers.multi_items()} - DROPPED_RESPONSE_HEADERS) - len(out_headers)
    out: dict[str, Any] = {"status": status, "headers": out_headers, "body": body}
    if dropped:
        out["headers_dropped"] = dropped
    return out
