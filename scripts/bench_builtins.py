#!/usr/bin/env python3
"""What the ``http`` and ``llm`` built-ins cost per call, against local servers (no network).

What is measured
----------------
Each agent is called ``--calls`` times (default 200) back to back through a real
``TaskContext`` on one event loop, against real HTTP servers on 127.0.0.1: a stdlib server
answering a small JSON body for ``http``, and the fake OpenAI-compatible server
(``python -m raftmesh.testing.fake_llm``, its own process) for ``llm``: one model call with no
tools, and two model calls around one ``echo`` tool call. Printed: p50 / p95 / max wall time of
one agent call in ms. The servers answer in well under a millisecond, so this is the agent's
own overhead (client set-up, request, parsing, the loop) plus loopback.

    .venv/bin/python scripts/bench_builtins.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from raftmesh.agents import TaskContext, default_registry
from raftmesh.agents._http import http_agent
from raftmesh.agents._llm import llm_agent
from raftmesh.testing import FakeLLM


class _Json(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _ctx(inp: Any) -> TaskContext:
    log = logging.LoggerAdapter(logging.getLogger("bench"), {})
    return TaskContext("r-bench", "t", 1, 1, "n1", inp, {}, "r-bench", log, agents=default_registry())


async def _measure(label: str, fn: Callable[[TaskContext], Awaitable[Any]], inp: Any, calls: int) -> None:
    await fn(_ctx(inp))  # warm up (imports, the TLS context)
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn(_ctx(inp))
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    print(
        f"{label:32} p50 {ms[len(ms) // 2]:7.2f} ms   p95 {ms[int(len(ms) * 0.95)]:7.2f} ms   "
        f"max {ms[-1]:7.2f} ms   ({calls} calls)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Json)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    with FakeLLM() as fake:
        os.environ["RAFTMESH_LLM_BASE_URL"] = fake.base_url

        async def run() -> None:
            await _measure("http GET (JSON body)", http_agent, {"url": url}, a.calls)
            await _measure("llm, 1 model call", llm_agent, {"prompt": "hi", "model": "m"}, a.calls)
            inp = {"prompt": "hi", "model": "m", "tools": ["echo"]}
            await _measure("llm, 2 model calls + 1 tool", llm_agent, inp, a.calls)

        asyncio.run(run())
    srv.shutdown()
    srv.server_close()


if __name__ == "__main__":
    main()
