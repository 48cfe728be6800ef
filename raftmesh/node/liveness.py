"""The leader's view of which members are alive, from their heartbeats and a clock.

A function of (heartbeats heard, the members the state says are up, the clock):
no I/O, so ``tests/test_node_units.py`` checks each decision by moving a
``ManualClock``. The scheduler asks it which members to mark down and which to
give no new work; ``raftmesh.node.peers`` reports each heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..clock import Clock
from ..consensus.state import Member

SUSPECT_AFTER_S = 1.5
"""No heartbeat for this long (3 missed beats): place no new work there until it is heard from again."""


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
    ) -> None:
        self._clock = clock
        self._self_id = self_id
        self._node_down_after_s = node_down_after_s
        self._suspect_after_s = suspect_after_s
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
            )
        )

    def heard(self, node_id: str) -> bool:
        """Whether this node heard ``node_id`` since it started leading."""
        return node_id in self._heard

    def silent(self, up: Iterable[Member]) -> frozenset[str]:
        """Members silent for ``suspect_after_s``: what the replicated ``Member.suspect`` should say.

        Unlike ``suspects`` (this leader's own plan), a member not heard from yet gets the grace
        ``overdue`` gives: its clock starts when this node starts leading or sees it up, so a new
        leader does not flag everyone before their first heartbeats arrive. Call after ``overdue``.
        """
        mono = self._clock.monotonic()
        return frozenset(
            m.node_id
            for m in up
            if m.up
            and m.node_id != self._self_id
            and mono - self._last_seen.get(m.node_id, mono) > self._suspect_after_s
        )
