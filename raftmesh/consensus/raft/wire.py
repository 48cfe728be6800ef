"""The Raft port's frames: bounded, authenticated in sequence, and a pickle that cannot run code.

pysyncobj frames every message as a 4-byte length, then zlib (then, with a password,
a Fernet token: AES-CBC + HMAC-SHA256) of a pickle, and unpickles whatever arrives.
``pickle.loads`` of attacker bytes runs any callable it names, and the length is read
(and the buffer grown to it, 8 KiB per read, copying the whole buffer every time)
before any check. This module closes both, and replaces the frame (``seal``/``unseal``):

- A frame is a 4-byte length, a flags byte (compressed or not), then with a cluster
  secret a 12-byte nonce and the AES-256-GCM ciphertext of the pickle, the flags byte
  authenticated with it. Only pickles over ``COMPRESS_ABOVE_BYTES`` are zlib-compressed.
  py-spy on a leader under 16 KV clients: sending AppendEntries (pickle, zlib, Fernet)
  was the largest cost of the Raft thread (~660 of 10 s x 200 Hz samples); Fernet is
  HMAC + AES-CBC + base64 in several calls, AES-GCM is one.
- In pysyncobj's key exchange the side that opens a link sends 32 random bytes, the
  other answers with its own. The first frame in each direction (those random bytes) is
  under the secret's own key with a random nonce; every later frame is under a key of its
  direction, derived (HKDF) from the secret and BOTH sides' random bytes (receiver's, then
  sender's), and numbers its frames: the nonce is the frame's sequence number, and a
  receiver accepts only the next one, so a frame cannot be replayed, reordered or moved to
  another link (pysyncobj's Fernet check allowed replays within the same second). A key
  never depends only on bytes a stranger can replay: keyed by the opener's bytes alone, a
  replayed opening frame made the acceptor encrypt a new answer under the same key and
  nonce (GCM nonce reuse: keystream and authentication key recoverable, tags forgeable).
  A receiver takes exactly its first frame under the secret's key.

- ``loads`` resolves only the globals pysyncobj's messages, commands and snapshot meta
  use (``ALLOWED_GLOBALS``); anything else raises ``RefusedPickle``. Even a peer with
  the cluster secret cannot run code through it.
- ``BoundedConnection`` refuses a frame whose announced length exceeds
  ``MAX_FRAME_BYTES`` before buffering it, inflates at most ``MAX_MESSAGE_BYTES``, and
  reads into a ``bytearray`` (appending is amortised O(1)). A refused frame closes the
  connection; pysyncobj reconnects its peers on its own.
- ``TransmissionGuard`` checks the one place pysyncobj unpickles reassembled bytes
  itself (an entry larger than a message, sent as start/process/finish pieces).
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import pickle
import socket
import struct
import zlib
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pysyncobj.node import Node, TCPNode
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 32 * 2**20
"""Largest frame accepted on the Raft port, as announced by its length prefix.

