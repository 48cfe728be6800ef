"""ReadIndex (consensus/raft/read_index.py) against real pysyncobj members, the test playing the peers.

A follower: a real ``RaftMember`` (tests/test_replication.py's harness) receives scripted
AppendEntries; it must echo a heartbeat's ``read_seq`` only when it accepts the sender as the
leader of its current term, never for a stale term (a deposed leader's heartbeat).

A leader: a real ``RaftMember`` whose two peers are addresses with nothing listening; the test
makes it leader of a term on its tick thread and plays both followers, delivering their
messages to its real handler and reading what it sent. It must serve a read only after an
entry of its own term has committed and a majority acknowledged a heartbeat sent after the read
began, in its term; acks of an earlier round or another term do not count; a leader that is
deposed fails its pending reads (the caller retries elsewhere), never serves them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.raft import RaftConfig, RaftMember
from raftmesh.consensus.raft import read_index as ri
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.storage.snapshots import LmdbSnapshotIO

from .test_replication import Follower, append, entries


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[Follower]:
    f = Follower(tmp_path)
    try:
        yield f
    finally:
        f.close()


def test_a_follower_acks_a_read_heartbeat_of_its_leaders_term_only(follower: Follower) -> None:
    f = follower
    sent: list[dict[str, Any]] = []
    transport = f.so._SyncObj__transport
    real_send = transport.send

    def record(node: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("type") == ri.ACK:
            sent.append(message)
        return real_send(node, message)

    transport.send = record
    f.send(append(2, 1, 0, entries(2, 3, term=2), commit=1) | {"read_seq": 7})
    assert sent == [{"type": ri.ACK, "term": 2, "seq": 7}]
    # A heartbeat that fails the log check still proves the follower accepted the leader's term.
    f.send(append(2, 9, 2, [], commit=3) | {"read_seq": 8})
    assert sent[-1] == {"type": ri.ACK, "term": 2, "seq": 8}
    # A deposed leader of term 1 (the follower has seen term 2): no ack, whatever it carries.
    f.send(append(1, 3, 2, [], commit=3) | {"read_seq": 9})
    assert sent[-1]["seq"] == 8 and len(sent) == 2
    # A heartbeat with no read_seq is answered as before, with no ack.
    f.send(append(2, 3, 2, [], commit=3))
    assert len(sent) == 2


class Leader:
    """A real member made leader of term 5 of a 3-member cluster whose followers the test plays."""

    def __init__(self, tmp: Path) -> None:
        me, p1, p2 = free_ports(3)
        self.member = RaftMember(
            RaftConfig(
                self_addr=f"127.0.0.1:{me}",
                peer_addrs=(f"127.0.0.1:{me}", f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"),
                journal_path=str(tmp / "raft.journal"),
                snapshot_path=str(tmp / "snapshot.lmdb"),
            ),
            StateMachine(),
            lambda events: None,
            LmdbSnapshotIO(),
        )
        self.so: Any = self.member._so
        self.peers = sorted(self.so._SyncObj__otherNodes, key=lambda n: str(n.address))
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self._inbox: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        transport = self.so._SyncObj__transport
        real_send = transport.send

        def send(node: Any, message: Any) -> Any:
            if node in self.peers:  # the test plays these peers: record instead of a socket
                self.sent.append((node, message))
                return True
            return real_send(node, message)

        transport.send = send
        self.so.addOnTickCallback(self._deliver)

        peers = set(self.peers)

        class Connected(set[Any]):
            """The played peers stay connected (the transport finds no socket and would drop them)."""

            def discard(self, node: Any) -> None:
                if node not in peers:
                    super().discard(node)

        def become_leader() -> None:
            self.so._SyncObj__connectedNodes = Connected(self.so._SyncObj__connectedNodes | peers)
            self.so._SyncObj__setCurrentTerm(5, None)
            self.so._SyncObj__onBecomeLeader()  # appends this term's no-op

        self.run(become_leader)
        assert self.member.is_leader and self.member.term == 5
        self.noop = int(self.so._SyncObj__raftLog[-1][1])

    def _deliver(self) -> None:  # on the leader's tick thread
        while True:
            try:
                fn, done = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            finally:
                done.set()

    def run(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        self._inbox.put((fn, done))
        assert done.wait(10), "the leader's tick thread did not run it"

    def receive(self, node: Any, message: dict[str, Any]) -> None:
        self.run(lambda: self.so._SyncObj__onMessageReceived(node, message))

    def matched(self, node: Any, index: int) -> None:
        """``node`` acknowledges holding the log up to ``index``."""
        self.receive(
            node, {"type": "next_node_idx", "next_node_idx": index + 1, "reset": False, "success": True}
        )

    def read(self) -> list[str | None]:
        """Start a read; the list gets its outcome when the callback runs."""
        out: list[str | None] = []
        self.member.read_index(out.append)
        return out

    def read_heartbeats(self) -> list[tuple[Any, int, int]]:
        return [
            (n, m["term"], m["read_seq"])
            for n, m in self.sent
            if m.get("type") == "append_entries" and "read_seq" in m
        ]

    def close(self) -> None:
        self.member.destroy()


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[Leader]:
    ld = Leader(tmp_path)
    try:
        yield ld
    finally:
        ld.close()


def test_a_new_leader_serves_reads_only_after_an_entry_of_its_term_commits(leader: Leader) -> None:
    ld = leader
    a, _ = ld.peers
    out = ld.read()
    ld.run(lambda: None)  # a tick has passed
    ld.run(lambda: None)
    assert out == [] and ld.read_heartbeats() == [], "a round was sent before the term's no-op committed"
    ld.matched(a, ld.noop)  # a majority (this leader and a) holds the no-op: it commits
    wait_until(lambda: ld.read_heartbeats(), 5, "the read's heartbeat round")
    assert out == []
    heartbeats = ld.read_heartbeats()
    assert {n for n, _, _ in heartbeats} == set(ld.peers)
    (_, term, seq), *_ = heartbeats
    assert term == 5
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq})
    wait_until(lambda: out, 5, "the read to be served")
    assert out == [None]
    assert ld.member.last_applied >= ld.noop


def test_a_read_waits_for_a_majority_to_ack_a_heartbeat_sent_after_it_in_this_term(leader: Leader) -> None:
    ld = leader
    a, b = ld.peers
    ld.matched(a, ld.noop)
    first = ld.read()
    wait_until(lambda: ld.read_heartbeats(), 5, "the first round")
    seq1 = ld.read_heartbeats()[-1][2]
    ld.receive(b, {"type": ri.ACK, "term": 5, "seq": seq1})
    wait_until(lambda: first, 5, "the first read")
    assert first == [None]

    ld.sent.clear()
    second = ld.read()
    wait_until(lambda: ld.read_heartbeats(), 5, "the second round")
    seq2 = ld.read_heartbeats()[-1][2]
    assert seq2 > seq1
    # An ack of the earlier round (sent before this read began) proves nothing about now.
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq1})
    # Nor does an ack in another term (a stale or a future leader's).
    ld.receive(b, {"type": ri.ACK, "term": 4, "seq": seq2})
    ld.receive(b, {"type": ri.ACK, "term": 6, "seq": seq2})
    ld.run(lambda: None)
    assert second == [], "a read was served without a majority acknowledging this term after it began"
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq2})
    wait_until(lambda: second, 5, "the second read")
    assert second == [None]


def test_a_deposed_leader_fails_its_pending_reads_and_serves_none(leader: Leader) -> None:
    ld = leader
    a, b = ld.peers
    ld.matched(a, ld.noop)
    out = ld.read()
    wait_until(lambda: ld.read_heartbeats(), 5, "the read's round")
    seq = ld.read_heartbeats()[-1][2]
    # Another member won term 6 while this one was cut off: its heartbeat deposes this leader.
    ld.receive(b, append(6, ld.noop, 5, [], commit=ld.noop))
    assert not ld.member.is_leader
    wait_until(lambda: out, 5, "the pending read to fail")
    assert out[0] is not None
    # Late acks of its old round change nothing.
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq})
    assert len(out) == 1


def test_reads_arriving_during_a_round_share_the_next_one_and_are_not_served_by_the_earlier(
    leader: Leader,
) -> None:
    ld = leader
    a, _ = ld.peers
    ld.matched(a, ld.noop)
    first = ld.read()
    wait_until(lambda: ld.read_heartbeats(), 5, "the first round")
    seq1 = ld.read_heartbeats()[-1][2]
    later = [ld.read(), ld.read()]
    ld.run(lambda: None)
    ld.run(lambda: None)
    assert {s for _, _, s in ld.read_heartbeats()} == {seq1}, (
        "a second round went out while one was in flight"
    )
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq1})
    wait_until(lambda: first, 5, "the first read")
    # The first round's heartbeat went out before the later reads began: it proves nothing for them.
    assert later == [[], []]
    wait_until(lambda: {s for _, _, s in ld.read_heartbeats()} - {seq1}, 5, "the next round")
    (seq2,) = {s for _, _, s in ld.read_heartbeats()} - {seq1}
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq2})
    wait_until(lambda: all(later), 5, "the later reads")
    assert later == [[None], [None]]
