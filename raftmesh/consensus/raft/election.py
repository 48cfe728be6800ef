"""Elections that do not disrupt a working leader: pre-vote, leader stickiness, fast failover.

pysyncobj 0.3.17 starts an election as soon as a follower's timer fires: it raises its term
and asks for votes, and every node that sees the higher term drops its leader. A node back
from isolation (or one whose tick thread stalled on a loaded machine) thus forced a
re-election of a healthy cluster, and in a 5-node "majorities ring" partition the nodes that
could not hear the leader kept deposing it (a 6.1 s stall in ``scripts/chaos.py``).

``Election`` sits in front of pysyncobj's election (``_SyncObj`` in ``member.py`` calls it):

- Pre-vote (Raft thesis §9.6). When the timer fires, a follower first asks every peer whether
  it *would* vote for it at ``term + 1``, without raising its term. Only once a majority
  (itself included) says yes does it let pysyncobj run the real election.
- Each round carries an id that its answers echo: rounds repeat for the same term, and a late
  grant from an earlier round (given before the granter heard a leader again) does not count.
- A node grants a pre-vote only if the candidate's log is at least as up-to-date as its own
  and it has not heard from a live leader within ``election_min_s`` (a leader counts itself
  live while a majority acknowledged it within that time). For the same reason a real
  ``request_vote`` at a higher term is ignored while the leader is live (thesis §4.2.3).
- A follower whose link to its leader closes (the leader's process died: its kernel closed
  the socket) does not wait out the election timeout: it pre-votes after a short random
  delay, and stops vouching for that leader. A link that merely flapped costs nothing: the
  peers that still hear the leader refuse the pre-vote.
- A node that sees a higher *current* term in a pre-vote or its answer adopts it, as Raft
  requires of every message, so a node left behind by an election it missed still catches up.

The leader's side of it, check-quorum, is pysyncobj's ``leaderFallbackTimeout``
(``RaftTimings.leader_fallback_s``): a leader that hears from no majority steps down.

Runs on pysyncobj's tick thread only (no locking). Message fields are checked before use:
a malformed pre-vote is dropped.
"""

from __future__ import annotations

import random
from typing import Any

from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.syncobj import _RAFT_STATE

from .replication import ENTRY_CHUNK

PRE_VOTE = "raftmesh_pre_vote"
PRE_VOTE_RESPONSE = "raftmesh_pre_vote_response"

LEADER_MESSAGES = frozenset({"append_entries", ENTRY_CHUNK})
"""Messages only a leader sends (``replication.py`` streams large entries as chunks)."""

LEADER_LOST_DELAY_S = (0.02, 0.2)
"""Random delay before pre-voting once the link to the leader closed (spreads the survivors,
so one of them usually asks first and wins at once instead of splitting the vote)."""


PREVIOUS_LEADER_GRACE_S = 0.2
"""How long a new leader waits for its previous leader's first answer before counting that
member's silence from when it last heard it (a live one, now following, answers in ms)."""


