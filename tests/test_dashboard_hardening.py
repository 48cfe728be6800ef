"""The dashboard's defences against a stranger on its port, in process (no cluster): connections
counted from their accept under TLS, idle keep-alive and stalled handshakes closed, a client that
stops reading losing its event stream, bearer tokens gRPC cannot carry refused, large answers
converted off the loop (bounded), the leader sampler surviving an error, the page's CSP."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from raftmesh.dashboard import listener, server, shapes
from raftmesh.dashboard.errors import ApiError
from raftmesh.dashboard.listener import BoundedSite
from raftmesh.dashboard.server import Dashboard, DashboardNode
from raftmesh.proto.raftmesh.v1 import cluster_pb2 as pb
from raftmesh.security import certs


async def _poll(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.02)


async def _closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection within ``timeout_s`` (reading what it sends)."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _node(leader: Callable[[], tuple[str, int]] = lambda: ("n1", 1), auth: bool = False) -> DashboardNode:
    # Port 1: nothing listens there; these tests never reach a gRPC call they expect to succeed.
    return DashboardNode("n1", "127.0.0.1:1", None, auth=auth, leader=leader)


@asynccontextmanager
async def _dashboard(node: DashboardNode) -> AsyncIterator[tuple[Dashboard, int]]:
    board = Dashboard(node)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await board.start(f"127.0.0.1:{port}")
    try:
        yield board, port
    finally:
        await board.close()


async def _get(port: int, path: str, headers: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + headers + b"Connection: close\r\n\r\n"
        )
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, hdrs, body


def test_tls_connections_count_from_accept_and_slow_handshakes_are_closed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw TCP connections that never start TLS count against the bound (aiohttp hears of a TLS
    connection only after its handshake) and are closed after the handshake timeout."""
    monkeypatch.setattr(listener, "HANDSHAKE_S", 1.0)
    issued = certs.init(str(tmp_path / "tls"), ["n1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*issued.nodes["n1"])

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = BoundedSite(runner, "127.0.0.1", 0, ctx, 5)
        await site.start()
        assert site._server is not None and runner.server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            await _poll(lambda: site.connections == 5, 5.0, "5 connections counted")
            assert len(runner.server.connections) == 0  # aiohttp has heard of none of them
            # None finishes a handshake: every one is closed after HANDSHAKE_S (the 15 beyond the
            # bound with it too: under TLS the loop tells the site's protocol only after it).
            assert all(await asyncio.gather(*(_closed_by_server(r, 5.0) for r, _ in conns)))
            await _poll(lambda: site.connections == 0, 5.0, "their places freed")
            for _, w in conns:
                w.close()
            client = ssl.create_default_context(cafile=issued.ca)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="localhost"
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
            writer.close()
            await _poll(lambda: site.connections == 0, 5.0, "the served connection's place freed")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_an_idle_keep_alive_connection_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "KEEPALIVE_S", 0.5)

    async def main() -> None:
        async with _dashboard(_node()) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await _closed_by_server(reader, 5.0)
            writer.close()

    asyncio.run(main())


def test_a_client_that_stops_reading_loses_its_event_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "SSE_WRITE_S", 0.5)
    board = Dashboard(_node())
    ended = asyncio.Event()

    async def flood(request: web.Request) -> web.StreamResponse:
        try:
            async with board._stream(request) as sse:
                while True:
                    await sse.send_text("x", "y" * 65536)
            return sse.resp
        finally:
            ended.set()

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", flood)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
        try:
            await _poll(lambda: board.streams == 1, 5.0, "the stream open")
            async with asyncio.timeout(10):
                await ended.wait()
            assert board.streams == 0
        finally:
            sock.close()
            await runner.cleanup()

    asyncio.run(main())


# (aiohttp itself refuses other control characters with a 400; a tab and UTF-8 pass its parser.)
@pytest.mark.parametrize("token", [b"Bearer a\tb", b"Bearer \xc3\xa9t\xc3\xa9"])
def test_a_bearer_token_grpc_cannot_carry_is_401_not_500(token: bytes) -> None:
    async def main() -> None:
        async with _dashboard(_node(auth=True)) as (_, port):
            status, _, body = await _get(port, "/api/v1/whoami", b"Authorization: " + token + b"\r\n")
            assert status == 401, body
            assert json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
            assert "printable ASCII" in json.loads(body)["error"]["message"]

    asyncio.run(main())


