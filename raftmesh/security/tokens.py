"""Bearer tokens and node identity: who a call to a node comes from.

The tokens file (``raftmesh node --tokens-file PATH``, YAML or JSON) holds only hashes::

    tokens:
      - subject: alice
        role: admin              # reader | submitter | operator | admin
        sha256: <hex sha256 of the token>
        namespaces: ["*"]        # optional: the namespaces it may touch ("*": all, the default)
        expires: 2027-01-01T00:00:00Z   # optional

``raftmesh tokens add`` makes a token, stores its hash and prints the token once. The node
loads the file at start (a bad file stops it, naming the entry) and again on SIGHUP (a
bad file then keeps the old table and says why in the log).

Nodes prove themselves to each other (and nothing else can call ``Peer``) with the
cluster secret they already share: ``authorization: Node ID:HMAC``, the HMAC being hex
HMAC-SHA256(secret, ``raftmesh-node:`` + ID). A token is never accepted as a node.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..consensus import limits
from ..errors import InvalidArgument, Unauthenticated
from ..node.interceptor import Principal
from .roles import Role

log = logging.getLogger("raftmesh.security")

MAX_TOKENS = 10_000
"""Entries in one tokens file (the table is held in memory by every node)."""
MAX_TOKENS_FILE_BYTES = 4 * 1024 * 1024
MAX_SUBJECT_CHARS = 128
MAX_TOKEN_CHARS = 512
"""A presented bearer token longer than this is refused before it is hashed."""
MAX_TOKEN_NAMESPACES = 64
NODE_HMAC_PREFIX = "raftmesh-node:"

_NO_TOKEN = (
    "this cluster needs a token: pass --token TOKEN or set RAFTMESH_TOKEN "
    "(an admin makes one with `raftmesh tokens add`)"
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def node_hmac(secret: str, node_id: str) -> str:
    return hmac.new(
        secret.encode("utf-8"), (NODE_HMAC_PREFIX + node_id).encode("utf-8"), "sha256"
    ).hexdigest()


def node_metadata(node_id: str, secret: str) -> tuple[tuple[str, str], ...]:
    """The metadata a node's own gRPC calls carry to prove they come from node ``node_id``."""
    return (("authorization", f"Node {node_id}:{node_hmac(secret, node_id)}"),)


@dataclass(frozen=True, slots=True)
class TokenEntry:
    subject: str
    role: Role
    sha256: str
    namespaces: tuple[str, ...] = ("*",)
    expires_ms: int = 0
    """0: never."""

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"subject": self.subject, "role": self.role.label, "sha256": self.sha256}
        if self.namespaces != ("*",):
            m["namespaces"] = list(self.namespaces)
        if self.expires_ms:
            m["expires"] = format_time(self.expires_ms)
        return m


def format_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, where: str) -> int:
    """Milliseconds since the epoch from an ISO-8601 time (a YAML timestamp is already one)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(
                f"{where}: expires {value[:40]!r} is not an ISO-8601 time (e.g. 2027-01-01T00:00:00Z)"
            ) from None
    else:
        raise InvalidArgument(f"{where}: expires must be an ISO-8601 time (e.g. 2027-01-01T00:00:00Z)")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # a time without a zone is UTC, as in the examples
    return int(dt.timestamp() * 1000)


def subject_error(subject: Any) -> str:
    if not isinstance(subject, str) or not subject:
        return "subject must be a non-empty string"
    if len(subject) > MAX_SUBJECT_CHARS:
        return f"subject is longer than {MAX_SUBJECT_CHARS} characters"
    if not subject.isprintable() or any(c.isspace() for c in subject):
        return f"subject {subject[:40]!r} may not contain spaces or control characters"
    return ""


def parse_namespaces(value: Any, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise InvalidArgument(f'{where}: namespaces must be a list of names (or "*" for all)')
    names = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    if not names:
        raise InvalidArgument(f'{where}: namespaces is empty; give at least one name, or "*" for all')
    if len(names) > MAX_TOKEN_NAMESPACES:
        raise InvalidArgument(f"{where}: more than {MAX_TOKEN_NAMESPACES} namespaces")
    for n in names:
        why = "" if n == "*" else limits.namespace_error(n)
        if why:
            raise InvalidArgument(f"{where}: {why}")
    return ("*",) if "*" in names else names


def _entry(i: int, raw: Any) -> TokenEntry:
    where = f"token entry {i + 1}"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: must be a map with subject, role and sha256")
    if isinstance(raw.get("subject"), str):
        where += f" ({raw['subject'][:40]!r})"
    unknown = set(raw) - {"subject", "role", "sha256", "namespaces", "expires"}
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))[:80]}")
    why = subject_error(raw.get("subject"))
    if why:
        raise InvalidArgument(f"{where}: {why}")
    role_text = raw.get("role")
    if not isinstance(role_text, str):
        raise InvalidArgument(f"{where}: role must be one of reader, submitter, operator, admin")
    try:
        role = Role.parse(role_text)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    if role == Role.NODE:
        raise InvalidArgument(f"{where}: role node is for nodes only (they prove it with the cluster secret)")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidArgument(
            f"{where}: sha256 must be 64 lowercase hex digits (the token's hash; `raftmesh tokens add` writes it)"
        )
    namespaces = parse_namespaces(raw["namespaces"], where) if "namespaces" in raw else ("*",)
    expires = parse_time(raw["expires"], where) if raw.get("expires") is not None else 0
    return TokenEntry(str(raw["subject"]), role, digest, namespaces, expires)


def read_tokens_file(path: str) -> list[TokenEntry]:
    """Every entry of ``path``; ``InvalidArgument`` naming the file and entry if one is wrong.

    A missing file is an empty table only for ``tokens add`` (``missing_ok``), never for a node.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKENS_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"tokens file {path!r}: {exc.strerror}") from None
    if len(data) > MAX_TOKENS_FILE_BYTES:
        raise InvalidArgument(f"tokens file {path!r} is over {MAX_TOKENS_FILE_BYTES} bytes")
    return parse_tokens(data.decode("utf-8", errors="replace"), path)


