"""An HTTP client side for the dashboard tests: server-sent events read line by line under deadlines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx


class EventStream:
    """One open ``text/event-stream`` response; ``next()`` is its next (event, data)."""

    def __init__(self, http: httpx.Client, url: str, headers: dict[str, str] | None = None) -> None:
        self._cm = http.stream("GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=12.0))
        self.resp = self._cm.__enter__()
        self._lines: Iterator[str] = self.resp.iter_lines()

    def next(self) -> tuple[str, Any]:
        event, data = "", ""
        for line in self._lines:
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
            elif line == "" and event:
                return event, json.loads(data)
        raise EOFError("the stream ended")

    def until(self, pred: Callable[[str, Any], bool], timeout_s: float, what: str) -> tuple[str, Any]:
        """The first event ``pred`` accepts (events before it are dropped); TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []
        while time.monotonic() < deadline:
            event, data = self.next()
            if pred(event, data):
                return event, data
            seen.append(event)
        raise TimeoutError(f"no {what} within {timeout_s} s (saw {seen[-20:]})")

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
