"""Log replication against a real pysyncobj follower: scripted AppendEntries into its real handler.

The follower is a real ``RaftMember`` (journal file, state machine, pysyncobj tick thread). Its
only peer is a leader address with nothing listening, so it never connects or votes; the test
plays that leader, delivering each message to the follower's message handler on the follower's
own tick thread (as the transport would) and reading back what it acknowledged. Recorders
wrap the real transport ``send`` and journal ``deleteEntriesFrom`` (the real ones still run).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pysyncobj import pickle as so_pickle

from raftmesh.consensus.commands import Barrier, encode_batch
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.raft import RaftConfig, RaftMember, RaftTimings, compaction, wire
from raftmesh.consensus.raft import replication as rep
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.storage.snapshots import LmdbSnapshotIO

Entry = tuple[bytes, int, int]


class Follower:
    """A real follower and the fake leader's view of it."""

    def __init__(self, tmp: Path) -> None:
        me, leader = free_ports(2)
        self.member = RaftMember(
            RaftConfig(
                self_addr=f"127.0.0.1:{me}",
                peer_addrs=(f"127.0.0.1:{me}", f"127.0.0.1:{leader}"),
                journal_path=str(tmp / "raft.journal"),
                snapshot_path=str(tmp / "snapshot.lmdb"),
            ),
            StateMachine(),
            lambda events: None,
            LmdbSnapshotIO(),
        )
        self.so: Any = self.member._so
        (self.leader,) = self.so._SyncObj__otherNodes
        self.acks: list[dict[str, Any]] = []
        self.deleted_from: list[int] = []
        self._inbox: queue.Queue[tuple[dict[str, Any], threading.Event]] = queue.Queue()

        transport = self.so._SyncObj__transport
        real_send = transport.send

        def record_send(node: Any, message: Any) -> Any:
            if isinstance(message, dict) and message.get("type") == "next_node_idx":
                self.acks.append(message)
            return real_send(node, message)

        transport.send = record_send
        journal = self.so._SyncObj__raftLog
        real_delete = journal.deleteEntriesFrom

        def record_delete(position: int) -> Any:
            self.deleted_from.append(int(journal[0][1]) + position)
            return real_delete(position)

        journal.deleteEntriesFrom = record_delete
        self.so.addOnTickCallback(self._deliver)

    def _deliver(self) -> None:  # on the follower's tick thread
        while True:
            try:
                message, done = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                self.so._SyncObj__onMessageReceived(self.leader, message)
            finally:
                done.set()

    def send(self, message: dict[str, Any]) -> None:
        done = threading.Event()
        self._inbox.put((message, done))
        assert done.wait(10), "the follower's tick thread did not take the message"

    # ---- what the follower holds -------------------------------------------------

    def entries(self) -> list[Entry]:
        return [tuple(e) for e in self.so._SyncObj__raftLog[:]]  # type: ignore[misc]

    @property
    def last_index(self) -> int:
        return int(self.so._SyncObj__raftLog[-1][1])

    @property
    def commit_index(self) -> int:
        return self.member.commit_index

    def acknowledged(self) -> int:
        """The highest index this follower has told the leader it holds."""
        return max([a["next_node_idx"] - 1 for a in self.acks if a["success"]], default=0)

    def close(self) -> None:
        self.member.destroy()


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[Follower]:
    f = Follower(tmp_path)
    try:
        yield f
    finally:
        f.close()


def command(n: int) -> bytes:
    """A real pysyncobj command calling ``apply_batch`` with a one-command batch."""
    return b"\x00" + so_pickle.dumps((0, (encode_batch([Barrier(f"b-{n}", 1000 + n)]),)))


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [(command(i * 100 + term), i, term) for i in range(first, last + 1)]


def append(term: int, prev: int, prev_term: int, batch: list[Entry], commit: int) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": commit,
        "entries": batch,
        "prevLogIdx": prev,
        "prevLogTerm": prev_term,
    }


