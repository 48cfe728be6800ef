"""Where the dashboard listens: a TCP site that bounds its connections, and what to warn of when
tokens would reach it in clear text."""

from __future__ import annotations

import asyncio
import ssl
import time
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

    A connection counts from its accept, not from when aiohttp hears of it: under TLS that is only
    after its handshake, so connections that never finished one were not counted at all.
    """

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, ctx: ssl.SSLContext | None, max_connections: int
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ctx, reuse_address=True)
        self._max_connections = max_connections
        self._accepted: dict[_Counted, float] = {}
        """Every connection accepted and not yet lost -> when it was accepted."""

    @property
    def connections(self) -> int:
        """Connections held now, a TLS one from its accept (its handshake included)."""
        self._forget_failed_handshakes()
        return len(self._accepted)

    def _forget_failed_handshakes(self) -> None:
        # The loop closes a TLS connection whose handshake failed or timed out without a word to
        # its protocol (neither connection_made nor connection_lost): one not made by the
        # handshake timeout is gone. O(connections), which are bounded.
        stale = time.monotonic() - HANDSHAKE_S - 1.0
        for c in [c for c, at in self._accepted.items() if not c.made and at < stale]:
            del self._accepted[c]

    def _lost(self, c: _Counted) -> None:
        self._accepted.pop(c, None)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def accept() -> asyncio.BaseProtocol:
            # Called as the connection is accepted, before any TLS handshake.
            if self.connections >= self._max_connections:
                return _Refused()
            c = _Counted(server(), self._lost)
            self._accepted[c] = time.monotonic()
            return c

        self._server = await asyncio.get_running_loop().create_server(
            accept,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=HANDSHAKE_S if self._ssl_context is not None else None,
            backlog=self._backlog,
            reuse_address=True,
        )


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, telling the site when the connection is lost."""

    def __init__(self, inner: asyncio.Protocol, on_lost: Callable[[_Counted], None]) -> None:
        self._inner = inner
        self._on_lost = on_lost
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self)
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
