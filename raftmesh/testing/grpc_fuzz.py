"""Fuzz every RPC of a live node: hypothesis strategies built from each request message's descriptor,
mutated encodings and raw garbage bytes, sent through generic byte channels (no serializer, so the
node's own decoding is what is exercised). Used by ``tests/test_fuzz_grpc.py`` and ``scripts/fuzz.py``.

Needs ``hypothesis`` (the ``test`` extra).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

from ..proto.raftmesh.v1 import cluster_pb2

#: Every code a node may answer (README, gRPC API). UNKNOWN and INTERNAL mean a bug.
DOCUMENTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
    }
)

#: Deadlines: a call may legitimately wait (a lock, a request to an actor, a watch), never past these.
UNARY_DEADLINE_S = 1.0
STREAM_DEADLINE_S = 0.6
#: A call that has not returned this long after its deadline is a stuck call.
STUCK_SLACK_S = 5.0
#: Responses read from a stream before it is cancelled.
STREAM_READS = 2


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    path: str
    request: _d.Descriptor
    client_streaming: bool
    server_streaming: bool

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


def methods() -> list[Method]:
    """Every RPC of every service in ``cluster.proto``."""
    out = []
    for svc in cluster_pb2.DESCRIPTOR.services_by_name.values():
        for m in svc.methods:
            out.append(
                Method(
                    svc.name,
                    m.name,
                    f"/{svc.full_name}/{m.name}",
                    m.input_type,
                    m.client_streaming,
                    m.server_streaming,
                )
            )
    return out


# Lengths at and around the limits of README's table (ids 128, request ids / names 256, keys 512,
# reasons 1,024, prompts 2,000, errors 4,096) and one far over every string limit.
_EDGE_LENGTHS = [0, 1, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1024, 1025, 2001, 4097, 70_000]

_INT_EDGES: dict[int, list[int]] = {
    _d.FieldDescriptor.TYPE_INT32: [-(2**31), -1, 0, 1, 2**31 - 1],
    _d.FieldDescriptor.TYPE_SINT32: [-(2**31), -1, 0, 1, 2**31 - 1],
    _d.FieldDescriptor.TYPE_SFIXED32: [-(2**31), -1, 0, 1, 2**31 - 1],
    _d.FieldDescriptor.TYPE_INT64: [-(2**63), -1, 0, 1, 2**63 - 1],
    _d.FieldDescriptor.TYPE_SINT64: [-(2**63), -1, 0, 1, 2**63 - 1],
    _d.FieldDescriptor.TYPE_SFIXED64: [-(2**63), -1, 0, 1, 2**63 - 1],
    _d.FieldDescriptor.TYPE_UINT32: [0, 1, 2**31, 2**32 - 1],
    _d.FieldDescriptor.TYPE_FIXED32: [0, 1, 2**31, 2**32 - 1],
    _d.FieldDescriptor.TYPE_UINT64: [0, 1, 2**63, 2**64 - 1],
    _d.FieldDescriptor.TYPE_FIXED64: [0, 1, 2**63, 2**64 - 1],
}


def _text() -> st.SearchStrategy[str]:
    edge = st.sampled_from(_EDGE_LENGTHS).flatmap(
        lambda n: st.sampled_from(["x", "é", "-", " ", "\n", "/", "\u2028", "\x00"]).map(lambda c: c * n)
    )
    # Things a field might mean: ids, JSON, YAML, paths, addresses.
    shaped = st.sampled_from(
        [
            "{}",
            "[]",
            "null",
            '{"tasks": []}',
            '{"tasks": [{"id": "a", "agent": "echo"}]}',
            "tasks:\n- {id: a, agent: echo}\n",
            '{"a": NaN}',
            "1e400",
            "[" * 200 + "]" * 200,
            "n1",
            "echo",
            "a/b",
            "type/key",
            "*",
            "..",
        ]
    )
    return st.one_of(st.text(max_size=40), edge, shaped)


def _scalar(f: Any) -> st.SearchStrategy[Any]:
    t = f.type
    if t in _INT_EDGES:
        lo, hi = _INT_EDGES[t][0], _INT_EDGES[t][-1]
        return st.one_of(
            st.sampled_from(_INT_EDGES[t]),
            st.integers(lo, hi),
            st.integers(-5, 100).filter(lambda v: lo <= v <= hi),
        )
    if t in (_d.FieldDescriptor.TYPE_DOUBLE, _d.FieldDescriptor.TYPE_FLOAT):
        return st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e-308]),
            st.floats(
                allow_nan=True, allow_infinity=True, width=32 if t == _d.FieldDescriptor.TYPE_FLOAT else 64
            ),
        )
    if t == _d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == _d.FieldDescriptor.TYPE_STRING:
        return _text()
    if t == _d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64),
            st.sampled_from([b"\x80\x81", b"\xc1", b"\x92\x01", b'{"a":1}', b"\xff" * 300_000]),
        )
    if t == _d.FieldDescriptor.TYPE_ENUM:
        # proto3 enums are open: unknown numbers decode and reach the service.
        return st.one_of(
            st.sampled_from([v.number for v in f.enum_type.values]), st.integers(-(2**31), 2**31 - 1)
        )
    raise AssertionError(f"unhandled field type {t} of {f.full_name}")


def _fill(msg: Message, draw: Any, depth: int) -> None:
    for f in list[Any](msg.DESCRIPTOR.fields):
        if not draw(st.booleans()):
            continue
        repeated = f.is_repeated
        is_msg = f.type == _d.FieldDescriptor.TYPE_MESSAGE
        if is_msg and f.message_type.GetOptions().map_entry:
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            target = getattr(msg, f.name)
            for _ in range(draw(st.integers(0, 3))):
                k = draw(_scalar(kf))
                if vf.type == _d.FieldDescriptor.TYPE_MESSAGE:
                    if depth < 3:
                        _fill(target[k], draw, depth + 1)
                else:
                    target[k] = draw(_scalar(vf))
            continue
        if is_msg and depth >= 3:
            continue
        if repeated:
            # Mostly a few; sometimes far more than any handler expects ("deep repeats").
            n = draw(st.one_of(st.integers(0, 3), st.sampled_from([65, 129, 257, 1025, 5001])))
            target = getattr(msg, f.name)
            if is_msg:
                for i in range(n):
                    item = target.add()
                    if i < 3:
                        _fill(item, draw, depth + 1)
            else:
                v = draw(_scalar(f))
                extra = [draw(_scalar(f)) for _ in range(min(n, 3))]
                target.extend(extra + [v] * max(0, n - len(extra)))
            continue
        if is_msg:
            _fill(getattr(msg, f.name), draw, depth + 1)
            getattr(msg, f.name).SetInParent()
        else:
            setattr(msg, f.name, draw(_scalar(f)))


@st.composite
def messages_for(draw: Any, desc: _d.Descriptor) -> Message:
    """A message of type ``desc`` with random fields (edge values and sizes included)."""
    msg = message_factory.GetMessageClass(desc)()
    _fill(msg, draw, 0)
    return msg


@st.composite
def mutated(draw: Any, data: bytes) -> bytes:
    """``data`` with bytes flipped, inserted, cut or duplicated: mostly malformed wire encodings."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "truncate", "dup", "varint"]))
        if op == "flip" and b:
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        elif op == "insert":
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate" and b:
            del b[draw(st.integers(0, len(b) - 1)) :]
        elif op == "dup":
            b += b[: draw(st.integers(0, len(b)))]
        elif op == "varint":
            # An overlong length prefix: a field claiming more bytes than follow.
            i = draw(st.integers(0, len(b)))
            b[i:i] = bytes([draw(st.integers(0, 255)) & 0xF8 | 2]) + b"\xff\xff\xff\xff\x0f"
    return bytes(b)


