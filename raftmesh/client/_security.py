"""How a client reaches a node: TLS material and a bearer token, from arguments or the environment.

``Credentials`` is what ``raftmesh.Client`` (and the CLI's ``--token``/``--ca``/``--cert``/
``--key``) takes; anything not given is read from ``RAFTMESH_TOKEN``, ``RAFTMESH_CA``,
``RAFTMESH_CERT`` and ``RAFTMESH_KEY`` (``scripts/cluster.sh up N --secure`` writes the
first two to ``DIR/env``). A CA turns TLS on; a certificate and key add the client's side
of mutual TLS. The token travels as ``authorization: Bearer TOKEN`` metadata on every
call, streams included; every call also carries the metadata ``extra`` returns (the
trace context, ``raftmesh.calls``).
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ..errors import InvalidArgument

Metadata = list[tuple[str, str]]

_warned_plaintext = False
"""A token sent without TLS to a non-loopback address is warned about once per process."""


def _loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]") if ":" in addr else addr
    host = host.removeprefix("ipv4:").removeprefix("ipv6:").removeprefix("dns:").strip("/[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_plaintext(addr: str) -> None:
    global _warned_plaintext
    if _warned_plaintext:
        return
    _warned_plaintext = True
    warnings.warn(
        f"raftmesh: sending a bearer token to {addr} without TLS: anyone on the network path can read "
        "and replay it; pass ca= (--ca / RAFTMESH_CA) for a node started with TLS",
        RuntimeWarning,
        stacklevel=5,
    )


def _read(path: str, what: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} {path!r} ({exc.strerror}); fix {flag}") from None


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    """A bearer token (``raftmesh certs init`` / the node's tokens file gives them)."""
    ca: str | None = None
    """PEM file of the CA that signed the nodes' certificates: TLS on."""
    cert: str | None = None
    """PEM file of this client's certificate (mutual TLS); needs ``key``."""
    key: str | None = None
    server_name: str | None = None
    """Check the node certificates against this name instead of the address's host."""

    @classmethod
    def resolve(
        cls,
        token: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        server_name: str | None = None,
    ) -> Credentials:
        """Arguments first, then ``RAFTMESH_TOKEN`` / ``_CA`` / ``_CERT`` / ``_KEY`` / ``_SERVER_NAME``."""
        env = os.environ.get
        creds = cls(
            token=token or env("RAFTMESH_TOKEN") or None,
            ca=ca or env("RAFTMESH_CA") or None,
            cert=cert or env("RAFTMESH_CERT") or None,
            key=key or env("RAFTMESH_KEY") or None,
            server_name=server_name or env("RAFTMESH_SERVER_NAME") or None,
        )
        if (creds.cert is None) != (creds.key is None):
            raise InvalidArgument(
                "a client certificate needs its key and the other way round: pass both --cert and --key "
                "(or RAFTMESH_CERT and RAFTMESH_KEY)"
            )
        if creds.cert is not None and creds.ca is None:
            raise InvalidArgument("--cert needs --ca (or RAFTMESH_CA): mutual TLS is TLS first")
        if creds.token is not None and not creds.token.isprintable():
            raise InvalidArgument("the token has non-printable characters; check --token / RAFTMESH_TOKEN")
        return creds

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.ca is not None
        chain = key = None
        if self.cert is not None and self.key is not None:
            chain = _read(self.cert, "client certificate", "--cert / RAFTMESH_CERT")
            key = _read(self.key, "client key", "--key / RAFTMESH_KEY")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate", "--ca / RAFTMESH_CA"),
            private_key=key,
            certificate_chain=chain,
        )

    def metadata(self) -> Metadata:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def _options(self, addr: str, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        opts = list(options)
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        if self.token and not self.tls and not _loopback(addr):
            _warn_plaintext(addr)
        return opts

    def aio_channel(self, addr: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A ``grpc.aio`` channel to ``addr`` with this TLS (``raftmesh.aio`` sends ``metadata()``
        and the trace with each call itself: aio interceptors cannot read the caller's context)."""
        opts = self._options(addr, options)
        if self.tls:
            return grpc.aio.secure_channel(addr, self.channel_credentials(), options=opts)
        return grpc.aio.insecure_channel(addr, options=opts)

    def channel(
        self,
        addr: str,
        options: Sequence[tuple[str, Any]] = (),
        extra: Callable[[], Metadata] | None = None,
    ) -> grpc.Channel:
        """A channel to ``addr`` with this TLS and token (and ``extra()`` metadata per call)."""
        return self.with_metadata(self.plain_channel(addr, options), extra)

    def plain_channel(self, addr: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to ``addr`` with this TLS and no metadata of its own: each call passes
        ``metadata()`` itself (``raftmesh.Client``'s calls: grpc's Python interceptor costs ~0.15 ms
        a call)."""
        opts = self._options(addr, options)
        if self.tls:
            return grpc.secure_channel(addr, self.channel_credentials(), options=opts)
        return grpc.insecure_channel(addr, options=opts)

    def with_metadata(self, ch: grpc.Channel, extra: Callable[[], Metadata] | None = None) -> grpc.Channel:
        """``ch`` sending the token (and ``extra()`` metadata) with every call."""
        fixed = self.metadata()
        if not fixed and extra is None:
            return ch
        return grpc.intercept_channel(ch, _MetadataInterceptor(fixed, extra))


class _CallDetails:
    """``grpc.ClientCallDetails`` with our metadata added (grpc gives no constructor for it)."""

    def __init__(self, details: grpc.ClientCallDetails, metadata: list[Any]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, fixed: Metadata, extra: Callable[[], Metadata] | None) -> None:
        self._fixed = fixed
        self._extra = extra

    def _details(self, details: grpc.ClientCallDetails) -> Any:
        md: list[Any] = list(details.metadata or ())
        md.extend(self._fixed)
        if self._extra is not None:
            md.extend(self._extra())
        return _CallDetails(details, md)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)
