"""The reloader: fetch -> load -> build -> swap once, with coalesced triggers.

Triggers (start-up, poll, config webhook, file watch) only bump a counter; one loop
reloads, and a trigger that arrives during a reload schedules exactly one more. Fetch and
load run in a dedicated thread so the event loop keeps serving; a failed reload keeps
the last-known-good snapshot and records revision, time and problems.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from testmesh_reconciler.config.loader import FileRef, Loader, LoadResult, SecretOpener
from testmesh_reconciler.loading import make_loader
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.state import ReloadRecord, StateHolder
from testmesh_reconciler.store.clock import Clock

log = get_logger("testmesh.reload")

Sleep = Callable[[float], Awaitable[None]]
MAX_LOGGED_PROBLEMS = 20


class ConfigSource(Protocol):
    """Where declarations come from (``GitSource``, ``DirectorySource``)."""

    @property
    def description(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def fetch(self) -> tuple[str, Mapping[str, FileRef]]:
        """Blocking: (revision, files). Raises with a loggable message when it cannot."""
        ...


def build_loader() -> Loader:
    """The loader the daemon uses: ``loading.make_loader`` (same checks as ``validate``)."""
    return make_loader()


@dataclass(frozen=True, slots=True)
class _Work:
    revision: str | None
    result: LoadResult | None
    error: str | None
    unchanged: bool
    cpu_seconds: float


class Reloader:
    """Owns the reload loop of one config source and one loader."""

    def __init__(self, *, source: ConfigSource, state: StateHolder, clock: Clock,
                 metrics: Metrics | None = None, loader: Loader | None = None,
                 open_secret: SecretOpener | None = None) -> None:
        self._source = source
        self._state = state
        self._clock = clock
        self._metrics = metrics
        self._loader = loader or build_loader()
        self._open_secret = open_secret
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config-reload")
        self._wake = asyncio.Event()
        self._done = asyncio.Condition()
        self._requested = 0
        self._completed = 0
        self._reasons: list[str] = []
        self.last_cpu_seconds = 0.0

    @property
    def source(self) -> ConfigSource:
        return self._source

    # -- triggers --------------------------------------------------------------------------
    def trigger(self, reason: str) -> int:
        """Ask for a reload (never blocks); returns a ticket for ``wait``."""
        self._requested += 1
        if reason not in self._reasons:
            self._reasons.append(reason)
        self._wake.set()
        return self._requested

    async def wait(self, ticket: int) -> ReloadRecord | None:
        """Wait until a reload that started after ``ticket`` was issued has finished
        (bound it with ``asyncio.timeout``); the last attempt's record."""
        async with self._done:
            await self._done.wait_for(lambda: self._completed >= ticket)
        return self._state.last_attempt

    async def reload_now(self, reason: str) -> ReloadRecord | None:
        """Trigger a reload and wait for it (the reload loop must be running)."""
        return await self.wait(self.trigger(reason))

    # -- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Eternal: wait for a trigger, reload once, repeat."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ticket = self._requested
            reasons = ",".join(self._reasons)
            self._reasons.clear()
            try:
                await self.reload_once(reasons)
            finally:
                async with self._done:
                    self._completed = ticket
                    self._done.notify_all()

    async def reload_once(self, trigger: str = "manual") -> ReloadRecord | None:
        """One reload; returns the record (``None`` when the revision was already active)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        work = await loop.run_in_executor(self._executor, self._work)
        self.last_cpu_seconds = work.cpu_seconds
        seconds = time.perf_counter() - started
        if work.unchanged:
            if self._metrics:
                self._metrics.observe_reload("unchanged", seconds)
            log.debug("config_unchanged", revision=work.revision, trigger=trigger)
            return None
        now = self._clock.now()
        ms = seconds * 1000
        if work.result is None:
            record = ReloadRecord(now, work.revision, "failed", (), work.error, ms,
                                  trigger=trigger)
            await self._state.record_failure(record)
            self._observe("error", seconds, 0)
            log.error("config_fetch_failed", source=self._source.description, error=work.error,
                      duration_ms=round(ms, 1), trigger=trigger,
                      keeps_revision=self._active_revision())
            return record
        result = work.result
        if result.snapshot is not None:
            record = ReloadRecord(now, result.revision, "ok", (), None, ms,
                                  result.parsed_files, trigger)
            await self._state.swap(result.snapshot, record)
            self._observe("ok", seconds, 0)
            if self._metrics:
                self._metrics.set_snapshot(result.revision, result.snapshot.counts(),
                                           now.timestamp())
            log.info("config_reload_succeeded", revision=result.revision,
                     duration_ms=round(ms, 1), cpu_ms=round(work.cpu_seconds * 1000, 1),
                     parsed_files=result.parsed_files,
                     declarations=len(result.declarations), trigger=trigger,
                     warnings=len(result.snapshot.warnings))
            for warning in result.snapshot.warnings:
                log.warning("config_warning", revision=result.revision, file=warning.file,
                            line=warning.line, column=warning.column, path=warning.path,
                            message=warning.message)
            return record
        errors = result.errors
        record = ReloadRecord(now, result.revision, "failed", errors, None, ms,
                              result.parsed_files, trigger)
        await self._state.record_failure(record)
        self._observe("failed", seconds, len(errors))
        log.error("config_reload_failed", revision=result.revision, problems=len(errors),
                  duration_ms=round(ms, 1), trigger=trigger,
                  keeps_revision=self._active_revision(),
                  first_problems=[p.render() for p in errors[:MAX_LOGGED_PROBLEMS]])
        return record

    def _active_revision(self) -> str | None:
        snap = self._state.snapshot
        return snap.revision if snap is not None else None

    def _observe(self, result: str, seconds: float, problems: int) -> None:
        if self._metrics:
            self._metrics.observe_reload(result, seconds)
            self._metrics.config_problems.set(problems)

    def _work(self) -> _Work:
        """In the reload thread: fetch, and load unless the revision is already active."""
        cpu0 = time.thread_time()
        try:
            revision, files = self._source.fetch()
        except Exception as exc:  # any failure of the source keeps the running snapshot
            return _Work(None, None, str(exc) or type(exc).__name__, False,
                         time.thread_time() - cpu0)
        last = self._state.last_attempt
        if (revision == self._active_revision() and last is not None and last.result == "ok"):
            return _Work(revision, None, None, True, time.thread_time() - cpu0)
        try:
            result = self._loader.load(files, revision=revision, open_secret=self._open_secret)
        except Exception as exc:  # a loader bug must not kill the loop
            log.exception("config_load_crashed", revision=revision)
            return _Work(revision, None, f"internal error while loading: {exc!r}", False,
                         time.thread_time() - cpu0)
        return _Work(revision, result, None, False, time.thread_time() - cpu0)

    async def aclose(self) -> None:
        """Close the source (in the reload thread, which owns it) and stop the thread."""
        close = getattr(self._source, "close", None)
        if callable(close):
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(self._executor, close), 5.0)
            except Exception:  # a git cat-file helper that will not close; nothing to do
                log.debug("config_source_close_failed", exc_info=True)
        self._executor.shutdown(wait=False, cancel_futures=True)


async def poll_loop(reloader: Reloader, state: StateHolder, interval: float, *,
                    retry_unready: float = 10.0, sleep: Sleep = asyncio.sleep) -> None:
    """Eternal: trigger a reload every ``interval`` seconds (the webhook's backstop).

    With ``interval`` 0 it only retries, every ``retry_unready`` seconds, while no valid
    snapshot has been loaded (an unreachable repo at start-up)."""
    while True:
        if interval > 0:
            await sleep(interval)
            reloader.trigger("poll")
        else:
            await sleep(retry_unready)
            if state.snapshot is None:
                reloader.trigger("retry")


__all__ = ["ConfigSource", "Reloader", "build_loader", "poll_loop"]
