"""What may arrive on the Raft port: bounded frames and a pickle that cannot run code.

pysyncobj frames every message as a 4-byte length, then zlib (then, with a password,
a Fernet token: AES-CBC + HMAC-SHA256) of a pickle, and unpickles whatever arrives.
``pickle.loads`` of attacker bytes runs any callable it names, and the length is read
(and the buffer grown to it, 8 KiB per read, copying the whole buffer every time)
before any check. This module closes both:

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
import io
import logging
import pickle
import socket
import struct
import zlib
from typing import Any

from pysyncobj.node import Node, TCPNode
from pysyncobj.tcp_connection import TcpConnection

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 32 * 2**20
"""Largest frame accepted on the Raft port, as announced by its length prefix.

raftmesh keeps every message it sends under ``replication.MAX_SENT_FRAME_BYTES`` (~1.1 MiB;
tested under 16 MiB); with Fernet's base64 (a third more) 32 MiB leaves wide headroom. Snapshot transfer frames carry 64 KiB chunks
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


class BoundedConnection(TcpConnection):  # type: ignore[misc]  # pysyncobj ships no types
    """pysyncobj's ``TcpConnection`` with a bounded, restricted read path.

    Overrides the two name-mangled read methods; the rest (connect, send, timeouts,
    callbacks) is pysyncobj's. Use ``adopt`` on connections pysyncobj constructs.
    """

    recvLastTimestamp: int
    frame_limit: int
    """Largest frame accepted now: ``MAX_HANDSHAKE_FRAME_BYTES`` until the peer is known."""
    _rx: bytearray
    _scan: int
    """Offset of the next frame header not yet checked against ``frame_limit``."""

    @classmethod
    def adopt(cls, conn: TcpConnection, frame_limit: int = MAX_FRAME_BYTES) -> BoundedConnection:
        """Switch a connection pysyncobj just made to this read path.

        Called before the poller has delivered it any data (in accept, or on an outgoing
        connection not yet connected), so no byte is ever read the unbounded way.
        """
        conn.__class__ = cls
        conn.frame_limit = frame_limit
        conn._rx = bytearray()
        conn._scan = 0
        assert isinstance(conn, cls)
        return conn

    def connect(self, host: str, port: int) -> bool:
        self._rx = bytearray()
        self._scan = 0
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        self._rx = bytearray()
        self._scan = 0
        super().disconnect()

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
            if self.encryptor:
                stamp = self.encryptor.extract_timestamp(data)  # verifies the HMAC
                if stamp < self.recvLastTimestamp:
                    raise FrameRefused("frame older than the last one (replay)")
                self.recvLastTimestamp = stamp
                data = self.encryptor.decrypt(data)
            message = loads(inflate(data))
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
