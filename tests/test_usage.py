"""Attempt usage: what an agent reports travels with its completion or failure."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from raftmesh.agents import TaskContext
from raftmesh.consensus.commands import (
    NO_USAGE,
    CommandDecodeError,
    Complete,
    Completion,
    Fail,
    Failure,
    Usage,
    decode_command,
    encode_command,
)


def _roundtrip(cmd: Any) -> Any:
    return decode_command(encode_command(cmd))


def test_usage_travels_with_completions_and_failures() -> None:
    u = Usage(10, 3, 0.25)
    c = Complete("r1", 1, "n1", (Completion("run", "t", 1, 7, {"x": 1}, u), Completion("run", "u", 1, 8, 2)))
    f = Fail("r2", 1, "n1", (Failure("run", "t", 1, 7, "boom", True, u),))
    assert _roundtrip(c) == c
    assert _roundtrip(f) == f
    assert _roundtrip(c).items[1].usage == NO_USAGE
    assert len(c.to_map()["items"][1]) == 5  # no usage: the item keeps its old wire form


@pytest.mark.parametrize("bad", [[-1, 0, 0.0], [0, 0, float("nan")], [0, 0, float("inf")], [1, 2], "x"])
def test_bad_usage_does_not_decode(bad: Any) -> None:
    import msgpack

    raw = msgpack.packb(
        {"t": "complete", "v": 1, "rid": "r", "ts": 1, "node_id": "n", "items": [["a", "b", 1, 1, None, bad]]}
    )
    with pytest.raises(CommandDecodeError):
        decode_command(raw)


def test_report_usage_adds_up_and_rejects_negative() -> None:
    ctx = TaskContext(
        "run", "t", 1, 1, "n1", None, {}, "run", logging.LoggerAdapter(logging.getLogger("x"), {})
    )
    ctx.report_usage(tokens_in=5, tokens_out=1, cost=0.5)
    ctx.report_usage(tokens_in=1, cost=0.25)
    assert ctx.usage == Usage(6, 1, 0.75)
    with pytest.raises(ValueError):
        ctx.report_usage(tokens_in=-1)
