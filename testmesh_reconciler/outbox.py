"""The commit-status outbox sender: the loop that drains the store's durable outbox.

``outbox_loop`` takes the due group heads, posts them (in parallel across (repo, sha,
context) groups, in order within one), records each outcome, and sleeps until the next
retry, a wake-up or the poll interval; ``flush`` tries what is due once more at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from testmesh_reconciler.config.model import Snapshot
from testmesh_reconciler.errors import ProviderError
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.providers.gitea import GiteaStatusClient
from testmesh_reconciler.statuses import (
    DEFAULT_GIVE_UP_AFTER,
    ClientFor,
    GiveUp,
    IntegrationRef,
    Outcome,
    classify,
    deliver,
)
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.store.clock import Clock
from testmesh_reconciler.store.records import OutboxEntry, OutboxId

log = get_logger("testmesh.outbox")

LOOP_NAME: Final = "status-outbox"
DEFAULT_POLL_INTERVAL: Final = 1.0
"""Seconds between store polls when idle: the backstop for entries queued without a wake-up
(another replica, a restart) and for retries scheduled before this process started."""
DEFAULT_BATCH: Final = 100
"""Due entries read per pass (one per group)."""
DEFAULT_MAX_IN_FLIGHT: Final = 16
"""Groups posted at once."""
ERROR_PAUSE: Final = (1.0, 60.0)
"""Pause after a failed pass (store down): first and largest, doubling in between (s)."""
FLUSH_DEADLINE: Final = 10.0
"""Seconds the shutdown flush may take (``terminationGracePeriodSeconds`` covers it)."""
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)

Sleep = Callable[[float], Awaitable[None]]
Ready = Callable[[], bool]
GroupKey = tuple[str, str, str]
StatusProviderFn = Callable[[], Awaitable[Mapping[str, Any]]]


class OutboxMetrics:
    """Counters of posted / skipped / retried / given-up statuses and the queue-to-Gitea
    latency, registered on the daemon's registry (``services.metrics.registry``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.statuses = Counter(
            "testmesh_commit_statuses",
            "Commit status attempts by outcome (sent, skipped, retried, given_up)",
            ["outcome"], registry=registry)
        self.latency = Histogram(
            "testmesh_commit_status_latency_seconds",
            "Seconds from queuing a commit status to Gitea holding it (sent or skipped)",
            buckets=_LATENCY_BUCKETS, registry=registry)
        for outcome in ("sent", "skipped", "retried", "given_up"):
            self.statuses.labels(outcome)

    def observe(self, entry: OutboxEntry, outcome: Outcome, now: datetime) -> None:
        self.statuses.labels("retried" if outcome.kind == "queued" else outcome.kind).inc()
        if outcome.kind in ("sent", "skipped"):
            self.latency.observe(max(0.0, (now - entry.created_at).total_seconds()))


def group_of(entry: OutboxEntry) -> GroupKey:
    """The ordering group of an entry: statuses of one (repo, sha, context) go in order."""
    return (entry.repo, entry.sha, entry.context)


