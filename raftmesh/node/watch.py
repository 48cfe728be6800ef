"""Fan-out of applied events to WatchRun, WatchRuns and KV watch streams on this node.

Events arrive from the Raft thread (via ``call_soon_threadsafe``) in apply order.
A watcher subscribes *before* it reads its snapshot, then drops events whose
revision is not above the snapshot's: no gap and no duplicate. A watcher that
falls more than ``MAX_QUEUED`` events behind is told to re-sync (it re-reads a
snapshot) instead of letting its queue grow without bound.

An all-runs watcher (``RunsWatch``) keeps no queue of events but the set of runs
changed since it last looked (one entry a run, however many events): a burst of
task events costs it O(runs changed), and it reads only those runs' summaries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ..consensus import limits
from ..consensus.results import Event, KvChanged, RunChanged, TaskChanged
from ..errors import ResourceExhausted

MAX_QUEUED = 10_000

RESYNC = object()
"""Put in a watcher's queue when it must re-read a snapshot (overflow, snapshot installed)."""


class RunsWatch:
    """The runs changed since the last ``take``: run id -> (highest revision, status changed)."""

    __slots__ = ("changed", "resync", "wake")

    def __init__(self) -> None:
        self.changed: dict[str, tuple[int, bool]] = {}
        self.resync = False
        """Set when the watcher must re-read a snapshot (overflow, snapshot installed)."""
        self.wake = asyncio.Event()

    def mark(self, run_id: str, revision: int, status_changed: bool) -> None:
        if not self.resync:
            prev = self.changed.get(run_id)
            if prev is None and len(self.changed) >= MAX_QUEUED:
                self.changed.clear()
                self.resync = True
            else:
                self.changed[run_id] = (revision, status_changed or (prev is not None and prev[1]))
        self.wake.set()

    def force_resync(self) -> None:
        self.changed.clear()
        self.resync = True
        self.wake.set()

    def take(self) -> tuple[bool, dict[str, tuple[int, bool]]]:
        """(must resync, the runs changed) since the last take; both reset."""
        out, resync = self.changed, self.resync
        self.changed, self.resync = {}, False
        self.wake.clear()
        return resync, out


class WatchHub:
    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[object]]] = {}
        self._kv_subs: set[asyncio.Queue[object]] = set()
        self._runs_subs: set[RunsWatch] = set()

    def subscribe_runs(self) -> RunsWatch:
        """Every run's task and status changes, coalesced per run (WatchRuns); at most
        ``MAX_WATCH_RUNS_STREAMS`` at once (each applied event marks every one of them)."""
        if len(self._runs_subs) >= limits.MAX_WATCH_RUNS_STREAMS:
            raise ResourceExhausted(
                f"this node serves {limits.MAX_WATCH_RUNS_STREAMS} WatchRuns streams already; "
                "close one or retry later (or watch through another node)"
            )
        w = RunsWatch()
        self._runs_subs.add(w)
        return w

    def unsubscribe_runs(self, w: RunsWatch) -> None:
        self._runs_subs.discard(w)

    def subscribe_kv(self) -> asyncio.Queue[object]:
        """Every KV change; the KV watch stream filters by key or prefix."""
        q: asyncio.Queue[object] = asyncio.Queue()
        self._kv_subs.add(q)
        return q

    def unsubscribe_kv(self, q: asyncio.Queue[object]) -> None:
        self._kv_subs.discard(q)

    def subscribe(self, run_id: str) -> asyncio.Queue[object]:
        q: asyncio.Queue[object] = asyncio.Queue()
        self._subs.setdefault(run_id, set()).add(q)
        return q

    def unsubscribe(self, run_id: str, q: asyncio.Queue[object]) -> None:
        subs = self._subs.get(run_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subs[run_id]

    def publish(self, events: Iterable[Event]) -> None:
        if not self._subs and not self._kv_subs and not self._runs_subs:
            return
        for ev in events:
            if isinstance(ev, KvChanged):
                for q in self._kv_subs:
                    if q.qsize() >= MAX_QUEUED:
                        _drain(q)
                        q.put_nowait(RESYNC)
                    else:
                        q.put_nowait(ev)
            elif isinstance(ev, (TaskChanged, RunChanged)):
                for w in self._runs_subs:
                    w.mark(ev.run_id, ev.revision, isinstance(ev, RunChanged))
                for q in self._subs.get(ev.run_id, ()):
                    if q.qsize() >= MAX_QUEUED:
                        _drain(q)
                        q.put_nowait(RESYNC)
                    else:
                        q.put_nowait(ev)

    def resync_all(self) -> None:
        for q in [q for subs in self._subs.values() for q in subs] + list(self._kv_subs):
            _drain(q)
            q.put_nowait(RESYNC)
        for w in self._runs_subs:
            w.force_resync()


def _drain(q: asyncio.Queue[object]) -> None:
    while not q.empty():
        q.get_nowait()
