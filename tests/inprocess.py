"""One node in this process (``NodeRuntime`` on an asyncio loop in a thread), real gRPC on
127.0.0.1: the layer between the unit tests (no network) and the end-to-end tests (real node
processes). ``in_process_node`` is what the ``node`` fixtures of several modules start."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from raftmesh import Client
from raftmesh.errors import RaftmeshError
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.node.config import Peer, build_config
from raftmesh.node.runtime import NodeRuntime


@dataclass
class InProcessNode:
    runtime: NodeRuntime
    address: str
    client: Client
    metrics: str = ""
    """host:port of its metrics endpoint ("" without ``metrics=True``)."""

    def state(self, fn: object) -> object:
        return self.runtime.reads.read(fn)


@contextmanager
def in_process_node(data_dir: str | os.PathLike[str], *, metrics: bool = False) -> Iterator[InProcessNode]:
    """Node ``n1`` (8 slots), its data in ``data_dir``, leading itself and registered when this
    yields; stopped on its loop and its thread joined after. An exception the node died of is
    raised here, not lost in its thread."""
    ports = free_ports(3 if metrics else 2)
    raft, grpc_addr = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    extra: dict[str, Any] = {"metrics": f"127.0.0.1:{ports[2]}"} if metrics else {}
    cfg = build_config("n1", raft, grpc_addr, [Peer("n1", raft, grpc_addr)], str(data_dir), slots=8, **extra)
    runtime = NodeRuntime(cfg)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(runtime.run())
        except BaseException as exc:  # surfaced here, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=serve, name="node-n1", daemon=True)
    thread.start()
    client = Client([grpc_addr], timeout_s=10.0)
    try:

        def ready() -> bool:
            if failure:  # a node that died at start: stop waiting (wait_until would retry an exception)
                return True
            try:
                st = client.status()
            except RaftmeshError:
                return False
            return st.leader == "n1" and any(m.id == "n1" and m.up for m in st.members)

        wait_until(ready, 30.0, "the in-process node to lead and register")
        if failure:
            raise failure[0]
        yield InProcessNode(runtime, grpc_addr, client, extra.get("metrics", ""))
    finally:
        client.close()
        loop = runtime.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(runtime.stop)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the node did not stop"
        assert not failure, failure