@dataclass(frozen=True)
class Case:
    method: Method
    payloads: tuple[bytes, ...]  # one for a unary request; the frames of a client stream
    kind: str

    def __repr__(self) -> str:
        sizes = [len(p) for p in self.payloads]
        return f"Case({self.method}, {self.kind}, sizes={sizes}, head={self.payloads[0][:64]!r})"


def cases(methods_: list[Method] | None = None) -> st.SearchStrategy[Case]:
    """A method and request bytes: a random message, a mutated encoding of one, or garbage."""
    ms = methods_ or methods()

    @st.composite
    def one(draw: Any) -> Case:
        m = draw(st.sampled_from(ms))
        kind = draw(st.sampled_from(["message", "mutated", "garbage"]))
        frames = draw(st.integers(1, 3)) if m.client_streaming else 1
        out = []
        for _ in range(frames):
            if kind == "garbage":
                out.append(draw(st.binary(max_size=256)))
                continue
            raw = draw(messages_for(m.request)).SerializeToString()
            out.append(draw(mutated(raw)) if kind == "mutated" else raw)
        return Case(m, tuple(out), kind)

    return one()


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    seconds: float
    responses: int


@dataclass
class Tally:
    tried: int = 0
    by_code: dict[str, int] = field(default_factory=dict)

    def add(self, o: Outcome) -> None:
        self.tried += 1
        self.by_code[o.code.name] = self.by_code.get(o.code.name, 0) + 1


