"""Pre-vote and fast failover (``raftmesh.consensus.raft.election``) on three in-process members.

Real ``RaftMember``s on loopback, no node processes: what is checked is the election's
decisions (who raises the term, how many rounds), never how fast they are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from raftmesh.consensus.machine import StateMachine
from raftmesh.consensus.raft import RaftConfig, RaftMember
from raftmesh.localcluster import free_ports, wait_until
from raftmesh.storage.snapshots import LmdbSnapshotIO

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
