"""The journal fsync comes before everything that relies on it (issue 7, item 9).

Three real pysyncobj members (``RaftMember``) on loopback, in this process, with real
journals in a temp dir. The test instruments what really happens, in one ordered trace:
every ``os.fsync``/``os.fdatasync`` (by the file it syncs), every journal append and term/vote store,
every leader commit-index advance, and every frame handed to a Raft socket. Then:

- a follower's success ack for index i is sent only after an fsync of its journal that
  was issued after entry i was appended, and had returned (the fsync runs on its own thread);
- the leader advances its commit index to c only when a majority has c on disk: itself only
  after an fsync of its journal that began after it appended every entry up to c and had
  returned, a follower once it had sent its (checked) ack for c;
- a vote is sent only after the ``.meta`` file holding it was fsynced;
- there are fewer fsyncs than appended entries (group commit).

The same harness with ``fsync=False`` must see acks with no covering fsync, so the
checks can fail.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from raftmesh.consensus.commands import encode_batch
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.raft import RaftConfig, RaftMember, RaftTimings
from raftmesh.consensus.raft.wire import BoundedConnection
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.storage.snapshots import LmdbSnapshotIO


@dataclass
class Trace:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)


@dataclass
class Harness:
    members: dict[str, RaftMember]
    trace: Trace
    dirs: dict[str, str]

    def leader(self) -> str | None:
        leaders = [a for a, m in self.members.items() if m.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def node_of_path(self, path: str) -> str | None:
        for addr, d in self.dirs.items():
            if path.startswith(d + os.sep):
                return addr
        return None


def _instrument(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = h.trace

    def traced(real: Any) -> Any:
        def sync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            node = h.node_of_path(path)
            kind = "meta" if path.endswith((".meta", ".meta.tmp")) else "journal"
            thread = threading.get_ident()
            if node is not None:
                trace.add("fsync_start", node, kind, thread)
            real(fd)
            if node is not None:
                trace.add("fsync", node, kind, thread)

        return sync

    monkeypatch.setattr(os, "fsync", traced(os.fsync))
    monkeypatch.setattr(os, "fdatasync", traced(os.fdatasync))

    real_send = BoundedConnection.send

    def send(conn: BoundedConnection, message: Any) -> None:
        me = threading.current_thread()
        node = next((a for a, m in h.members.items() if m._so._SyncObj__thread is me), None)
        if node is not None and isinstance(message, dict):
            if message.get("type") == "next_node_idx" and message.get("success"):
                trace.add("ack", node, int(message["next_node_idx"]) - 1)
            elif message.get("type") == "response_vote":
                trace.add("vote", node, int(message["term"]))
        real_send(conn, message)

    monkeypatch.setattr(BoundedConnection, "send", send)


def _wrap_journal(h: Harness, addr: str) -> None:
    member = h.members[addr]
    journal = member._so.journal
    assert journal is not None
    trace = h.trace
    add, set_commit, set_term = journal.add, journal.setRaftCommitIndex, journal.setCurrentTerm

    def traced_add(command: bytes, idx: int, term: int) -> None:
        add(command, idx, term)
        trace.add("append", addr, idx)

    def traced_commit(index: int) -> None:
        if member.is_leader:
            trace.add("commit", addr, index)
        set_commit(index)

    def traced_term(term: int, voted_for: Any) -> None:
        trace.add("term", addr, term)
        set_term(term, voted_for)

    journal.add = traced_add  # type: ignore[method-assign]
    journal.setRaftCommitIndex = traced_commit  # type: ignore[method-assign]
    journal.setCurrentTerm = traced_term  # type: ignore[method-assign]


@pytest.fixture
def harness_factory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    made: list[Harness] = []

    def make(fsync: bool) -> Harness:
        ports = free_ports(3)
        addrs = [f"127.0.0.1:{p}" for p in ports]
        dirs = {a: os.path.join(str(tmp_path), f"fsync{fsync}-{i}") for i, a in enumerate(addrs)}
        h = Harness({}, Trace(), dirs)
        _instrument(h, monkeypatch)
        for a in addrs:
            os.makedirs(dirs[a])
            cfg = RaftConfig(
                self_addr=a,
                peer_addrs=tuple(addrs),
                journal_path=os.path.join(dirs[a], "raft.journal"),
                snapshot_path=os.path.join(dirs[a], "snapshot.lmdb"),
                fsync=fsync,
                timings=RaftTimings(election_min_s=0.5, election_max_s=1.0),
            )
            h.members[a] = RaftMember(cfg, StateMachine(), lambda events: None, LmdbSnapshotIO())
            _wrap_journal(h, a)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            for m in h.members.values():
                m.destroy()


def _drive(h: Harness, batches: int = 400, threads: int = 4, sequential: int = 30) -> None:
    """Propose ``batches`` entries on the leader from several threads; wait until all applied."""
    leader = wait_until(h.leader, 30, "a leader")
    member = h.members[leader]
    done = threading.Semaphore(0)
    failures: list[str] = []

    def callback(results: Any, err: str | None) -> None:
        if err is not None:
            failures.append(err)
        done.release()

    def proposer() -> None:
        for _ in range(batches // threads):
            member.propose(encode_batch([]), callback)

    workers = [threading.Thread(target=proposer) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    deadline = time.monotonic() + 60
    for _ in range(batches // threads * threads):
        assert done.acquire(timeout=max(0.0, deadline - time.monotonic())), "a proposal never finished"
    assert not failures, failures
    for _ in range(sequential):  # one at a time: each commit advance covers one entry
        member.propose(encode_batch([]), callback)
        assert done.acquire(timeout=30), "a proposal never finished"
    assert not failures, failures
    target = member.commit_index
    wait_until(lambda: all(m.last_applied >= target for m in h.members.values()), 30, "followers to apply")


def _journal_syncs(events: list[tuple[Any, ...]]) -> dict[str, list[tuple[int, int]]]:
    """Per node, each fsync of its journal as (position it began, position it had returned)."""
    began: dict[tuple[str, int], int] = {}
    out: dict[str, list[tuple[int, int]]] = {}
    for pos, ev in enumerate(events):
        if ev[0] in ("fsync_start", "fsync") and ev[2] == "journal":
            key = (ev[1], ev[3])  # node, thread
            if ev[0] == "fsync_start":
                began[key] = pos
            else:
                out.setdefault(ev[1], []).append((began.pop(key), pos))
    return out


def _covered(syncs: dict[str, list[tuple[int, int]]], node: str, appended: int, by: int) -> bool:
    """An fsync of ``node``'s journal began after position ``appended`` and returned before ``by``."""
    return any(appended < start and end < by for start, end in syncs.get(node, []))