def call(
    channel: grpc.Channel, case: Case, metadata: tuple[tuple[str, str | bytes], ...] | None = None
) -> Outcome:
    """Send ``case`` as raw bytes (with ``metadata``, e.g. a credential); read at most
    ``STREAM_READS`` responses of a stream, then cancel."""
    m = case.method
    deadline = STREAM_DEADLINE_S if m.server_streaming else UNARY_DEADLINE_S
    start = time.monotonic()
    responses = 0
    try:
        if not m.client_streaming and not m.server_streaming:
            channel.unary_unary(m.path, request_serializer=None, response_deserializer=None)(
                case.payloads[0], timeout=deadline, metadata=metadata
            )
            return Outcome(grpc.StatusCode.OK, "", time.monotonic() - start, 1)
        if m.client_streaming:
            it: Any = channel.stream_stream(m.path, request_serializer=None, response_deserializer=None)(
                iter(case.payloads), timeout=deadline, metadata=metadata
            )
        else:
            it = channel.unary_stream(m.path, request_serializer=None, response_deserializer=None)(
                case.payloads[0], timeout=deadline, metadata=metadata
            )
        try:
            for _ in it:
                responses += 1
                if responses >= STREAM_READS:
                    break
            else:
                return Outcome(grpc.StatusCode.OK, "", time.monotonic() - start, responses)
        finally:
            it.cancel()
        return Outcome(
            grpc.StatusCode.CANCELLED, "cancelled by the fuzzer", time.monotonic() - start, responses
        )
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", time.monotonic() - start, responses)


@functools.cache
def unserved() -> frozenset[str]:
    """Methods of the proto that no servicer of this tree implements yet (their base class's
    ``UNIMPLEMENTED`` stub answers): the only calls that may answer ``UNIMPLEMENTED``."""
    from ..node.coordination_service import KvService, LocksService
    from ..node.messages_service import MessagesService
    from ..node.peers import PeerService
    from ..node.service import ClusterService
    from ..proto.raftmesh.v1 import cluster_pb2_grpc as pb_grpc

    out = set()
    for svc, impl in [
        ("Cluster", ClusterService),
        ("Kv", KvService),
        ("Locks", LocksService),
        ("Messages", MessagesService),
        ("Peer", PeerService),
    ]:
        base = getattr(pb_grpc, f"{svc}Servicer")
        for m in methods():
            if m.service == svc and getattr(impl, m.name) is getattr(base, m.name):
                out.add(str(m))
    return frozenset(out)


def check(case: Case, o: Outcome) -> None:
    """The promise: a documented code, and no call that outlives its deadline."""
    m = case.method
    deadline = STREAM_DEADLINE_S if m.server_streaming else UNARY_DEADLINE_S
    if o.code == grpc.StatusCode.UNIMPLEMENTED and str(m) in unserved():
        return
    assert o.code in DOCUMENTED_CODES, f"{case!r} answered {o.code.name}: {o.details}"
    assert o.seconds <= deadline + STUCK_SLACK_S, (
        f"{case!r} took {o.seconds:.1f}s past a {deadline}s deadline"
    )


def fixed_cases() -> Iterator[Case]:
    """Every RPC with: an empty request, garbage bytes, a truncated field and an overlong length."""
    for m in methods():
        for kind, payload in [
            ("empty", b""),
            ("garbage", b"\xff\xfe\xfd\x00\x01garbage"),
            ("truncated", b"\x0a\x05ab"),
            ("overlong", b"\x0a\xff\xff\xff\xff\x0f"),
            ("unknown-field", b"\xf8\xff\x7f\x01"),
        ]:
            yield Case(m, (payload,), kind)


