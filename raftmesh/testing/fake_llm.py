"""A fake OpenAI-compatible chat-completions server, for tests and demos (no real endpoint here).

    python -m raftmesh.testing.fake_llm --port 0 [--host 127.0.0.1] [--script FILE] [--api-key KEY]

It prints ``fake_llm listening on http://HOST:PORT/v1`` once it serves, and stops cleanly on
SIGTERM or SIGINT. Endpoints:

- ``POST /v1/chat/completions``: the OpenAI wire format (non-streaming), tools included.
- ``GET /v1/models``: the models named by the script, plus ``fake``.
- ``GET /_requests``: the chat requests received so far (bodies, and headers without
  ``Authorization``), oldest first; ``DELETE /_requests`` forgets them.
- ``PUT /_script``: replace the script (and reset its counters and the recorded requests).

A script is a JSON list of rules (or ``{"rules": [...]}``); the first rule that matches a
request and has uses left answers it::

    {"when": {"model": "m", "system_contains": "log analyst", "last_contains": "deploy",
              "any_contains": "...", "tools": true, "tool_result": false, "response_format": "json_object",
              "assistant_turns": 1},
     "times": 2,                          # answer at most twice (then the next rule matches)
     "delay_s": 0.2,                      # answer after this long
     "status": 429, "retry_after": 1,     # an error status (with a Retry-After header)
     "reply": {"content": "...", "tool_calls": [{"name": "search_logs", "arguments": {"q": "x"}}]},
     "usage": {"prompt_tokens": 12, "completion_tokens": 3}}

``assistant_turns`` counts the assistant messages already in the conversation: 0 on its first
call, 1 after one reply was answered (a tool result, or a planner's repair message), and so
on. It depends on the request alone, so a scripted sequence (a bad plan, then a good one once
the model is told what was wrong) stays deterministic when attempts are retried or requests
of several tasks interleave, unlike ``times``. ``"reply": {"json": VALUE}`` answers
``VALUE`` as JSON text; with ``"fenced": true`` inside a ```json block, as models often do.

Without a matching rule the answer is deterministic: if tools are offered and the
conversation holds no tool result yet, call the first tool (arguments from its schema: an
enum's first value, a string from the last user message, 1, true, [] or {}); otherwise
summarise the conversation (as a JSON object when ``response_format`` asks for JSON). Usage
counts words: every message's for the prompt, the reply's for the completion.

With ``--api-key`` a request without ``Authorization: Bearer KEY`` gets 401.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_REQUEST_BYTES = 8 * 1024 * 1024
MAX_RECORDED = 1000
"""Requests kept for ``GET /_requests`` (oldest dropped first)."""


def _text(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return ""


def _words(s: str) -> int:
    return len(s.split())


class Script:
    def __init__(self, rules: list[dict[str, Any]]) -> None:
        self.rules = rules
        self.used = [0] * len(rules)
        self.lock = threading.Lock()

    @staticmethod
    def parse(data: Any) -> Script:
        rules = data.get("rules") if isinstance(data, dict) else data
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise ValueError('a script is a list of rules (or {"rules": [...]})')
        return Script(rules)

    def pick(self, req: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            for i, r in enumerate(self.rules):
                if "times" in r and self.used[i] >= r["times"]:
                    continue
                if _matches(r.get("when", {}), req):
                    self.used[i] += 1
                    return r
        return None


def _matches(when: dict[str, Any], req: dict[str, Any]) -> bool:
    msgs = [m for m in req.get("messages", []) if isinstance(m, dict)]
    system = " ".join(_text(m) for m in msgs if m.get("role") == "system")
    last = _text(msgs[-1]) if msgs else ""
    for k, v in when.items():
        if k == "model" and req.get("model") != v:
            return False
        if k == "system_contains" and v not in system:
            return False
        if k == "last_contains" and v not in last:
            return False
        if k == "any_contains" and not any(v in _text(m) for m in msgs):
            return False
        if k == "tools" and bool(req.get("tools")) != v:
            return False
        if k == "tool_result" and any(m.get("role") == "tool" for m in msgs) != v:
            return False
        if k == "response_format" and (req.get("response_format") or {}).get("type") != v:
            return False
        if k == "assistant_turns" and sum(m.get("role") == "assistant" for m in msgs) != v:
            return False
    return True


def _arg_for(schema: Any, hint: str) -> Any:
    if not isinstance(schema, dict):
        return hint
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("anyOf"):
        return _arg_for(schema["anyOf"][0], hint)
    return {
        "string": hint,
        "integer": 1,
        "number": 1,
        "boolean": True,
        "array": [],
        "object": {},
        "null": None,
    }.get(schema.get("type", "string"), hint)


def default_reply(req: dict[str, Any]) -> dict[str, Any]:
    """The scripted-less answer: call the first tool once, then summarise."""
    msgs = [m for m in req.get("messages", []) if isinstance(m, dict)]
    tools = req.get("tools") or []
    tool_results = [_text(m) for m in msgs if m.get("role") == "tool"]
    users = [_text(m) for m in msgs if m.get("role") == "user"]
    if tools and not tool_results:
        fn = tools[0].get("function", {})
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        hint = " ".join((users[-1] if users else "").split()[:6])
        args = {k: _arg_for(s, hint) for k, s in props.items()}
        return {"content": None, "tool_calls": [{"name": fn.get("name", ""), "arguments": args}]}
    asked = " ".join((users[0] if users else "").split()[:30])
    found = [" ".join(t.split()[:40]) for t in tool_results]
    summary = f"Summary of: {asked}" + "".join(f" | tool result {i + 1}: {t}" for i, t in enumerate(found))
    rf = (req.get("response_format") or {}).get("type")
    if rf in ("json_object", "json_schema"):
        return {"content": json.dumps({"summary": summary, "tool_results": len(found)})}
    return {"content": summary}


def completion(
    req: dict[str, Any], reply: dict[str, Any], usage: dict[str, Any] | None, n: int
) -> dict[str, Any]:
    calls: list[dict[str, Any]] = [
        {
            "id": f"call_{n}_{i}",
            "type": "function",
            "function": {
                "name": c["name"],
                "arguments": c["arguments"]
                if isinstance(c.get("arguments"), str)
                else json.dumps(c.get("arguments", {})),
            },
        }
        for i, c in enumerate(reply.get("tool_calls") or [])
    ]
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    if calls:
        message["tool_calls"] = calls
    prompt_words = sum(_words(_text(m)) for m in req.get("messages", []) if isinstance(m, dict))
    reply_words = _words(reply.get("content") or "") + sum(_words(c["function"]["arguments"]) for c in calls)
    u = usage or {"prompt_tokens": prompt_words, "completion_tokens": max(1, reply_words)}
    u = {**u, "total_tokens": u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)}
    return {
        "id": f"chatcmpl-fake-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": req.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": u,
    }


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], script: Script, api_key: str = "") -> None:
        super().__init__(addr, Handler)
        self.script = script
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.count = 0


class Handler(BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read /_requests

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": "fake_llm", "code": status}}, headers)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_REQUEST_BYTES:
            raise ValueError(f"request body over {MAX_REQUEST_BYTES} bytes")
        return json.loads(self.rfile.read(n) or b"null")

    def do_GET(self) -> None:
        srv = self.server
        if self.path == "/v1/models":
            names = {"fake"} | {
                r["when"]["model"]
                for r in srv.script.rules
                if isinstance(r.get("when"), dict) and "model" in r["when"]
            }
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in sorted(names)]})
        elif self.path == "/_requests":
            with srv.lock:
                self._send(200, list(srv.requests))
        else:
            self._error(404, f"no such path {self.path}")

    def do_DELETE(self) -> None:
        if self.path != "/_requests":
            return self._error(404, f"no such path {self.path}")
        with self.server.lock:
            self.server.requests.clear()
        self._send(200, {"ok": True})

    def do_PUT(self) -> None:
        if self.path != "/_script":
            return self._error(404, f"no such path {self.path}")
        try:
            script = Script.parse(self._body())
        except ValueError as exc:
            return self._error(400, str(exc))
        with self.server.lock:
            self.server.script = script
            self.server.requests.clear()
        self._send(200, {"ok": True, "rules": len(script.rules)})

    def do_POST(self) -> None:
        srv = self.server
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._error(404, f"no such path {self.path}")
        try:
            req = self._body()
            if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
                raise ValueError("the body must be a JSON object with messages")
        except ValueError as exc:
            return self._error(400, f"bad request: {exc}")
        auth = self.headers.get("Authorization", "")
        with srv.lock:
            srv.count += 1
            n = srv.count
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
            srv.requests.append(
                {"n": n, "path": self.path, "headers": headers, "authorized": bool(auth), "body": req}
            )
            del srv.requests[:-MAX_RECORDED]
        if srv.api_key and auth != f"Bearer {srv.api_key}":
            return self._error(401, "invalid API key")
        if req.get("stream"):
            return self._error(400, "fake_llm does not stream; send stream: false")
        rule = srv.script.pick(req)
        if rule is not None and rule.get("delay_s"):
            time.sleep(float(rule["delay_s"]))
        if rule is not None and rule.get("status", 200) != 200:
            extra = {"Retry-After": str(rule["retry_after"])} if "retry_after" in rule else {}
            return self._error(int(rule["status"]), rule.get("message", "scripted error"), extra)
        reply = rule["reply"] if rule is not None and "reply" in rule else default_reply(req)
        if "json" in reply:
            text = json.dumps(reply["json"], indent=1)
            reply = {**reply, "content": f"```json\n{text}\n```" if reply.get("fenced") else text}
        self._send(200, completion(req, reply, rule.get("usage") if rule else None, n))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m raftmesh.testing.fake_llm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--script", help="a JSON file of rules (see the module docstring)")
    p.add_argument("--api-key", default="", help="require Authorization: Bearer KEY")
    a = p.parse_args(argv)
    rules: Any = []
    if a.script:
        with open(a.script, encoding="utf-8") as f:
            rules = json.load(f)
    try:
        script = Script.parse(rules)
    except ValueError as exc:
        print(f"fake_llm: {a.script}: {exc}", file=sys.stderr)
        return 2
    srv = FakeLLM((a.host, a.port), script, a.api_key)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    t = threading.Thread(target=srv.serve_forever, name="fake-llm", daemon=True)
    t.start()
    port = srv.server_address[1]
    print(f"fake_llm listening on http://{a.host}:{port}/v1", flush=True)
    stop.wait()
    srv.shutdown()
    srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
