"""Time as a parameter.

The node layer never reads the system clock directly: the proposer stamps
``ts_ms`` with ``clock.now_ms()``, and liveness, the scheduler and the agent host
measure intervals with ``clock.monotonic()``. Production passes ``SystemClock``;
tests pass a ``ManualClock`` and move time by hand, so a decision such as "mark
this member down" is a function of (state, clock) that a test checks with no
sleep and no network (as trio's ``MockClock`` does for trio).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in ms since the epoch: the ``ts_ms`` stamped on commands."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for timeouts and intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clocks (``time.time``, ``time.monotonic``, ``asyncio.sleep``)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to (``advance``); for tests.

    ``sleep`` returns once ``advance`` has moved the clock past its deadline, so a
    test drives every timer of the code under test without waiting for real time.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000, start_monotonic: float = 1000.0) -> None:
        self._wall_ms = start_ms
        self._mono = start_monotonic
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now_ms(self) -> int:
        return self._wall_ms

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` and wake the sleepers that are due."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._mono += seconds
        self._wall_ms += round(seconds * 1000)
        due = [f for t, f in self._sleepers if t <= self._mono]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._mono]
        for f in due:
            if not f.done():
                f.set_result(None)
