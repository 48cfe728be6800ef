"""Fuzz every RPC of a live node (one node in this process, real gRPC on 127.0.0.1).

Random messages built from each request's descriptor (edge lengths, extreme and negative ints,
NaN and infinities, thousands of repeats), mutated encodings and raw garbage bytes go to every
method of every service in ``cluster.proto``, the streaming ones included (a bounded number of
responses is read under a deadline, then the stream is cancelled). Promise: every answer is a
documented status code (never UNKNOWN or INTERNAL), no call outlives its deadline, and the node
still serves afterwards. ``RAFTMESH_FUZZ_EXAMPLES`` raises the example count for a long run
(``scripts/fuzz.py`` does the same against a node process).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from raftmesh.localcluster import free_ports, wait_until
from raftmesh.node.config import Peer, build_config
from raftmesh.node.runtime import NodeRuntime
from raftmesh.testing import grpc_fuzz as gf

EXAMPLES = int(os.environ.get("RAFTMESH_FUZZ_EXAMPLES", "250"))


@contextlib.contextmanager
def inprocess_node(
    base_dir: str, metadata: tuple[tuple[str, str], ...] | None = None, **config: Any
) -> Iterator[tuple[str, list[BaseException]]]:
    """A one-node cluster served from a thread of this process; yields its address and the
    exceptions its event loop died with (none, while it lives). ``config``: more
    ``build_config`` arguments (a tokens file); ``metadata``: the credential that checks it serves."""
    raft_port, grpc_port = free_ports(2)
    raft, addr = f"127.0.0.1:{raft_port}", f"127.0.0.1:{grpc_port}"
    runtime = NodeRuntime(
        build_config("n1", raft, addr, [Peer("n1", raft, addr)], base_dir, slots=8, **config)
    )
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(runtime.run())
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=serve, name="fuzz-node", daemon=True)
    thread.start()
    channel = gf.open_channel(addr)
    try:
        wait_until(
            lambda: failure or gf.serves(channel, registered=True, metadata=metadata),
            30.0,
            "the in-process node to lead",
        )
        assert not failure, failure
        yield addr, failure
    finally:
        channel.close()
        loop = runtime.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(runtime.stop)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the node did not stop"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpc.Channel, list[BaseException]]]:
    with inprocess_node(str(tmp_path_factory.mktemp("fuzz") / "n1")) as (addr, failure):
        channel = gf.open_channel(addr)
        try:
            yield channel, failure
        finally:
            channel.close()


def _after(live: tuple[grpc.Channel, list[BaseException]]) -> None:
    channel, failure = live
    assert not failure, f"the node's loop died: {failure}"
    assert gf.serves(channel), "the node stopped serving ClusterStatus"


def test_every_rpc_is_fuzzed() -> None:
    """The table covers all services of the proto, the streaming and Peer ones included."""
    ms = gf.methods()
    services = {m.service for m in ms}
    assert {"Cluster", "Peer", "Kv", "Locks", "Messages"} <= services
    assert {"WhoAmI", "WatchRuns"} <= {m.name for m in ms if m.service == "Cluster"}
    assert any(m.client_streaming for m in ms) and any(
        m.server_streaming and not m.client_streaming for m in ms
    )


@pytest.mark.parametrize("case", list(gf.fixed_cases()), ids=repr)
def test_fixed_malformed_inputs(live: tuple[grpc.Channel, list[BaseException]], case: gf.Case) -> None:
    """Every RPC gets empty, garbage, truncated, overlong-length and unknown-field bytes."""
    gf.check(case, gf.call(live[0], case))
    assert not live[1]


def test_random_inputs_to_every_rpc(live: tuple[grpc.Channel, list[BaseException]]) -> None:
    tally = gf.Tally()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(gf.cases())
    def fuzz(case: gf.Case) -> None:
        o = gf.call(live[0], case)
        tally.add(o)
        gf.check(case, o)
        assert not live[1], f"the node's loop died after {case!r}: {live[1]}"

    fuzz()
    print(f"inputs tried: {tally.tried}, crashes: 0, codes: {sorted(tally.by_code.items())}")
    _after(live)


def test_node_serves_after_fuzzing(live: tuple[grpc.Channel, list[BaseException]]) -> None:
    _after(live)
