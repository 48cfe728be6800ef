"""The receiving side of the fast path: duplicates and order per lane, before the actor host.

A lane is (sending node, its incarnation, sender, target, priority). The sender numbers
the messages of each of its lanes from 1 and sends, with each, the lowest number it still
waits on (``base``: everything below it was acknowledged or given up). A message is taken
only if it is the next one: number ``max(next, base)``; a lower number is a duplicate
(acknowledged again, not delivered again), a higher one is refused with ``retry`` so the
sender goes back and resends from the one that is missing. A lane this node does not
know (new, or forgotten: ``limits.MAX_RECEIVE_LANES``) starts at ``base``. Message ids
seen recently (``limits.SEEN_MESSAGE_IDS``) are the second guard against duplicates
(unordered messages: replies and topic broadcasts, and lanes that were forgotten).

A message delivered to the actor host is PENDING until its handler took it (``handled``:
its id is remembered, the sender is answered) or the host refuses it back (``refused``:
its activation stopped; the lane goes back to it, so the sender's resend is taken again
and nothing of that lane after it is taken before it). A copy that arrives while it is
pending is answered neither way (``PENDING``): the answer comes when it is settled.

No I/O and no clock of its own: the router passes ``now_ms``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..consensus import limits

LaneKey = tuple[str, str, str, str, int]
"""(sending node, its incarnation, sender, target, priority)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one received message: ``deliver`` it, or answer at once."""

    deliver: bool
    error: str = ""
    retry: bool = False
    pending: bool = False
    """A copy of a message the actor host holds unhandled: answered once it is settled."""


DELIVER = Verdict(True)
DUPLICATE = Verdict(False)
OUT_OF_ORDER = Verdict(False, "out of order: an earlier message of this lane is missing", True)
PENDING = Verdict(False, pending=True)


class Intake:
    def __init__(
        self, max_lanes: int = limits.MAX_RECEIVE_LANES, max_seen: int = limits.SEEN_MESSAGE_IDS
    ) -> None:
        self._next: OrderedDict[LaneKey, int] = OrderedDict()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.pending: dict[tuple[str, str], None] = {}
        """Delivered, not yet handled (bounded by the actor host's inboxes)."""
        self._max_lanes = max_lanes
        self._max_seen = max_seen
        self.duplicates = 0
        self.out_of_order = 0

    def check(self, lane: LaneKey | None, seq: int, base: int, dedup_key: tuple[str, str]) -> Verdict:
        """Whether the message may be delivered now (``lane`` None: an unordered message)."""
        if dedup_key in self.pending:
            return PENDING
        if lane is None or seq == 0:
            if dedup_key in self._seen:
                self.duplicates += 1
                return DUPLICATE
            return DELIVER
        nxt = self._next.get(lane)
        expected = base if nxt is None else max(nxt, base)
        if dedup_key in self._seen:
            self.duplicates += 1
            if seq == expected:  # the lane's next number: it moves past it, else the one after
                self.moved_past(lane, seq)  # it would be refused as out of order for nothing
            return DUPLICATE
        if seq < expected:
            self.duplicates += 1
            return DUPLICATE
        if seq > expected:
            self.out_of_order += 1
            return OUT_OF_ORDER
        return DELIVER

    def taken(self, lane: LaneKey | None, seq: int, dedup_key: tuple[str, str]) -> None:
        """The message was delivered, or answered for good: the lane moves past it."""
        self._seen[dedup_key] = None
        if len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
        if lane is not None and seq:
            self._next[lane] = seq + 1
            self._next.move_to_end(lane)
            if len(self._next) > self._max_lanes:
                self._next.popitem(last=False)

    def delivered(self, lane: LaneKey, seq: int, dedup_key: tuple[str, str]) -> None:
        """Handed to the actor host, not handled yet: the lane moves past it, its id is pending."""
        self.pending[dedup_key] = None
        self.moved_past(lane, seq)

    def handled(self, dedup_key: tuple[str, str]) -> None:
        """The handler took it: a copy from now on is a duplicate."""
        if self.pending.pop(dedup_key, 0) is None:
            self._seen[dedup_key] = None
            if len(self._seen) > self._max_seen:
                self._seen.popitem(last=False)

    def refused(self, lane: LaneKey, seq: int, dedup_key: tuple[str, str], retry: bool) -> None:
        """The actor host gave it back unhandled: with ``retry`` the lane expects it again (the
        sender resends from it), so no later message of the lane is taken before it."""
        self.pending.pop(dedup_key, None)
        if retry and seq:
            nxt = self._next.get(lane)
            if nxt is not None and nxt > seq:
                self._next[lane] = seq

    def moved_past(self, lane: LaneKey | None, seq: int) -> None:
        """A message refused for good (expired, invalid): later ones of its lane may come in."""
        if lane is not None and seq:
            self._next[lane] = seq + 1
            self._next.move_to_end(lane)
            if len(self._next) > self._max_lanes:
                self._next.popitem(last=False)

    def __len__(self) -> int:
        return len(self._next)
