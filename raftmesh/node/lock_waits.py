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
        self._waiters: dict[str, asyncio.Future[LockOutcome]] = {}
        self._users: dict[str, int] = {}
        """Calls sharing a waiter (a retry, or a replay refused afterwards, under the same
        request id): the last one to leave drops it, so one leaving cannot deafen another."""
        self.on_change: Callable[[], None] | None = None
        """Told after an applied batch changed a lock's waiters (while ``watching``): the Locks
        service's held-back acquires."""
        self.watching = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def waiter(self, request_id: str) -> asyncio.Future[LockOutcome]:
        fut = self._waiters.get(request_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[request_id] = fut
        self._users[request_id] = self._users.get(request_id, 0) + 1
        return fut

    def drop(self, request_id: str) -> None:
        users = self._users.pop(request_id, 0) - 1
        if users > 0:
            self._users[request_id] = users
        else:
            self._waiters.pop(request_id, None)

    def applied(self, events: Iterable[Event]) -> None:
        if not self._waiters and not self.watching:
            return
        changed = False
        for ev in events:
            if isinstance(ev, LockChanged):
                changed = True
                fut = self._waiters.get(ev.request_id)
                if fut is not None and not fut.done():
                    fut.set_result(
                        LockOutcome(ev.request_id, ev.owner, ev.granted, ev.token, ev.code, ev.message)
                    )
        if changed and self.watching and self.on_change is not None:
            self.on_change()
