"""A development certificate authority: ``raftmesh certs init DIR --nodes n1,n2,n3``.

Makes one CA and, signed by it, a certificate per node (CN = the node id; SANs = the
given hosts and the node id as a DNS name; serverAuth and clientAuth, because a node is
the server of its API and the TLS client of its peers) and one client certificate for
mutual TLS (clientAuth only). Keys are ECDSA P-256, written with mode 0600. Good enough
for a test or a small private cluster; a real deployment brings its own PKI and passes
the same three files per node (``--tls-cert``, ``--tls-key``, ``--tls-ca``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..consensus import limits
from ..errors import AlreadyExists, InvalidArgument

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
"""SANs every node certificate carries unless ``--hosts`` says otherwise."""
DEFAULT_DAYS = 365
MAX_DAYS = 3650
CLIENT_NAME = "client"
"""Base name of the client certificate's files (``client.pem``, ``client-key.pem``)."""


@dataclass(frozen=True)
class Issued:
    """Where ``init`` wrote each file (absolute paths)."""

    ca: str
    ca_key: str
    nodes: dict[str, tuple[str, str]]
    """node id -> (certificate, key)."""
    client: tuple[str, str]

    def as_json(self) -> dict[str, object]:
        return {
            "ca": self.ca,
            "ca_key": self.ca_key,
            "nodes": {n: {"cert": c, "key": k} for n, (c, k) in self.nodes.items()},
            "client": {"cert": self.client[0], "key": self.client[1]},
        }


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _check_host(host: str) -> None:
    if not host or len(host) > 253 or any(c.isspace() or c in ",/" for c in host):
        raise InvalidArgument(f"--hosts: {host!r} is not a host name or IP address")


def _write(path: str, data: bytes, private: bool) -> None:
    # Create with the final mode: a key is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # O_CREAT's mode does not apply to an existing file


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _leaf(
    name: str,
    sans: Sequence[x509.GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def init(
    directory: str,
    nodes: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> Issued:
    """Write a CA, one certificate per node and a client certificate into ``directory``.

    Refuses (``AlreadyExists``) to replace any existing file unless ``force``: replacing a
    CA silently would cut every node still holding the old one off the cluster.
    """
    node_ids = [n.strip() for n in nodes if n.strip()]
    if not node_ids:
        raise InvalidArgument("--nodes must name at least one node, e.g. --nodes n1,n2,n3")
    if len(set(node_ids)) != len(node_ids):
        raise InvalidArgument("--nodes: node ids must be unique")
    for n in node_ids:
        why = limits.id_error("node id", n)
        if why:
            raise InvalidArgument(f"--nodes: {why}")
        if n in ("ca", CLIENT_NAME):
            raise InvalidArgument(f"--nodes: {n!r} would overwrite the {n} files; pick another node id")
    host_list = [h.strip() for h in hosts if h.strip()]
    for h in host_list:
        _check_host(h)
    if not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(f"--days must be between 1 and {MAX_DAYS}")

    directory = os.path.abspath(directory)
    names = ["ca", *node_ids, CLIENT_NAME]
    files = [os.path.join(directory, f) for n in names for f in (f"{n}.pem", f"{n}-key.pem")]
    existing = [f for f in files if os.path.exists(f)]
    if existing and not force:
        raise AlreadyExists(
            f"{existing[0]} already exists ({len(existing)} of the files would be replaced); "
            "pass --force to make a new CA and certificates"
        )
    os.makedirs(directory, exist_ok=True)

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raftmesh development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, ca_key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca-key.pem")
    _write(ca_key_path, _key_pem(ca_key), private=True)
    _write(ca_path, _cert_pem(ca_cert), private=False)

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    issued: dict[str, tuple[str, str]] = {}
    for n in node_ids:
        sans = [_san(h) for h in host_list]
        if n not in host_list:
            sans.append(x509.DNSName(n))
        cert, key = _leaf(n, sans, both, ca_cert, ca_key, now, days)
        paths = (os.path.join(directory, f"{n}.pem"), os.path.join(directory, f"{n}-key.pem"))
        _write(paths[1], _key_pem(key), private=True)
        _write(paths[0], _cert_pem(cert), private=False)
        issued[n] = paths
    cert, key = _leaf(CLIENT_NAME, [], [ExtendedKeyUsageOID.CLIENT_AUTH], ca_cert, ca_key, now, days)
    client = (os.path.join(directory, "client.pem"), os.path.join(directory, "client-key.pem"))
    _write(client[1], _key_pem(key), private=True)
    _write(client[0], _cert_pem(cert), private=False)
    return Issued(ca_path, ca_key_path, issued, client)
