"""Userspace TCP fault injection, for machines without root (and for packet delay).

``TcpProxy`` listens on a loopback port and forwards every connection to one target.
It can cut (``block()``), hold (``block("hold")``) or delay (``set_delay_ms``) the
traffic. ``ProxyMesh`` gives every ordered node pair ``(src, dst)`` its own proxy, so
``src`` dials ``dst`` at ``port_for(src, dst)`` and that link can be cut alone. All
proxies of a mesh share one event-loop thread; ``close()`` joins it.

Block modes:

* ``"reset"`` (default): existing connections are reset (RST) and new ones are
  accepted and reset at once. Peers see errors immediately.
* ``"hold"``: nothing is forwarded; data waits in the proxy and kernel buffers and
  new connections wait unconnected. ``unblock()`` resumes them, like TCP
  retransmission after a healed partition. Peers see timeouts, as with nftables drops.

What the proxy cannot do that ``raftmesh.chaos.netns`` can:

* It only sees connections dialled to its ports. Anything dialling a node's real
  address (gRPC clients, a node talking to itself, any UDP) bypasses it.
* A link is a TCP connection, which carries both directions. Cutting ``a -> b``
  cuts the connections ``a`` opened to ``b``, replies included; there is no
  one-way packet loss, and ``b``'s own connections to ``a`` are unaffected.
* No per-packet faults: no loss rate, reordering, duplication or corruption. Delay
  applies per forwarded chunk and keeps order.
* Every connection arrives from 127.0.0.1, so the target cannot tell peers apart by
  source address.
* The proxy adds its own latency and CPU load, and is one more process-local thing
  that can fail.

pysyncobj through a mesh: pysyncobj identifies a peer by the address string the
peer announces (its own ``selfNode`` address), and for each pair only the node with
the lexicographically larger address dials. So a node must not simply be given the
proxy addresses of its peers as peer addresses (the identity would no longer match
and the receiver drops the connection). Instead, give it ``TCPNode`` subclasses
whose ``address`` stays the peer's real ``host:port`` and whose ``ip``/``port``
properties return ``port_for(self, peer)`` on ``listen_host``. Only the dialling
direction of each pair is then used, so partition both directions (``partition``
does) rather than relying on a one-way cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias, TypeVar

from raftmesh.errors import FailedPrecondition, InvalidArgument

from .netns import Reachability, groups_reachability, resolve_reachability

__all__ = ["BlockMode", "ProxyClosedError", "ProxyMesh", "ProxyStats", "TcpProxy"]

BlockMode: TypeAlias = Literal["reset", "hold"]
_Mode: TypeAlias = Literal["open", "reset", "hold"]
_T = TypeVar("_T")

CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS_MAX = 16  # per direction: bounds what the proxy holds to 1 MiB
CONNECT_TIMEOUT_MS = 2000
CONTROL_TIMEOUT_S = 10.0
DELAY_MS_MAX = 60_000


class ProxyClosedError(FailedPrecondition):
    """The proxy (or mesh) was closed; it cannot be controlled any more."""


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started. ``bytes_up`` is client -> target."""

    accepted: int = 0
    active: int = 0
    refused: int = 0  # accepted while blocked in "reset" mode and reset at once
    cut: int = 0  # open connections reset by block()
    upstream_failures: int = 0  # the target refused or did not answer in time
    bytes_up: int = 0
    bytes_down: int = 0


