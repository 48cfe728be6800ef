"""How the synchronous client makes its calls: grpc's callables made once per method and node, the
token and the trace sent with every call (no grpc Python interceptor on the call path)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from raftmesh import calls
from raftmesh.client import Client
from raftmesh.client import _client as client_module
from raftmesh.localcluster import free_ports
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc


class _Recorder(pb_grpc.ClusterServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.WhoAmIResponse:
        self.seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return pb.WhoAmIResponse(principal="anonymous", node_id="n1")


@pytest.fixture
def node() -> Iterator[tuple[str, _Recorder]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    recorder = _Recorder()
    pb_grpc.add_ClusterServicer_to_server(recorder, server)
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    server.add_insecure_port(addr)
    server.start()
    try:
        yield addr, recorder
    finally:
        server.stop(None)


def test_calls_to_one_node_reuse_one_callable_and_carry_token_and_trace(
    node: tuple[str, _Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    addr, recorder = node
    built: list[Any] = []
    stub = client_module.STUBS["Cluster"]

    def counting(channel: grpc.Channel) -> Any:
        built.append(channel)
        return stub(channel)

    monkeypatch.setitem(client_module.STUBS, "Cluster", counting)
    with Client([addr], token="t0ken") as c:
        for _ in range(3):
            assert c.whoami()["node_id"] == "n1"
    # A stub builds a callable for each of the service's methods: once per node, not per call.
    assert len(built) == 1
    assert len(recorder.seen) == 3
    traces = set()
    for md in recorder.seen:
        assert md.get("authorization") == "Bearer t0ken"
        parsed = calls.parse_traceparent(md.get("traceparent", ""))
        assert parsed is not None
        traces.add(parsed[0])
    assert len(traces) == 3  # a new trace per call (nothing pinned)


def test_the_stub_of_a_client_still_sends_token_and_trace(node: tuple[str, _Recorder]) -> None:
    """``Client._stub`` (tests and tools call a method the SDK does not wrap) keeps its metadata."""
    addr, recorder = node
    with Client([addr], token="t0ken") as c:
        c._stub(addr).WhoAmI(pb.WhoAmIRequest(), timeout=5)
    (md,) = recorder.seen
    assert md.get("authorization") == "Bearer t0ken"
    assert calls.parse_traceparent(md.get("traceparent", "")) is not None


def test_threads_first_calls_to_a_node_make_one_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads' first calls to one address make one channel, which ``close`` closes (a second,
    made in the race, stayed open and pinging until garbage collection)."""
    import threading

    made: list[Any] = []
    gate = threading.Barrier(8)
    client = Client(["127.0.0.1:1"])
    real = client.credentials.plain_channel

    second = threading.Event()

    def plain_channel(addr: str, options: Any = ()) -> grpc.Channel:
        ch = real(addr, options)
        made.append(ch)
        if len(made) == 1:
            second.wait(0.3)  # hold the first creation open: does another thread make one too?
        else:
            second.set()
        return ch

    monkeypatch.setattr(client, "credentials", _Creds(client.credentials, plain_channel))

    def first_call() -> None:
        gate.wait(5)
        client._method("Cluster", "WhoAmI", "127.0.0.1:1")

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    client.close()
    assert len(made) == 1, made


class _Creds:
    """``Credentials`` with its ``plain_channel`` replaced (the dataclass is frozen)."""

    def __init__(self, real: Any, plain_channel: Any) -> None:
        self._real, self.plain_channel = real, plain_channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_connect_and_ping_timeouts_are_bounded_and_reach_the_cli() -> None:
    """``Client(connect_timeout_s=, ping_timeout_s=)`` refuses 0 and past an hour; the CLI's
    ``--connect-timeout`` / ``--ping-timeout`` refuse the same as a usage error and reach the client."""
    from raftmesh.cli import main as cli

    for bad in (0.0, -1.0, 3601.0):
        with pytest.raises(ValueError, match="connect_timeout_s"):
            Client(["127.0.0.1:1"], connect_timeout_s=bad)
        with pytest.raises(ValueError, match="ping_timeout_s"):
            Client(["127.0.0.1:1"], ping_timeout_s=bad)
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["--connect-timeout", "0", "status"])
    assert exited.value.code == 2
    args = cli.build_parser().parse_args(["--connect-timeout", "5", "--ping-timeout", "4", "status"])
    args.addresses, args.cred_token, args.cred_ca, args.cred_cert, args.cred_key = ("127.0.0.1:1",) + (
        None,
    ) * 4
    with cli._client(args) as c:
        opts = dict(c.channel_options)
    assert opts["grpc.min_reconnect_backoff_ms"] == 5000 and opts["grpc.http2.ping_timeout_ms"] == 4000