def serves(
    channel: grpc.Channel, registered: bool = False, metadata: tuple[tuple[str, str], ...] | None = None
) -> bool:
    """Does the node still answer ``ClusterStatus`` with a leader (and, with ``registered``,
    list every member up with its agents)? ``metadata``: a credential, on a secured node."""
    stub = channel.unary_unary(
        "/raftmesh.v1.Cluster/ClusterStatus",
        request_serializer=cluster_pb2.ClusterStatusRequest.SerializeToString,
        response_deserializer=cluster_pb2.ClusterStatusResponse.FromString,
    )
    try:
        st_ = stub(cluster_pb2.ClusterStatusRequest(), timeout=5.0, metadata=metadata)
    except grpc.RpcError:
        return False
    if registered and not (st_.members and all(m.up and m.agents for m in st_.members)):
        return False
    return bool(st_.leader)


def open_channel(address: str) -> grpc.Channel:
    # The node accepts up to the gRPC message limit (16 MiB); match it so oversized-field cases reach it.
    return grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )


# ---- a node with a tokens file: credentials nobody should get past --------------------------------

#: What a fuzzed call presents (``auth_cases``): nothing, a garbage ``authorization`` header (junk,
#: an unknown scheme, an overlong or binary value), a reader's token, a forged node credential.
AUTH_KINDS = ("none", "garbage", "reader", "forged-node")

#: Past this many bytes, gRPC itself refuses a request's headers (its default 8 KiB header list
#: limit) before the node sees them: the transport answers, with a code of its own.
HEADER_LIST_LIMIT = 8 * 1024


@dataclass(frozen=True)
class AuthCase:
    case: Case
    kind: str
    metadata: tuple[tuple[str, str | bytes], ...]

    def __repr__(self) -> str:
        shown = [(k, v if len(v) <= 80 else f"{v[:40]!r}...({len(v)} chars)") for k, v in self.metadata]
        return f"AuthCase({self.case!r}, {self.kind}, {shown})"

    @property
    def header_bytes(self) -> int:
        return sum(len(k) + len(v) for k, v in self.metadata)


def _garbage_header() -> st.SearchStrategy[tuple[tuple[str, str | bytes], ...]]:
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
    value = st.one_of(
        printable,
        st.sampled_from(["Bearer", "Bearer ", "bearer  ", "Node", "Node ", "Node :", "Basic dXNlcjpwYXNz"]),
        printable.map(lambda s: "Bearer " + s),
        printable.map(lambda s: "Node " + s),
        # Overlong: past the tokens file's 512-char limit, and past gRPC's header list limit.
        st.sampled_from([513, 4096, 20_000]).map(lambda n: "Bearer " + "x" * n),
        st.sampled_from(["Bearer ", "Node n1:"]).flatmap(
            lambda p: st.integers(1, 600).map(lambda n: p + "a" * n)
        ),
    )
    binary = st.binary(max_size=64).map(lambda b: (("authorization-bin", b),))
    twice = st.tuples(printable, printable).map(
        lambda ab: (("authorization", "Bearer " + ab[0]), ("authorization", ab[1]))
    )
    return st.one_of(value.map(lambda v: (("authorization", v),)), binary, twice)


def _forged_node(secret: str) -> st.SearchStrategy[tuple[tuple[str, str | bytes], ...]]:
    """``Node ID:HMAC`` that is not the cluster's: a random MAC, one made with another secret, the
    right MAC for another id, a truncated or case-changed right one."""
    from ..security.tokens import node_hmac

    ids = st.sampled_from(["n1", "n2", "n9", "node", "a" * 128, "a" * 129, "n1:n1", ""])
    hexes = st.text("0123456789abcdef", min_size=0, max_size=70)

    def forge(draw_id: str, how: str, junk: str) -> str:
        right = node_hmac(secret, draw_id)
        mac = {
            "random": junk,
            "other-secret": node_hmac(secret + "x", draw_id),
            "other-id": node_hmac(secret, draw_id + "x"),
            "truncated": right[:-1],
            "upper": right.upper(),
            "extended": right + "0",
        }[how]
        return f"Node {draw_id}:{mac}"

    how = st.sampled_from(["random", "other-secret", "other-id", "truncated", "upper", "extended"])
    return st.builds(forge, ids, how, hexes).map(lambda v: (("authorization", v),))


