"""The leader's view of which members are alive, from their heartbeats, Raft answers and a clock.

A function of (heartbeats heard, Raft answer ages, the members the state says are up, the
clock): no I/O, so ``tests/test_node_units.py`` checks each decision by moving a
``ManualClock``. The scheduler asks it which members to mark down, which to give no new work,
and whose attempts to move; ``raftmesh.node.peers`` reports each heartbeat, and the Raft
layer's ``response_ages`` (read by the scheduler's step) each member's last AppendEntries answer.

Two signals, because they prove different things. A gRPC heartbeat (every 0.5 s) proves the
member's event loop, hence its agent host, runs: only its absence for ``node_down_after_s``
marks a member down. A Raft answer (every 0.1 s) only proves the Raft thread, but its absence
is the sharper sign that the leader cannot reach the member: a member silent there for
``RAFT_SUSPECT_AFTER_S`` is flagged (no new work). Its running attempts are moved
(``SuspectNode.requeue``) only once it is silent on BOTH: no Raft answer for
``REQUEUE_AFTER_S`` and no heartbeat for ``requeue_heartbeat_s`` (a slow follower whose Raft
answers lag while its agent host still heartbeats keeps its work; moving it would run it twice,
again and again while it flaps). Apply bounds the moves per task and leaves lock holders to
node-down (``consensus.members.moves_on_suspicion``). A flag is cleared only after the member has been
heard on both for ``CLEAR_AFTER_S`` (hysteresis: a flapping member costs a flag and a clear per
second at most, not one per beat).

What the entries cost, measured (issue 13, from the kept journals and node logs of chaos runs
at load 8-19): a fault that cuts a member off makes 2-3 ``SuspectNode`` entries for it (the flag
at ~0.5 s, the requeue at ~1-1.5 s, a clear if it is back before node-down), and a fault among
5 nodes cuts off one or two. A 3-minute 5-node netns run with 13 faults committed 41, 39 of them
for members its faults cut off; the other 2 flagged a restarted member for 1.25 s while its Raft
thread caught up. Without faults (one 3-node and three 5-node runs), three committed none while
running, and the fourth (load 14-19) 3 flags of ~1.1 s, each cleared without a requeue. So the ~100 of a 5-minute
run are the faults' own; load adds a few short flags, which cost no move: the thresholds stay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..clock import Clock
from ..consensus.state import Member
from .peers import HEARTBEAT_INTERVAL_S

SUSPECT_AFTER_S = 1.5
"""No heartbeat for this long (3 missed beats): place no new work there until it is heard from again."""
RAFT_SUSPECT_AFTER_S = 0.5
"""No Raft answer for this long (5 heartbeat periods, under the 0.6 s election timeout): the
leader has lost the member, as its followers would lose a leader; place no new work there."""
REQUEUE_AFTER_S = 1.0
"""No Raft answer for this long: the member's running attempts go back to READY (fenced: a
late result of theirs is refused as stale), instead of waiting ``node_down_after_s`` for them."""
NEVER_HEARD_REQUEUE_S = 2 * HEARTBEAT_INTERVAL_S
"""A member this leader never heard since it started leading (its previous leader, usually) is
lost after this long of it (two beats), with ``REQUEUE_AFTER_S`` of Raft silence (``lost``)."""

CLEAR_AFTER_S = 1.0
"""A flagged member must be heard on both signals for this long before the flag is cleared."""


@dataclass(frozen=True)
class Overdue:
    node_id: str
    incarnation: str
    silent_s: float


class Liveness:
    def __init__(
        self,
        clock: Clock,
        self_id: str,
        node_down_after_s: float,
        suspect_after_s: float = SUSPECT_AFTER_S,
        raft_ages: Callable[[], Mapping[str, float]] = dict,
        raft_suspect_after_s: float = RAFT_SUSPECT_AFTER_S,
        requeue_after_s: float = REQUEUE_AFTER_S,
        clear_after_s: float = CLEAR_AFTER_S,
        requeue_heartbeat_s: float | None = None,
    ) -> None:
        self._clock = clock
        self._self_id = self_id
        self._node_down_after_s = node_down_after_s
        self._suspect_after_s = suspect_after_s
        self._raft_ages = raft_ages
        """node id -> seconds since this leader had a Raft answer from it (empty unless leading)."""
        self._raft_suspect_after_s = raft_suspect_after_s
        self._requeue_after_s = requeue_after_s
        self._clear_after_s = clear_after_s
        self._requeue_heartbeat_s = (
            requeue_heartbeat_s
            if requeue_heartbeat_s is not None
            else min(suspect_after_s, max(2 * HEARTBEAT_INTERVAL_S, node_down_after_s / 2))
        )
        """Heartbeat silence a requeue also needs: by default the flag's (3 missed beats), but
        at most half of ``node_down_after_s`` (and at least 2 beats) so a real cut-off still
        moves its attempts well before node-down."""
        self._raft_silent: dict[str, float] = {}
        """node id -> its Raft silence at the last ``observe_raft`` (bounded by the Raft peers)."""
        self._fresh_since: dict[str, float] = {}
        """node id -> since when it has been heard on both signals without a gap (clock.monotonic)."""
        self.cut_off = False
        """At the last ``observe_raft``, no majority answered this leader lately: it decides
        nobody's liveness (no flag, requeue or node-down) until one does again."""
        self._last_seen: dict[str, float] = {}
        """node id -> when this leader last heard a heartbeat from it (clock.monotonic)."""
        self._heard: set[str] = set()
        """Members that heartbeated this node since it became leader."""
        self._was_up: dict[str, tuple[str, int]] = {}
        """node id -> (incarnation, registered_ms) of the member as last seen up."""

    def reset(self) -> None:
        """This node does not lead: a new term starts every clock afresh."""
        self._last_seen.clear()
        self._heard.clear()
        self._was_up.clear()
        self._raft_silent.clear()
        self._fresh_since.clear()
        self.cut_off = False

    def observe_raft(self) -> None:
        """Take the Raft layer's current answer ages (the scheduler does, once per step).

        Only while a majority (this node included) answered within ``requeue_after_s``: a leader
        that hears from no majority is itself the one cut off or stalled (a SIGSTOPped leader
        resumes with every answer a pause old, and its step may run before Raft deposes it), so
        its silence says nothing about the others and must not flag or requeue them. The bound
        is the requeue's, not the flag's: on a loaded machine (load 12-16 in chaos runs) a live
        follower's answer is often over 0.5 s late, and a majority test that tight switched the
        signal off in the very partitions it is for.
        """
        ages = dict(self._raft_ages())
        fresh = 1 + sum(1 for age in ages.values() if age < self._requeue_after_s)
        self.cut_off = fresh < (len(ages) + 1) // 2 + 1
        self._raft_silent = {} if self.cut_off else ages

    def heard_from(self, node_id: str) -> None:
        self._last_seen[node_id] = self._clock.monotonic()
        self._heard.add(node_id)

    def overdue(self, up: Iterable[Member]) -> list[Overdue]:
        """The up members whose heartbeats stopped for ``node_down_after_s``.

        A member that just joined, rejoined or restarted (a new incarnation or
        registration) gets a full timeout to reach this leader, whatever was heard
        before; so does every member when this node starts leading (``reset``).
        """
        mono = self._clock.monotonic()
        up_now = {m.node_id: m for m in up if m.up}
        for node_id, m in up_now.items():
            if self._was_up.get(node_id) != (m.incarnation, m.registered_ms):
                self._last_seen[node_id] = mono
        self._was_up = {n: (m.incarnation, m.registered_ms) for n, m in up_now.items()}
        for gone in [n for n in self._last_seen if n not in up_now]:  # bounded by the up members
            del self._last_seen[gone]
        self._heard.intersection_update(up_now)
        out = []
        for node_id, m in up_now.items():
            if node_id == self._self_id:
                continue
            silent = mono - self._last_seen.setdefault(node_id, mono)
            if silent >= self._node_down_after_s:
                out.append(Overdue(node_id, m.incarnation, silent))
        return out

    def suspects(self, up: Iterable[Member]) -> frozenset[str]:
        """Members to give no new work: not heard from since this node leads, or silent lately.

        A new leader has no history, and right after a partition the member it lost touch
        with is usually the old leader: waiting for a first heartbeat (healthy members send
        one within about a second) keeps new work off it until node-down settles the matter.
        """
        mono = self._clock.monotonic()
        return frozenset(
            m.node_id
            for m in up
            if m.up
            and m.node_id != self._self_id
            and (
                m.node_id not in self._heard
                or mono - self._last_seen.get(m.node_id, 0.0) > self._suspect_after_s
                or self._raft_silent.get(m.node_id, 0.0) > self._raft_suspect_after_s
            )
        )

    def heard(self, node_id: str) -> bool:
        """Whether this node heard ``node_id`` since it started leading."""
        return node_id in self._heard

    def _quiet(self, node_id: str, mono: float) -> bool:
        """Silent now on either signal: heartbeats for ``suspect_after_s``, Raft answers for
        ``raft_suspect_after_s``."""
        return (
            mono - self._last_seen.get(node_id, mono) > self._suspect_after_s
            or self._raft_silent.get(node_id, 0.0) > self._raft_suspect_after_s
        )

    def silent(self, up: Iterable[Member]) -> frozenset[str]:
        """The members the replicated ``Member.suspect`` should flag now.

        A member is flagged once it is quiet (``_quiet``), and stays flagged until it has been
        heard on both signals for ``clear_after_s`` (its current ``Member.suspect`` is what is
        kept). Unlike ``suspects`` (this leader's own plan), a member not heard from yet gets
        the grace ``overdue`` gives: its clock starts when this node starts leading or sees it
        up (pysyncobj's Raft answer clock too), so a new leader does not flag everyone before
        their first answers arrive. Call after ``overdue`` and ``observe_raft``.
        """
        mono = self._clock.monotonic()
        out = set()
        for m in up:
            node_id = m.node_id
            if not m.up or node_id == self._self_id:
                continue
            if self._quiet(node_id, mono):
                self._fresh_since.pop(node_id, None)
                out.add(node_id)
            elif m.suspect and mono - self._fresh_since.setdefault(node_id, mono) < self._clear_after_s:
                out.add(node_id)
            else:
                self._fresh_since.setdefault(node_id, mono)
        for gone in [n for n in self._fresh_since if n not in self._last_seen]:  # up members only
            del self._fresh_since[gone]
        return frozenset(out)

    def lost(self, up: Iterable[Member]) -> frozenset[str]:
        """Up members silent on both signals: no Raft answer for ``requeue_after_s`` and no
        heartbeat for ``requeue_heartbeat_s``. Their movable attempts move (the scheduler
        proposes ``SuspectNode.requeue``); a member whose heartbeats still arrive is slow, not
        cut off, and keeps its work. Call after ``overdue`` and ``observe_raft``.

        A member not heard since this node started leading needs less heartbeat silence:
        ``NEVER_HEARD_REQUEUE_S`` (two beats) since this node leads, not ``requeue_heartbeat_s``.
        That is the leader this node followed (a leader heartbeats no one, and ``response_ages``
        dates its silence from this node's last contact with it): its attempts waited a fresh
        ``requeue_heartbeat_s`` from the election, on top of the election timeout its silence
        had already lasted (in chaos runs every leader fault moved them 1.5-2.0 s after the
        election, over 2-3 s of its silence). Not Raft silence alone: a previous leader whose
        Raft thread stalled (a slow fsync, a long apply) while its agent host ran on was voted
        out for the stall and heartbeats this leader only once that thread resumes; two beats'
        grace lets a stall that ends within a second keep its attempts rather than run them twice.
        """
        mono = self._clock.monotonic()
        return frozenset(
            m.node_id
            for m in up
            if m.up
            and m.node_id != self._self_id
            and self._raft_silent.get(m.node_id, 0.0) >= self._requeue_after_s
            and mono - self._last_seen.get(m.node_id, mono)
            >= (
                self._requeue_heartbeat_s
                if m.node_id in self._heard
                else min(self._requeue_heartbeat_s, NEVER_HEARD_REQUEUE_S)
            )
        )
