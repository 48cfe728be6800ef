"""Where the dashboard listens: a TCP site that bounds its connections, and what to warn of when
tokens would reach it in clear text."""

from __future__ import annotations

import asyncio
import ssl

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


class BoundedSite(web.TCPSite):
    """A TCP site that closes connections beyond ``max_connections`` as they are accepted (each
    holds a socket and, busy, a gRPC call: a stranger opening thousands must not exhaust the node)."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, ctx: ssl.SSLContext | None, max_connections: int
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ctx, reuse_address=True)
        self._max_connections = max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def accept() -> asyncio.BaseProtocol:
            if len(server.connections) >= self._max_connections:
                return _Refused()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            accept,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]
