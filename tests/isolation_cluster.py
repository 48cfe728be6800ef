"""A 3-node cluster whose node n1 runs in this process with the agents of ``tests.isolation_agents``.

n2 and n3 are real node processes (``LocalCluster``); they start first and elect a leader
between them, so n1 joins as a follower and heartbeats the leader over gRPC. n1 is a real
``NodeRuntime`` on its own loop in a thread of this process, so a test (or
``scripts/bench_agents.py``) can read its heartbeat sender and agent pools directly.
Only n1 offers the test agents, so every task of those types runs on n1.

In-process rather than a third node process so that the tests can watch n1's heartbeat
answers and agent pools from inside; n1 loads the agents as any node does (``agents_modules``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from typing import Any

from raftmesh.client import Client
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.node.config import build_config, parse_peers
from raftmesh.node.runtime import NodeRuntime

from . import isolation_agents


class MixedCluster:
    def __init__(self, base_dir: str, slots: int = 16) -> None:
        self.local = LocalCluster(3, base_dir=base_dir, raft_secret=False)
        n1 = self.local.nodes["n1"]
        argv = n1.argv
        peers = parse_peers(argv[argv.index("--peers") + 1])
        cfg = build_config(
            "n1", n1.raft, n1.grpc, peers, n1.data_dir, slots=slots, agents_modules=(isolation_agents.SOURCE,)
        )
        self.runtime = NodeRuntime(cfg)
        self._thread: threading.Thread | None = None
        self._failure: list[BaseException] = []
        self.client: Client | None = None

    def start(self, timeout_s: float = 60.0) -> MixedCluster:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.close()  # n2 and n3 are processes: a failed start must not leave them running
            raise

    def _start(self, timeout_s: float) -> MixedCluster:
        self.local.start_node("n2")
        self.local.start_node("n3")
        wait_until(lambda: self.local.leader(["n2", "n3"]), timeout_s, "n2 and n3 to elect a leader")

        def serve() -> None:
            try:
                asyncio.run(self.runtime.run())
            except BaseException as exc:  # surfaced by close(), not lost in the thread
                self._failure.append(exc)

        self._thread = threading.Thread(target=serve, name="node-n1", daemon=True)
        self._thread.start()
        wait_until(lambda: self._failure or self.local.serving("n1"), timeout_s, "n1 to serve")
        if self._failure:
            raise self._failure[0]
        self.client = self.local.client(timeout_s=30.0)
        return self

    def on_loop(self, fn: Any) -> Any:
        """``fn()`` called on n1's loop (its objects are not thread-safe), its result here."""
        loop = self.runtime.loop
        assert loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

    def ack_times(self) -> list[float]:
        """When n1's heartbeats were answered (n1's loop time, seconds)."""
        return list(self.on_loop(lambda: list(self.runtime.heartbeats.ack_times)))

    def n1_member(self) -> Any:
        return self.runtime.reads.read(lambda st: st.members.get("n1"))

    def leader(self) -> str | None:
        return self.local.leader(["n2", "n3"])

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        try:
            loop = self.runtime.loop
            if self._thread is not None and loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.runtime.stop)
                self._thread.join(timeout=30)
                assert not self._thread.is_alive(), "n1 did not stop"
        finally:
            self.local.close()
        if self._failure:
            raise self._failure[0]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def os_pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_text(path: str) -> str:
    """The file's text, or "" while it does not exist yet."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def worker_children() -> list[int]:
    """Live (not zombie) agent worker processes whose parent is this process."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and b"raftmesh.agents._worker" in cmd:
            found.append(int(entry))
    return found
