"""The runner's time seam: wall time for records, a monotonic clock for durations, and the
sleep that retry delays, ``delay`` steps and ``wait_until`` intervals go through.

``FakeClock`` makes every sleep advance time at once, so tests never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: An injected ``asyncio.sleep``: awaits ``seconds`` of (real or fake) time.
Sleep = Callable[[float], Awaitable[None]]


class Clock(Protocol):
    """Where the runner reads time and how it waits."""

    def now(self) -> datetime:
        """Timezone-aware UTC wall time (``started_at`` / ``completed_at``)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, ``wait_until`` deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """Real time, for the daemon and the CLI."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Time that moves only when slept on (or ``advance``d); ``sleeps`` lists every sleep."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2024, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def advance(self, seconds: float) -> None:
        self._elapsed += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is
