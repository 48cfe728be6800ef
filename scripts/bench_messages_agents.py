"""The actors scripts/bench_messages.py runs on raftmesh nodes (loaded with ``--agents-module``).

``benchecho/KEY`` answers a request with its payload. ``benchsub`` is subscribed to topic ``bench``:
a publish reaches ``benchsub/default``, whose handler appends ``"SEQ MONOTONIC_NS\\n"`` (SEQ: the first
20 bytes of the 64-byte payload) to the file named by ``RAFTMESH_BENCH_EFFECT_LOG`` with one unbuffered
write: the same effect AutoGen's subscriber records in scripts/bench_messages_autogen.py, so the
benchmark reads both systems' end-to-end times and losses the same way, and a kill -9 of the node
loses nothing the handler wrote.
"""

from __future__ import annotations

import os
import time
from typing import Any

import raftmesh

_fd: int | None = None


def _effect_fd() -> int:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["RAFTMESH_BENCH_EFFECT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return _fd


@raftmesh.actor("benchecho")
class Echo:
    async def on_message(self, ctx: Any, msg: Any) -> Any:
        return msg.payload


@raftmesh.actor("benchsub", topics=("bench",))
class Subscriber:
    async def on_message(self, ctx: Any, msg: Any) -> None:
        seq = int(bytes(msg.payload[:20]))
        os.write(_effect_fd(), f"{seq} {time.monotonic_ns()}\n".encode())
