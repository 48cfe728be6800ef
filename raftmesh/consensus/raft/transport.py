"""pysyncobj's TCP transport with the repairs that real partitions needed."""

from __future__ import annotations

import time
from typing import Any

from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

LINK_PING_S = 1.0
"""Every Raft link carries a message at least this often (must be < connection_timeout_s)."""


CONNECT_TIMEOUT_S = 2.0
"""A connect attempt that has not completed in this long is abandoned and retried."""


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
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._next_ping = 0.0
        self._connecting_since: dict[Any, float] = {}
        super().__init__(syncObj, selfNode, otherNodes)

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
        if now >= self._next_ping:
            self._next_ping = now + LINK_PING_S
            for node in list(self._nodes):
                self.send(node, {"type": "raftmesh_link_ping"})
