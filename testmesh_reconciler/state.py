"""The state holder: the one reference to the active ``Snapshot`` and the reload record.

A good reload swaps the reference once; a failed one only records its attempt, so the
last-known-good snapshot keeps serving. Waiters are woken through an ``asyncio.Condition``
each time anything changes (``version`` grows by one per change).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from testmesh_reconciler.config.model import Snapshot
from testmesh_reconciler.config.problems import Problem

ReloadResult = Literal["ok", "failed"]


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    """One reload attempt: when, which revision (None when the fetch failed), the outcome."""

    at: datetime
    revision: str | None
    result: ReloadResult
    problems: tuple[Problem, ...] = ()
    error: str | None = None  # a fetch error (no problems then: nothing was loaded)
    duration_ms: float = 0.0
    parsed_files: int = 0
    trigger: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at.isoformat(), "revision": self.revision,
                               "result": self.result, "duration_ms": round(self.duration_ms, 1)}
        if self.trigger:
            out["trigger"] = self.trigger
        if self.error is not None:
            out["error"] = self.error
        return out


class StateHolder:
    """Holds the active snapshot and what the last reload attempts did."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._last_attempt: ReloadRecord | None = None
        self._last_success: ReloadRecord | None = None
        self._version = 0
        self._changed = asyncio.Condition()

    @property
    def snapshot(self) -> Snapshot | None:
        """The active snapshot (last-known-good), ``None`` before the first good load."""
        return self._snapshot

    @property
    def last_attempt(self) -> ReloadRecord | None:
        return self._last_attempt

    @property
    def last_success(self) -> ReloadRecord | None:
        return self._last_success

    @property
    def version(self) -> int:
        """Grows by one with every recorded attempt (good or bad)."""
        return self._version

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Problems of the last attempt (empty when it was good, or when it could not fetch)."""
        return self._last_attempt.problems if self._last_attempt else ()

    async def swap(self, snapshot: Snapshot, record: ReloadRecord) -> None:
        """Activate ``snapshot`` (one reference assignment) and record the good attempt."""
        self._snapshot = snapshot
        self._last_success = record
        await self._record(record)

    async def record_failure(self, record: ReloadRecord) -> None:
        """Record a failed attempt; the active snapshot stays as it is."""
        await self._record(record)

    async def _record(self, record: ReloadRecord) -> None:
        async with self._changed:
            self._last_attempt = record
            self._version += 1
            self._changed.notify_all()

    async def wait_for_change(self, after_version: int) -> int:
        """Wait until ``version`` exceeds ``after_version`` (bound it with
        ``asyncio.timeout``); the new version."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._version > after_version)
            return self._version


__all__ = ["ReloadRecord", "ReloadResult", "StateHolder"]