def test_a_resent_older_batch_deletes_nothing_already_acknowledged(follower: Follower) -> None:
    """pysyncobj 0.3.17 deleted everything after prevLogIdx and appended the batch again."""
    f = follower
    log1 = entries(2, 6, term=1)
    f.send(append(1, 1, 0, log1[:2], commit=1))  # 2, 3
    f.send(append(1, 3, 1, log1[2:], commit=1))  # 4, 5, 6
    assert f.acknowledged() == 6 and f.last_index == 6
    before = f.entries()

    f.send(append(1, 1, 0, log1[:2], commit=3))  # the first batch again, delayed or re-sent
    assert f.last_index >= f.acknowledged(), "the log is now shorter than what the follower acknowledged"
    assert f.deleted_from == [], f"entries already held and acknowledged were deleted from {f.deleted_from}"
    assert f.entries() == before
    # It acknowledges what that message verified, and the commit index stops there too.
    assert f.acks[-1] == {"type": "next_node_idx", "next_node_idx": 4, "reset": False, "success": True}
    assert f.commit_index == 3

    f.send(append(1, 1, 0, log1, commit=6))  # the whole tail re-sent: still nothing deleted
    assert f.deleted_from == [] and f.entries() == before
    wait_until(lambda: f.member.last_applied == 6, 10, "the follower to apply index 6")


def test_a_conflict_truncates_from_the_first_conflicting_entry_only(follower: Follower) -> None:
    f = follower
    f.send(append(1, 1, 0, entries(2, 5, term=1), commit=3))  # 4 and 5 are never committed
    assert f.commit_index == 3
    new_leader = entries(4, 6, term=2)
    # A new leader's batch starting at 3: entry 3 matches (term 1), entry 4 is the first conflict.
    f.send(append(2, 2, 1, [f.entries()[2], *new_leader], commit=3))
    assert f.deleted_from == [4]
    assert [(i, t) for _, i, t in f.entries()] == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert f.acknowledged() == 6


def test_the_commit_index_never_covers_entries_the_leader_has_not_verified(follower: Follower) -> None:
    f = follower
    f.send(append(1, 1, 0, entries(2, 5, term=1), commit=2))  # 3..5 from a leader that then died
    assert f.commit_index == 2
    # The new leader (term 2) committed its own entries 3..8; its first message to this follower
    # only proves the log up to index 2. Keeping the tail must not commit 3..5 of term 1.
    f.send(append(2, 2, 1, [], commit=8))
    assert f.commit_index == 2
    assert f.last_index == 5  # nothing conflicted, nothing deleted
    # A snapshot transfer in progress verifies nothing either (pysyncobj committed the stale tail here).
    f.send({"type": "append_entries", "term": 2, "commit_index": 8, "serialized": (b"part", True, False)})
    assert f.commit_index == 2
    # The leader's real entries replace the stale ones and are committed as far as they go.
    f.send(append(2, 2, 1, entries(3, 6, term=2), commit=8))
    assert f.deleted_from == [3]
    assert f.commit_index == 6
    # An older message never lowers it.
    f.send(append(2, 2, 1, [], commit=8))
    assert f.commit_index == 6


def chunks(entry: Entry, prev: int, prev_term: int, term: int, commit: int) -> list[dict[str, Any]]:
    data = entry[0]
    return [
        {
            "type": rep.ENTRY_CHUNK,
            "term": term,
            "commit_index": commit,
            "prevLogIdx": prev,
            "prevLogTerm": prev_term,
            "idx": entry[1],
            "entry_term": entry[2],
            "offset": off,
            "size": len(data),
            "data": data[off : off + rep.CHUNK_BYTES],
        }
        for off in range(0, len(data), rep.CHUNK_BYTES)
    ]


