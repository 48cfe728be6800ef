"""``AgentMessage`` (protobuf) <-> ``Message`` (the log's and the peer streams' form).

The payload is bytes (``payload_bytes``) or a JSON value (``payload_json``); a JSON text
is parsed with the same rules as every value the cluster stores (``consensus.values``).
"""

from __future__ import annotations

import hashlib
import json

from ..consensus import values
from ..consensus.commands import Message
from ..errors import InvalidArgument
from ..proto.raftmesh.v1 import cluster_pb2 as pb


def message_from_pb(m: pb.AgentMessage) -> Message:
    """The message a client or peer sent; a payload that is not JSON is INVALID_ARGUMENT."""
    kind = m.WhichOneof("payload")
    if kind == "payload_bytes":
        payload: object = bytes(m.payload_bytes)
    elif kind == "payload_json" and m.payload_json:
        try:
            payload = values.parse(m.payload_json)
        except values.BadValue as exc:
            raise InvalidArgument(f"message payload_json: {exc}") from None
    else:
        payload = None
    return Message(
        id=m.id,
        sender=m.sender,
        target=m.target,
        topic=m.topic,
        type=m.type,
        payload=payload,
        correlation_id=m.correlation_id,
        trace_id=m.trace_id,
        priority=m.priority,
        ttl_ms=m.ttl_ms,
        sent_ms=m.sent_ms,
        durable=m.durable,
        reply_to=m.reply_to,
        source=m.source,
        epoch=m.epoch,
    )


def message_to_pb(m: Message, seq: int = 0) -> pb.AgentMessage:
    out = pb.AgentMessage(
        id=m.id,
        sender=m.sender,
        target=m.target,
        topic=m.topic,
        type=m.type,
        correlation_id=m.correlation_id,
        trace_id=m.trace_id,
        priority=m.priority,
        ttl_ms=m.ttl_ms,
        durable=m.durable,
        sent_ms=m.sent_ms,
        source=m.source,
        reply_to=m.reply_to,
        epoch=m.epoch,
        seq=seq,
    )
    if isinstance(m.payload, bytes):
        out.payload_bytes = m.payload
    else:
        out.payload_json = json.dumps(m.payload, ensure_ascii=False, separators=(",", ":"))
    return out


def send_request_id(sender: str, message_id: str) -> str:
    """The request id of a durable send: the same (sender, id) is the same command, whoever
    retries; another sender's message with the same id is another command (ids are per sender)."""
    digest = hashlib.sha256(f"{sender}\n{message_id}".encode()).hexdigest()[:40]
    return f"msg-{digest}"