raftmesh keeps every message it sends under ``replication.MAX_SENT_FRAME_BYTES`` (~1.1 MiB;
tested under 16 MiB); 32 MiB leaves wide headroom. Snapshot transfer frames carry 64 KiB chunks
(pysyncobj's ``logCompactionBatchSize``), far below it.
"""

MAX_MESSAGE_BYTES = 64 * 2**20
"""Largest inflated (zlib-decompressed) message, and largest reassembled entry."""

MAX_HANDSHAKE_FRAME_BYTES = 64 * 2**10
"""Largest frame from a connection that has not yet named itself as a member.

The handshake is a random key and an address, a few hundred bytes; a stranger must not
make the node buffer ``MAX_FRAME_BYTES`` per connection it opens.
"""

MAX_UNKNOWN_CONNECTIONS = 64
"""Incoming connections still in the handshake; more are closed as they are accepted."""


COMPRESS_ABOVE_BYTES = 32 * 2**10
"""Pickles larger than this are zlib-compressed (catch-up batches, snapshot chunks).

A put's AppendEntries is a few hundred bytes to a few KiB: compressing it cost more CPU
than sending it on loopback or a LAN saves.
"""

COMPRESS_LEVEL = 1
"""zlib level of a compressed frame. A leader compresses each large entry once per follower on
its Raft thread (py-spy of a 5-node leader under ~200 KB submits: 80-90% of the Raft thread's
samples); level 1 costs half of level 3 for about the same size."""

COMPRESS_SAMPLE_BYTES = 8 * 2**10
COMPRESS_SAMPLE_RATIO = 0.5
"""A payload is compressed only if ``COMPRESS_SAMPLE_BYTES`` from its middle shrink below this
ratio (0.3 ms): text that hardly compresses (240 KB of CJK: 0.73 for 7 ms per follower) goes as
it is, JSON and catch-up batches of commands (0.15-0.3) are still compressed."""

SEND_PICKLE_PROTOCOL = 4
"""Pickle protocol of outgoing messages. pysyncobj's protocol 2 writes ``bytes`` as latin-1 text
re-encoded in UTF-8, which doubles every byte >= 0x80 (a non-ASCII entry), and the doubled pickle
was then compressed and encrypted. Protocol 4 writes bytes as they are; ``loads`` reads every
protocol, and protocol 4 names no global that protocol 2 did not."""

_COMPRESSED = 0x01
_NONCE_BYTES = 12
_FRAME_INFO = b"raftmesh raft frame v1"
_RANDOM_BYTES = 32  # what pysyncobj's key exchange sends (os.urandom(32))


class RefusedPickle(pickle.UnpicklingError):
    """The bytes name a global that no pysyncobj message uses."""


class FrameRefused(Exception):
    """A frame broke a bound or failed authentication; its connection is closed."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles carry bytes as _codecs.encode(str, "latin1"); no other codec
    # is needed, and some (zlib, bz2) would inflate without bound.
    if encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"refused codec {encoding!r}")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    # Protocol 2 writes b"" as bytes(); bytes(n) would allocate n bytes on request.
    if args:
        raise RefusedPickle("refused bytes() with arguments")
    return b""


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1,
    # Protocol 2 names builtins the Python 2 way ("__builtin__"); both spellings are accepted.
    **{(module, "bytes"): _empty_bytes for module in ("builtins", "__builtin__")},
    **{(module, "set"): set for module in ("builtins", "__builtin__")},
    **{(module, "frozenset"): frozenset for module in ("builtins", "__builtin__")},
    # snapshot meta carries the cluster as a set of nodes
    ("pysyncobj.node", "TCPNode"): TCPNode,
    ("pysyncobj.node", "Node"): Node,
}
"""Every global a pysyncobj 0.3.17 message, command or snapshot meta pickles (protocol 2)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise RefusedPickle(f"refused global {module}.{name}")
        return found


def loads(data: bytes) -> Any:
    """Unpickle ``data``, refusing every global outside ``ALLOWED_GLOBALS``."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def inflate(data: bytes) -> bytes:
    """zlib-decompress at most ``MAX_MESSAGE_BYTES``; more raises ``FrameRefused``."""
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_MESSAGE_BYTES + 1)
    if len(out) > MAX_MESSAGE_BYTES or d.unconsumed_tail:
        raise FrameRefused(f"message inflates past {MAX_MESSAGE_BYTES} bytes")
    if not d.eof:
        raise FrameRefused("truncated zlib stream")
    return out


@functools.lru_cache(maxsize=8)
def _secret_key(encryptor: Any) -> bytes:
    # pysyncobj derived the Fernet's keys from the cluster secret (PBKDF2, 100,000 rounds);
    # the frame key is derived from both of them rather than from the secret again.
    material = bytes(encryptor._signing_key) + bytes(encryptor._encryption_key)
    return HKDF(hashes.SHA256(), 32, salt=None, info=_FRAME_INFO).derive(material)


def link_cipher(
    encryptor: Any, receiver_random: bytes | None = None, sender_random: bytes | None = None
) -> AESGCM:
    """The cipher of one direction of a link: after its first frame keyed by both sides'
    random bytes (receiver's, then sender's), or (neither given: a direction's first frame,
    sealed with a random nonce) by the secret alone."""
    key = _secret_key(encryptor)
    if receiver_random is None and sender_random is None:
        return AESGCM(key)
    if not (_is_random(receiver_random) and _is_random(sender_random)):
        # one side's bytes alone can be replayed by a stranger: never a key of their own
        raise FrameRefused("a link key needs both sides' random bytes")
    assert receiver_random is not None and sender_random is not None
    salt = receiver_random + sender_random
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=salt, info=_FRAME_INFO + b" link").derive(key))


