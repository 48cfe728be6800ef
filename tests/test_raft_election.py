"""Pre-vote and fast failover (``raftmesh.consensus.raft.election``) on three in-process members.

Real ``RaftMember``s on loopback, no node processes: what is checked is the election's
decisions (who raises the term, how many rounds), never how fast they are.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.syncobj import _RAFT_STATE

from raftmesh.consensus.codes import Code
from raftmesh.consensus.commands import NodeDown, RegisterNode, SuspectNode, encode_batch
from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.raft import RaftConfig, RaftMember
from raftmesh.consensus.raft.election import PRE_VOTE, PRE_VOTE_RESPONSE, Election
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.storage.snapshots import LmdbSnapshotIO

from .test_read_index import Leader
from .test_replication import append

Members = dict[str, RaftMember]


@pytest.fixture
def members(tmp_path: str) -> Iterator[Callable[[], Members]]:
    made: list[RaftMember] = []

    def make() -> Members:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        out: Members = {}
        for i, a in enumerate(addrs):
            d = os.path.join(str(tmp_path), f"m{i}")
            os.makedirs(d)
            cfg = RaftConfig(
                self_addr=a,
                peer_addrs=tuple(addrs),
                journal_path=os.path.join(d, "raft.journal"),
                snapshot_path=os.path.join(d, "snapshot.lmdb"),
            )
            out[a] = RaftMember(cfg, StateMachine(), lambda events: None, LmdbSnapshotIO())
            made.append(out[a])
        return out

    try:
        yield make
    finally:
        for m in made:
            m.destroy()


def _one_leader(ms: Members) -> str:
    def agreed() -> str | None:
        leaders = [a for a, m in ms.items() if m.is_leader]
        if len(leaders) != 1 or any(m.leader_addr != leaders[0] for m in ms.values()):
            return None
        return leaders[0]

    return wait_until(agreed, 30, "one leader every member follows")


def test_a_follower_whose_timer_fires_under_a_live_leader_changes_nothing(
    members: Callable[[], Members],
) -> None:
    """What a follower stalled on a loaded machine does: its timer fires, yet the leader is fine.

    Without pre-vote it raised its term at once and the leader lost its term.
    """
    ms = members()
    leader = _one_leader(ms)
    term = ms[leader].term
    follower = next(a for a in ms if a != leader)
    ms[follower]._so._SyncObj__raftElectionDeadline = 0.0  # its timer fires at its next tick (20 ms)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # observing a steady state for a while, not waiting for one
        assert [m.term for m in ms.values()] == [term] * 3, "the follower's timer cost a term"
        assert ms[leader].is_leader
        time.sleep(0.05)
    election = ms[follower]._so._election
    assert election.pre_votes_started >= 1, "the follower's timer did not fire"
    assert election.pre_votes_won == 0
    assert _one_leader(ms) == leader


def test_a_late_pre_vote_grant_from_an_earlier_round_does_not_count(tmp_path: Path) -> None:
    """Rounds repeat for the same term (a failed round raises none): a grant that arrives after
    the next round started was given to the earlier one, maybe before the granter heard a
    leader again, so it must not make the new round win."""
    ld = Leader(tmp_path, lead=False)  # a real member of 3 whose two peers the test plays
    try:
        election = ld.so._election
        p1 = ld.peers[0]

        def rounds() -> list[dict[str, Any]]:
            return [m for n, m in ld.sent if n == p1 and m.get("type") == PRE_VOTE]

        first = wait_until(lambda: rounds()[:1], 10, "a first pre-vote round")[0]
        ld.run(lambda: setattr(ld.so, "_SyncObj__raftElectionDeadline", 0.0))
        second = wait_until(lambda: rounds()[1:2], 10, "a second pre-vote round")[0]
        assert second["term"] == first["term"] and second["round"] != first["round"]

        def grant(round_id: int) -> dict[str, Any]:
            return {
                "type": PRE_VOTE_RESPONSE,
                "term": second["term"],
                "current_term": second["current_term"],
                "granted": True,
                "round": round_id,
            }

        # Delivered with the check in the same tick-thread turn, so no third round can start
        # in between.
        def late_then_current() -> None:
            newest = rounds()[-1]["round"]
            ld.so._SyncObj__onMessageReceived(p1, grant(first["round"]))
            assert election.pre_votes_won == 0, "the earlier round's grant counted"
            ld.so._SyncObj__onMessageReceived(p1, grant(newest))
            assert election.pre_votes_won == 1

        ld.run(late_then_current)
    finally:
        ld.close()


def test_a_new_leader_counts_its_previous_leaders_silence_from_when_it_last_heard_it(
    tmp_path: Path,
) -> None:
    """``response_ages`` (what the node's liveness flags and requeues members by): pysyncobj
    starts every peer's clock afresh when a node starts leading, but the leader it followed
    has been silent since this node last heard it, so its attempts need not wait a new second."""
    ld = Leader(tmp_path, lead=False)
    try:
        p1, p2 = ld.peers
        ld.receive(p1, append(2, 1, 0, [], commit=1))  # p1 leads term 2; this member follows it
        contact = time.monotonic()
        assert ld.member.leader_addr == str(p1.address)
        wait_until(lambda: time.monotonic() - contact >= 0.5, 5, "half a second without p1")

        def become_leader() -> None:
            ld.so._SyncObj__setCurrentTerm(3, None)
            ld.so._SyncObj__onBecomeLeader()

        ld.run(become_leader)
        answer = {"type": "next_node_idx", "next_node_idx": 2, "reset": False, "success": True}
        ld.receive(p2, answer)
        a1, a2 = str(p1.address), str(p2.address)
        ages = wait_until(
            lambda: (a := ld.member.response_ages()) and a[a1] >= 0.5 + 0.2 and a, 5, "the grace to pass"
        )
        assert ages[a1] >= 0.7 and ages[a2] < ages[a1] - 0.4  # p2's clock started with this term
        ld.receive(p1, answer)  # the previous leader answers: its clock is the usual one again
        assert ld.member.response_ages()[a1] < 0.5
    finally:
        ld.close()


def test_a_re_elected_leader_times_its_previous_leader_from_its_answers_not_the_old_contact(
    tmp_path: Path,
) -> None:
    """Once the previous leader answered this node as leader, its silence no longer dates from
    when this node followed it: a re-election (a later term, no answer yet) starts its clock
    afresh like every other peer's, instead of reporting a live member silent since then."""
    ld = Leader(tmp_path, lead=False)
    try:
        p1, p2 = ld.peers
        ld.receive(p1, append(2, 1, 0, [], commit=1))  # p1 leads term 2; this member follows it
        contact = time.monotonic()
        wait_until(lambda: time.monotonic() - contact >= 0.5, 5, "half a second without p1")

        def become_leader(term: int) -> Callable[[], None]:
            def run() -> None:
                ld.so._SyncObj__setCurrentTerm(term, None)
                ld.so._SyncObj__onBecomeLeader()

            return run

        ld.run(become_leader(3))
        answer = {"type": "next_node_idx", "next_node_idx": 2, "reset": False, "success": True}
        ld.receive(p1, answer)  # the previous leader answers in term 3: it is alive
        ld.receive(p2, answer)
        started = time.monotonic()
        ld.run(become_leader(4))  # re-elected (e.g. after a check-quorum step-down); no answer yet
        a1 = str(p1.address)
        ages = wait_until(
            lambda: (a := ld.member.response_ages()) and a[a1] >= 0.2 + 0.05 and a, 5, "the grace to pass"
        )
        assert ages[a1] <= time.monotonic() - started, (
            f"p1 reported silent for {ages[a1]:.2f}s, since the term-2 contact {time.monotonic() - contact:.2f}s ago"
        )
    finally:
        ld.close()


def test_a_stall_of_the_leaders_own_raft_thread_does_not_age_its_followers(tmp_path: Path) -> None:
    """While the leader's Raft thread is busy its followers' answers wait unread in the kernel:
    ``response_ages`` counts up to when that thread last read its sockets, so the node's liveness
    does not flag every follower at once for the leader's own lag; once it polls again, a follower
    that really stays silent ages as before."""
    ld = Leader(tmp_path)
    try:
        answer = {"type": "next_node_idx", "next_node_idx": ld.noop + 1, "reset": False, "success": True}
        for p in ld.peers:
            ld.receive(p, answer)
        stalled, release = threading.Event(), threading.Event()

        def busy() -> None:  # e.g. a long apply on the Raft thread
            stalled.set()
            release.wait(10)

        runner = threading.Thread(target=ld.run, args=(busy,))
        runner.start()
        try:
            assert stalled.wait(10)
            since = time.monotonic()
            wait_until(lambda: time.monotonic() - since >= 0.7, 5, "the stall to pass 0.7 s")
            ages = ld.member.response_ages()
            assert ages and max(ages.values()) < 0.5, ages
        finally:
            release.set()
            runner.join(10)
        a1 = str(ld.peers[0].address)
        wait_until(lambda: ld.member.response_ages().get(a1, 0.0) >= 0.7, 5, "p1's silence to show again")
    finally:
        ld.close()


# ---- knowing a leader one can hear (the proposer's leaderless fail-fast) --------------------


class _FollowerSo:
    """The pysyncobj fields ``Election.leader_known`` reads, of a follower of ``"L"``."""

    def __init__(self) -> None:
        self._SyncObj__raftState = _RAFT_STATE.FOLLOWER
        self._SyncObj__raftLeader: str | None = "L"
        self.connected = {"L"}

    def isNodeConnected(self, node: Any) -> bool:  # pysyncobj's name
        return node in self.connected


def test_a_leader_whose_link_closed_is_known_only_while_recently_heard() -> None:
    """pysyncobj keeps ``raftLeader`` when every link closes with a reset (it forgets a leader only
    when an election starts, and starts none with no link up); ``leader_known`` does not."""
    so = _FollowerSo()
    e = Election(so, 0.6)
    e._last_leader_contact = time.monotonic() - 60.0
    assert e.leader_known(1.2), "a connected leader is known, however long since it spoke"
    so.connected.clear()  # the link to it closed
    assert not e.leader_known(1.2)
    e._last_leader_contact = time.monotonic()  # ...but it was heard a moment ago (a flap)
    assert e.leader_known(1.2)
    so._SyncObj__raftLeader = None
    assert not e.leader_known(1.2)
    so._SyncObj__raftState = _RAFT_STATE.LEADER
    assert e.leader_known(1.2)  # a leader knows itself (check-quorum ends a lone one)


def test_a_follower_whose_every_link_closed_stops_knowing_its_leader(tmp_path: Path) -> None:
    """Both peers' processes gone (their kernels reset every link, and refuse reconnects): the
    follower starts no election, so pysyncobj names the old leader for good; ``leader_known``
    turns false within the longest election timeout (1.2 s) of its last word."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    ms: Members = {}
    try:
        for i, a in enumerate(addrs):
            d = tmp_path / f"m{i}"
            d.mkdir()
            cfg = RaftConfig(a, tuple(addrs), str(d / "raft.journal"), str(d / "snapshot.lmdb"))
            ms[a] = RaftMember(cfg, StateMachine(), lambda events: None, LmdbSnapshotIO())
        leader = _one_leader(ms)
        follower = next(a for a in ms if a != leader)
        assert ms[follower].leader_known
        for a in [a for a in ms if a != follower]:
            ms.pop(a).destroy()
        wait_until(lambda: not ms[follower].leader_known, 10, "the follower to stop knowing its leader")
        assert ms[follower].leader_addr == leader, "pysyncobj still names it (what the fix reads past)"
    finally:
        for m in ms.values():
            m.destroy()


def test_a_liveness_decision_applies_only_from_a_log_entry_of_its_term(tmp_path: Path) -> None:
    """pysyncobj passes apply only an entry's bytes; the member reads the entry's term from the log
    (``_SyncObj._entry_term``), so a ``leader_term`` of another term is refused, and the journal's
    replay after a restart decides alike."""
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    cfg = RaftConfig(addr, (addr,), str(tmp_path / "raft.journal"), str(tmp_path / "snapshot.lmdb"))

    def start() -> RaftMember:
        m = RaftMember(cfg, StateMachine(), lambda events: None, LmdbSnapshotIO())
        wait_until(lambda: m.is_leader and m.last_applied >= m.commit_index, 30, "the lone member to lead")
        return m

    def propose(m: RaftMember, *cmds: Any) -> list[Any]:
        done = threading.Event()
        out: list[Any] = []

        def callback(results: Any, err: Any) -> None:
            out.append(results if err is None else err)
            done.set()

        m.propose(encode_batch(list(cmds)), callback)
        assert done.wait(10)
        return list(out[0])

    m = start()
    try:
        term = m.term
        reg = RegisterNode("reg", 1, "n1", "h:1", "h:2", ("echo",), 1, "inc")
        flag = SuspectNode("s1", 2, node_id="n1", incarnation="inc", suspect=True, leader_term=term + 1)
        down = NodeDown("d1", 3, node_id="n1", incarnation="inc", reason="gone", leader_term=term)
        res = propose(m, reg, flag)
        assert res[0].ok and res[1].code is Code.ABORTED, res
        with m.lock:
            assert not m.machine.state.members["n1"].suspect
        (res_down,) = propose(m, down)
        assert res_down.ok
        with m.lock:
            digest = m.machine.digest()
    finally:
        m.destroy()
    m = start()  # replays the journal: each entry with its own term again
    try:
        assert m.term > term
        with m.lock:
            assert m.machine.digest() == digest and not m.machine.state.members["n1"].up
    finally:
        m.destroy()