def _ack_violations(events: list[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
    """(acks checked, acks with no fsync of that node's journal between the append and the ack)."""
    syncs = _journal_syncs(events)
    appended_at: dict[tuple[str, int], int] = {}
    checked, bad = 0, []
    for pos, ev in enumerate(events):
        kind, node = ev[0], ev[1]
        if kind == "append":
            appended_at[(node, ev[2])] = pos
        elif kind == "ack":
            idx = ev[2]
            if (node, idx) not in appended_at:
                continue  # acked an entry appended before tracing began (none in these runs)
            checked += 1
            if not _covered(syncs, node, appended_at[(node, idx)], pos):
                bad.append(ev)
    return checked, bad


def test_acks_commits_and_votes_wait_for_fsync(harness_factory: Any) -> None:
    h = harness_factory(fsync=True)
    _drive(h)
    events = list(h.trace.events)

    checked, bad = _ack_violations(events)
    assert checked >= 300, f"only {checked} acks traced"
    assert not bad, f"acks sent before the fsync covering them: {bad[:5]}"

    # A commit index c is stored only once a majority holds c on disk: the leader counts itself
    # only after an fsync that began after it appended every entry up to c had returned; a
    # follower, once it sent its ack for c (each checked above to follow its own fsync).
    syncs = _journal_syncs(events)
    appended_at: dict[tuple[str, int], int] = {}
    acked: dict[str, int] = {}
    commits = 0
    for pos, ev in enumerate(events):
        kind, node = ev[0], ev[1]
        if kind == "append":
            appended_at[(node, ev[2])] = pos
        elif kind == "ack":
            acked[node] = max(acked.get(node, 0), ev[2])
        elif kind == "commit":
            commits += 1
            latest_append = max(
                (p for (n, i), p in appended_at.items() if n == node and i <= ev[2]), default=-1
            )
            leader_synced = _covered(syncs, node, latest_append, pos)
            followers = sum(1 for n, a in acked.items() if n != node and a >= ev[2])
            assert leader_synced + followers >= 2, f"leader committed {ev} with fewer than 2 of 3 on disk"
    assert commits >= 30, f"only {commits} leader commit advances traced"

    # Votes: between storing the term/vote and sending the grant, the .meta file was fsynced.
    votes = 0
    for pos, ev in enumerate(events):
        if ev[0] != "vote":
            continue
        votes += 1
        stored = max(p for p in range(pos) if events[p][0] == "term" and events[p][1] == ev[1])
        assert any(events[p][:3] == ("fsync", ev[1], "meta") for p in range(stored, pos)), (
            f"vote {ev} sent before its term/vote was fsynced"
        )
    assert votes >= 1, "no vote was traced (the first election grants at least one)"

    # Group commit: the leader appended ~400 entries with far fewer fsyncs.
    leader = h.leader()
    appends = sum(1 for ev in events if ev[0] == "append" and ev[1] == leader)
    leader_syncs = sum(1 for ev in events if ev[:3] == ("fsync", leader, "journal"))
    assert 0 < leader_syncs < appends, (leader_syncs, appends)


def test_without_fsync_acks_precede_any_sync(harness_factory: Any) -> None:
    """The negative control: with ``fsync=False`` the same check finds violations."""
    h = harness_factory(fsync=False)
    _drive(h, batches=100)
    checked, bad = _ack_violations(list(h.trace.events))
    assert checked >= 50
    assert len(bad) == checked, "without fsync no ack can be covered by one"
    assert all(m.journal_syncs == 0 for m in h.members.values())


def test_an_fsync_begun_before_a_truncation_covers_none_of_the_replaced_entries(tmp_path: Any) -> None:
    """The fsync thread covers the journal as it was when the fsync began: entries a conflict
    replaced meanwhile (same index, new term) are not counted as synced by it."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        for idx in (1, 2, 3):
            journal.add(b"old", idx, 1)
        assert journal.dirty and journal.synced_index == 0
        journal.start_sync()  # covers 1..3 of term 1
        wait_until(lambda: journal._done, 10, "the background fsync")
        journal.deleteEntriesFrom(2)  # a new leader's entry 3 conflicts
        journal.add(b"new", 3, 2)
        released: list[int] = []
        journal.on_synced.append(lambda: released.append(journal.synced_mutations))
        journal.collect()
        assert journal.synced_index < 3, "the replaced entry 3 was counted as on disk"
        assert released == [3]  # the three appends it covered, not the truncation or the new entry
        assert journal.dirty  # and collect() already started the fsync that covers them
        wait_until(lambda: journal._done, 10, "the next background fsync")
        journal.collect()
        assert journal.synced_index == 3 and not journal.dirty
    finally:
        journal._destroy()


def test_after_compaction_the_leader_counts_itself_only_once_the_rewrite_is_synced(tmp_path: Any) -> None:
    """pysyncobj compacts by clearing the journal and re-adding every kept entry at new offsets:
    until an fsync that began after that, the leader's copy of them is only in the page cache, so
    an entry one follower holds (the other lags) must not commit on the leader's vote."""
    from types import SimpleNamespace

    from pysyncobj.journal import FileJournal
    from pysyncobj.syncobj import _RAFT_STATE

    from raftmesh.consensus.raft.durable_journal import CommitGate, DurableJournal

    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        for idx in range(1, 11):
            journal.add(b"x%d" % idx, idx, 1)
        journal.sync()
        assert journal.synced_index == 10
        journal.deleteEntriesTo(5)  # a compaction: raft entries 6..10 kept, rewritten
        assert journal[0][1] == 6 and journal.dirty
        assert journal.synced_index <= 5
        match = {"F1": 10, "F2": 5}  # F1 acked 10 on disk, F2 only 5
        so = SimpleNamespace(
            journal=journal,
            _SyncObj__raftState=_RAFT_STATE.LEADER,
            _SyncObj__otherNodes={"F1", "F2"},
            _SyncObj__getCurrentLogIndex=journal._last_index,
            _SyncObj__raftMatchIndex=match,
            _SyncObj__raftCommitIndex=5,
        )
        gate = CommitGate(so)
        gate.hold_back()
        # pysyncobj counts 1 (the leader) + each follower whose match index reaches the entry
        assert all(1 + sum(m >= i for m in match.values()) < 2 for i in range(6, 11)), match
        gate.restore()
        assert match == {"F1": 10, "F2": 5}
        journal.start_sync()  # begins after the rewrite: it covers the kept entries
        wait_until(lambda: journal._done, 10, "the background fsync")
        journal.collect()
        assert journal.synced_index == 10 and not journal.dirty
        gate.hold_back()
        assert match == {"F1": 10, "F2": 5}  # now the leader's copy counts: 6..10 commit with F1
        gate.restore()
    finally:
        journal._destroy()


def test_closing_the_journal_waits_for_the_fsync_in_flight(tmp_path: Any, monkeypatch: Any) -> None:
    """An fsync still running on the fsync thread after ``_destroy`` would find the journal
    closed (a test's temp dir removed: the node stops with status 74): close waits for it."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft import durable_journal
    from raftmesh.consensus.raft.durable_journal import DurableJournal

    real = durable_journal.fsync_path
    release = threading.Event()
    entered = threading.Event()

    def held_on_the_thread(path: str, directory: bool = False, data_only: bool = False) -> None:
        if threading.current_thread().name == "raft-fsync":
            entered.set()
            release.wait(10)
        real(path, directory=directory, data_only=data_only)

    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    monkeypatch.setattr(durable_journal, "fsync_path", held_on_the_thread)
    journal.add(b"x", 1, 1)
    journal.start_sync()
    wait_until(entered.is_set, 10, "the background fsync to start")
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (journal._destroy(), closed.set()))
    closer.start()
    try:
        assert not closed.wait(0.3), "the journal closed while its fsync was still running"
    finally:
        release.set()
        closer.join(10)
    assert closed.is_set()
    assert journal._thread is not None and not journal._thread.is_alive()
    assert not journal.dirty


def test_compaction_replaces_the_journal_file_instead_of_rewriting_it_in_place(tmp_path: Any) -> None:
    """pysyncobj compacts by rewriting the kept entries from the start of the same file: a crash
    mid-way could leave neither the old journal nor the new one. The durable journal writes a new
    file and renames it over: the old file is never touched, so a crash leaves one or the other."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    path = str(tmp_path / "raft.journal")
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        for idx in range(1, 11):
            journal.add(b"x%d" % idx, idx, 1)
        journal.setCurrentTerm(3, "me")
        journal.setRaftCommitIndex(9)  # in memory only until the one-second timer stores it
        journal.sync()
        with open(path, "rb") as f:
            before = f.read()
        old_inode = os.stat(path).st_ino
        fd = os.open(path, os.O_RDONLY)  # the old file as it stays on disk
        try:
            journal.deleteEntriesTo(5)
            assert os.stat(path).st_ino != old_inode, "the journal file was rewritten in place"
            assert os.pread(fd, len(before) + 1, 0) == before, "the old journal changed before the rename"
        finally:
            os.close(fd)
        assert not os.path.exists(path + ".compact")
        assert [journal[i][1] for i in range(len(journal))] == [6, 7, 8, 9, 10]
        assert journal.getRaftCommitIndex() == 9 and journal.getCurrentTerm() == 3
        journal.add(b"x11", 11, 3)  # appends go on in the new file
        journal.onOneSecondTimer()
    finally:
        journal._destroy()
    reopened = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        assert [(reopened[i][0], reopened[i][1]) for i in range(len(reopened))] == [
            (b"x%d" % i, i) for i in range(6, 12)
        ]
        assert reopened.getRaftCommitIndex() == 9 and reopened.getCurrentTerm() == 3
        assert reopened.getVotedForNodeId() == "me"
    finally:
        reopened._destroy()


# ---- snapshot install: pysyncobj's ``clear`` then two ``add``s, made crash-atomic ----------------

_OLD = [(b"x%d" % i, i, 1) for i in range(1, 11)]
_INSTALLED = [(b"prev", 19, 2), (b"last", 20, 2)]  # the snapshot's boundary entries

_INSTALL_CHILD = """
import os, sys
from pysyncobj.journal import FileJournal
from raftmesh.consensus.raft import durable_journal as dj

path, step = sys.argv[1], sys.argv[2]
journal = dj.DurableJournal(FileJournal(path), path, fsync=True)

def crash_at(point):
    if point == step:
        os._exit(9)  # no cleanup, as a kill -9: what the process wrote is what the file holds

real_replace, real_fsync_path = os.replace, dj.fsync_path

def replace(src, dst):
    crash_at("before-rename")
    real_replace(src, dst)
    crash_at("after-rename")

def fsync_path(p, directory=False, data_only=False):
    real_fsync_path(p, directory=directory, data_only=data_only)
    if p.endswith(".compact"):  # the new file
        crash_at("new-file-synced")

os.replace, dj.fsync_path = replace, fsync_path
# the order pysyncobj's __loadDumpFile(clearJournal=True) calls them in
journal.clear()
crash_at("cleared")
journal.add(b"prev", 19, 2)
crash_at("first-add")
journal.add(b"last", 20, 2)
crash_at("second-add")
journal.sync()  # the tick's fsync, before the install's ack is released
crash_at("synced")
"""


def _old_journal(path: str) -> None:
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        for entry in _OLD:
            journal.add(*entry)
        journal.setCurrentTerm(2, "leader")
        journal.setRaftCommitIndex(10)
        journal.onOneSecondTimer()
    finally:
        journal._destroy()


def _loaded(path: str) -> tuple[list[tuple[bytes, int, int]], int, Any, int]:
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    journal = DurableJournal(FileJournal(path), path, fsync=True)  # raises if it does not load
    try:
        held = [(bytes(c), int(i), int(t)) for c, i, t in journal[:]]
        return held, journal.getCurrentTerm(), journal.getVotedForNodeId(), journal.getRaftCommitIndex()
    finally:
        journal._destroy()


@pytest.mark.parametrize(
    ("step", "installed"),
    [
        ("cleared", False),
        ("first-add", False),
        ("second-add", False),
        ("new-file-synced", False),
        ("before-rename", False),
        ("after-rename", True),
        ("synced", True),
    ],
)
def test_a_crash_at_any_step_of_a_snapshot_install_leaves_the_old_or_the_new_journal(
    tmp_path: Any, step: str, installed: bool
) -> None:
    """pysyncobj installs a leader's snapshot by clearing the journal in place and adding the
    snapshot's two boundary entries: a crash in between left an empty or half-written journal
    (on a power cut, with its pages written back in any order, one that does not load). The
    durable journal writes them to a new file renamed over the old one: a process killed at each
    step leaves the old journal or the new one, whole, with term, vote and commit index."""
    path = _crashed_at(tmp_path, _INSTALL_CHILD, step)
    held, term, vote, _ = _loaded(path)
    assert held == (_INSTALLED if installed else _OLD), f"after a crash at {step!r}"
    assert (term, vote) == (2, "leader")
    assert not os.path.exists(path + ".compact"), "the unfinished new file was left behind"


def test_a_snapshot_install_leaves_the_journal_file_untouched_until_the_sync_renames_the_new_one(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a power cut only what a rename made durable counts: the old journal's bytes must not
    change before the new file replaces it. The rename comes before the fsync that releases the
    install's ack, and the entries are counted as on disk only by an fsync begun after it."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    path = str(tmp_path / "raft.journal")
    _old_journal(path)
    with open(path, "rb") as f:
        before = f.read()
    old_inode = os.stat(path).st_ino
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    events: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        events.append("renamed")
        real_replace(src, dst)

    journal.on_synced.append(lambda: events.append("released"))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert journal.synced_index == 10
        monkeypatch.setattr(os, "replace", replace)
        journal.clear()
        for entry in _INSTALLED:
            journal.add(*entry)
        assert [journal[i][1] for i in range(len(journal))] == [19, 20]
        assert journal.dirty and journal.synced_index == 0, "entries only in the page cache counted"
        assert os.stat(path).st_ino == old_inode, "the journal file was rewritten in place"
        assert os.pread(fd, len(before) + 1, 0) == before, "the old journal changed before the rename"
        assert events == []
        journal.setRaftCommitIndex(20)
        journal.sync()
        assert events == ["renamed", "released"]
        assert os.stat(path).st_ino != old_inode and os.pread(fd, len(before) + 1, 0) == before
        assert not os.path.exists(path + ".compact")
        assert journal.synced_index == 20 and not journal.dirty
        journal.add(b"next", 21, 2)  # appends go on in the new file
        journal.onOneSecondTimer()  # stores the commit index, after the entries it covers
    finally:
        os.close(fd)
        journal._destroy()
    held, term, vote, commit = _loaded(path)
    assert held == [*_INSTALLED, (b"next", 21, 2)]
    assert (term, vote, commit) == (2, "leader", 20)


def test_a_leader_start_sync_renames_an_installed_journal_before_the_fsync_thread_covers_it(
    tmp_path: Any,
) -> None:
    """The fsync thread syncs the journal file by its name: a pending install is renamed into
    place first (inline), so the fsync it then runs covers the new entries."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    path = str(tmp_path / "raft.journal")
    _old_journal(path)
    old_inode = os.stat(path).st_ino
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        journal.clear()
        for entry in _INSTALLED:
            journal.add(*entry)
        journal.start_sync()
        assert os.stat(path).st_ino != old_inode
        wait_until(lambda: journal._done, 10, "the background fsync")
        journal.collect()
        assert journal.synced_index == 20 and not journal.dirty
    finally:
        journal._destroy()
    assert _loaded(path)[0] == _INSTALLED


def test_a_compaction_or_a_second_install_before_the_sync_replaces_the_pending_new_file(
    tmp_path: Any,
) -> None:
    """A rewrite that comes while an install's new file awaits its rename starts a new file
    from what the journal holds; one rename then makes the last one the journal."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    path = str(tmp_path / "raft.journal")
    _old_journal(path)
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        journal.clear()
        journal.add(b"a", 15, 2)
        journal.clear()
        for entry in [*_INSTALLED, (b"next", 21, 2)]:
            journal.add(*entry)
        journal.deleteEntriesTo(1)  # a compaction to 20
        assert _loaded(path)[0] == [_INSTALLED[1], (b"next", 21, 2)], "the compaction renamed at once"
        journal.sync()
    finally:
        journal._destroy()
    assert _loaded(path)[0] == [_INSTALLED[1], (b"next", 21, 2)]


# ---- a power cut's torn journal tail (load path) -------------------------------------------

_TORN_HEAD = 40  # pysyncobj's journal header; its end offset (the last 4 bytes) says where records end
_TORN = [(b"\x00" + bytes([i]) * (300 if i != 5 else 9000), i, 1 + i // 4) for i in range(1, 9)]
"""Whole entries (command, index, term); one record spans pages."""


def _torn_journal(path: str) -> list[int]:
    """``_TORN`` written and synced through the durable journal; the offset where each record starts,
    and where the last ends."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        for entry in _TORN:
            journal.add(*entry)
        journal.setCurrentTerm(2, "leader")
    finally:
        journal._destroy()
    offsets = [_TORN_HEAD]
    for command, _, _ in _TORN:
        offsets.append(offsets[-1] + 4 + 16 + len(command) + 4)
    return offsets


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _record(command: bytes, index: int, term: int) -> bytes:
    import struct

    size = struct.pack("<I", 16 + len(command))
    return size + struct.pack("<QQ", index, term) + command + size


def _set_end(path: str, end: int) -> None:
    import struct

    _patch(path, _TORN_HEAD - 4, struct.pack("<I", end))


def _past_the_end_with_zeros(path: str, offsets: list[int]) -> None:
    _set_end(path, offsets[-1] + 2 * 324)  # two more records counted, their pages never written


def _torn_last_record(path: str, offsets: list[int]) -> None:
    record = _record(b"\x00" + b"\x09" * 9000, 9, 3)  # the head's page written, the rest not
    _patch(path, offsets[-1], record[:5000] + bytes(len(record) - 5000))
    _set_end(path, offsets[-1] + len(record))


def _garbage_size(path: str, offsets: list[int]) -> None:
    record = _record(b"\x00" + b"\x09" * 300, 9, 3)
    _patch(path, offsets[-1], b"\xef\xbe\xad\xde" + record[4:])  # a page of old bytes under the size
    _set_end(path, offsets[-1] + len(record))


def _wrong_size_that_fits(path: str, offsets: list[int]) -> None:
    record = _record(b"\x00" + b"\x09" * 300, 9, 3)
    _patch(path, offsets[-1], record[:-4] + bytes(4))  # the record's trailing size never written
    _patch(path, offsets[-1] + len(record), _record(b"\x00", 10, 3))
    _set_end(path, offsets[-1] + len(record) + 4 + 17 + 4)


def _old_record_under_new_ones(path: str, offsets: list[int]) -> None:
    first = _record(b"\x00" + b"\x09" * 300, 9, 3)
    _patch(path, offsets[-1], first)
    _patch(path, offsets[-1] + len(first), _record(b"\x00" + b"\x0a" * 300, 4, 1))  # a stale one
    _set_end(path, offsets[-1] + 2 * len(first))


def _end_inside_a_record(path: str, offsets: list[int]) -> None:
    record = _record(b"\x00" + b"\x09" * 300, 9, 3)  # written, and the header's end not yet past it
    _patch(path, offsets[-1], record)
    _set_end(path, offsets[-1] + 100)


@pytest.mark.parametrize(
    ("shape", "kept"),
    [
        (_past_the_end_with_zeros, 8),
        (_torn_last_record, 8),
        (_garbage_size, 8),
        (_wrong_size_that_fits, 8),
        (_old_record_under_new_ones, 9),
        (_end_inside_a_record, 8),
        (lambda path, offsets: _patch(path, offsets[5], bytes(offsets[6] - offsets[5])), 5),  # 7, 8 whole
    ],
    ids=[
        "past-end-zeros",
        "torn-last",
        "garbage-size",
        "wrong-size",
        "stale-index",
        "end-mid-record",
        "torn-middle",
    ],
)
def test_a_journal_a_power_cut_tore_loads_its_whole_records_and_cuts_the_rest(
    tmp_path: Any, caplog: pytest.LogCaptureFixture, shape: Any, kept: int
) -> None:
    """Appends write the journal in place; after a power cut its header (the records' end offset)
    can be on disk without a record it counts. pysyncobj's load then fails (``struct.error``) or
    takes garbage for an entry, and the node cannot restart. The whole records before the first
    one that is not load, the rest (never synced, never acknowledged) is cut with a warning, and
    the journal appends and reloads as before."""
    import logging

    path = str(tmp_path / "raft.journal")
    offsets = _torn_journal(path)
    shape(path, offsets)
    with caplog.at_level(logging.WARNING, logger="raftmesh.consensus.raft.durable_journal"):
        from raftmesh.consensus.raft.durable_journal import repair_journal

        repair_journal(path)
    held, term, vote, _ = _loaded(path)
    whole = [*_TORN, (b"\x00" + b"\x09" * 300, 9, 3)]
    assert held == whole[:kept]
    assert (term, vote) == (2, "leader")
    assert any("cut" in r.getMessage() and f"first {kept} entries" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(path + ".compact")

    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        journal.add(b"\x00next", kept + 1, 3)
    finally:
        journal._destroy()
    caplog.clear()
    repair_journal(path)
    assert not caplog.records, "a whole journal is left as it is"
    assert _loaded(path)[0] == [*whole[:kept], (b"\x00next", kept + 1, 3)]


def test_a_header_short_of_the_records_written_drops_them_as_pysyncobj_does(tmp_path: Any) -> None:
    """Records on disk past the header's end offset (the header's page not written back) are
    ignored: never synced (an fsync covers the header with them), so never acknowledged."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import repair_journal

    path = str(tmp_path / "raft.journal")
    offsets = _torn_journal(path)
    _set_end(path, offsets[6])
    plain = FileJournal(path)
    try:
        assert [(bytes(c), i, t) for c, i, t in plain[:]] == _TORN[:6]
    finally:
        plain._destroy()
    repair_journal(path)
    assert _loaded(path)[0] == _TORN[:6]


def test_an_empty_journal_file_loads_empty(tmp_path: Any) -> None:
    """Created and never synced (a power cut right after): pysyncobj cannot mmap an empty file."""
    from raftmesh.consensus.raft.durable_journal import repair_journal

    path = str(tmp_path / "raft.journal")
    open(path, "wb").close()
    repair_journal(path)
    assert _loaded(path)[0] == []


@pytest.mark.parametrize("written", [0, 4096], ids=["record-unwritten", "second-page-unwritten"])
def test_a_node_restarts_on_a_journal_a_power_cut_tore(tmp_path: Any, written: int) -> None:
    """A member's journal whose header counts an appended record not (or not all) on disk: the
    header's page written back, none or only the first page of the record. pysyncobj's load
    failed (``struct.error``: the member could not start) or took the torn record for an entry
    (here of term 99, which the member then adopted and committed). It starts with the whole
    entries, applies them, and commits again in its own term."""
    import struct

    addr = f"127.0.0.1:{free_ports(1)[0]}"
    cfg = RaftConfig(
        self_addr=addr,
        peer_addrs=(addr,),
        journal_path=str(tmp_path / "raft.journal"),
        snapshot_path=str(tmp_path / "snapshot.lmdb"),
        timings=RaftTimings(election_min_s=0.5, election_max_s=1.0),
    )

    def committed(member: RaftMember, count: int) -> None:
        done = threading.Semaphore(0)
        errors: list[Any] = []
        for _ in range(count):
            member.propose(encode_batch([]), lambda res, err: (errors.append(err), done.release()))
            assert done.acquire(timeout=30), "a proposal never finished"
        assert errors == [None] * count

    member = RaftMember(cfg, StateMachine(), lambda events: None, LmdbSnapshotIO())
    try:
        wait_until(lambda: member.is_leader, 30, "the member to lead")
        committed(member, 5)
        last = member.commit_index
    finally:
        member.destroy()
    with open(cfg.journal_path, "rb") as f:
        end = struct.unpack("<I", f.read(_TORN_HEAD)[-4:])[0]
    record = _record(b"\x00" + b"\x07" * 6000, last + 1, 99)
    _patch(cfg.journal_path, end, record[:written] + bytes(len(record) - written))
    _set_end(cfg.journal_path, end + len(record))
    from raftmesh.consensus.raft import read_journal

    assert max(index for index, _, _ in read_journal(cfg.journal_path)[0]) == last  # an audit reads it

    member = RaftMember(cfg, StateMachine(), lambda events: None, LmdbSnapshotIO())
    try:
        wait_until(lambda: member.is_leader and member.last_applied >= last, 30, "the member to lead again")
        committed(member, 2)
        assert member.commit_index >= last + 2
        assert member.term < 99, "the torn record's term was taken for the log's"
    finally:
        member.destroy()


# ---- a follower's conflict truncation (Raft §5.3): no dropped record's bytes stay in the file ----

_KEPT = [(b"kept-%02d" % i + b"." * 1000, i, 2) for i in range(1, 11)]
_DROPPED = [(b"dropped-%02d" % i + b"." * 997, i, 2) for i in (11, 12)]
_NEW = [(b"new-%02d" % i + b"." * 1001, i, 3) for i in (11, 12)]
"""Records of one size: a new record starts exactly where a dropped one did (the worst case)."""


def _conflicting_journal(path: str, fsync: bool = True) -> Any:
    """A follower's journal holding ``_KEPT`` and the uncommitted ``_DROPPED`` of an old leader,
    synced; a new leader (term 3) is about to replace entries 11 and 12."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal

    journal = DurableJournal(FileJournal(path), path, fsync=fsync)
    for entry in [*_KEPT, *_DROPPED]:
        journal.add(*entry)
    journal.setCurrentTerm(3, "new-leader")
    journal.setRaftCommitIndex(8)
    journal.onOneSecondTimer()
    journal.sync()
    return journal


def _new_record_pages_lost(path: str, on_disk: bytes) -> None:
    """The power cut: the header's page (its end offset counting the new entry 11) reached the
    disk, the pages of the new record did not: they hold what they held (``on_disk``) before it."""
    start = _TORN_HEAD + sum(4 + 16 + len(command) + 4 for command, _, _ in _KEPT)
    end = start + 4 + 16 + len(_NEW[0][0]) + 4
    page = 4096
    assert end <= len(on_disk) and start >= page  # the header's page is another one
    first, last = start // page * page, -(-end // page) * page
    _patch(path, first, on_disk[first:last])


def test_a_power_cut_after_a_conflict_truncation_never_brings_a_dropped_entry_back(tmp_path: Any) -> None:
    """pysyncobj's ``deleteEntriesFrom`` only moved the header's end offset back: the dropped
    records stayed in the file past it and the new ones were written over them in place. After a
    power cut that wrote the header back and not the new record's page, the old record (11, term 2)
    showed through, whole, and ``repair_journal`` kept it: the node's log held an entry it had
    deleted. The kept entries now go to a new file renamed over the journal: no byte of a dropped
    record is left to show through."""
    from raftmesh.consensus.raft.durable_journal import repair_journal

    path = str(tmp_path / "raft.journal")
    journal = _conflicting_journal(path)
    try:
        journal.deleteEntriesFrom(10)  # the new leader's entry 11 (term 3) conflicts
        with open(path, "rb") as f:
            on_disk = f.read()  # the journal as the truncation left it (all of it synced)
        journal.add(*_NEW[0])  # written in place where entry 11 (term 2) was
        journal.sync()
    finally:
        journal._destroy()
    _new_record_pages_lost(path, on_disk)
    repair_journal(path)
    held, term, vote, commit = _loaded(path)
    assert not set(held) & set(_DROPPED), "a deleted entry is back in the log"
    assert held == _KEPT  # the new entry 11 was never synced, so never acknowledged
    assert (term, vote, commit) == (3, "new-leader", 8)
    assert not any(command[:10] in on_disk for command, _, _ in _DROPPED), "dropped records left in the file"


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "unsafe-no-fsync"])
def test_a_conflict_truncation_keeps_every_entry_before_and_after_it(tmp_path: Any, fsync: bool) -> None:
    """The normal path: drop the conflicting suffix, append the new leader's entries, reload: every
    kept and new entry is there, and the term, vote and commit index with them. With fsync the
    journal is a new file and the new entries count as synced only once an fsync begun after them
    is done (the fsync thread here, as on a leader); ``--unsafe-no-fsync`` keeps pysyncobj's
    in-place truncation."""
    from raftmesh.consensus.raft.durable_journal import repair_journal

    path = str(tmp_path / "raft.journal")
    journal = _conflicting_journal(path, fsync)
    inode = os.stat(path).st_ino
    try:
        journal.deleteEntriesFrom(10)
        assert (os.stat(path).st_ino != inode) == fsync
        assert not os.path.exists(path + ".compact")
        assert [journal[i] for i in range(len(journal))] == _KEPT
        for entry in _NEW:
            journal.add(*entry)
        assert journal.synced_index <= 10 and journal.dirty == fsync
        journal.start_sync()
        if fsync:
            wait_until(lambda: journal._done, 10, "the background fsync")
            journal.collect()
            assert journal.synced_index == 12 and not journal.dirty
        assert journal.getCurrentTerm() == 3 and journal.getRaftCommitIndex() == 8
    finally:
        journal._destroy()
    repair_journal(path)
    held, term, vote, commit = _loaded(path)
    assert held == [*_KEPT, *_NEW]
    assert (term, vote, commit) == (3, "new-leader", 8)


def _truncated_in_place(path: str) -> None:
    from pysyncobj.journal import FileJournal

    plain = FileJournal(path)  # an older raftmesh, or --unsafe-no-fsync: pysyncobj's truncation
    try:
        for entry in [*_KEPT, *_DROPPED]:
            plain.add(*entry)
        plain.deleteEntriesFrom(10)
    finally:
        plain._destroy()


def _header_short(path: str) -> None:
    _conflicting_journal(path)._destroy()  # 11 and 12 (term 2) appended, and the header's page
    _set_end(path, _TORN_HEAD + sum(4 + 16 + len(command) + 4 for command, _, _ in _KEPT))  # lost


@pytest.mark.parametrize(
    "left", [_truncated_in_place, _header_short], ids=["truncated-in-place", "header-short"]
)
def test_records_past_the_end_of_a_journal_at_start_never_show_through_a_new_one(
    tmp_path: Any, left: Any
) -> None:
    """A journal can start with records past its end: dropped in place by pysyncobj (a journal an
    older raftmesh truncated) or appended and not counted (the header's page lost in a power
    cut). New entries are appended over them in place, so the same power cut as above showed the
    old entry 11 (term 2) where the new one was. They are dropped from the file before any append."""
    from pysyncobj.journal import FileJournal

    from raftmesh.consensus.raft.durable_journal import DurableJournal, repair_journal

    path = str(tmp_path / "raft.journal")
    left(path)
    repair_journal(path)  # the restart: the journal is whole, up to its end
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        assert [journal[i] for i in range(len(journal))] == _KEPT
        with open(path, "rb") as f:
            on_disk = f.read()  # synced when the journal opened
        journal.add(*_NEW[0])  # the new leader's entry 11
        journal.sync()
    finally:
        journal._destroy()
    _new_record_pages_lost(path, on_disk)
    repair_journal(path)
    held = _loaded(path)[0]
    assert not set(held) & set(_DROPPED), "an entry past the journal's end is back in the log"
    assert held == _KEPT
    assert not any(command[:10] in on_disk for command, _, _ in _DROPPED), "records left past the end"
    journal = DurableJournal(FileJournal(path), path, fsync=True)
    try:
        for entry in _NEW:
            journal.add(*entry)
    finally:
        journal._destroy()
    assert _loaded(path)[0] == [*_KEPT, *_NEW]


_TRUNCATE_CHILD = (
    _INSTALL_CHILD.split("# the order pysyncobj")[0]
    + """
journal.deleteEntriesFrom(7)  # a new leader's entry 8 conflicts
crash_at("truncated")
journal.add(b"new8", 8, 3)
journal.sync()
crash_at("synced")
"""
)


@pytest.mark.parametrize(
    ("step", "kept"),
    [("new-file-synced", 10), ("before-rename", 10), ("after-rename", 7), ("truncated", 7), ("synced", 8)],
)
def test_a_crash_at_any_step_of_a_conflict_truncation_leaves_the_old_or_the_new_journal(
    tmp_path: Any, step: str, kept: int
) -> None:
    """The truncation's new file is renamed over the journal: a process killed at each step leaves
    the old journal or the new one, whole, with term and vote."""
    path = _crashed_at(tmp_path, _TRUNCATE_CHILD, step)
    held, term, vote, _ = _loaded(path)
    assert held == (_OLD if kept == 10 else _OLD[:7] + [(b"new8", 8, 3)][: kept - 7]), (
        f"after a crash at {step!r}"
    )
    assert (term, vote) == (2, "leader")
    assert not os.path.exists(path + ".compact"), "the unfinished new file was left behind"


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("all hole", False),
        ("data in the last byte", True),
        ("zeros written after the end", False),
        ("data past a hole", True),
        ("end inside data, zeros after it", False),
        ("end past the file", False),
    ],
)
def test_bytes_past_the_end_are_found_in_data_extents_and_holes_read_as_zeros(
    tmp_path: Any, layout: str, expected: bool
) -> None:
    """``_bytes_past_end`` reads only the data extents past the records' end (pysyncobj's file
    doubles as it grows, so the tail can be as large as the records), and finds any non-zero byte."""
    from raftmesh.consensus.raft.durable_journal import _bytes_past_end

    path = tmp_path / "j"
    size, end = 4 << 20, 4096
    with open(path, "wb") as f:
        f.write(b"\1" * end)  # the records
        f.truncate(size)  # a sparse tail
        if layout == "data in the last byte":
            f.seek(size - 1)
            f.write(b"\7")
        elif layout == "zeros written after the end":
            f.seek(end)
            f.write(bytes(1 << 20))
        elif layout == "data past a hole":
            f.seek(2 << 20)
            f.write(b"\0" * 100 + b"\1")
    at = {"end inside data, zeros after it": 100, "end past the file": size + 10}.get(layout, end)
    if layout == "end inside data, zeros after it":
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(bytes(end - at))
    assert _bytes_past_end(str(path), at) is expected


def _crashed_at(tmp_path: Any, child_script: str, step: str) -> str:
    """A child process runs ``child_script`` on a journal holding ``_OLD`` and exits (status 9,
    ``os._exit``: no cleanup) at ``step``; the journal's path."""
    import subprocess
    import sys

    import raftmesh

    path = str(tmp_path / "raft.journal")
    _old_journal(path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(raftmesh.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", child_script, path, step], env=env, capture_output=True, timeout=60
    )
    assert child.returncode == 9, f"never reached {step!r}: {child.stderr.decode()[-2000:]}"
    return path
