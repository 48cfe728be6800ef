"""Where the dashboard listens: a TCP site that bounds its connections, and what to warn of when
tokens would reach it in clear text."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from aiohttp import web

from ..node.config import is_loopback_host


def plaintext_warning(addr: str, tls: bool, auth: bool) -> str:
    """What to warn of when bearer tokens would reach the dashboard in clear text ("" if nothing)."""
    host = addr.rpartition(":")[0].strip("[]")
    if tls or not auth or is_loopback_host(host):
        return ""
    return (
        f"tokens are on but TLS is off and --http {addr} is not a loopback address: bearer tokens "
        "cross the network in clear text to the dashboard; give the node --tls-cert/--tls-key/--tls-ca"
    )


HANDSHAKE_S = 5.0
"""A TLS client has this long to finish its handshake (then its connection is closed)."""


class BoundedSite(web.TCPSite):
    """A TCP site that closes connections beyond ``max_connections`` as they are accepted (each
    holds a socket and, busy, a gRPC call: a stranger opening thousands must not exhaust the node).

    A connection counts from its accept until it is lost. The TLS handshake is done here, after
    the count, not by the loop's server: there aiohttp would hear of a connection only once its
    handshake was over, so connections that never finished one would be neither counted nor
    refused.
    """

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, ctx: ssl.SSLContext | None, max_connections: int
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ctx, reuse_address=True)
        self._max_connections = max_connections
        self.connections = 0
        """Connections held now, handshakes included."""

    def _lost(self) -> None:
        self.connections -= 1

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def accept() -> asyncio.BaseProtocol:
            if self.connections >= self._max_connections:
                return _Refused()
            self.connections += 1
            return _Counted(server(), self._ssl_context, self._lost)

        self._server = await asyncio.get_running_loop().create_server(
            accept, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection: TLS is set up here (bounded in time), and the site
    hears when the connection is lost, whether or not it ever reached aiohttp."""

    def __init__(
        self, inner: asyncio.Protocol, ctx: ssl.SSLContext | None, on_lost: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._ctx = ctx
        self._on_lost: Callable[[], None] | None = on_lost
        self._handshake: asyncio.Task[None] | None = None
        self._made = False

    def _release(self) -> None:
        if self._on_lost is not None:
            self._on_lost()
            self._on_lost = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._ctx is None:
            self._made = True
            self._inner.connection_made(transport)
            return
        transport.pause_reading()  # type: ignore[attr-defined]  # nothing reaches aiohttp before TLS is up
        self._handshake = asyncio.get_running_loop().create_task(self._start_tls(transport))

    async def _start_tls(self, raw: asyncio.BaseTransport) -> None:
        assert self._ctx is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw,  # type: ignore[arg-type]
                self,
                self._ctx,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_S,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            raw.close()  # a failed or too slow handshake: the TLS layer never tells this protocol
            self._release()
            return
        if tls is None:  # the connection closed during the handshake
            self._release()
            return
        self._made = True
        self._inner.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._made:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]