def auth_cases(
    reader_token: str, secret: str, methods_: list[Method] | None = None
) -> st.SearchStrategy[AuthCase]:
    """A fuzzed request (``cases``) with one of ``AUTH_KINDS`` as its credential."""
    metadata = {
        "none": st.just(()),
        "garbage": _garbage_header(),
        "reader": st.just((("authorization", f"Bearer {reader_token}"),)),
        "forged-node": _forged_node(secret),
    }

    @st.composite
    def one(draw: Any) -> AuthCase:
        case = draw(cases(methods_))
        kind = draw(st.sampled_from(AUTH_KINDS))
        return AuthCase(case, kind, draw(metadata[kind]))

    return one()


def check_auth(ac: AuthCase, o: Outcome) -> None:
    """On a node with a tokens file: a call without a valid credential is refused UNAUTHENTICATED
    (whatever its method and body: credentials are checked first); a reader's call to a method
    that needs more is refused PERMISSION_DENIED; everything else as ``check``."""
    from ..security.roles import OPEN, Role, allows, required_role

    check(ac.case, o)
    path = ac.case.method.path
    if ac.header_bytes > HEADER_LIST_LIMIT:
        # gRPC refuses the headers before the node's interceptor runs; the code is the transport's.
        assert o.code != grpc.StatusCode.OK, f"{ac!r} was answered OK"
        return
    if ac.kind == "reader":
        if not allows(Role.READER, path):
            assert o.code == grpc.StatusCode.PERMISSION_DENIED, f"{ac!r} answered {o.code.name}: {o.details}"
        else:
            assert o.code != grpc.StatusCode.UNAUTHENTICATED, f"{ac!r} answered {o.code.name}: {o.details}"
    elif required_role(path) != OPEN:
        assert o.code == grpc.StatusCode.UNAUTHENTICATED, f"{ac!r} answered {o.code.name}: {o.details}"


# ---- raw HTTP/2: header bytes no gRPC client sends --------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1


@dataclass
class RawAnswer:
    ended: bool = False
    """The stream was closed: trailers (END_STREAM), RST_STREAM, GOAWAY or the connection closed."""
    data: bool = False
    """A response message (a DATA frame with bytes) came back on the stream."""
    frames: list[tuple[int, int, int]] = field(default_factory=list)
    """(type, flags, stream id) of every frame read."""


def _hpack_int(n: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (the string-length form, Huffman bit clear)."""
    if n < 127:
        return bytes([n])
    out, n = bytearray([127]), n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    # Literal header field without indexing, new name (RFC 7541 6.2.2): the bytes go as they are.
    return b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def raw_http2_call(
    address: str, path: str, body: bytes, authorization: bytes, timeout_s: float = 5.0
) -> RawAnswer:
    """One unary gRPC call on a hand-made HTTP/2 connection whose ``authorization`` header is any
    bytes (gRPC clients refuse to send a non-printable header value); what came back."""
    import socket

    host, port = address.rsplit(":", 1)
    block = b"".join(
        _literal(k, v)
        for k, v in (
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", address.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"authorization", authorization),
        )
    )
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    answer = RawAnswer()
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, b"")
            + _frame(_HEADERS, _END_HEADERS, 1, block)
            + _frame(_DATA, _END_STREAM, 1, message)
        )
        buf = b""
        while not answer.ended and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionError:  # reset by the node: the stream ended with the connection
                answer.ended = True
                break
            if not chunk:
                answer.ended = True
                break
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n = int.from_bytes(buf[:3], "big")
                kind, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9 : 9 + n], buf[9 + n :]
                answer.frames.append((kind, flags, stream))
                if kind == _SETTINGS and not flags & _ACK:
                    sock.sendall(_frame(_SETTINGS, _ACK, 0, b""))
                elif kind == _PING and not flags & _ACK:
                    sock.sendall(_frame(_PING, _ACK, 0, payload))
                elif stream == 1 and kind == _DATA and payload:
                    answer.data = True
                if (
                    (stream == 1 and kind in (_DATA, _HEADERS) and flags & _END_STREAM)
                    or (stream == 1 and kind == _RST_STREAM)
                    or kind == _GOAWAY
                ):
                    answer.ended = True
    return answer
