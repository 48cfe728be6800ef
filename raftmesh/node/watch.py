"""Fan-out of applied events to WatchRun streams on this node.

Events arrive from the Raft thread (via ``call_soon_threadsafe``) in apply order.
A watcher subscribes *before* it reads its snapshot, then drops events whose
revision is not above the snapshot's: no gap and no duplicate. A watcher that
falls more than ``MAX_QUEUED`` events behind is told to re-sync (it re-reads a
snapshot) instead of letting its queue grow without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ..consensus.results import Event, KvChanged, RunChanged, TaskChanged

MAX_QUEUED = 10_000

RESYNC = object()
"""Put in a watcher's queue when it must re-read a snapshot (overflow, snapshot installed)."""


class WatchHub:
    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[object]]] = {}
        self._kv_subs: set[asyncio.Queue[object]] = set()

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
        if not self._subs and not self._kv_subs:
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


def _drain(q: asyncio.Queue[object]) -> None:
    while not q.empty():
        q.get_nowait()