def _is_random(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == _RANDOM_BYTES


def sequence_nonce(seq: int) -> bytes:
    return seq.to_bytes(_NONCE_BYTES, "big")


def seal(payload: bytes, cipher: AESGCM | None = None, nonce: bytes = b"") -> bytes:
    """The frame carrying the pickle ``payload``, length prefix included."""
    flags = 0
    if len(payload) > COMPRESS_ABOVE_BYTES:
        mid = len(payload) // 2
        sample = payload[mid : mid + COMPRESS_SAMPLE_BYTES]
        if len(zlib.compress(sample, COMPRESS_LEVEL)) < COMPRESS_SAMPLE_RATIO * len(sample):
            payload, flags = zlib.compress(payload, COMPRESS_LEVEL), _COMPRESSED
    head = bytes((flags,))
    body = head + payload if cipher is None else head + nonce + cipher.encrypt(nonce, payload, head)
    return struct.pack("i", len(body)) + body


def unseal(body: bytes, cipher: AESGCM | None = None, nonce: bytes | None = None) -> bytes:
    """The pickle a frame (without its length) carries; ``FrameRefused`` unless authentic,
    well formed, and (``nonce`` given) the frame expected next."""
    if not body or body[0] & ~_COMPRESSED:
        raise FrameRefused("malformed frame header")
    head = body[:1]
    if cipher is None:
        payload = body[1:]
    else:
        got = body[1 : 1 + _NONCE_BYTES]
        if len(got) != _NONCE_BYTES or (nonce is not None and got != nonce):
            raise FrameRefused("frame out of sequence (replay)")
        try:
            payload = cipher.decrypt(got, body[1 + _NONCE_BYTES :], head)
        except Exception as exc:  # InvalidTag: forged, corrupted or under another key
            raise FrameRefused("frame failed authentication") from exc
    return inflate(payload) if body[0] & _COMPRESSED else payload


class BoundedConnection(TcpConnection):  # type: ignore[misc]  # pysyncobj ships no types
    """pysyncobj's ``TcpConnection`` with a bounded, restricted read path.

    Overrides the two name-mangled read methods; the rest (connect, send, timeouts,
    callbacks) is pysyncobj's. Use ``adopt`` on connections pysyncobj constructs.
    """

    frame_limit: int
    """Largest frame accepted now: ``MAX_HANDSHAKE_FRAME_BYTES`` until the peer is known."""
    _rx: bytearray
    _scan: int
    """Offset of the next frame header not yet checked against ``frame_limit``."""
    _tx_cipher: AESGCM | None
    """The cipher of the frames sent after the first (once both random bytes are known)."""
    _rx_cipher: AESGCM | None
    _tx_frames: int
    """Frames sent on this connection: the first is under the secret's key, the n-th
    (n >= 1) under ``_tx_cipher`` with sequence number n - 1."""
    _rx_frames: int

    @classmethod
    def adopt(cls, conn: TcpConnection, frame_limit: int = MAX_FRAME_BYTES) -> BoundedConnection:
        """Switch a connection pysyncobj just made to this read path.

        Called before the poller has delivered it any data (in accept, or on an outgoing
        connection not yet connected), so no byte is ever read the unbounded way.
        """
        conn.__class__ = cls
        conn.frame_limit = frame_limit
        assert isinstance(conn, cls)
        conn._reset()
        return conn

    def _reset(self) -> None:
        self._rx = bytearray()
        self._scan = 0
        self._tx_cipher = self._rx_cipher = None
        self._tx_frames = self._rx_frames = 0

    def connect(self, host: str, port: int) -> bool:
        self._reset()
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        self._reset()
        super().disconnect()

    def send(self, message: Any) -> None:
        # own random bytes: recvRandKey (the peer echoes them); the peer's: sendRandKey
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        cipher, nonce = None, b""
        if self.encryptor:
            if not self._tx_frames:
                cipher, nonce = link_cipher(self.encryptor), os.urandom(_NONCE_BYTES)
            else:
                if self._tx_cipher is None:
                    try:
                        self._tx_cipher = link_cipher(self.encryptor, self.sendRandKey, self.recvRandKey)
                    except FrameRefused as exc:  # the peer's bytes are not known (or not bytes)
                        self._refuse(f"nothing to key a second frame with: {exc}")
                        return
                cipher, nonce = self._tx_cipher, sequence_nonce(self._tx_frames - 1)
            self._tx_frames += 1
        self._TcpConnection__writeBuffer += seal(pickle.dumps(message, SEND_PICKLE_PROTOCOL), cipher, nonce)
        self._TcpConnection__trySendBuffer()
        fileno = self._TcpConnection__fileno
        if (
            self._TcpConnection__writeBuffer
            and fileno is not None
            and self.state == CONNECTION_STATE.CONNECTED
        ):
            # pysyncobj watches a connected socket for writability only after a write event found
            # bytes left, so what the socket did not take waited for this link's next send: a
            # follower catching up got ~128 KB per leader message (the socket buffers), once a
            # second when only link pings went. Watched, it drains as fast as the peer reads.
            self._TcpConnection__poller.subscribe(
                fileno,
                self._TcpConnection__processConnection,
                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR,
            )

    def _unseal(self, body: bytes) -> bytes:
        if not self.encryptor:
            return unseal(body)
        if not self._rx_frames:
            payload = unseal(body, link_cipher(self.encryptor))
        else:
            if self._rx_cipher is None:
                self._rx_cipher = link_cipher(self.encryptor, self.recvRandKey, self.sendRandKey)
            payload = unseal(body, self._rx_cipher, sequence_nonce(self._rx_frames - 1))
        self._rx_frames += 1
        return payload

    def _refuse(self, why: str) -> None:
        log.warning("closing Raft connection: %s", why)
        self.disconnect()

    def _TcpConnection__processRead(self) -> bool:
        sock = self._TcpConnection__socket
        try:
            incoming = sock.recv(self._TcpConnection__recvBufferSize)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if not incoming or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return False
        rx = self._rx
        rx += incoming
        # Check every header as soon as its 4 bytes are here, before the frame is buffered. In the
        # handshake only the first frame's: the frames a peer sends right behind the one naming
        # it (a catch-up AppendEntries of up to a MiB) are a member's, and parsing the first may
        # end the handshake.
        handshake = self.frame_limit < MAX_FRAME_BYTES
        while self._scan + 4 <= len(rx) and not (handshake and self._scan):
            (length,) = struct.unpack_from("i", rx, self._scan)
            if not 0 <= length <= self.frame_limit:
                self._refuse(f"frame announces {length} bytes (limit {self.frame_limit})")
                return False
            self._scan += 4 + length
        # Parse what is buffered before reading more (the poller is level-triggered).
        if handshake:
            return not self._scan or len(rx) < self._scan
        return len(rx) <= self.frame_limit + 4

    def _TcpConnection__processParseMessage(self) -> Any:
        rx = self._rx
        if len(rx) < 4:
            return None
        (length,) = struct.unpack_from("i", rx, 0)
        if not 0 <= length <= self.frame_limit:  # one buffered behind the handshake, not yet checked
            self._refuse(f"frame announces {length} bytes (limit {self.frame_limit})")
            return None
        if len(rx) - 4 < length:
            return None
        data = bytes(rx[4 : 4 + length])
        try:
            message = loads(self._unseal(data))
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise FrameRefused("frame from another connection (replay)")
        except Exception as exc:  # any refusal or malformed frame closes the link
            self._refuse(f"{type(exc).__name__}: {exc}")
            return None
        del rx[: 4 + length]
        self._scan = max(0, self._scan - (4 + length))
        return message


class TransmissionGuard:
    """Checks the entries pysyncobj reassembles from start/process/finish pieces.

    pysyncobj unpickles the concatenated pieces itself, unrestricted; this sees the same
    pieces first, bounds their total and refuses them unless ``loads`` accepts the whole.

    pysyncobj's sender marks a piece "finish" when it reaches the length of the *command*,
    not of the pickled entry, which is longer (the command's bytes are pickled once more),
    so a large entry can get an early "finish" followed by more pieces. pysyncobj survived
    that only by raising on the truncated pickle and appending the next piece. Here an
    early "finish" whose bytes so far are a valid but truncated pickle is delivered as the
    "process" piece it is.
    """

    def __init__(self) -> None:
        self._pieces: dict[Any, list[bytes]] = {}
        self._size: dict[Any, int] = {}

    def admit(self, node: Any, message: Any) -> Any | None:
        """The message to deliver (possibly relabelled), or None: drop it and close the link."""
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return None
        step = message.get("transmission")
        if message["type"] != "append_entries" or step is None:
            return message
        data = message.get("data")
        if not isinstance(data, bytes) or step not in ("start", "process", "finish"):
            return None
        if step == "start":
            self._pieces[node], self._size[node] = [], 0
        elif node not in self._pieces:
            return None
        self._pieces[node].append(data)
        self._size[node] += len(data)
        if self._size[node] > MAX_MESSAGE_BYTES:
            self.forget(node)
            return None
        if step != "finish":
            return message
        try:
            loads(b"".join(self._pieces[node]))
        except RefusedPickle:
            self.forget(node)
            return None
        except (EOFError, pickle.UnpicklingError) as exc:
            if isinstance(exc, EOFError) or "truncated" in str(exc):
                return dict(message, transmission="process")
            self.forget(node)
            return None
        except Exception:
            self.forget(node)
            return None
        self.forget(node)
        return message

    def forget(self, node: Any) -> None:
        self._pieces.pop(node, None)
        self._size.pop(node, None)