class _LoopThread:
    """An asyncio loop running in a daemon thread, driven from other threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise ProxyClosedError("the proxy event loop is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise FailedPrecondition("proxy controls are blocking; do not call them from the proxy loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CONTROL_TIMEOUT_S)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Make the next close send RST instead of FIN, as a cut link would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class TcpProxy:
    """Forward ``listen_host:listen_port`` to ``target_host:target_port``, with faults.

    Starts listening on construction (``listen_port=0`` picks a free port; read it
    from ``listen_port``). Controls are thread-safe and take effect before they
    return. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
        name: str = "",
        _loop: _LoopThread | None = None,
    ) -> None:
        if not 0 < target_port < 65536 or not 0 <= listen_port < 65536:
            raise InvalidArgument(f"bad port: target {target_port}, listen {listen_port}")
        if connect_timeout_ms <= 0:
            raise InvalidArgument(f"connect_timeout_ms must be > 0, got {connect_timeout_ms}")
        self.target = (target_host, target_port)
        self.name = name or f"proxy->{target_host}:{target_port}"
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._owns_loop = _loop is None
        self._loop = _loop or _LoopThread(f"raftmesh-{self.name}")
        self._mode: _Mode = "open"
        self._open = asyncio.Event()  # set while forwarding; only touched on the loop
        self._delay_s = 0.0
        # Each open connection's task and its sockets, so a cut can reset them directly.
        self._conns: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}
        self._counts = dict.fromkeys(ProxyStats.__dataclass_fields__, 0)
        self._server: asyncio.Server | None = None
        self._closed = False
        try:
            self._loop.call(self._start(listen_host, listen_port))
        except BaseException:
            if self._owns_loop:
                self._loop.close()
            raise
        sockname = self._require_server().sockets[0].getsockname()
        self.listen_host: str = sockname[0]
        self.listen_port: int = sockname[1]

    # -- public controls --

    @property
    def address(self) -> str:
        """``host:port`` to dial instead of the target."""
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def blocked(self) -> bool:
        return self._mode != "open"

    @property
    def delay_ms(self) -> int:
        return round(self._delay_s * 1000)

    def block(self, mode: BlockMode = "reset") -> None:
        """Stop forwarding: ``"reset"`` cuts existing and new connections, ``"hold"`` stalls them."""
        if mode not in ("reset", "hold"):
            raise InvalidArgument(f"block mode must be 'reset' or 'hold', got {mode!r}")
        self._control(self._set_mode(mode))

    def unblock(self) -> None:
        """Forward again; held connections resume where they stopped."""
        self._control(self._set_mode("open"))

    def set_delay_ms(self, delay_ms: int) -> None:
        """Delay every chunk forwarded from now on by ``delay_ms`` (either direction)."""
        if not 0 <= delay_ms <= DELAY_MS_MAX:
            raise InvalidArgument(f"delay_ms must be 0..{DELAY_MS_MAX}, got {delay_ms}")
        self._require_open()
        self._delay_s = delay_ms / 1000  # read by the loop per chunk; a float store is atomic

    def stats(self) -> ProxyStats:
        return self._control(self._snapshot())

    def close(self) -> None:
        """Stop listening, reset every connection and, if it owns it, stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._loop.alive:
                self._loop.call(self._shutdown())
        finally:
            if self._owns_loop:
                self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TcpProxy({self.address} -> {self.target[0]}:{self.target[1]}, mode={self._mode})"

    # -- loop side --

    def _control(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise ProxyClosedError(f"{self.name} is closed")
        return self._loop.call(coro)

    def _require_open(self) -> None:
        if self._closed:
            raise ProxyClosedError(f"{self.name} is closed")

    def _require_server(self) -> asyncio.Server:
        if self._server is None:
            raise ProxyClosedError(f"{self.name} is not listening")
        return self._server

    async def _start(self, host: str, port: int) -> None:
        self._open.set()
        self._server = await asyncio.start_server(
            self._on_client, host, port, reuse_address=True, limit=CHUNK_BYTES
        )

    async def _snapshot(self) -> ProxyStats:
        return ProxyStats(**{**self._counts, "active": len(self._conns)})

    async def _set_mode(self, mode: _Mode) -> None:
        self._mode = mode
        if mode == "open":
            self._open.set()
            return
        self._open.clear()
        if mode == "reset":
            self._counts["cut"] += await self._cut_all()

    async def _cut_all(self) -> int:
        conns = list(self._conns.items())
        for task, writers in conns:
            # Reset the sockets as well as cancelling: the pumps then end even if a
            # cancellation is lost in a race, so this gather cannot hang.
            for writer in writers:
                _reset_on_close(writer)
                writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for task, _ in conns), return_exceptions=True)
        return len(conns)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._cut_all()
        if server is not None:
            await server.wait_closed()

    async def _on_client(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._counts["accepted"] += 1
        if self._mode == "reset" or self._server is None:
            self._counts["refused"] += 1
            _reset_on_close(client_w)
            client_w.transport.abort()
            return
        writers = [client_w]
        self._conns[task] = writers
        reset = True
        try:
            await self._open.wait()  # "hold": new connections wait here, unconnected
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                # that races with the connect completing.
                async with asyncio.timeout(self._connect_timeout_s):
                    upstream_r, upstream_w = await asyncio.open_connection(*self.target, limit=CHUNK_BYTES)
            except (OSError, TimeoutError):
                self._counts["upstream_failures"] += 1
                return
            writers.append(upstream_w)
            if self._mode != "reset":  # a cut may have landed while we connected
                reset = not await self._splice(client_r, client_w, upstream_r, upstream_w)
        finally:
            del self._conns[task]
            for writer in writers:
                if reset:
                    _reset_on_close(writer)
                    writer.transport.abort()
                else:
                    writer.close()

    async def _splice(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> bool:
        """Pump both directions; True if both ended with a clean EOF."""
        pumps = [
            asyncio.create_task(self._pump(client_r, upstream_w, "bytes_up")),
            asyncio.create_task(self._pump(upstream_r, client_w, "bytes_down")),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            return all(p.exception() is None for p in done) and len(done) == len(pumps)
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str) -> None:
        """Copy one direction; a reader task timestamps chunks, this task releases them when due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS_MAX)

        async def read() -> None:
            # The writer is woken by None on EOF and on errors alike; it learns which from `reading`.
            try:
                while data := await reader.read(CHUNK_BYTES):
                    await queue.put((loop.time() + self._delay_s, data))
            except Exception:
                await queue.put(None)
                raise
            await queue.put(None)

        reading = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait_s := due - loop.time()) > 0:
                    await asyncio.sleep(wait_s)
                await self._open.wait()  # "hold": stall here
                writer.write(data)
                await writer.drain()
                self._counts[counter] += len(data)
            await reading  # raises the read error, if any, before we send a FIN
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading


