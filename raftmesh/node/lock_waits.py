"""Lock acquires parked on this node until the applied log decides them.

The Locks service parks a waiting acquire here by request id; the runtime feeds
every applied ``LockChanged`` event in, which resolves the matching waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..consensus.locks import LockOutcome
from ..consensus.results import Event, LockChanged


class LockWaits:
    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[LockOutcome]]] = {}
        """Request id -> one future per call waiting on it (a retry, or a replay refused afterwards,
        shares the request id): each call awaits its own future directly, so its timeout or
        cancellation cannot deafen another, and the grant resumes it in one loop turn."""
        self.on_change: Callable[[], None] | None = None
        """Told after an applied batch changed a lock's waiters (while ``watching``): the Locks
        service's held-back acquires."""
        self.watching = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def waiter(self, request_id: str) -> asyncio.Future[LockOutcome]:
        fut: asyncio.Future[LockOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(fut)
        return fut

    def drop(self, request_id: str, fut: asyncio.Future[LockOutcome]) -> None:
        futs = self._waiters.get(request_id)
        if futs is None:
            return
        futs[:] = [f for f in futs if f is not fut]
        if not futs:
            del self._waiters[request_id]

    def applied(self, events: Iterable[Event]) -> None:
        if not self._waiters and not self.watching:
            return
        changed = False
        for ev in events:
            if isinstance(ev, LockChanged):
                changed = True
                for fut in self._waiters.get(ev.request_id, ()):
                    if not fut.done():
                        fut.set_result(
                            LockOutcome(ev.request_id, ev.owner, ev.granted, ev.token, ev.code, ev.message)
                        )
        if changed and self.watching and self.on_change is not None:
            self.on_change()
