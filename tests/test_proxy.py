"""The userspace TCP proxy (``raftmesh.chaos.proxy``): forward, cut, hold, delay, per-link mesh.

Real sockets on loopback; every wait polls with a deadline. Timing assertions are
lower bounds only (a delay is at least what was asked), never tight upper bounds.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from raftmesh.chaos import ProxyClosedError, ProxyMesh, TcpProxy
from raftmesh.errors import InvalidArgument

DEADLINE_S = 10.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; ``close()`` joins its threads."""

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self._thread.join()
        self.server_close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_leaked_proxy_threads() -> Iterator[None]:
    yield
    assert proxy_threads() == []


def proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("raftmesh-")]


def wait_until(cond: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.01)


def dial(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def is_cut(sock: socket.socket) -> bool:
    """True once the connection is reset or closed (a blocked link), False if it echoes."""
    try:
        return roundtrip(sock, b"ping") != b"ping"
    except OSError:  # reset, broken pipe
        return True


def new_connection_is_cut(port: int) -> bool:
    """A blocked proxy accepts and resets at once; under load the reset may beat connect()."""
    try:
        sock = dial(port)
    except OSError:
        return True
    with sock:
        return is_cut(sock)


def can_echo(port: int) -> bool:
    try:
        with dial(port) as sock:
            return roundtrip(sock, b"hello") == b"hello"
    except OSError:
        return False


def test_forwards_both_ways_and_counts(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy, dial(proxy.listen_port) as sock:
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
        stats = proxy.stats()
        assert stats.accepted == 1
        assert stats.active == 1
        assert stats.bytes_up == stats.bytes_down == 200_000
        assert proxy.address == f"127.0.0.1:{proxy.listen_port}"


def test_half_close_is_forwarded(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy, dial(proxy.listen_port) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(1024):
            got += chunk
        assert got == b"last words"  # the echo server saw EOF and closed: we got EOF back
        wait_until(lambda: proxy.stats().active == 0, "the finished connection to be dropped")


def test_block_cuts_existing_and_refuses_new_then_unblock(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        existing = dial(proxy.listen_port)
        assert roundtrip(existing, b"before") == b"before"

        proxy.block()
        assert proxy.blocked
        assert is_cut(existing)
        assert new_connection_is_cut(proxy.listen_port)
        stats = proxy.stats()
        assert stats.cut == 1
        assert stats.refused >= 1
        existing.close()

        proxy.unblock()
        assert not proxy.blocked
        assert can_echo(proxy.listen_port)


def test_hold_stalls_then_resumes_in_order(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy, dial(proxy.listen_port) as sock:
        assert roundtrip(sock, b"a") == b"a"
        proxy.block("hold")
        sock.sendall(b"held-1 ")
        sock.sendall(b"held-2")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1024)  # nothing crosses a held link, however long we wait
        proxy.unblock()
        sock.settimeout(DEADLINE_S)
        got = b""
        while len(got) < len(b"held-1 held-2"):
            got += sock.recv(1024)
        assert got == b"held-1 held-2"
        assert proxy.stats().cut == 0


def test_hold_then_reset_cuts_waiting_connections(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        proxy.block("hold")
        waiting = dial(proxy.listen_port)  # accepted, not connected upstream
        wait_until(lambda: proxy.stats().active == 1, "the held connection")
        proxy.block("reset")
        assert is_cut(waiting)
        waiting.close()


def test_delay_is_applied_each_way_and_keeps_order(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port) as proxy, dial(proxy.listen_port) as sock:
        proxy.set_delay_ms(250)
        assert proxy.delay_ms == 250
        started = time.monotonic()
        assert roundtrip(sock, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.45  # 250 ms up + 250 ms down, loosely

        # Lowering the delay must not let later chunks overtake earlier ones.
        sock.sendall(b"first ")
        proxy.set_delay_ms(0)
        sock.sendall(b"second")
        got = b""
        while len(got) < len(b"first second"):
            got += sock.recv(1024)
        assert got == b"first second"

        started = time.monotonic()
        assert roundtrip(sock, b"fast") == b"fast"
        assert time.monotonic() - started < DEADLINE_S


def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead_port = spare.getsockname()[1]  # bound, never listening: connects are refused
        with TcpProxy("127.0.0.1", dead_port) as proxy:
            assert new_connection_is_cut(proxy.listen_port)
            wait_until(lambda: proxy.stats().upstream_failures == 1, "the upstream failure to be counted")


def test_close_leaves_no_threads_sockets_or_controls(echo: EchoServer) -> None:
    proxy = TcpProxy("127.0.0.1", echo.port)
    sock = dial(proxy.listen_port)
    assert roundtrip(sock, b"hi") == b"hi"
    assert proxy_threads() != []
    proxy.close()
    proxy.close()  # idempotent
    assert proxy_threads() == []
    assert is_cut(sock)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=DEADLINE_S).close()
    with pytest.raises(ProxyClosedError):
        proxy.block()
    with pytest.raises(ProxyClosedError):
        proxy.set_delay_ms(1)


def test_bad_arguments_are_rejected(echo: EchoServer) -> None:
    with pytest.raises(InvalidArgument):
        TcpProxy("127.0.0.1", 0)
    with TcpProxy("127.0.0.1", echo.port) as proxy:
        with pytest.raises(InvalidArgument):
            proxy.set_delay_ms(-1)
        with pytest.raises(InvalidArgument):
            proxy.block("drop")  # type: ignore[arg-type]


@pytest.fixture
def mesh() -> Iterator[tuple[ProxyMesh, dict[str, EchoServer]]]:
    servers = {n: EchoServer() for n in ("n1", "n2", "n3")}
    try:
        with ProxyMesh({n: s.port for n, s in servers.items()}) as proxies:
            yield proxies, servers
    finally:
        for server in servers.values():
            server.close()


def test_mesh_gives_every_ordered_pair_its_own_port(mesh: tuple[ProxyMesh, dict[str, EchoServer]]) -> None:
    proxies, _ = mesh
    links = [(a, b) for a in proxies.nodes for b in proxies.nodes if a != b]
    assert len({proxies.port_for(a, b) for a, b in links}) == 6
    assert all(can_echo(proxies.port_for(a, b)) for a, b in links)
    with pytest.raises(InvalidArgument):
        proxies.port_for("n1", "n1")


def test_mesh_partition_and_heal(mesh: tuple[ProxyMesh, dict[str, EchoServer]]) -> None:
    proxies, _ = mesh
    with dial(proxies.port_for("n2", "n1")) as open_before:
        proxies.partition([{"n1"}])
        assert is_cut(open_before)
    assert proxies.blocked_links() == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
    assert not can_echo(proxies.port_for("n1", "n2"))
    assert not can_echo(proxies.port_for("n3", "n1"))
    assert can_echo(proxies.port_for("n2", "n3"))
    assert can_echo(proxies.port_for("n3", "n2"))

    proxies.partition([{"n1", "n2"}])  # replaces the earlier partition
    assert proxies.blocked_links() == {("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")}
    assert can_echo(proxies.port_for("n1", "n2"))

    proxies.heal()
    assert proxies.blocked_links() == frozenset()
    assert can_echo(proxies.port_for("n1", "n3"))


def test_mesh_cuts_one_direction_only(mesh: tuple[ProxyMesh, dict[str, EchoServer]]) -> None:
    proxies, _ = mesh
    proxies.set_reachability({"n1": {"n2", "n3"}, "n2": {"n3"}, "n3": {"n1", "n2"}})
    assert proxies.blocked_links() == {("n2", "n1")}
    assert not can_echo(proxies.port_for("n2", "n1"))
    assert can_echo(proxies.port_for("n1", "n2"))


def test_mesh_delay_per_link(mesh: tuple[ProxyMesh, dict[str, EchoServer]]) -> None:
    proxies, _ = mesh
    proxies.set_delay_ms(200, links=[("n1", "n2")])
    assert proxies.proxy("n1", "n2").delay_ms == 200
    assert proxies.proxy("n2", "n1").delay_ms == 0
    with dial(proxies.port_for("n1", "n2")) as sock:
        started = time.monotonic()
        assert roundtrip(sock, b"x") == b"x"
        assert time.monotonic() - started >= 0.35


def test_mesh_close_is_idempotent_and_final(echo: EchoServer) -> None:
    proxies = ProxyMesh({"a": echo.port, "b": ("127.0.0.1", echo.port)})
    port = proxies.port_for("a", "b")
    proxies.close()
    proxies.close()
    assert proxy_threads() == []
    with pytest.raises(ProxyClosedError):
        proxies.partition([{"a"}])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S).close()


# --- pysyncobj through a mesh: the recipe from the proxy module docstring -----------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_pysyncobj_cluster_reelects_across_a_mesh_partition() -> None:
    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj.node import TCPNode

    class DialVia(TCPNode):
        """Keeps the peer's identity (its real address) but dials the proxy."""

        def __init__(self, address: str, via: tuple[str, int]) -> None:
            super().__init__(address)
            self._via = via

        @property
        def ip(self) -> str:
            return self._via[0]

        @property
        def port(self) -> int:
            return self._via[1]

    names = ("n1", "n2", "n3")
    real = {n: free_port() for n in names}
    addr = {n: f"127.0.0.1:{real[n]}" for n in names}
    conf = SyncObjConf(connectionRetryTime=0.3, connectionTimeout=1.5, raftMinTimeout=0.4, raftMaxTimeout=1.0)
    with ProxyMesh(real) as proxies:
        peers = {
            n: [DialVia(addr[p], ("127.0.0.1", proxies.port_for(n, p))) for p in names if p != n]
            for n in names
        }
        objs = {n: SyncObj(addr[n], peers[n], conf=conf) for n in names}
        try:

            def leaders(among: tuple[str, ...]) -> set[str | None]:
                found = set()
                for n in among:
                    leader = objs[n].getStatus()["leader"]
                    found.add(None if leader is None else leader.address)
                return found

            def agreed(among: tuple[str, ...]) -> str | None:
                seen = leaders(among)
                return next(iter(seen)) if len(seen) == 1 and None not in seen else None

            wait_until(lambda: agreed(names) is not None, "a leader all three nodes agree on")
            old = agreed(names)
            old_name = next(n for n in names if addr[n] == old)
            rest = tuple(n for n in names if n != old_name)

            # The cluster formed through the proxies, not around them.
            assert sum(proxies.proxy(a, b).stats().accepted for a in names for b in names if a != b) >= 3
            proxies.partition([{old_name}])
            wait_until(lambda: agreed(rest) not in (None, old), "the majority to elect a new leader")

            proxies.heal()
            wait_until(
                lambda: agreed(names) is not None and agreed(names) != old, "the healed cluster to agree"
            )
        finally:
            for obj in objs.values():
                obj.destroy_synchronous()
