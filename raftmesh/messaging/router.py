"""``MessageRouter``: every message that leaves or reaches this node goes through it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ..clock import Clock
from ..consensus.commands import Fence, Message
from ..consensus.results import Event
from ..node.access import Writer
from ..node.reads import ReadView
from ..proto.raftmesh.v1 import cluster_pb2 as pb
from .api import Deliver, Sent


class MessageRouter:
    """Routes messages for one node.

    - ``send``: durable -> one ``SendMessages`` command (committed when it returns); fast ->
      resolve the target's activation from the local replica (``Activate`` through the log if
      it has none), then over the peer stream to that node (or straight to the local actor
      host), returning once that node accepted it. Retries with backoff while the target
      moves or its inbox is full; past the TTL the message is dead-lettered
      (``RecordDeadLetters``) and ``send`` raises ``DeadlineExceeded``.
    - ``request``: ``send`` with ``reply_to`` this node, then wait for the reply (fast: from the
      peer stream; durable: the reply committed with the handler's ack).
    - ``reply``: a handler's answer to a fast request, to the requesting node.
    - ``subscribe``: a topic's publishes for a client stream (retained durable ones first if
      ``from_start``, then live durable and fast ones).
    - ``serve_exchange``: the ``Peer.Exchange`` stream from another node.
    """

    def __init__(
        self,
        node_id: str,
        incarnation: str,
        reads: ReadView,
        writer: Writer,
        clock: Clock,
        grpc_of: Callable[[str], str | None],
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._reads = reads
        self._writer = writer
        self._clock = clock
        self._grpc_of = grpc_of
        """node id -> its gRPC address (from the replicated members), None if unknown."""
        self._deliver: Deliver | None = None
        self.stats: dict[str, int] = {}

    def attach(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def run(self) -> None:
        raise NotImplementedError

    def applied(self, events: list[Event]) -> None:
        """Called on the loop after every applied batch (replies, publishes, activations moved)."""

    async def send(self, msg: Message, fence: Fence | None = None) -> Sent:
        raise NotImplementedError

    async def request(self, msg: Message, timeout_s: float, fence: Fence | None = None) -> Message:
        raise NotImplementedError

    def reply(self, reply: Message) -> None:
        raise NotImplementedError

    def subscribe(self, topic: str, from_start: bool) -> AsyncIterator[Message]:
        raise NotImplementedError

    def serve_exchange(
        self, request_iterator: AsyncIterator[pb.PeerFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PeerFrame]:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return dict(self.stats)
