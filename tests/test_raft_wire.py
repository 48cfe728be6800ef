"""The Raft port runs no code for anyone and holds no more than a bounded frame (issue 7, item 12)."""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from pysyncobj import pickle as so_pickle
from pysyncobj.encryptor import getEncryptor
from pysyncobj.node import TCPNode
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from raftmesh import DAG
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.raft import RaftConfig, RaftMember, RaftTimings, wire
from raftmesh.consensus.raft.transport import HANDSHAKE_TIMEOUT_S
from raftmesh.localcluster import LocalCluster, free_ports, wait_until
from raftmesh.storage.snapshots import LmdbSnapshotIO

# ---- the restricted unpickler ------------------------------------------------------


class _Exploit:
    """Unpickling this (with plain pickle) creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return (os.system, (f"touch {self.path}",))


def _real_messages() -> list[Any]:
    command = b"\x00" + so_pickle.dumps((0, (b"\x91\x80payload",)))
    node = TCPNode("127.0.0.1:7151")
    return [
        {
            "type": "append_entries",
            "term": 3,
            "commit_index": 9,
            "entries": [(command, 10, 3)],
            "prevLogIdx": 9,
            "prevLogTerm": 3,
        },
        {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"chunk", True, False)},
        {"type": "next_node_idx", "next_node_idx": 11, "reset": False, "success": True},
        {"type": "request_vote", "term": 4, "last_log_index": 10, "last_log_term": 3},
        {"type": "response_vote", "term": 4},
        {"type": "apply_command", "command": command, "request_id": 7},
        (os.urandom(32), {"type": "raftmesh_link_ping"}),
        b"",
        ((command, 10, 3), (command, 9, 3), {node, TCPNode("127.0.0.1:7152")}),  # snapshot meta
        0,
        "127.0.0.1:7151",
    ]


@pytest.mark.parametrize("message", _real_messages())
def test_loads_accepts_what_pysyncobj_sends(message: Any) -> None:
    data = so_pickle.dumps(message)  # pysyncobj's own encoder (protocol 2)
    assert wire.loads(data) == message


def test_loads_refuses_code_and_allocation_bombs(tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(wire.RefusedPickle, match=r"posix\.system"):
        wire.loads(pickle.dumps(_Exploit(str(marker)), 2))
    with pytest.raises(wire.RefusedPickle, match=r"builtins\.open"):
        wire.loads(
            b"cbuiltins\nopen\n(X"
            + struct.pack("<I", len(str(marker)))
            + str(marker).encode()
            + b"X\x01\x00\x00\x00wtR."
        )
    # bytes(2**31) would allocate 2 GiB; only bytes() is admitted
    with pytest.raises(wire.RefusedPickle, match="bytes"):
        wire.loads(b"c__builtin__\nbytes\n(J\xff\xff\xff\x7ftR.")
    # _codecs.encode with an inflating codec
    with pytest.raises(wire.RefusedPickle, match="codec"):
        wire.loads(pickle.dumps(b"x", 2).replace(b"latin1", b"zlib_c"))
    assert not marker.exists()


def test_inflate_is_bounded() -> None:
    bomb = zlib.compress(b"\0" * (wire.MAX_MESSAGE_BYTES + 1), 9)
    assert len(bomb) < 100_000
    with pytest.raises(wire.FrameRefused, match="inflates past"):
        wire.inflate(bomb)
    assert wire.inflate(zlib.compress(b"ok")) == b"ok"


def test_transmission_guard_refuses_a_reassembled_exploit(tmp_path: Any) -> None:
    evil = pickle.dumps(_Exploit(str(tmp_path / "pwned")), 2)
    guard = wire.TransmissionGuard()
    piece = {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 1}
    assert guard.admit("n2", dict(piece, transmission="start", data=evil[:10])) is not None
    assert guard.admit("n2", dict(piece, transmission="finish", data=evil[10:])) is None
    assert guard.admit("n2", [1, 2]) is None  # not a message at all


def test_transmission_guard_relabels_pysyncobjs_early_finish() -> None:
    """pysyncobj marks "finish" at the command's length; the pickled entry is longer."""
    command = b"\x00" + so_pickle.dumps((0, (bytes(range(256)) * 300,)))
    entry = so_pickle.dumps((command, 5, 1))
    batch = 2**16
    pieces = [entry[pos : pos + batch] for pos in range(0, len(entry), batch)]
    # exactly as pysyncobj's __sendAppendEntries labels them
    labels = [
        "start" if pos == 0 else "finish" if pos + batch >= len(command) else "process"
        for pos in range(0, len(entry), batch)
    ]
    assert labels.count("finish") >= 2, labels
    guard = wire.TransmissionGuard()
    piece = {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 4, "prevLogTerm": 1}
    delivered = [
        guard.admit("n2", dict(piece, transmission=label, data=data))
        for label, data in zip(labels, pieces, strict=True)
    ]
    assert all(m is not None for m in delivered)
    assert [m["transmission"] for m in delivered] == [*["start"], *["process"] * (len(pieces) - 2), "finish"]
    assert so_pickle.loads(b"".join(m["data"] for m in delivered)) == (command, 5, 1)


