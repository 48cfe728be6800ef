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


def _record_acks(f: Follower) -> list[dict[str, Any]]:
    """The read acks ``f`` sends from now on (its transport's sends are wrapped)."""
    sent: list[dict[str, Any]] = []
    transport = f.so._SyncObj__transport
    real_send = transport.send

    def record(node: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("type") == ri.ACK:
            sent.append(message)
        return real_send(node, message)

    transport.send = record
    return sent


def test_a_follower_acks_a_read_heartbeat_of_its_leaders_term_only(follower: Follower) -> None:
    f = follower
    sent = _record_acks(f)
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


def test_a_follower_echoes_a_read_probe_of_its_leader_in_its_term_only(follower: Follower) -> None:
    f = follower
    sent = _record_acks(f)
    f.send({"type": ri.PROBE, "term": 2, "seq": 3})
    assert sent == [], "a probe echoed before the follower accepted that leader in that term"
    f.send(append(2, 1, 0, [], commit=1))  # now it follows the leader of term 2
    f.send({"type": ri.PROBE, "term": 2, "seq": 4})
    assert sent == [{"type": ri.ACK, "term": 2, "seq": 4}]
    # A deposed leader of term 1, or a term this follower has not reached: no echo.
    f.send({"type": ri.PROBE, "term": 1, "seq": 5})
    f.send({"type": ri.PROBE, "term": 3, "seq": 6})
    f.send({"type": ri.PROBE, "term": 2, "seq": "7"})  # not a sequence number a leader makes
    assert len(sent) == 1


def test_a_read_ack_is_not_held_behind_the_fsync_of_unrelated_entries(follower: Follower) -> None:
    """The ack claims the leader's term, nothing about the log: it goes out while the entries that
    arrived with the heartbeat are still unsynced; their own ack still waits for the fsync."""
    f = follower
    transport = f.so._SyncObj__transport
    journal = f.so.journal
    out: list[tuple[str, bool]] = []
    real_send_now = transport._send_now

    def send_now(node: Any, message: Any) -> Any:
        if isinstance(message, dict):
            out.append((str(message.get("type")), journal.dirty))
        return real_send_now(node, message)

    transport._send_now = send_now
    f.send(append(2, 1, 0, entries(2, 4, term=2), commit=1) | {"read_seq": 4})
    wait_until(lambda: ("next_node_idx", False) in out, 5, "the entries' ack after their fsync")
    assert (ri.ACK, True) in out, out
    assert ("next_node_idx", True) not in out, out


class Leader:
    """A real member made leader of term 5 of a 3-member cluster whose followers the test plays
    (with ``lead=False``: a real member of a 3-member cluster whose two peers the test plays)."""

    def __init__(self, tmp: Path, lead: bool = True) -> None:
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
        self._inbox: queue.Queue[tuple[Callable[[], None], threading.Event, list[BaseException]]] = (
            queue.Queue()
        )
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

        if not lead:
            self.run(lambda: setattr(self.so, "_SyncObj__connectedNodes", Connected(peers)))
            return
        self.run(become_leader)
        assert self.member.is_leader and self.member.term == 5
        self.noop = int(self.so._SyncObj__raftLog[-1][1])

    def _deliver(self) -> None:  # on the leader's tick thread
        while True:
            try:
                fn, done, raised = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except BaseException as exc:  # raised on the tick thread: the test sees it
                raised.append(exc)
            finally:
                done.set()

    def run(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        raised: list[BaseException] = []
        self._inbox.put((fn, done, raised))
        assert done.wait(10), "the leader's tick thread did not run it"
        if raised:
            raise raised[0]

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
        """The read rounds' probes sent: (peer, term, sequence number)."""
        return [(n, m["term"], m["seq"]) for n, m in self.sent if m.get("type") == ri.PROBE]

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


# ---- a follower's reads: the test plays the leader (and the third member) -------------------


def _follow(tmp: Path, term: int = 5) -> tuple[Leader, Any, Any]:
    """A real member following played peer ``a`` in ``term``; returns it, ``a`` and ``b``."""
    f = Leader(tmp, lead=False)
    a, b = f.peers
    f.receive(a, append(term, 1, 0, [], commit=1))
    assert f.so._SyncObj__raftLeader == a and not f.member.is_leader
    return f, a, b


def _asked_rid(f: Leader, a: Any, before: int = 0) -> Any:
    """The request id of the read index request ``f`` sent ``a`` (after the first ``before``)."""

    def asked() -> list[Any]:
        return [m["rid"] for n, m in f.sent if n == a and m.get("type") == ri.REQUEST][before:]

    wait_until(asked, 5, "the follower to ask the leader")
    return asked()[0]


@pytest.fixture
def follower_of(tmp_path: Path) -> Iterator[Callable[[str], tuple[Leader, Any, Any]]]:
    made: list[Leader] = []

    def make(name: str) -> tuple[Leader, Any, Any]:
        d = tmp_path / name
        d.mkdir()
        out = _follow(d)
        made.append(out[0])
        return out

    try:
        yield make
    finally:
        for f in made:
            f.close()


def test_a_restarted_follower_never_takes_the_answer_owed_to_its_previous_run(
    follower_of: Callable[[str], tuple[Leader, Any, Any]],
) -> None:
    """Request ids restarting at 1 let a leader's late answer to the crashed run (an index from
    before a write the cluster has since acknowledged) serve the new run's read: stale."""
    first, _, _ = follower_of("run1")
    first.read()
    old_rid = _asked_rid(first, first.peers[0])
    f, a, b = follower_of("run2")  # the same follower after a restart (a new process run)
    out = f.read()
    rid = _asked_rid(f, a)
    assert rid != old_rid, "a new run reuses its previous run's request ids"
    f.receive(a, {"type": ri.REPLY, "rid": old_rid, "index": 1})
    f.run(lambda: None)
    assert out == [], "the answer owed to the previous run served this run's read"
    # Only the leader asked may answer, and a malformed id must not raise on the tick thread.
    f.receive(b, {"type": ri.REPLY, "rid": rid, "index": 1})
    f.receive(a, {"type": ri.REPLY, "rid": [rid], "index": 1})
    f.receive(a, {"type": ri.REPLY, "rid": {"x": 1}, "index": 1})
    f.run(lambda: None)
    assert out == [], "a reply from a member that was not asked served the read"
    f.receive(a, {"type": ri.REPLY, "rid": rid, "index": 1})
    wait_until(lambda: out, 5, "the leader's answer to serve the read")
    assert out == [None]


def test_a_follower_fails_its_asked_reads_when_the_leader_changes(
    follower_of: Callable[[str], tuple[Leader, Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller retries with the new leader at once, not after the round timeout."""
    monkeypatch.setattr(ri, "ROUND_TIMEOUT_S", 600.0)  # only the leader change can end the read
    f, a, b = follower_of("f")
    out = f.read()
    rid = _asked_rid(f, a)
    f.receive(b, append(6, 1, 0, [], commit=1))  # b won term 6
    assert f.so._SyncObj__raftLeader == b
    wait_until(lambda: out, 5, "the read asked of the old leader to fail")
    assert out[0] is not None
    f.receive(a, {"type": ri.REPLY, "rid": rid, "index": 1})  # the old leader's late answer
    f.run(lambda: None)
    assert len(out) == 1
    again = f.read()
    _asked_rid(f, b)  # the retry goes to the new leader
    assert again == []


def test_a_follower_behind_its_read_index_fails_the_read_after_the_timeout(
    follower_of: Callable[[str], tuple[Leader, Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower that does not apply the read index in time fails the read (the caller
    retries) rather than keeping it until MAX_PENDING_READS refuses every read."""
    monkeypatch.setattr(ri, "ROUND_TIMEOUT_S", 0.3)
    f, a, _ = follower_of("f")
    out = f.read()
    rid = _asked_rid(f, a)
    f.receive(a, {"type": ri.REPLY, "rid": rid, "index": 10_000})  # far beyond what it holds
    wait_until(lambda: out, 5, "the read waiting for apply to time out")
    assert out == ["READ_TIMEOUT"]
    assert f.so.read_index._pending == 0


def test_a_read_is_queued_even_when_waking_the_tick_thread_fails(
    follower_of: Callable[[str], tuple[Leader, Any, Any]],
) -> None:
    f, a, _ = follower_of("f")

    def full() -> None:
        raise BlockingIOError("the notify pipe is full")

    f.so._SyncObj__pipeNotifier.notify = full
    out = f.read()  # must not raise: the tick takes the read in its next poll period anyway
    rid = _asked_rid(f, a)
    f.receive(a, {"type": ri.REPLY, "rid": rid, "index": 1})
    wait_until(lambda: out, 5, "the read to be served")
    assert out == [None]


class _CountingNotifier:
    def __init__(self) -> None:
        self.calls = 0

    def notify(self) -> None:
        self.calls += 1


def test_only_the_read_that_finds_the_queue_empty_wakes_the_tick_thread() -> None:
    """A wake-up is a pipe write that hands the GIL to the tick thread: the reads that join a
    queue not yet taken share the first one's; once the tick has taken the queue, the next read
    wakes it again (else it would wait a whole poll period)."""
    from types import SimpleNamespace

    from pysyncobj.syncobj import _RAFT_STATE

    notifier = _CountingNotifier()
    me = object()
    so = SimpleNamespace(
        _SyncObj__pipeNotifier=notifier,
        _SyncObj__raftState=_RAFT_STATE.FOLLOWER,
        _SyncObj__raftLeader=None,  # the tick fails the reads it takes: enough to empty the queue
        _SyncObj__selfNode=me,
        _SyncObj__raftCurrentTerm=1,
        _SyncObj__raftLastApplied=0,
    )
    reads = ri.ReadIndex(so)
    out: list[str | None] = []
    for _ in range(3):
        reads.request(out.append)
    assert notifier.calls == 1
    reads.on_tick()
    assert out == ["MISSING_LEADER"] * 3 and reads._pending == 0
    reads.request(out.append)
    assert notifier.calls == 2


def test_reads_during_a_round_wake_no_tick_and_go_in_the_next_round_when_it_ends(leader: Leader) -> None:
    """The round's end (the ack) takes the reads that came meanwhile: waking the tick thread
    for them (a pipe write and a GIL hand-off each) bought nothing, they could go in no round
    before that one ends."""
    ld = leader
    a, _ = ld.peers
    ld.matched(a, ld.noop)
    first = ld.read()
    wait_until(lambda: ld.read_heartbeats(), 5, "the first round")
    seq1 = ld.read_heartbeats()[-1][2]
    notifier = ld.so._SyncObj__pipeNotifier
    wakes: list[int] = []
    real_notify = notifier.notify

    def counted() -> None:
        wakes.append(1)
        real_notify()

    notifier.notify = counted
    later = [ld.read(), ld.read()]
    assert wakes == [], "a read woke the tick thread while a round was in flight"
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq1})
    wait_until(lambda: first, 5, "the first read")
    assert first == [None] and later == [[], []], "a later read was served by the earlier round"
    wait_until(lambda: len({s for _, _, s in ld.read_heartbeats()}) == 2, 5, "the next round")
    seq2 = max(s for _, _, s in ld.read_heartbeats())
    ld.receive(a, {"type": ri.ACK, "term": 5, "seq": seq2})
    wait_until(lambda: all(later), 5, "the later reads")
    assert later == [[None], [None]]
