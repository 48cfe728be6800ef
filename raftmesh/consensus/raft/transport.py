"""pysyncobj's TCP transport with the repairs that real partitions needed."""

from __future__ import annotations

import time
from typing import Any

from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from .durable_journal import DurableJournal
from .read_index import ACK as READ_ACK
from .read_index import PROBE as READ_PROBE
from .read_index import REPLY as READ_REPLY
from .read_index import REQUEST as READ_REQUEST
from .replication import COMMAND_CHUNK, ENTRY_CHUNK
from .wire import (
    MAX_FRAME_BYTES,
    MAX_HANDSHAKE_FRAME_BYTES,
    MAX_UNKNOWN_CONNECTIONS,
    BoundedConnection,
    TransmissionGuard,
)

LINK_PING_S = 1.0
"""Every Raft link carries a message at least this often (must be < connection_timeout_s)."""


CONNECT_TIMEOUT_S = 2.0
"""A connect attempt that has not completed in this long is abandoned and retried."""

HANDSHAKE_TIMEOUT_S = 3.0
"""An incoming connection that has not named itself as a member this long after its accept
is closed. A member's handshake takes a few round trips; pysyncobj checks a connection's
timeout only when it reads or sends, so idle strangers held the ``MAX_UNKNOWN_CONNECTIONS``
handshake slots forever and every peer's link was then refused."""

SENT_BEFORE_SYNC = frozenset(
    {
        "append_entries",
        "apply_command",
        "apply_command_response",
        "raftmesh_link_ping",
        ENTRY_CHUNK,
        COMMAND_CHUNK,
    }
)
"""Message types that claim nothing about this node's log being on disk.

Every other outgoing message (a follower's ``next_node_idx`` ack, a vote) waits while
the journal has unsynced entries; the leader's ``append_entries`` go out at once, so
its fsync overlaps the followers' (Raft thesis 10.2.1).
"""

NEVER_HELD = frozenset({READ_ACK, READ_PROBE, READ_REQUEST, READ_REPLY})
"""ReadIndex's messages: they say which leader a member follows in which term, and which index
is committed (already on a majority's disk), nothing about this member's log. They go out at
once, never queued behind held acknowledgements: a read waited for a follower's fsync of writes
it has nothing to do with (review: "read acks wait behind an unsynced journal"), and a leader's
answer held while its own journal is unsynced would hold up the AppendEntries queued behind it."""


class WarmTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport with two repairs, both seen under real partitions.

    - A tiny message to every connected peer each second. pysyncobj checks a link's idle
      timeout only when it sends, and then disconnects and drops the message.
      Follower-to-follower links carry nothing while a leader lives, so the first vote
      request of every election was dropped and elections needed extra rounds
      (scripts/bench_failover.py: terms +2/+3 for each failover). The receiving SyncObj
      ignores messages of a type it does not know.
    - A connect timeout. pysyncobj never abandons a socket in CONNECTING and never retries
      a link that is not DISCONNECTED; while packets are dropped the kernel backs off its
      SYN retries (1, 3, 7, 15, 31, 63 s), so after a long partition a link could stay
      down for a minute after the heal.

    And four for safety: every connection reads through ``wire.BoundedConnection``
    (bounded frames, restricted unpickling, checked reassembly); messages that
    acknowledge log entries wait for the fsync that covers them (``SENT_BEFORE_SYNC``);
    with a cluster secret nothing goes out on a link before its key exchange ends; and an
    incoming connection that has not named itself within ``HANDSHAKE_TIMEOUT_S`` is closed.
    """

    def __init__(
        self, syncObj: Any, selfNode: Any, otherNodes: Any, journal: DurableJournal | None = None
    ) -> None:
        self._next_ping = 0.0
        self._connecting_since: dict[Any, float] = {}
        self._accepted_at: dict[Any, float] = {}
        """When each connection still in the handshake was accepted."""
        self._guard = TransmissionGuard()
        self._journal = journal
        self._held: list[tuple[Any, Any, int]] = []
        """(peer, message, the journal's mutation count an fsync must cover before it goes)."""
        self._held_nodes: set[Any] = set()
        if journal is not None:
            journal.on_synced.append(self._release_held)
        super().__init__(syncObj, selfNode, otherNodes)

    # ---- wire safety -------------------------------------------------------------

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None:
            BoundedConnection.adopt(conn)

    def _onNewIncomingConnection(self, conn: Any) -> None:
        BoundedConnection.adopt(conn, frame_limit=MAX_HANDSHAKE_FRAME_BYTES)
        if len(self._unknownConnections) >= MAX_UNKNOWN_CONNECTIONS:
            conn.disconnect()
            return
        self._accepted_at[conn] = time.monotonic()
        super()._onNewIncomingConnection(conn)

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        # Before a peer is known it may say only its random key (with a secret) and then
        # its Raft address. pysyncobj would also take "readonly" (a member that is sent the
        # whole log) and admin "utility" commands (add, remove, transfer leadership...);
        # raftmesh uses neither, so a stranger gets no further than the handshake.
        key_exchange = bool(self._syncObj.encryptor) and not conn.sendRandKey
        if (key_exchange and isinstance(message, bytes)) or (
            not key_exchange and isinstance(message, str) and message in self._nodeAddrToNode
        ):
            super()._onIncomingMessageReceived(conn, message)
            if conn not in self._unknownConnections:  # the peer named itself: a member
                conn.frame_limit = MAX_FRAME_BYTES
            return
        self._unknownConnections.discard(conn)
        conn.disconnect()

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        admitted = self._guard.admit(node, message)
        if admitted is None:
            self._guard.forget(node)
            conn = self._connections.get(node)
            if conn is not None:
                conn.disconnect()
            return
        super()._onMessageReceived(node, admitted)

    # ---- acknowledgements wait for the fsync -------------------------------------

    def send(self, node: Any, message: Any) -> bool:
        journal = self._journal
        kind = message.get("type") if isinstance(message, dict) else None
        if (
            journal is not None
            and kind not in NEVER_HELD
            and (node in self._held_nodes or (journal.dirty and kind not in SENT_BEFORE_SYNC))
        ):
            # per-node order is kept: later ones queue behind
            self._held.append((node, message, 0 if kind in SENT_BEFORE_SYNC else journal.mutations))
            self._held_nodes.add(node)
            return True
        return self._send_now(node, message)

    def _send_now(self, node: Any, message: Any) -> bool:
        conn = self._connections.get(node)
        if conn is not None and conn.encryptor and not conn.sendRandKey:
            # pysyncobj marks an outgoing link CONNECTED when its TCP connect completes, before
            # the peer's random key arrives, and sent meanwhile without the key: the peer closed
            # the link on the first such message (a SIGSTOPped peer's kernel still accepts, so
            # it read a backlog of them on waking). Dropped instead, like a message to a peer
            # that is not connected; Raft sends again.
            return False
        return bool(super().send(node, message))

    def _release_held(self) -> None:
        """Send what the fsyncs done so far cover (the journal's fsync runs on its own thread, so
        entries appended after one began are not covered by it), in order per peer."""
        assert self._journal is not None
        synced = self._journal.synced_mutations
        held, self._held = self._held, []
        blocked: set[Any] = set()
        for node, message, need in held:
            if node in blocked or need > synced:
                blocked.add(node)
                self._held.append((node, message, need))
            else:
                self._send_now(node, message)
        self._held_nodes = blocked

    def _onTick(self) -> None:
        super()._onTick()
        now = time.monotonic()
        for node, conn in list(self._connections.items()):
            if conn.state == CONNECTION_STATE.CONNECTING:
                since = self._connecting_since.setdefault(node, now)
                if now - since > CONNECT_TIMEOUT_S:
                    del self._connecting_since[node]
                    conn.disconnect()  # the transport reconnects after connection_retry_s
            else:
                self._connecting_since.pop(node, None)
        unknown = self._unknownConnections
        for conn, accepted in list(self._accepted_at.items()):
            if conn not in unknown:
                del self._accepted_at[conn]
            elif now - accepted > HANDSHAKE_TIMEOUT_S:
                del self._accepted_at[conn]
                unknown.discard(conn)
                conn.disconnect()
        if now >= self._next_ping:
            self._next_ping = now + LINK_PING_S
            for node in list(self._nodes):
                self.send(node, {"type": "raftmesh_link_ping"})