# ---- the handshake ----------------------------------------------------------------------


_encryptor = cache(getEncryptor)  # PBKDF2 of 100,000 rounds: once per secret


def _frame(
    payload: bytes, secret: str | None = None, link: tuple[bytes, bytes] | None = None, seq: int = 0
) -> bytes:
    """A frame as ``BoundedConnection.send`` builds one: a direction's first under the secret's
    own key with a random nonce, later ones under the key of ``link`` (the receiver's random
    bytes, the sender's), numbered."""
    if secret is None:
        return wire.seal(payload)
    nonce = os.urandom(12) if link is None else wire.sequence_nonce(seq)
    return wire.seal(payload, wire.link_cipher(_encryptor(secret), *(link or ())), nonce)


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """(the peer's end, ours) of one TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        theirs = socket.create_connection(srv.getsockname(), timeout=10)
        ours, _ = srv.accept()
    ours.setblocking(False)
    return theirs, ours


def _pump(poller: Any, done: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Run the poller (as pysyncobj's tick does) until ``done()``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        poller.poll(0.05)


def _incoming(poller: Any, sock: socket.socket, names_itself: bool) -> tuple[Any, list[Any]]:
    """An incoming connection as ``WarmTransport`` adopts it, and the messages it delivers.

    With ``names_itself`` its first message ends the handshake (``WarmTransport`` then raises
    the limit); otherwise it stays in the handshake (a key exchange has more to come).
    """
    got: list[Any] = []
    conn = wire.BoundedConnection.adopt(
        TcpConnection(poller, socket=sock, timeout=30.0), frame_limit=wire.MAX_HANDSHAKE_FRAME_BYTES
    )

    def on_message(message: Any) -> None:
        got.append(message)
        if names_itself:
            conn.frame_limit = wire.MAX_FRAME_BYTES

    conn.setOnMessageReceivedCallback(on_message)
    return conn, got


def _send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    return sender


def test_a_large_frame_right_behind_the_peers_name_is_read() -> None:
    """A member names itself and at once sends a catch-up AppendEntries (up to a MiB).

    Both arrive in one read; the handshake limit (64 KiB) is for the frames before the name.
    """
    poller = createPoller("auto")
    theirs, ours = _loopback_pair()
    conn, got = _incoming(poller, ours, names_itself=True)
    catch_up = {
        "type": "append_entries",
        "term": 2,
        "commit_index": 7,
        "entries": [(os.urandom(300_000), 7, 2)],  # incompressible: a frame of ~450 KB
        "prevLogIdx": 6,
        "prevLogTerm": 2,
    }
    big = _frame(so_pickle.dumps(catch_up))
    assert len(big) > wire.MAX_HANDSHAKE_FRAME_BYTES
    sender = _send_in_background(theirs, _frame(so_pickle.dumps("127.0.0.1:7152")) + big)
    try:
        _pump(poller, lambda: len(got) == 2 or conn.state == CONNECTION_STATE.DISCONNECTED, "both messages")
        assert got == ["127.0.0.1:7152", catch_up]
        assert conn.state == CONNECTION_STATE.CONNECTED
    finally:
        conn.disconnect()
        theirs.close()
        sender.join(10)


def test_what_the_socket_did_not_take_goes_without_another_send() -> None:
    """A message larger than the socket buffers is delivered whole by the poller alone.

    pysyncobj flushed the rest only on the link's next send: a follower catching up got ~128 KB
    per leader message (a ring partition's leader then committed nothing for 9 s)."""
    poller = createPoller("auto")
    theirs, ours = _loopback_pair()
    theirs.setblocking(False)
    sender = wire.BoundedConnection.adopt(TcpConnection(poller, socket=theirs, timeout=30.0))
    conn, got = _incoming(poller, ours, names_itself=True)
    try:
        for _ in range(3):  # the sender's first write event finds nothing to send: unwatched since
            poller.poll(0.01)
        catch_up = {"type": "append_entries", "entries": [(os.urandom(4_000_000), 7, 2)]}
        sender.send("127.0.0.1:7152")
        sender.send(catch_up)
        assert sender.getSendBufferSize() > 0  # more than the socket buffers take at once
        _pump(poller, lambda: len(got) == 2 or conn.state == CONNECTION_STATE.DISCONNECTED, "the catch-up")
        assert got == ["127.0.0.1:7152", catch_up]
    finally:
        conn.disconnect()
        sender.disconnect()


def test_frames_of_the_handshake_keep_the_handshake_limit() -> None:
    poller = createPoller("auto")
    # a first frame over the limit: refused on its header
    theirs, ours = _loopback_pair()
    conn, got = _incoming(poller, ours, names_itself=True)
    theirs.sendall(struct.pack("i", wire.MAX_HANDSHAKE_FRAME_BYTES + 1) + b"x" * 64)
    _pump(poller, lambda: conn.state == CONNECTION_STATE.DISCONNECTED, "the refusal")
    assert got == []
    theirs.close()
    # a second one, buffered behind a first that did not end the handshake: refused too
    theirs, ours = _loopback_pair()
    conn, got = _incoming(poller, ours, names_itself=False)
    big = _frame(os.urandom(wire.MAX_HANDSHAKE_FRAME_BYTES))
    sender = _send_in_background(theirs, _frame(so_pickle.dumps(os.urandom(32))) + big)
    try:
        _pump(poller, lambda: conn.state == CONNECTION_STATE.DISCONNECTED, "the refusal")
        assert len(got) == 1
    finally:
        theirs.close()
        sender.join(10)


def test_a_large_payload_that_hardly_compresses_is_sent_as_it_is() -> None:
    """Compressing such a payload cost the leader's Raft thread ~7 ms per 240 KB per follower."""
    text = "".join(map(chr, random.Random(1).choices(range(0x4E00, 0x9FA0), k=80_000))).encode()
    for payload, compressed in ((text, False), (os.urandom(100_000), False), (b"ab" * 50_000, True)):
        body = wire.seal(payload)[4:]
        assert body[0] == int(compressed), len(payload)
        assert wire.unseal(body) == payload


def test_sealed_frames_are_authenticated_numbered_and_bound_to_their_link() -> None:
    receiver, sender = os.urandom(32), os.urandom(32)
    link, enc = (receiver, sender), _encryptor("s")
    cipher = wire.link_cipher(enc, *link)
    small, large = so_pickle.dumps("x" * 100), so_pickle.dumps("y" * (wire.COMPRESS_ABOVE_BYTES + 1))
    frames = [_frame(p, "s", link, seq)[4:] for seq, p in enumerate((small, large))]
    assert frames[0][0] == 0 and frames[1][0] == 1  # only the large pickle is compressed
    assert len(frames[1]) < len(large) // 10
    assert [wire.unseal(f, cipher, wire.sequence_nonce(i)) for i, f in enumerate(frames)] == [small, large]
    refused = [
        (frames[0], cipher, wire.sequence_nonce(1)),  # replayed
        (frames[1], cipher, wire.sequence_nonce(0)),  # reordered
        # other links (either side's bytes differ), the other direction, the secret's own key
        (frames[0], wire.link_cipher(enc, os.urandom(32), sender), wire.sequence_nonce(0)),
        (frames[0], wire.link_cipher(enc, receiver, os.urandom(32)), wire.sequence_nonce(0)),
        (frames[0], wire.link_cipher(enc, sender, receiver), wire.sequence_nonce(0)),
        (frames[0], wire.link_cipher(enc), None),
        (frames[0], wire.link_cipher(_encryptor("other secret"), *link), wire.sequence_nonce(0)),
        (bytes([1]) + frames[0][1:], cipher, wire.sequence_nonce(0)),  # flags flipped
        (bytes([2]) + frames[0][1:], cipher, wire.sequence_nonce(0)),  # unknown flag
        (frames[0][:-1], cipher, wire.sequence_nonce(0)),  # truncated
        (frames[0][:5], cipher, wire.sequence_nonce(0)),
        (b"", cipher, wire.sequence_nonce(0)),
        (wire.seal(small)[4:], cipher, wire.sequence_nonce(0)),  # plaintext
    ]
    for body, key, nonce in refused:
        with pytest.raises(wire.FrameRefused):
            wire.unseal(body, key, nonce)
    bomb = zlib.compress(b"\0" * (wire.MAX_MESSAGE_BYTES + 1), 9)
    with pytest.raises(wire.FrameRefused):
        wire.unseal(bytes([1]) + bomb)


def test_no_link_key_comes_from_one_sides_random_bytes() -> None:
    """A stranger can replay the bytes a side sent; a key of those alone repeats on every replay."""
    r = os.urandom(32)
    for one_side in ((r, None), (None, r), (r, b""), (b"x", r)):
        with pytest.raises(wire.FrameRefused):
            wire.link_cipher(_encryptor("s"), *one_side)


def test_a_replayed_frame_closes_the_link() -> None:
    """pysyncobj's Fernet check took any frame no older than the last one's second."""
    poller = createPoller("auto")
    theirs, ours = _loopback_pair()
    conn, got = _incoming(poller, ours, names_itself=True)
    conn.encryptor, conn.recvRandKey, conn.sendRandKey = _encryptor("s"), os.urandom(32), os.urandom(32)
    link = (conn.recvRandKey, conn.sendRandKey)
    first = _frame(so_pickle.dumps((conn.recvRandKey, "one")), "s")  # a direction's first: the secret's key
    second = _frame(so_pickle.dumps((conn.recvRandKey, "two")), "s", link, 0)
    third = _frame(so_pickle.dumps((conn.recvRandKey, "three")), "s", link, 1)
    try:
        theirs.sendall(first + second + third)
        _pump(poller, lambda: len(got) == 3, "the frames")
        assert got == ["one", "two", "three"] and conn.state == CONNECTION_STATE.CONNECTED
        theirs.sendall(second)
        _pump(poller, lambda: conn.state == CONNECTION_STATE.DISCONNECTED, "the refusal")
        assert got == ["one", "two", "three"]
    finally:
        conn.disconnect()
        theirs.close()
    # a second frame under the secret's own key (a first frame replayed, or a stranger's): refused
    theirs, ours = _loopback_pair()
    conn, got = _incoming(poller, ours, names_itself=True)
    conn.encryptor, conn.recvRandKey, conn.sendRandKey = _encryptor("s"), os.urandom(32), os.urandom(32)
    try:
        again = _frame(so_pickle.dumps((conn.recvRandKey, "one")), "s")
        theirs.sendall(again + _frame(so_pickle.dumps((conn.recvRandKey, "two")), "s"))
        _pump(poller, lambda: conn.state == CONNECTION_STATE.DISCONNECTED, "the refusal")
        assert got == ["one"]
    finally:
        conn.disconnect()
        theirs.close()


def _frames_available(sock: socket.socket, buf: bytearray, secret: str, link: dict[str, Any]) -> list[Any]:
    """Every whole frame the peer has sent so far (its sends on loopback are already here).

    ``link`` holds the random bytes of the link's key once known (``keys``: ours, then the
    peer's; None before), the frames read (``read``; the first is under the secret's own key)
    and their nonces and bodies (``nonces``, ``bodies``)."""
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            break
        if not data:
            break
        buf += data
    out = []
    while len(buf) >= 4:
        (length,) = struct.unpack_from("i", buf, 0)
        if len(buf) - 4 < length:
            break
        body = bytes(buf[4 : 4 + length])
        if link["read"]:
            cipher = wire.link_cipher(_encryptor(secret), *link["keys"])
            nonce = wire.sequence_nonce(link["read"] - 1)
        else:
            cipher, nonce = wire.link_cipher(_encryptor(secret)), None
        out.append(so_pickle.loads(wire.unseal(body, cipher, nonce)))
        link["read"] += 1
        link.setdefault("nonces", []).append(body[1:13])
        link.setdefault("bodies", []).append(body)
        del buf[: 4 + length]
    return out


def test_an_outgoing_link_sends_nothing_before_the_peer_answers_its_key(tmp_path: Any) -> None:
    """A peer whose kernel accepted the connection but whose process does not run (SIGSTOP).

    The member sends its random key; every later message must carry the key the peer answers
    with. pysyncobj sent messages meanwhile without one, and the peer, on waking, closed the
    link on the first ("ValueError: not enough values to unpack").
    """
    secret = "a-cluster-secret"
    peer_addr, self_addr = sorted(f"127.0.0.1:{p}" for p in free_ports(2))  # the higher connects
    listener = socket.create_server(("127.0.0.1", int(peer_addr.rsplit(":", 1)[1])))
    member = RaftMember(
        RaftConfig(
            self_addr=self_addr,
            peer_addrs=(self_addr, peer_addr),
            journal_path=str(tmp_path / "raft.journal"),
            snapshot_path=str(tmp_path / "snapshot.lmdb"),
            password=secret,
            timings=RaftTimings(connection_timeout_s=60.0),  # the silent peer is not timed out
        ),
        StateMachine(),
        lambda events: None,
        LmdbSnapshotIO(),
    )
    try:
        transport = member._so._SyncObj__transport
        (peer,) = member._so._SyncObj__otherNodes
        tried_while_connected: list[Any] = []
        real_send = transport.send

        def record_send(node: Any, message: Any) -> Any:
            connected = transport._connections[peer].state == CONNECTION_STATE.CONNECTED
            sent = real_send(node, message)
            if node == peer and connected:
                tried_while_connected.append(message)
            return sent

        transport.send = record_send
        listener.settimeout(10)
        sock, _ = listener.accept()
        buf = bytearray()
        link: dict[str, Any] = {"keys": None, "read": 0}
        # Its Raft messages and link pings (one a second) go to this peer while the link is up.
        wait_until(lambda: len(tried_while_connected) >= 3, 10, "the member to try sending to the peer")
        frames = _frames_available(sock, buf, secret, link)
        assert len(frames) == 1 and isinstance(frames[0], bytes), frames  # its key, and nothing else
        ours = os.urandom(32)
        sock.sendall(_frame(so_pickle.dumps((frames[0], ours)), secret))  # our first: the secret's key
        link["keys"] = (ours, frames[0])
        got: list[Any] = []
        wait_until(
            lambda: got.extend(_frames_available(sock, buf, secret, link)) or len(got) >= 2, 10, "messages"
        )
        assert all(isinstance(m, tuple) and len(m) == 2 and m[0] == ours for m in got), got
        assert got[0][1] == self_addr  # it names itself first
        sock.close()
    finally:
        member.destroy()
        listener.close()


def _accepting_member(tmp_path: Any, secret: str) -> tuple[RaftMember, str, str]:
    """A member whose one peer (this test, the higher address) opens the link to it."""
    self_addr, peer_addr = sorted(f"127.0.0.1:{p}" for p in free_ports(2))
    member = RaftMember(
        RaftConfig(
            self_addr=self_addr,
            peer_addrs=(self_addr, peer_addr),
            journal_path=str(tmp_path / "raft.journal"),
            snapshot_path=str(tmp_path / "snapshot.lmdb"),
            password=secret,
            timings=RaftTimings(connection_timeout_s=60.0),  # only the handshake bound closes links
        ),
        StateMachine(),
        lambda events: None,
        LmdbSnapshotIO(),
    )
    return member, self_addr, peer_addr


def _open_link(
    addr: str, secret: str, opening: bytes
) -> tuple[socket.socket, bytearray, dict[str, Any], list[Any]]:
    """Send a link's first frame to ``addr`` and read the answer (our bytes, the member's)."""
    sock = _connect(addr)
    sock.sendall(opening)
    buf, link, got = bytearray(), {"keys": None, "read": 0}, []
    wait_until(lambda: got.extend(_frames_available(sock, buf, secret, link)) or got, 10, "the answer")
    return sock, buf, link, got


def test_a_replayed_opening_frame_never_repeats_a_key_and_nonce(tmp_path: Any) -> None:
    """A stranger records a link's opening frame (the opener's random bytes) and replays it.

    Keyed by the opener's bytes alone, the member answered every replay under the same key at
    nonce 0: GCM nonce reuse (the keystream and the authentication key, so forged acks and
    votes). Now the answer is under the secret's key with a random nonce, and the link's later
    frames under a key of both sides' bytes, which the replay does not share.
    """
    secret = "a-cluster-secret"
    member, addr, peer_addr = _accepting_member(tmp_path, secret)
    links: list[socket.socket] = []
    try:
        ours = os.urandom(32)
        opening = _frame(so_pickle.dumps(ours), secret)
        sock, buf, link, got = _open_link(addr, secret, opening)
        links.append(sock)
        echo, theirs = got[0]
        assert echo == ours and isinstance(theirs, bytes) and len(theirs) == 32
        link["keys"] = (ours, theirs)
        naming = _frame(so_pickle.dumps((theirs, peer_addr)), secret, (theirs, ours), 0)
        sock.sendall(naming)
        wait_until(
            lambda: got.extend(_frames_available(sock, buf, secret, link)) or len(got) >= 2,
            10,
            "a message on the link (a link ping or a vote request)",
        )
        assert all(m[0] == ours for m in got), got
        assert link["nonces"][1] == wire.sequence_nonce(0)

        replayed, _, rlink, rgot = _open_link(addr, secret, opening)  # the stranger
        links.append(replayed)
        r_echo, r_theirs = rgot[0]
        assert r_echo == ours and r_theirs != theirs
        # The two answers under the secret's key: random nonces, never the same one.
        assert rlink["nonces"][0] != link["nonces"][0]
        assert wire.sequence_nonce(0) not in (rlink["nonces"][0], link["nonces"][0])
        # The member's second frame on the recorded link (nonce 0) is under a key that none of
        # the replayed link's frames is under: not the secret's, not the replayed link's.
        second = link["bodies"][1]
        enc = _encryptor(secret)
        assert wire.unseal(second, wire.link_cipher(enc, ours, theirs), wire.sequence_nonce(0))
        for other in (wire.link_cipher(enc, ours, r_theirs), wire.link_cipher(enc)):
            with pytest.raises(wire.FrameRefused):
                wire.unseal(second, other, wire.sequence_nonce(0))
        # nor can the stranger go on: the recorded naming frame is refused on the replayed link
        replayed.sendall(naming)
        assert _closed_by_peer(replayed)
    finally:
        for s in links:
            s.close()
        member.destroy()


def test_idle_connections_do_not_hold_the_handshake_slots(tmp_path: Any) -> None:
    """pysyncobj checks a connection's timeout only when it reads or sends: a stranger's
    ``MAX_UNKNOWN_CONNECTIONS`` idle connections held every handshake slot for good, and the
    member then closed every peer's link as it was accepted."""
    secret = "a-cluster-secret"
    member, addr, peer_addr = _accepting_member(tmp_path, secret)
    idle: list[socket.socket] = []
    try:
        transport = member._so._SyncObj__transport
        # (pysyncobj listens with a backlog of 5 and accepts one per poll: these connects
        # take a few SYN retries, so the first may already be closed when the last is made)
        idle.extend(_connect(addr) for _ in range(wire.MAX_UNKNOWN_CONNECTIONS))
        for sock in idle:
            assert _closed_by_peer(sock, timeout_s=HANDSHAKE_TIMEOUT_S + 10), "an idle stranger kept its slot"
        wait_until(lambda: not transport._unknownConnections, 10, "the slots to be freed")
        # a peer links: its key exchange is answered and, named, it is the member's peer
        ours = os.urandom(32)
        sock, buf, link, got = _open_link(addr, secret, _frame(so_pickle.dumps(ours), secret))
        idle.append(sock)
        echo, theirs = got[0]
        assert echo == ours
        link["keys"] = (ours, theirs)
        sock.sendall(_frame(so_pickle.dumps((theirs, peer_addr)), secret, (theirs, ours), 0))
        wait_until(
            lambda: got.extend(_frames_available(sock, buf, secret, link)) or len(got) >= 2,
            10,
            "a message on the peer's link",
        )
        (peer,) = member._so._SyncObj__otherNodes
        assert transport._connections[peer].state == CONNECTION_STATE.CONNECTED
    finally:
        for sock in idle:
            sock.close()
        member.destroy()


# ---- a live node ---------------------------------------------------------------------


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _closed_by_peer(sock: socket.socket, timeout_s: float = 10.0, trickle: bytes = b"") -> bool:
    """True once the node closes the connection (optionally trickling bytes meanwhile)."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset / broken pipe: closed
            return True
    return False


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _refusals(c: LocalCluster, node: str) -> int:
    with open(c.nodes[node].log_path, encoding="utf-8", errors="replace") as f:
        return f.read().count("closing Raft connection")


def _attack_and_check(c: LocalCluster, marker: Any, secret: str | None) -> None:
    target = "n1"
    n = c.nodes[target]
    assert n.pid is not None
    rss_before = _rss_kb(n.pid)
    evil = pickle.dumps(_Exploit(str(marker)), 2)
    attempts = [_frame(evil)]  # plaintext: refused by authentication, or by the unpickler
    if secret is not None:
        attempts.append(_frame(evil, secret))  # a leaked secret reaches the unpickler: refused there
    attempts.append(struct.pack("i", -1) + b"x" * 64)
    attempts.append(struct.pack("i", wire.MAX_FRAME_BYTES + 1) + b"x" * 64)
    for frame in attempts:
        with _connect(n.raft) as s:
            s.sendall(frame)
            assert _closed_by_peer(s), "the node kept a refused connection open"

    # 2 GiB announced, then a trickle: closed after the header, nothing buffered
    with _connect(n.raft) as s:
        s.sendall(struct.pack("i", 2**31 - 1))
        assert _closed_by_peer(s, trickle=b"\0" * 1024)

    assert not marker.exists(), "the exploit ran"
    assert n.alive
    wait_until(lambda: _refusals(c, target) >= len(attempts) + 1, 10, "every refusal to be logged")
    assert _rss_kb(n.pid) - rss_before < 50_000, "the node grew while refusing frames"

    # the cluster still commits: a run submitted through the attacked node finishes
    dag = DAG("after-attack")
    dag.task("a", "sum", input={"value": 1})
    dag.task("b", "sum", input={"value": 2}, deps=["a"])
    run = c.client([n.grpc]).run(dag, timeout_s=60)
    assert run.status == "SUCCEEDED", run.error
    assert run.tasks["b"].output == 3


@pytest.mark.e2e
def test_secure_cluster_refuses_malicious_frames(
    make_cluster: Callable[..., LocalCluster], tmp_path: Any
) -> None:
    c = make_cluster(3)
    assert c.secret_path is not None and os.stat(c.secret_path).st_mode & 0o777 == 0o600
    with open(c.secret_path) as f:
        secret = f.read().strip()
    _attack_and_check(c, tmp_path / "pwned", secret)


@pytest.mark.e2e
def test_loopback_cluster_without_secret_refuses_malicious_frames(
    make_cluster: Callable[..., LocalCluster], tmp_path: Any
) -> None:
    c = make_cluster(3, raft_secret=False)
    _attack_and_check(c, tmp_path / "pwned", None)


def test_node_refuses_a_non_loopback_raft_address_without_a_secret(tmp_path: Any) -> None:
    raft_port, grpc_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in ("RAFTMESH_RAFT_SECRET", "RAFTMESH_RAFT_PASSWORD")}
    argv = [
        sys.executable,
        "-m",
        "raftmesh.cli.main",
        "node",
        "--id",
        "n1",
        "--grpc",
        f"127.0.0.1:{grpc_port}",
    ]
    argv += ["--data-dir", str(tmp_path / "d")]
    p = subprocess.run(
        [*argv, "--raft", f"0.0.0.0:{raft_port}"], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, p.stderr
    assert "no cluster secret" in p.stderr and "--raft-secret-file" in p.stderr
    short = tmp_path / "short.secret"
    short.write_text("abc\n")
    p = subprocess.run(
        [*argv, "--raft", f"0.0.0.0:{raft_port}", "--raft-secret-file", str(short)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "at least 16 characters" in p.stderr, p.stderr


def test_node_takes_the_secret_file_and_unsafe_no_fsync_from_its_config(tmp_path: Any) -> None:
    """The config-file keys reach the node: no 'no cluster secret' warning, the fsync warning."""
    raft_port, grpc_port = free_ports(2)
    secret = tmp_path / "raft.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(secret, 0o600)
    config = tmp_path / "node.json"
    config.write_text(
        json.dumps(
            {
                "id": "n1",
                "raft": f"127.0.0.1:{raft_port}",
                "grpc": f"127.0.0.1:{grpc_port}",
                "data-dir": str(tmp_path / "data"),
                "raft-secret-file": str(secret),
                "unsafe-no-fsync": True,
            }
        )
    )
    log_path = tmp_path / "node.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAFTMESH_RAFT_SECRET", "RAFTMESH_RAFT_PASSWORD")}
    with open(log_path, "wb") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "raftmesh.cli.main", "node", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(lambda: "serving gRPC" in log_path.read_text(), 60, "the node to serve")
        text = log_path.read_text()
        assert "--unsafe-no-fsync" in text
        assert "no cluster secret" not in text
    finally:
        p.terminate()
        p.wait(timeout=20)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("unsafe-no-fsync", "false", "must be true or false"),
        ("archive-applied", "false", "must be true or false"),
        ("slots", "many", "must be a number"),
        ("node-down-after", "soon", "must be a number"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_a_usage_error(
    tmp_path: Any, key: str, value: str, says: str
) -> None:
    """``"false"`` (a string) must not read as true: for unsafe-no-fsync it would drop durability;
    a number that is not one is a usage error naming the key, not a traceback."""
    raft_port, grpc_port = free_ports(2)
    config = tmp_path / "node.json"
    config.write_text(
        json.dumps(
            {
                "id": "n1",
                "raft": f"127.0.0.1:{raft_port}",
                "grpc": f"127.0.0.1:{grpc_port}",
                "data-dir": str(tmp_path / "data"),
                key: value,
            }
        )
    )
    p = subprocess.run(
        [sys.executable, "-m", "raftmesh.cli.main", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    assert f"{key} {says}" in p.stderr, p.stderr