class ProxyMesh:
    """One ``TcpProxy`` per ordered node pair, sharing one loop thread.

    ``targets`` maps each node to the ``(host, port)`` (or just the port, on
    127.0.0.1) where it really listens. Node ``src`` must dial node ``dst`` at
    ``address_for(src, dst)``; see the module docstring for pysyncobj.
    """

    def __init__(
        self,
        targets: Mapping[str, tuple[str, int] | int],
        *,
        listen_host: str = "127.0.0.1",
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
    ) -> None:
        if len(targets) < 2:
            raise InvalidArgument(f"a mesh needs at least two nodes, got {list(targets)}")
        self.nodes: tuple[str, ...] = tuple(targets)
        self._loop = _LoopThread("raftmesh-proxy-mesh")
        self._proxies: dict[tuple[str, str], TcpProxy] = {}
        self._allowed = {n: frozenset(self.nodes) - {n} for n in self.nodes}
        self._closed = False
        try:
            for src in self.nodes:
                for dst in self.nodes:
                    if src == dst:
                        continue
                    target = targets[dst]
                    host, port = ("127.0.0.1", target) if isinstance(target, int) else target
                    self._proxies[(src, dst)] = TcpProxy(
                        host,
                        port,
                        listen_host=listen_host,
                        connect_timeout_ms=connect_timeout_ms,
                        name=f"{src}->{dst}",
                        _loop=self._loop,
                    )
        except BaseException:
            self.close()
            raise

    def proxy(self, src: str, dst: str) -> TcpProxy:
        """The proxy carrying connections that ``src`` opens to ``dst``."""
        self._require_open()
        try:
            return self._proxies[(src, dst)]
        except KeyError:
            raise InvalidArgument(f"no link {src!r} -> {dst!r}; the mesh has {list(self.nodes)}") from None

    def port_for(self, src: str, dst: str) -> int:
        return self.proxy(src, dst).listen_port

    def address_for(self, src: str, dst: str) -> str:
        return self.proxy(src, dst).address

    def set_reachability(self, allowed: Reachability, mode: BlockMode = "reset") -> None:
        """Let ``src`` open connections only to the peers ``allowed`` lists; replaces earlier cuts."""
        self._require_open()
        resolved = resolve_reachability(self.nodes, allowed)
        for (src, dst), proxy in self._proxies.items():
            if dst in resolved[src]:
                if proxy.blocked:
                    proxy.unblock()
            else:
                proxy.block(mode)
        self._allowed = resolved

    def partition(self, groups: Sequence[Collection[str]], mode: BlockMode = "reset") -> None:
        """Cut every link between different groups, both directions. Unlisted nodes form one group."""
        self.set_reachability(groups_reachability(self.nodes, groups), mode)

    def heal(self) -> None:
        """Unblock every link (delays stay; ``set_delay_ms(0)`` clears them)."""
        self.set_reachability({n: self.nodes for n in self.nodes})

    def set_delay_ms(self, delay_ms: int, links: Collection[tuple[str, str]] | None = None) -> None:
        """Delay the given directed links, or all of them."""
        for link in self._proxies if links is None else links:
            self.proxy(*link).set_delay_ms(delay_ms)

    def blocked_links(self) -> frozenset[tuple[str, str]]:
        return frozenset(link for link, proxy in self._proxies.items() if proxy.blocked)

    def close(self) -> None:
        """Close every proxy and join the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for proxy in self._proxies.values():
                proxy.close()
        finally:
            self._loop.close()

    def __enter__(self) -> ProxyMesh:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise ProxyClosedError("the proxy mesh is closed")
