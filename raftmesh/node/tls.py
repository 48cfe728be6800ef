"""A node's TLS: the server credentials of its gRPC port and every channel it opens to a node.

``--tls-cert``/``--tls-key`` are the node's certificate and key, ``--tls-ca`` the CA that
signed every node's certificate (and, with ``--tls-client-auth require``, every client's).
The node is the server of its API and the TLS client of its peers (the message router's
``Peer.Exchange`` streams, heartbeats to the leader): ``NodeChannels.dial`` is the one place
those channels are made, TLS with the node's own certificate as its client certificate
when the node has TLS, so no node-to-node call goes out in plaintext next to a TLS port.
Peers are dialled by their registered gRPC address, so a node certificate's SANs must
cover the host of that address (``raftmesh certs init --hosts``).

``--tls-client-auth``: ``require`` (the default with TLS) refuses a client without a
certificate signed by ``--tls-ca``; ``none`` does not ask for one (clients prove who they
are with a token). grpcio's Python API has no "ask but do not require" mode, so there is
no ``optional``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import InvalidArgument

CLIENT_AUTH_MODES = ("none", "require")
ChannelOptions = Sequence[tuple[str, Any]]
Dial = Callable[[str, ChannelOptions], grpc.aio.Channel]
"""(gRPC address, channel options) -> a channel to that node."""


def plaintext(target: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """The dialler of a node without TLS (and of tests that build a router alone)."""
    return grpc.aio.insecure_channel(target, options=list(options))


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path!r}: cannot read it ({exc.strerror})") from None


@dataclass(frozen=True)
class NodeTls:
    cert: str
    key: str
    ca: str
    client_auth: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=self.client_auth == "require",
        )

    def covers(self, host: str) -> bool:
        """Whether the certificate's SANs name ``host`` (what a peer dialling HOST:PORT checks)."""
        host = host.strip("[]").lower()
        cert = x509.load_pem_x509_certificates(self.cert_pem)[0]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            return ip in san.get_values_for_type(x509.IPAddress)
        for name in (n.lower() for n in san.get_values_for_type(x509.DNSName)):
            if name == host or (name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]):
                return True
        return False

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verify the peer against the CA; present this node's certificate (mutual TLS)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def load_tls(cert: str | None, key: str | None, ca: str | None, client_auth: str | None) -> NodeTls | None:
    """Validate the TLS flags and read the files; None when TLS is off. Errors name the flag."""
    if client_auth is not None and client_auth not in CLIENT_AUTH_MODES:
        raise InvalidArgument(
            f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, got {str(client_auth)[:40]!r}"
            + (
                " (grpcio cannot ask for a client certificate without requiring it)"
                if client_auth == "optional"
                else ""
            )
        )
    if not (cert or key or ca):
        if client_auth == "require":
            raise InvalidArgument(
                "--tls-client-auth require needs TLS: pass --tls-cert, --tls-key and --tls-ca"
            )
        return None
    missing = [f for f, v in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)) if not v]
    if missing:
        raise InvalidArgument(
            f"TLS needs --tls-cert, --tls-key and --tls-ca together; missing {', '.join(missing)} "
            "(the CA verifies the peers this node dials; `raftmesh certs init` makes all three)"
        )
    assert cert and key and ca
    for flag, v in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if not isinstance(v, str):
            raise InvalidArgument(f"{flag} must be a file path, got {str(v)[:40]!r}")
    cert_pem, key_pem, ca_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key"), _read(ca, "--tls-ca")
    # grpc would only fail at the first handshake, with a message naming no file: check here.
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise InvalidArgument(f"--tls-cert {cert!r} is not a PEM certificate") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise InvalidArgument(f"--tls-ca {ca!r} is not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise InvalidArgument(f"--tls-key {key!r} is not an unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, pub) != chain[
        0
    ].public_key().public_bytes(serialization.Encoding.DER, pub):
        raise InvalidArgument(f"--tls-key {key!r} is not the key of the certificate in --tls-cert {cert!r}")
    # Absolute: agents get these paths (``AgentNode.credentials``) and may change directory.
    paths = (os.path.abspath(cert), os.path.abspath(key), os.path.abspath(ca))
    return NodeTls(*paths, client_auth or "require", cert_pem, key_pem, ca_pem)


class NodeChannels:
    """Every channel a node opens to a node (its peers, its leader): TLS when the node has it."""

    def __init__(self, tls: NodeTls | None) -> None:
        self._creds = tls.channel_credentials() if tls is not None else None

    def dial(self, target: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        if self._creds is None:
            return plaintext(target, options)
        return grpc.aio.secure_channel(target, self._creds, options=list(options))
