"""The journal fsync comes before everything that relies on it (issue 7, item 9).

Three real pysyncobj members (``RaftMember``) on loopback, in this process, with real
journals in a temp dir. The test instruments what really happens, in one ordered trace:
every ``os.fsync``/``os.fdatasync`` (by the file it syncs), every journal append and term/vote store,
every leader commit-index advance, and every frame handed to a Raft socket. Then:

- a follower's success ack for index i is sent only after an fsync of its journal that
  was issued after entry i was appended;
- the leader advances its commit index to c only after an fsync of its journal that
  covers every entry up to c it appended itself (it counts itself toward the quorum);
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
            real(fd)
            node = h.node_of_path(path)
            if node is not None:
                kind = "meta" if path.endswith((".meta", ".meta.tmp")) else "journal"
                trace.add("fsync", node, kind)

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


def _ack_violations(events: list[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
    """(acks checked, acks with no fsync of that node's journal between the append and the ack)."""
    appended_at: dict[tuple[str, int], int] = {}
    last_fsync: dict[str, int] = {}
    checked, bad = 0, []
    for pos, ev in enumerate(events):
        kind, node = ev[0], ev[1]
        if kind == "append":
            appended_at[(node, ev[2])] = pos
        elif kind == "fsync" and ev[2] == "journal":
            last_fsync[node] = pos
        elif kind == "ack":
            idx = ev[2]
            if (node, idx) not in appended_at:
                continue  # acked an entry appended before tracing began (none in these runs)
            checked += 1
            if last_fsync.get(node, -1) < appended_at[(node, idx)]:
                bad.append(ev)
    return checked, bad


def test_acks_commits_and_votes_wait_for_fsync(harness_factory: Any) -> None:
    h = harness_factory(fsync=True)
    _drive(h)
    events = list(h.trace.events)

    checked, bad = _ack_violations(events)
    assert checked >= 300, f"only {checked} acks traced"
    assert not bad, f"acks sent before the fsync covering them: {bad[:5]}"

    # The leader counts itself toward the quorum: a commit index c is stored only after an
    # fsync of the leader's journal that followed the append of every entry up to c.
    appended_at: dict[tuple[str, int], int] = {}
    last_fsync: dict[str, int] = {}
    commits = 0
    for pos, ev in enumerate(events):
        kind, node = ev[0], ev[1]
        if kind == "append":
            appended_at[(node, ev[2])] = pos
        elif kind == "fsync" and ev[2] == "journal":
            last_fsync[node] = pos
        elif kind == "commit":
            commits += 1
            latest_append = max(
                (p for (n, i), p in appended_at.items() if n == node and i <= ev[2]), default=-1
            )
            assert last_fsync.get(node, -1) > latest_append, f"leader committed {ev} before syncing it"
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
    syncs = sum(1 for ev in events if ev[:3] == ("fsync", leader, "journal"))
    assert 0 < syncs < appends, (syncs, appends)


def test_without_fsync_acks_precede_any_sync(harness_factory: Any) -> None:
    """The negative control: with ``fsync=False`` the same check finds violations."""
    h = harness_factory(fsync=False)
    _drive(h, batches=100)
    checked, bad = _ack_violations(list(h.trace.events))
    assert checked >= 50
    assert len(bad) == checked, "without fsync no ack can be covered by one"
    assert all(m.journal_syncs == 0 for m in h.members.values())