def test_the_leader_sampler_survives_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "LEADER_SAMPLE_S", 0.01)
    calls = {"n": 0}

    def leader() -> tuple[str, int]:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("the Raft member is not up yet")
        return ("n2", 7)

    async def main() -> None:
        async with _dashboard(_node(leader=leader)) as (board, _):
            await _poll(lambda: list(board.leader_changes), 5.0, "a leader change sampled after errors")
            assert board.leader_changes[0]["leader"] == "n2" and board.leader_changes[0]["term"] == 7

    asyncio.run(main())


def test_the_page_has_a_strict_content_security_policy() -> None:
    async def main() -> None:
        async with _dashboard(_node()) as (_, port):
            for path in ("/", "/static/app.js"):
                status, hdrs, _ = await _get(port, path)
                assert status == 200
                csp = hdrs["content-security-policy"]
                assert csp == server.CSP
                for part in (
                    "script-src 'self'",
                    "connect-src 'self'",
                    "object-src 'none'",
                    "frame-ancestors 'none'",
                ):
                    assert part in csp

    asyncio.run(main())


def _big_run(tasks: int = 15, output_bytes: int = 1_000_000) -> pb.Run:
    out = json.dumps({"text": "x" * output_bytes})
    return pb.Run(run_id="r-big", tasks=[pb.Task(id=f"t{i}", output_json=out) for i in range(tasks)])


def test_large_answers_are_converted_in_a_thread_at_most_a_few_at_once() -> None:
    """A few tasks can hold megabytes of outputs: the size, not the task count, sends the
    conversion off the node's loop; beyond MAX_LARGE_CONVERSIONS at once the caller gets a 503."""
    board = Dashboard(_node())
    big, small = _big_run(), _big_run(3, 100)
    assert len(big.tasks) < 100 and big.ByteSize() > server.OFFLOAD_BYTES > small.ByteSize()

    async def main() -> None:
        loop_thread = threading.current_thread()
        where: list[threading.Thread] = []

        def build(run: pb.Run) -> Callable[[], Any]:
            def go() -> Any:
                where.append(threading.current_thread())
                return shapes.run(run)

            return go

        text = await board._json_text(big.ByteSize(), build(big))
        assert json.loads(text)["tasks"]["t0"]["output"] == {"text": "x" * 1_000_000}
        assert where[-1] is not loop_thread
        await board._json_text(small.ByteSize(), build(small))
        assert where[-1] is loop_thread

        release = threading.Event()

        def blocked() -> Any:
            release.wait(10)
            return {}

        busy = [
            asyncio.create_task(board._json_text(server.OFFLOAD_BYTES + 1, blocked))
            for _ in range(server.MAX_LARGE_CONVERSIONS)
        ]
        await asyncio.sleep(0)
        await _poll(lambda: board._large.locked(), 5.0, "the conversions under way")
        with pytest.raises(ApiError) as refused:
            await board._json_text(big.ByteSize(), build(big))
        assert refused.value.status == 503 and "retry" in refused.value.message
        release.set()
        assert await asyncio.gather(*busy) == ["{}"] * server.MAX_LARGE_CONVERSIONS
        await board._json_text(big.ByteSize(), build(big))  # room again

    asyncio.run(main())


def test_large_answers_are_written_in_pieces_with_the_same_text() -> None:
    """A large answer's JSON is made piece by piece (each call holds the GIL only for its piece);
    the text is exactly json.dumps's, compact (event streams) or not (as web.json_response)."""
    samples: list[Any] = [
        shapes.run(_big_run(3, 1000)),
        {"entries": [{"key": "a", "value": [1, 2.5, None, True]}, {}], "revision": 7, "e": []},
        [{"é": "ü\n"}, [[[1]]], "x"],
        {"1": {2: "non-str keys are dumped whole"}},
    ]
    for obj in samples:
        for seps in ((",", ":"), None):
            assert server.dumps_in_pieces(obj, seps) == json.dumps(obj, separators=seps)