def parse_tokens(text: str, path: str = "tokens file") -> list[TokenEntry]:
    try:
        if path.endswith(".json") or text.lstrip().startswith("{"):
            doc = json.loads(text) if text.strip() else {}
        else:
            import yaml

            # libyaml when present: the pure-Python loader takes ~1 ms a token
            doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except Exception as exc:  # yaml's and json's errors share no base class
        raise InvalidArgument(f"tokens file {path!r} is not valid YAML/JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens", []), list):
        raise InvalidArgument(f'tokens file {path!r}: must be a map with a "tokens" list')
    raw = doc.get("tokens") or []
    if len(raw) > MAX_TOKENS:
        raise InvalidArgument(f"tokens file {path!r}: more than {MAX_TOKENS} entries")
    entries: list[TokenEntry] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(raw):
        try:
            e = _entry(i, item)
        except InvalidArgument as exc:
            raise InvalidArgument(f"tokens file {path!r}: {exc.message}") from None
        if e.sha256 in seen:
            raise InvalidArgument(
                f"tokens file {path!r}: token entry {i + 1} ({e.subject!r}) has the same hash as "
                f"{seen[e.sha256]!r}: one token, one entry"
            )
        seen[e.sha256] = e.subject
        entries.append(e)
    return entries


def write_tokens_file(path: str, entries: Sequence[TokenEntry]) -> None:
    """Replace ``path`` atomically, readable by its owner only (it says who may do what)."""
    doc = {"tokens": [e.to_map() for e in entries]}
    if path.endswith(".json"):
        text = json.dumps(doc, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(doc, sort_keys=False)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_token(
    path: str, subject: str, role: str, namespaces: str | None = None, expires: str | None = None
) -> tuple[TokenEntry, str]:
    """Append a new token to ``path`` (made if missing); returns the entry and the token (shown once)."""
    why = subject_error(subject)
    if why:
        raise InvalidArgument(f"--subject: {why}")
    try:
        r = Role.parse(role)
    except ValueError as exc:
        raise InvalidArgument(f"--role: {exc}") from None
    if r == Role.NODE:
        raise InvalidArgument("--role: node is for nodes only; use reader, submitter, operator or admin")
    ns = parse_namespaces(namespaces, "--namespaces") if namespaces is not None else ("*",)
    exp = parse_time(expires, "--expires") if expires else 0
    entries = read_tokens_file(path) if os.path.exists(path) else []
    if len(entries) >= MAX_TOKENS:
        raise InvalidArgument(f"{path} already has {MAX_TOKENS} tokens; remove some first")
    token = "rmt_" + secrets.token_urlsafe(32)
    entry = TokenEntry(subject, r, hash_token(token), ns, exp)
    write_tokens_file(path, [*entries, entry])
    return entry, token


RELOAD_SETTLE_S = 0.5
"""How long a reload that found no tokens (while some are in use) waits before reading again."""


def _warn_if_writable(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it says what is wrong
    if mode & 0o022:
        log.warning(
            "tokens file %s is writable by its group or by everyone (mode %o): whoever can write it can "
            "make an admin token; chmod 600 it",
            path,
            mode & 0o777,
        )


class TokenAuthenticator:
    """``raftmesh.node.interceptor.Authenticator`` for a node with a tokens file.

    Bearer tokens are looked up by their SHA-256 (a dict lookup on the hash: the lookup's
    timing says nothing about the token), then compared with ``hmac.compare_digest``.
    """

    def __init__(
        self,
        path: str,
        node_secret: str,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        *,
        peer_cn: bool = False,
    ) -> None:
        """``peer_cn``: mutual TLS is required, so a node credential must come over a connection
        whose client certificate's CN is the node id it claims (a stolen credential alone, or
        another node's certificate, is not enough)."""
        if not node_secret:
            raise InvalidArgument(
                "--tokens-file needs the cluster secret (--raft-secret-file or RAFTMESH_RAFT_SECRET): "
                "nodes prove who they are to each other with it"
            )
        self.path = path
        self._peer_cn = peer_cn
        self._secret = node_secret
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._reloading = threading.Lock()
        """Held across a reload's read and install: two SIGHUPs close together cannot install an
        older read after a newer one."""
        self._table: dict[str, TokenEntry] = {}
        _warn_if_writable(path)
        self._install(read_tokens_file(path))

    def _install(self, entries: list[TokenEntry]) -> None:
        table = {e.sha256: e for e in entries}
        with self._lock:
            self._table = table

    @property
    def size(self) -> int:
        return len(self._table)

    def reload(self, settle_s: float = RELOAD_SETTLE_S) -> str:
        """Read the file again; "" if the new table is in use, else why the old one was kept.

        A file read with no tokens while some are in use is read again after ``settle_s``: an
        editor or script that truncates before writing must not revoke every token for good."""
        with self._reloading:
            try:
                _warn_if_writable(self.path)
                entries = read_tokens_file(self.path)
                if not entries and self._table:
                    time.sleep(settle_s)
                    entries = read_tokens_file(self.path)
            except InvalidArgument as exc:
                log.error("tokens file not reloaded, the previous tokens stay in use: %s", exc.message)
                return exc.message
            self._install(entries)
        if entries:
            log.info("tokens file %s reloaded: %d token(s)", self.path, len(entries))
        else:
            log.warning("tokens file %s reloaded with no tokens: every token is refused now", self.path)
        return ""

    def authenticate(self, metadata: Mapping[str, str], auth_context: Mapping[str, Any]) -> Principal:
        header = metadata.get("authorization", "").strip()
        if not header:
            raise Unauthenticated(_NO_TOKEN)
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            return self._bearer(value)
        if scheme == "node":
            return self._node(value, auth_context)
        raise Unauthenticated(
            f"authorization scheme {scheme[:20]!r} is not one this node takes: send 'Bearer TOKEN' "
            "(--token or RAFTMESH_TOKEN)"
        )

    def _bearer(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(_NO_TOKEN)
        digest = hash_token(token)
        entry = self._table.get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            raise Unauthenticated(
                "the token is not known to this node (revoked, or from another cluster): check --token / "
                "RAFTMESH_TOKEN, or ask an admin for a new one"
            )
        if entry.expires_ms and self._now_ms() >= entry.expires_ms:
            raise Unauthenticated(
                f"the token of {entry.subject!r} expired at {format_time(entry.expires_ms)}: "
                "ask an admin for a new one (`raftmesh tokens add`)"
            )
        return Principal(f"token:{entry.subject}", entry.role, entry.namespaces)

    def _node(self, value: str, auth_context: Mapping[str, Any]) -> Principal:
        node_id, _, mac = value.rpartition(":")
        if (
            not node_id
            or limits.id_error("node id", node_id)
            or not hmac.compare_digest(
                mac.encode("ascii", "replace"), node_hmac(self._secret, node_id).encode("ascii")
            )
        ):
            raise Unauthenticated(
                "node credential refused: nodes must share the same cluster secret (--raft-secret-file)"
            )
        names = [
            n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
            for n in auth_context.get("x509_common_name", ()) or ()
        ]
        # A certificate presented must be the node's own; with mutual TLS required, one must be.
        if (names or self._peer_cn) and node_id not in names:
            raise Unauthenticated(
                f"node credential for {node_id!r} refused: the connection's client certificate is "
                f"{'for ' + repr(names[0][:64]) if names else 'missing'}; a node calls its peers with "
                "its own certificate (CN = node id, raftmesh certs init)"
            )
        return Principal(f"node:{node_id}", Role.NODE)