async def apply_outcome(store: Store, entry: OutboxEntry, outcome: Outcome,
                        now: datetime) -> None:
    """Record what one attempt did: sent/skipped, rescheduled, or given up (with reason)."""
    if outcome.kind in ("sent", "skipped"):
        await store.mark_sent(entry.id, now, outcome.kind)
    elif outcome.kind == "queued":
        when = outcome.next_attempt_at or now
        await store.reschedule(entry.id, when, outcome.attempts, outcome.error or "")
    else:
        await store.give_up(entry.id, now, outcome.error or "given up")


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What every attempt needs besides the entry."""

    store: Store
    client_for: ClientFor
    clock: Clock
    give_up_after: float
    rng: random.Random
    metrics: OutboxMetrics | None
    loop: str

    async def __call__(self, entry: OutboxEntry) -> Outcome | None:
        """Post ``entry`` once and record the outcome; None when recording failed. Never
        raises but ``CancelledError``: an unexpected error is retried like a network one."""
        bound = log.bind(loop=self.loop, outbox_id=entry.id, run_id=entry.run_id,
                         repo=entry.repo, sha=entry.sha, context=entry.context)
        try:
            outcome = await deliver(entry, self.client_for, self.clock.now(),
                                    give_up_after=self.give_up_after, rng=self.rng)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            bound.exception("status_delivery_crashed")
            now = self.clock.now()
            attempts = entry.attempts + 1
            error = ProviderError(f"internal error while posting: {type(exc).__name__}: {exc}",
                                  retryable=True)
            decision = classify(error, first_attempt_at=entry.created_at, now=now,
                                give_up_after=self.give_up_after, attempts=attempts,
                                rng=self.rng)
            if isinstance(decision, GiveUp):
                outcome = Outcome("given_up", attempts, error=decision.reason)
            else:
                outcome = Outcome("queued", attempts, next_attempt_at=decision.at,
                                  error=decision.reason)
        now = self.clock.now()
        try:
            await apply_outcome(self.store, entry, outcome, now)
        except asyncio.CancelledError:
            raise
        except Exception:
            bound.exception("status_outcome_not_recorded", outcome=outcome.kind)
            return None
        if self.metrics is not None:
            self.metrics.observe(entry, outcome, now)
        return outcome


async def outbox_loop(
    store: Store,
    *,
    client_for: ClientFor,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
    give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    rng: random.Random | None = None,
    wake: asyncio.Event | None = None,
    metrics: OutboxMetrics | None = None,
    ready: Ready | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    batch: int = DEFAULT_BATCH,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    name: str = LOOP_NAME,
) -> None:
    """Drain the outbox forever (until cancelled); an exception is logged, never fatal.

    Each pass reads the due group heads (``due_statuses``; the store returns at most one
    entry per (repo, sha, context), so a final never overtakes its pending) and starts one
    attempt per group not already in flight. Between passes it waits for an attempt to end,
    ``wake`` to be set, or, when nothing is in flight, ``sleep`` until the earliest retry
    this loop scheduled or ``poll_interval``. ``ready()`` false (no config snapshot yet)
    holds every attempt back, so entries are not given up for a missing integration.
    """
    attempt = _Attempt(store, client_for, clock, give_up_after, rng or random.Random(),
                       metrics, name)
    bound = log.bind(loop=name)
    in_flight: dict[GroupKey, tuple[OutboxId, asyncio.Task[Outcome | None]]] = {}
    retry_at: dict[OutboxId, datetime] = {}
    failures = 0
    try:
        while True:
            if wake is not None:
                wake.clear()
            pause = poll_interval
            try:
                if ready is None or ready():
                    now = clock.now()
                    full = False
                    if len(in_flight) < max_in_flight:
                        # Ask for no more than can start: a store that claims what it hands
                        # out (PostgreSQL) would hide a skipped entry for its claim period.
                        limit = min(batch, max_in_flight - len(in_flight))
                        due = await store.due_statuses(now, limit)
                        full = len(due) >= limit
                        for entry in due:
                            retry_at.pop(entry.id, None)
                            key = group_of(entry)
                            previous = in_flight.get(key)
                            if previous is not None and previous[0] == entry.id:
                                continue
                            # A new head of a group in flight: the previous attempt recorded
                            # its outcome already; post this one right after it ends.
                            task = asyncio.create_task(
                                _after(previous[1] if previous else None, attempt, entry),
                                name=f"{name}:{entry.id}")
                            in_flight[key] = (entry.id, task)
                    for entry_id, when in list(retry_at.items()):
                        if when <= now:
                            del retry_at[entry_id]  # due again: the next pass reads it
                    if retry_at:
                        soonest = min(retry_at.values())
                        pause = min(pause, max(0.0, (soonest - now).total_seconds()))
                    if full:
                        pause = 0.0
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                pause = min(ERROR_PAUSE[0] * 2.0 ** (failures - 1), ERROR_PAUSE[1])
                bound.exception("outbox_pass_failed", failures=failures, retry_in=pause)
            tasks = [task for _, task in in_flight.values()]
            done = await _wait(tasks, wake, sleep, pause, sleeping=not tasks or failures > 0)
            for key, (entry_id, task) in list(in_flight.items()):
                if task in done:
                    del in_flight[key]
                    outcome = task.result()
                    if outcome is not None and outcome.next_attempt_at is not None:
                        retry_at[entry_id] = outcome.next_attempt_at
    finally:
        leftover = [task for _, task in in_flight.values()]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)


async def _after(previous: asyncio.Task[Outcome | None] | None, attempt: _Attempt,
                 entry: OutboxEntry) -> Outcome | None:
    """``attempt(entry)`` once ``previous`` (the same group's last attempt) has ended."""
    if previous is not None:
        await asyncio.wait([previous])
    return await attempt(entry)


async def _wait(tasks: list[asyncio.Task[Outcome | None]], wake: asyncio.Event | None,
                sleep: Sleep, pause: float, *, sleeping: bool) -> set[asyncio.Future[Any]]:
    """Wait for an attempt to end, a wake-up, or (when ``sleeping``) ``pause`` seconds."""
    waiters: set[asyncio.Future[Any]] = set(tasks)
    extra: list[asyncio.Future[Any]] = []
    if wake is not None:
        extra.append(asyncio.ensure_future(wake.wait()))
    if sleeping:
        extra.append(asyncio.ensure_future(sleep(pause)))
    try:
        done, _ = await asyncio.wait(waiters | set(extra), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in extra:
            if not task.done():
                task.cancel()
        for task in extra:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return done


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What the shutdown flush did: entries attempted, finished (sent, skipped, given up),
    and whether the deadline cut it short (the rest stays queued for the next start)."""

    attempted: int
    finished: int
    timed_out: bool


async def flush(
    store: Store,
    *,
    client_for: ClientFor,
    clock: Clock,
    deadline: float = FLUSH_DEADLINE,
    give_up_after: float = DEFAULT_GIVE_UP_AFTER,
    rng: random.Random | None = None,
    metrics: OutboxMetrics | None = None,
    batch: int = DEFAULT_BATCH,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> FlushResult:
    """Try every due entry once more (a finished head lets its successor go next), within
    ``deadline`` seconds of wall time; what fails or is left stays queued, never dropped."""
    attempt = _Attempt(store, client_for, clock, give_up_after, rng or random.Random(),
                       metrics, "outbox-flush")
    tried: set[OutboxId] = set()
    finished = 0
    limit = asyncio.Semaphore(max_in_flight)

    async def one(entry: OutboxEntry) -> Outcome | None:
        async with limit:
            return await attempt(entry)

    try:
        async with asyncio.timeout(deadline):
            while True:
                due = [e for e in await store.due_statuses(clock.now(), batch)
                       if e.id not in tried]
                if not due:
                    break
                tried.update(e.id for e in due)
                outcomes = await asyncio.gather(*(one(e) for e in due))
                finished += sum(1 for o in outcomes if o is not None and o.done)
    except TimeoutError:
        log.warning("outbox_flush_timed_out", deadline=deadline, attempted=len(tried),
                    finished=finished)
        return FlushResult(len(tried), finished, True)
    log.info("outbox_flushed", attempted=len(tried), finished=finished)
    return FlushResult(len(tried), finished, False)


def client_factory(snapshot: Callable[[], Snapshot | None],
                   http: httpx.AsyncClient) -> ClientFor:
    """``client_for`` over the current snapshot (read at each call) and the shared client:
    None when the integration is gone, not gitea, or lacks a url or token."""

    def client_for(ref: IntegrationRef) -> GiteaStatusClient | None:
        current = snapshot()
        if current is None:
            return None
        integration = current.integrations.get((ref.workspace, ref.name))
        if integration is None or integration.provider != "gitea":
            return None
        return GiteaStatusClient.for_integration(http, integration)

    return client_for


def status_provider(store: Store) -> StatusProviderFn:
    """The ``/api/v1/status`` provider: ``{"outbox": {queued, given_up, last_give_up}}``."""

    async def outbox_status() -> Mapping[str, Any]:
        return {"outbox": (await store.outbox_stats()).to_json()}

    return outbox_status


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_POLL_INTERVAL",
    "FLUSH_DEADLINE",
    "LOOP_NAME",
    "FlushResult",
    "OutboxMetrics",
    "apply_outcome",
    "client_factory",
    "flush",
    "group_of",
    "outbox_loop",
    "status_provider",
]