def _count(value: Any) -> int | None:
    """``value`` if it is a non-negative int (a term or log index from a peer), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Election:
    """Pre-vote and leader stickiness for one pysyncobj ``SyncObj`` (see the module docstring)."""

    def __init__(self, so: Any, election_min_s: float) -> None:
        self._so = so
        self._lease_s = election_min_s
        self._last_leader_contact = float("-inf")
        """When this follower last heard from its leader (monotonic)."""
        self._last_leader: Any = None
        """The leader that ``_last_leader_contact`` is about, kept once this node leads until it
        first answers this node as leader (its silence then no longer dates from that contact)."""
        self._polled_at: float | None = None
        """When pysyncobj's thread last finished reading its sockets (``after_poll``), or None."""
        self._round_term: int | None = None
        """The term this node's current pre-vote round is for, or None."""
        self._round_id = random.getrandbits(48)
        """Names this node's current pre-vote round: rounds repeat for the same term (a round
        that failed raises no term), so only an answer echoing this id counts. Random at start,
        so a restarted process does not take an answer meant for its predecessor's round."""
        self._granted: set[Any] = set()
        self._won_term: int | None = None
        """A pre-vote round for this term reached a majority: pysyncobj's next timer check runs
        the real election (if nothing moved the term or brought a leader meanwhile)."""
        self.pre_votes_started = 0
        self.pre_votes_won = 0
        self.votes_refused = 0
        """Counters (read from other threads; plain ints)."""

    # ---- pysyncobj's state (name-mangled attributes of SyncObj) ---------------------

    def _term(self) -> int:
        return int(self._so._SyncObj__raftCurrentTerm)

    def _state(self) -> int:
        return int(self._so._SyncObj__raftState)

    def _log_position(self) -> tuple[int, int]:
        """(last log term, last log index): compared as Raft's "at least as up-to-date"."""
        so = self._so
        return int(so._SyncObj__getCurrentLogTerm()), int(so._SyncObj__getCurrentLogIndex())

    def _quorum(self) -> int:
        return (len(self._so._SyncObj__otherNodes) + 1) // 2 + 1

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        self._so._SyncObj__transport.send(node, message)

    def _adopt_term(self, term: int) -> None:
        """Raft: any message with a higher term makes this node a follower in that term."""
        so = self._so
        if term <= self._term():
            return
        was_leader = self._state() == _RAFT_STATE.LEADER
        so._SyncObj__setCurrentTerm(term, None)
        so._SyncObj__setState(_RAFT_STATE.FOLLOWER)
        if was_leader or so._SyncObj__raftLeader is not None:
            so._SyncObj__raftLeader = None
            so._SyncObj__onLeaderChanged()
        self._round_term = self._won_term = None

    def leader_is_live(self) -> bool:
        """Whether this node knows a live leader (itself, or one heard from within the lease)."""
        so = self._so
        now = _monotonic()
        state = self._state()
        if state == _RAFT_STATE.LEADER:
            heard = 1 + sum(1 for t in so._SyncObj__lastResponseTime.values() if now - t < self._lease_s)
            return heard >= self._quorum()
        leader = so._SyncObj__raftLeader
        if state != _RAFT_STATE.FOLLOWER or leader is None:
            return False
        if leader not in so._SyncObj__connectedNodes:
            return False  # its link closed: do not vouch for it
        return bool(now - self._last_leader_contact < self._lease_s)

    def leader_known(self, within_s: float) -> bool:
        """Whether this node knows a leader it can still hear: itself while it leads, or the leader
        it follows while the link to it is up or it heard it within ``within_s``. Any thread.

        pysyncobj forgets a leader only when an election starts, and ``before_tick`` starts none
        while no link is up: a follower whose every link closed with a reset kept naming a leader
        it could not reach (the proposer's leaderless fail-fast reads this instead).
        """
        so = self._so
        state = self._state()
        if state == _RAFT_STATE.LEADER:
            return True  # check-quorum (``leader_fallback_s``) ends a leader that hears no majority
        leader = so._SyncObj__raftLeader
        if state != _RAFT_STATE.FOLLOWER or leader is None:
            return False
        if so.isNodeConnected(leader):
            return True
        return bool(_monotonic() - self._last_leader_contact < within_s)

    def response_ages(self) -> dict[str, float]:
        """Raft address -> seconds since this leader last had an AppendEntries answer from that
        peer (since it started leading, if none yet); empty unless this node leads.

        The node's liveness reads it (``raftmesh.node.liveness``): Raft answers arrive every
        heartbeat period (0.1 s), so a cut-off member shows here well before its gRPC heartbeats
        (every 0.5 s) are missed. Called from another thread: pysyncobj's dict is copied first
        (a C-level copy under the GIL; a resize racing it only costs this reading).

        Ages are taken as of when this node's Raft thread last read its sockets, not now: while
        that thread is busy (a long apply, a compaction, GIL starvation) the answers wait unread in
        the kernel, and counting that stall would flag every follower at once for this node's own
        lag. A thread that keeps polling makes the two differ by at most one poll period.
        """
        so = self._so
        if self._state() != _RAFT_STATE.LEADER:
            return {}
        try:
            seen = dict(so._SyncObj__lastResponseTime)
        except RuntimeError:
            return {}
        now = _monotonic()
        polled = self._polled_at
        if polled is not None and polled < now:
            now = polled
        before = self._last_leader
        out = {}
        for node, t in seen.items():
            age = now - t
            if node == before and age >= PREVIOUS_LEADER_GRACE_S:
                # The leader this node followed, silent since this node last heard it and not
                # answering since (in any term it led): its silence began before this term (a
                # deposed or isolated leader), so its attempts need not wait out a fresh clock.
                age = max(age, now - self._last_leader_contact)
            out[str(getattr(node, "address", node))] = max(0.0, age)
        return out

    # ---- hooks called by _SyncObj -----------------------------------------------------

    def after_poll(self) -> None:
        """pysyncobj's tick (which ends in its socket poll) returned: answers up to now are read."""
        self._polled_at = _monotonic()

    def before_tick(self) -> None:
        """Turn pysyncobj's due election into a pre-vote round, unless a round was just won.

        pysyncobj starts an election in ``_onTick`` when the deadline has passed (and this node
        is connected to someone); pushing the deadline forward here keeps it from doing so.
        """
        so = self._so
        if self._state() == _RAFT_STATE.LEADER:
            self._round_term = self._won_term = None
            return
        if so._SyncObj__raftElectionDeadline >= _monotonic() or not so._SyncObj__connectedToAnyone():
            return
        won, self._won_term = self._won_term, None
        if won is not None and won == self._term() + 1:
            self._round_term = None
            return  # pysyncobj raises the term and asks for real votes in this tick
        so._SyncObj__raftElectionDeadline = _monotonic() + so._SyncObj__generateRaftTimeout()
        if so._SyncObj__raftLeader is not None:
            # This node no longer vouches for its leader: forwarded commands fail fast (the
            # proposer retries) instead of waiting on a leader that may be gone.
            so._SyncObj__raftLeader = None
            so._SyncObj__onLeaderChanged()
        term = self._term() + 1
        self._round_term = term
        self._round_id += 1
        self._granted = set()
        self.pre_votes_started += 1
        log_term, log_index = self._log_position()
        if self._quorum() <= 1:
            self._win()
            return
        for node in so._SyncObj__otherNodes:
            self._send(
                node,
                {
                    "type": PRE_VOTE,
                    "term": term,
                    "current_term": term - 1,
                    "last_log_index": log_index,
                    "last_log_term": log_term,
                    "round": self._round_id,
                },
            )

    def _win(self) -> None:
        self._won_term = self._round_term
        self.pre_votes_won += 1
        self._so._SyncObj__raftElectionDeadline = 0.0

    def on_disconnected(self, node: Any) -> None:
        """The link to ``node`` closed; if it was this follower's leader, pre-vote soon."""
        so = self._so
        if self._state() != _RAFT_STATE.FOLLOWER or node != so._SyncObj__raftLeader:
            return
        soon = _monotonic() + random.uniform(*LEADER_LOST_DELAY_S)
        if so._SyncObj__raftElectionDeadline > soon:
            so._SyncObj__raftElectionDeadline = soon

    def on_message(self, node: Any, message: Any) -> bool:
        """Handle a pre-vote message, or drop a disruptive vote request; False passes it on."""
        if not isinstance(message, dict):
            return False
        kind = message.get("type")
        if kind == PRE_VOTE:
            self._on_pre_vote(node, message)
            return True
        if kind == PRE_VOTE_RESPONSE:
            self._on_pre_vote_response(node, message)
            return True
        if kind == "request_vote":
            term = _count(message.get("term"))
            if term is not None and term > self._term() and self.leader_is_live():
                self.votes_refused += 1
                return True
        return False

    def after_message(self, node: Any, message: Any) -> None:
        """An AppendEntries from the current leader renews this follower's trust in it.

        Only what a leader sends as leader counts: a deposed leader still sends link pings.
        """
        so = self._so
        kind = message.get("type") if isinstance(message, dict) else None
        if (
            kind in LEADER_MESSAGES
            and node == so._SyncObj__raftLeader
            and self._state() == _RAFT_STATE.FOLLOWER
        ):
            self._last_leader_contact = _monotonic()
            self._last_leader = node
            self._round_term = self._won_term = None
        elif kind == "next_node_idx" and self._state() == _RAFT_STATE.LEADER and node == self._last_leader:
            # It is alive and follows: from now on pysyncobj's clock of its answers tells its
            # silence, in this term and any later one this node leads (a re-election).
            self._last_leader = None

    def _on_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        term, current = _count(message.get("term")), _count(message.get("current_term"))
        log_index, log_term = _count(message.get("last_log_index")), _count(message.get("last_log_term"))
        if term is None or current is None or log_index is None or log_term is None:
            return
        if current > self._term():
            self._adopt_term(current)
        mine = self._log_position()
        theirs = (log_term, log_index)
        granted = term > self._term() and theirs >= mine and not self.leader_is_live()
        if granted:
            self._defer_to(node, theirs > mine)
        answer = {"type": PRE_VOTE_RESPONSE, "term": term, "current_term": self._term(), "granted": granted}
        round_id = _count(message.get("round"))
        if round_id is not None:
            answer["round"] = round_id
        self._send(node, answer)

    def _defer_to(self, candidate: Any, better_log: bool) -> None:
        """Having granted ``candidate`` a pre-vote, keep out of its way.

        Two survivors that pre-vote at once both win and then split the real vote (each votes
        for itself), which costs a whole election timeout. So a node that grants a pre-vote
        restarts its own timer, as a real vote does, and drops a round of its own that has not
        won yet if the candidate ranks first: a better log, or an equal one and the lower address
        (the candidate, granted the same way, keeps its round, so exactly one of them goes on).
        """
        so = self._so
        if self._won_term is not None:
            return
        if self._round_term is not None:
            mine = str(getattr(so._SyncObj__selfNode, "address", ""))
            if not (better_log or str(getattr(candidate, "address", "")) < mine):
                return
            self._round_term = None
        so._SyncObj__raftElectionDeadline = _monotonic() + so._SyncObj__generateRaftTimeout()

    def _on_pre_vote_response(self, node: Any, message: dict[str, Any]) -> None:
        term, current = _count(message.get("term")), _count(message.get("current_term"))
        granted = message.get("granted")
        if term is None or current is None or not isinstance(granted, bool):
            return
        if current > self._term():
            self._adopt_term(current)
            return
        if (
            not granted
            or term != self._round_term
            or _count(message.get("round")) != self._round_id  # an earlier round's answer
            or self._won_term is not None
            or self._state() == _RAFT_STATE.LEADER
            or term != self._term() + 1
        ):
            return
        self._granted.add(node)
        if 1 + len(self._granted) >= self._quorum():
            self._win()
