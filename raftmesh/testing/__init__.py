"""Test and demo helpers that are real processes: ``FakeLLM`` runs ``python -m raftmesh.testing.fake_llm``
(``plan_rules`` scripts it to answer the ``planner`` agent)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any


def plan_rules(*plans: Any, goal_contains: str = "", fenced: bool = False) -> list[dict[str, Any]]:
    """Fake-model rules that answer the ``planner`` agent: ``plans[i]`` on the call made after
    ``i`` repair messages (``assistant_turns``), so a bad plan then a good one is deterministic.

    A plan is a JSON value (sent as JSON text, in a ```json block with ``fenced``) or a string
    sent as it is. ``goal_contains`` keeps the rules to conversations whose goal contains it.
    """
    from ..agents._planner import PROMPT_MARKER

    when: dict[str, Any] = {"system_contains": PROMPT_MARKER}
    if goal_contains:
        when["any_contains"] = goal_contains
    return [
        {
            "when": {**when, "assistant_turns": i},
            "reply": {"content": p} if isinstance(p, str) else {"json": p, "fenced": fenced},
        }
        for i, p in enumerate(plans)
    ]


class FakeLLM:
    """The fake OpenAI-compatible server as a child process, stopped by its pid.

    ``with FakeLLM() as f: f.base_url`` (``http://127.0.0.1:PORT/v1``).
    """

    def __init__(
        self,
        script: Any = None,
        script_path: str | None = None,
        api_key: str = "",
        start_timeout_s: float = 30.0,
    ) -> None:
        argv = [sys.executable, "-m", "raftmesh.testing.fake_llm", "--port", "0"]
        if script_path:
            argv += ["--script", script_path]
        if api_key:
            argv += ["--api-key", api_key]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True
        )
        self.base_url = ""
        try:
            self.base_url = self._read_url(start_timeout_s)
            if script is not None:
                self.set_script(script)
        except BaseException:
            self.stop()
            raise

    def _read_url(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = self.proc.stdout.readline()
                    if not line:
                        break
                    if "listening on " in line:
                        return line.split("listening on ", 1)[1].strip()
        raise RuntimeError(
            f"fake_llm (pid {self.proc.pid}) did not say where it listens within {timeout_s} s"
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        root = self.base_url.removesuffix("/v1")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(root + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def set_script(self, rules: Any) -> None:
        """Replace the rules (forgets recorded requests and rule counters)."""
        self._call("PUT", "/_script", rules)

    def requests(self) -> list[dict[str, Any]]:
        """Chat requests received so far: ``{"n", "path", "headers", "authorized", "body"}``."""
        out: list[dict[str, Any]] = self._call("GET", "/_requests")
        return out

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