def large_command(n_bytes: int) -> bytes:
    text = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(n_bytes // 3))  # 3-byte UTF-8
    return b"\x00" + so_pickle.dumps((0, (text.encode(),)))  # pickle doubles bytes >= 0x80


def test_a_large_entry_streamed_in_chunks_is_appended_once_complete(follower: Follower) -> None:
    f = follower
    f.send(append(1, 1, 0, entries(2, 2, term=1), commit=2))
    big = (large_command(3 * rep.CHUNK_BYTES), 3, 1)
    parts = chunks(big, prev=2, prev_term=1, term=1, commit=2)
    assert len(parts) >= 5
    for p in parts[:-1]:
        f.send(p)
        assert f.last_index == 2  # nothing appended from a partial entry
    f.send(parts[-1])
    assert f.entries()[-1] == big
    assert f.acknowledged() == 3

    # A stream that skips a chunk (a lost link) is dropped, not appended half.
    big4 = (large_command(2 * rep.CHUNK_BYTES), 4, 1)
    parts = chunks(big4, prev=3, prev_term=1, term=1, commit=3)
    for p in [parts[0], *parts[2:]]:
        f.send(p)
    assert f.last_index == 3
    # Streamed again from the start, it arrives whole.
    for p in parts:
        f.send(p)
    assert f.entries()[-1] == big4 and f.acknowledged() == 4


def wire_bytes(message: dict[str, Any]) -> int:
    """The frame the Raft transport sends for ``message`` with a cluster secret (``wire.seal``)."""
    return len(wire.seal(so_pickle.dumps(message), AESGCM(bytes(32)), wire.sequence_nonce(0)))


def test_chunks_go_out_in_their_smaller_form_and_come_back_exact() -> None:
    text = large_command(rep.CHUNK_BYTES)[: rep.CHUNK_BYTES]  # doubled UTF-8, cut mid-character
    binary = bytes(range(256)) * (rep.CHUNK_BYTES // 256)
    for chunk in (text, binary, b"", b"\xed\xa0\x80\xff\xc3"):
        wire = rep._to_wire(chunk)
        assert rep._from_wire(so_pickle.loads(so_pickle.dumps(wire))) == chunk
    assert isinstance(rep._to_wire(text), str) and isinstance(rep._to_wire(binary), bytes)
    assert len(so_pickle.dumps(rep._to_wire(text))) < 0.6 * len(so_pickle.dumps(text))


def test_every_message_the_leader_builds_fits_in_a_frame() -> None:
    worst = bytes([0xFF]) * rep.CHUNK_BYTES  # every byte doubles in pysyncobj's pickle
    for data in (worst, large_command(rep.CHUNK_BYTES)[: rep.CHUNK_BYTES]):
        chunk = chunks((data, 10, 3), prev=9, prev_term=3, term=3, commit=9)[0]
        assert wire_bytes(chunk) <= rep.MAX_SENT_FRAME_BYTES
        chunk["data"] = rep._to_wire(data)
        assert wire_bytes(chunk) <= rep.MAX_SENT_FRAME_BYTES
    per_entry = rep.APPEND_BATCH_BYTES // 1000 - rep.ENTRY_OVERHEAD_BYTES
    batch = [(bytes([0x80 + i % 128]) * per_entry, 10 + i, 3) for i in range(1000)]
    assert wire_bytes(append(3, 9, 3, batch, 9)) <= rep.MAX_SENT_FRAME_BYTES
    tiny = [(b"\x01", 10 + i, 3) for i in range(rep.APPEND_BATCH_ENTRIES)]  # many small entries
    assert wire_bytes(append(3, 9, 3, tiny, 9)) <= rep.MAX_SENT_FRAME_BYTES
    assert rep.MAX_SENT_FRAME_BYTES < 16 * 1024 * 1024


def test_a_large_journal_is_compacted_before_its_offsets_overflow(
    follower: Follower, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pysyncobj's journal addresses 4 GiB; it is compacted by size, not only by count or period."""
    monkeypatch.setattr(compaction, "JOURNAL_COMPACT_BYTES", 2 * 1024 * 1024)
    f = follower
    big = [(large_command(200_000), i, 1) for i in range(2, 14)]  # 12 entries of ~400 KB
    for k in range(0, len(big), 3):
        f.send(append(1, big[k][1] - 1, 0 if k == 0 else 1, big[k : k + 3], commit=big[k][1] + 2))
    assert f.commit_index == 13

    def compacted() -> bool:
        size = compaction.journal_bytes(f.so._SyncObj__raftLog)
        return size is not None and size < 2 * 1024 * 1024 and f.member.log_entries <= 3

    wait_until(compacted, 20, "the follower to compact its journal")
    assert f.so._SyncObj__raftLog[-1][1] == 13  # nothing committed was lost: the snapshot covers it


def test_followers_learn_a_commit_before_the_leader_applies_it(tmp_path: Path) -> None:
    """Two real members on loopback: the leader's apply of an entry blocks until the follower
    has applied it too, which happens only if the leader told it the commit index first
    (pysyncobj sent it after applying: the follower waited one leader-apply per entry)."""
    addrs = tuple(f"127.0.0.1:{p}" for p in free_ports(2))
    members: dict[str, RaftMember] = {}
    armed, follower_applied = threading.Event(), threading.Event()
    leader_saw: list[bool] = []

    def on_applied(addr: str) -> Any:
        def applied(events: Any) -> None:
            if not armed.is_set():
                return
            if members[addr].is_leader:  # blocks the leader's tick thread, as a slow apply would
                leader_saw.append(follower_applied.wait(5.0))
            else:
                follower_applied.set()

        return applied

    try:
        for i, a in enumerate(addrs):
            cfg = RaftConfig(
                self_addr=a,
                peer_addrs=addrs,
                journal_path=str(tmp_path / f"{i}.journal"),
                snapshot_path=str(tmp_path / f"{i}.lmdb"),
                timings=RaftTimings(election_min_s=0.5, election_max_s=1.0),
            )
            members[a] = RaftMember(cfg, StateMachine(), on_applied(a), LmdbSnapshotIO())
        leader = wait_until(
            lambda: next((m for m in members.values() if m.is_leader and m.ready), None), 30, "a leader"
        )
        wait_until(
            lambda: all(m.last_applied == leader.commit_index for m in members.values()), 30, "catch-up"
        )
        armed.set()
        leader.propose(encode_batch([Barrier("b-commit-first", 1000)]), lambda results, err: None)
        wait_until(lambda: leader_saw, 30, "the leader to apply the entry")
        assert leader_saw == [True], "the follower applied the entry only after the leader had"
    finally:
        armed.clear()
        for m in members.values():
            m.destroy()


def _snapshot_without_compaction(tmp_path: Path) -> list[Entry]:
    """A follower holds 2..10 (acknowledged), applies up to 6, writes its snapshot and then stops
    before compacting the journal (the crash window: the snapshot renamed into place, the journal
    whole). Returns what it held."""
    f = Follower(tmp_path)
    try:
        f.send(append(1, 1, 0, entries(2, 10, term=1), commit=6))
        assert f.acknowledged() == 10
        wait_until(lambda: f.member.last_applied == 6, 10, "the follower to apply index 6")
        journal = f.so._SyncObj__raftLog
        compactions: list[int] = []
        journal.deleteEntriesTo = compactions.append  # the process dies before the compaction
        f.member.force_snapshot()
        wait_until(lambda: compactions, 10, "the snapshot to be written and the compaction to begin")
        assert f.member.snapshots_written == 1
        held = f.entries()
    finally:
        f.close()
    assert [i for _, i, _ in held] == list(range(1, 11))
    return held


def _wait_loaded(f: Follower) -> None:
    """pysyncobj loads the snapshot on the restarted member's first tick (then sets last applied)."""

    def loaded() -> bool:
        return f.member.snapshots_loaded == 1 and f.member.last_applied >= 6

    wait_until(loaded, 10, "the restarted follower to load its snapshot")


def test_a_restart_between_snapshot_and_compaction_keeps_the_entries_after_the_snapshot(
    tmp_path: Path,
) -> None:
    """pysyncobj's dump load cleared the whole journal unless it began with the snapshot's two
    boundary entries, so a crash after the snapshot was written and before the journal was
    compacted dropped 7..10, which this follower had acknowledged (a leader counted them)."""
    held = _snapshot_without_compaction(tmp_path)
    f = Follower(tmp_path)
    try:
        _wait_loaded(f)
        assert f.entries() == held[4:], "entries after the snapshot were dropped from the journal"
        f.send(append(1, 10, 1, [], commit=10))  # the leader's next heartbeat finds the log whole
        assert f.acks[-1]["success"] and f.acks[-1]["next_node_idx"] == 11
        wait_until(lambda: f.member.last_applied == 10, 10, "the follower to apply index 10")
    finally:
        f.close()
    reopened = Follower(tmp_path)  # the trimmed journal loads as a compacted one does
    try:
        _wait_loaded(reopened)
        assert [i for _, i, _ in reopened.entries()] == list(range(5, 11))
    finally:
        reopened.close()


def test_a_restart_keeps_no_journal_entries_that_contradict_the_snapshot(tmp_path: Path) -> None:
    """A journal whose entries at the snapshot's boundary have another term (a follower that
    crashed while installing a leader's snapshot over a diverged log) is replaced as before."""
    from pysyncobj.journal import FileJournal

    held = _snapshot_without_compaction(tmp_path)
    journal = FileJournal(str(tmp_path / "raft.journal"))
    try:
        journal.deleteEntriesFrom(4)  # keep 1..4; 5..10 now come from a term-2 leader
        for entry in entries(5, 10, term=2):
            journal.add(*entry)
    finally:
        journal._destroy()
    f = Follower(tmp_path)
    try:
        _wait_loaded(f)
        assert f.entries() == held[4:6]
    finally:
        f.close()


def test_a_failure_keeping_the_entries_after_the_snapshot_stops_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pysyncobj's loader swallows every error; a failed keep must not leave a node running with
    its state restored but its applied index unset (it would apply entries twice)."""
    from raftmesh.consensus.raft import compaction

    class Journal(list):  # type: ignore[type-arg]
        def deleteEntriesTo(self, pos: int) -> None:
            raise RuntimeError("reopen failed")

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(compaction.os, "_exit", fake_exit)
    journal = Journal([(b"", i, 1) for i in range(3, 11)])
    compaction.keep_entries_after_snapshot(journal, ((b"", 6, 1), (b"", 5, 1), None))
    assert exits == [compaction.FSYNC_FAILED_EXIT]


def _leader_snapshot(tmp: Path, last: int) -> bytes:
    """The snapshot file a leader would ship: another member holding 1..``last``, all applied,
    snapshotted and compacted."""
    tmp.mkdir()
    leader = Follower(tmp)
    try:
        leader.send(append(1, 1, 0, entries(2, last, term=1), commit=last))
        wait_until(lambda: leader.member.last_applied == last, 10, "the snapshotting member to apply")
        leader.member.force_snapshot()
        wait_until(lambda: leader.entries()[0][1] == last - 1, 10, "the snapshot and its compaction")
        return (tmp / "snapshot.lmdb").read_bytes()
    finally:
        leader.close()


def test_a_restart_with_the_old_journal_and_an_installed_snapshot_newer_than_all_of_it(
    tmp_path: Path,
) -> None:
    """A crash after an installed snapshot was renamed into place and before the journal's new
    file was: the restart finds a journal that ends before the snapshot begins. It loads: the
    snapshot's state, the journal replaced by its boundary entries (atomically too), the log
    continuing after it, and a second restart finds that journal."""
    snapshot = _leader_snapshot(tmp_path / "leader", 20)
    (tmp_path / "f").mkdir()
    f = Follower(tmp_path / "f")
    journal_file = tmp_path / "f" / "raft.journal"
    try:
        f.send(append(1, 1, 0, entries(2, 5, term=1), commit=5))
        assert f.acknowledged() == 5
        wait_until(lambda: f.member.last_applied == 5, 10, "the follower to apply index 5")
        f.so._SyncObj__raftLog.sync()
        old_journal = journal_file.read_bytes()
        f.send(
            {"type": "append_entries", "term": 1, "commit_index": 20, "serialized": (snapshot, True, True)}
        )
        assert f.acknowledged() == 20 and f.member.last_applied == 20
        assert [(i, t) for _, i, t in f.entries()] == [(19, 1), (20, 1)]
    finally:
        f.close()
    journal_file.write_bytes(old_journal)  # the journal's rename was lost: 1..5 on disk
    f = Follower(tmp_path / "f")
    try:
        _wait_loaded(f)
        wait_until(lambda: f.member.last_applied == 20, 10, "the restarted follower to load the snapshot")
        assert [(i, t) for _, i, t in f.entries()] == [(19, 1), (20, 1)]
        f.send(append(1, 20, 1, entries(21, 21, term=1), commit=21))
        assert f.acks[-1]["success"] and f.acks[-1]["next_node_idx"] == 22
        wait_until(lambda: f.member.last_applied == 21, 10, "the follower to apply index 21")
    finally:
        f.close()
    f = Follower(tmp_path / "f")
    try:
        _wait_loaded(f)
        assert [(i, t) for _, i, t in f.entries()] == [(19, 1), (20, 1), (21, 1)]
    finally:
        f.close()
