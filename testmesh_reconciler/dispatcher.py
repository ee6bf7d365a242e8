"""The dispatcher: claims queued runs from the store and executes them, bounded and durable.

One claim loop (woken on enqueue, polling as a backstop) and one heartbeat loop per daemon;
per run: pending status, environment, suite, progress, final status, release. Start-up
recovers runs cut off by a crash; shutdown gives runs the grace period, then interrupts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from datetime import datetime
from typing import Any, Final, Protocol, cast

import httpx

from testmesh_reconciler.config.model import FlowDefinition, Snapshot, Step, Suite, TriggerRule
from testmesh_reconciler.environments import RenderError, render_environment
from testmesh_reconciler.errors import TestmeshError
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.replica import replica_name
from testmesh_reconciler.runner.flows import NullObserver
from testmesh_reconciler.runner.results import Phase, SuiteRunResult
from testmesh_reconciler.runner.suites import error_run, run_suite
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.state import StateHolder
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.store.clock import Clock
from testmesh_reconciler.store.records import OutboxEntry, Run, RunId
from testmesh_reconciler.triggers import Trigger

log = get_logger("testmesh.dispatcher")

#: Seconds between claim attempts when nothing wakes the loop (the backstop of ``wake``).
POLL_INTERVAL: Final = 1.0
#: Seconds between two progress saves of one run (the final record is always saved).
PROGRESS_EVERY: Final = 0.5
SHUTDOWN_ERROR: Final = ("interrupted by shutdown: the daemon stopped before the run finished "
                         "within --grace-period")
INTERNAL_ERROR: Final = "internal error"
DEFAULT_REQUEST_TIMEOUT: Final = 30.0


# -- seams ----------------------------------------------------------------------------------
class AcquiredEnvironment(Protocol):
    """What an environment acquisition hands the run."""

    @property
    def instance_id(self) -> str | None: ...

    @property
    def routing(self) -> Mapping[str, str]: ...

    @property
    def name(self) -> str: ...


class EnvironmentAcquirer(Protocol):
    """The environment manager as the dispatcher uses it (``environments.EnvironmentManager``).

    ``acquire`` raises a ``TestmeshError`` (``EnvironmentUnavailable``) with a message saying
    why the environment cannot be had; the run then fails with that error."""

    async def acquire(self, *, snapshot: Snapshot, workspace: str, name: str,
                      variables: Mapping[str, str], run_id: str) -> Any: ...

    async def release(self, acquired: Any, *, failed: bool) -> None: ...

    async def release_recovered(self, instance_id: str, *, run_id: str) -> None:
        """Give back what a recovered run held (its executor is gone: it never will)."""


class Reporting(Protocol):
    """The pure commit-status functions of ``testmesh_reconciler.reporting``."""

    def report_target(self, snapshot: Snapshot, rule: TriggerRule, trigger: Trigger) -> Any: ...

    def pending_entries(self, run: Run, snapshot: Snapshot, settings: Settings,
                        now: datetime) -> list[OutboxEntry]: ...

    def final_entries(self, run: Run, snapshot: Snapshot, settings: Settings,
                      now: datetime) -> list[OutboxEntry]: ...


class EnvironmentUnavailableError(TestmeshError):
    """The run's environment cannot be acquired (the static fallback's own error)."""


@dataclass(frozen=True, slots=True)
class StaticAcquired:
    """A static environment: routing only, nothing to release."""

    name: str
    routing: Mapping[str, str]
    instance_id: str | None = None


class StaticEnvironments:
    """Fallback without the environment manager: renders ``routing_policy`` of ``static``
    environments; an ``argocd`` one cannot be provisioned here."""

    async def acquire(self, *, snapshot: Snapshot, workspace: str, name: str,
                      variables: Mapping[str, str], run_id: str) -> StaticAcquired:
        env = snapshot.environments.get((workspace, name))
        if env is None:
            raise EnvironmentUnavailableError(
                f"environment {name!r}: no TestEnvironment of that name in workspace "
                f"{workspace!r} in config revision {snapshot.revision[:12]}")
        if env.provider != "static":
            raise EnvironmentUnavailableError(
                f"environment {name!r}: provider {env.provider!r}: provisioning needs the "
                "environment manager")
        rendered = render_environment(env, variables)
        if isinstance(rendered, RenderError):
            raise EnvironmentUnavailableError(rendered.message)
        return StaticAcquired(name=name, routing=dict(rendered.routing))

    async def release(self, acquired: Any, *, failed: bool) -> None:
        return None

    async def release_recovered(self, instance_id: str, *, run_id: str) -> None:
        return None


class _NoReporting:
    """Used only while ``reporting.py`` does not exist: no commit statuses."""

    def report_target(self, snapshot: Snapshot, rule: TriggerRule, trigger: Trigger) -> Any:
        return "commit statuses are not available in this build (no reporting module)"

    def pending_entries(self, run: Run, snapshot: Snapshot, settings: Settings,
                        now: datetime) -> list[OutboxEntry]:
        return []

    def final_entries(self, run: Run, snapshot: Snapshot, settings: Settings,
                      now: datetime) -> list[OutboxEntry]:
        return []


def load_reporting() -> Reporting:
    """``testmesh_reconciler.reporting``, or a stand-in that posts nothing (logged)."""
    try:
        module = importlib.import_module("testmesh_reconciler.reporting")
    except ImportError as exc:
        log.warning("reporting_unavailable", error=str(exc))
        return _NoReporting()
    return cast(Reporting, module)


def target_json(target: Any) -> dict[str, Any] | None:
    """A report target as the JSON mapping a ``Run`` keeps (``None`` for a reason string)."""
    if target is None or isinstance(target, str):
        return None
    to_json = getattr(target, "to_json", None)
    if callable(to_json):
        return dict(to_json())
    if is_dataclass(target) and not isinstance(target, type):
        return asdict(target)
    if isinstance(target, Mapping):
        return dict(target)
    return None


def default_replica() -> str:
    """This daemon's replica name (``replica.replica_name``: ``TESTMESH_REPLICA`` / host)."""
    return replica_name()


class RunnerClock:
    """The runner's clock on top of the injected store clock (``now``), plus monotonic time."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> datetime:
        return self._clock.now()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# -- pure helpers ---------------------------------------------------------------------------
def find_suite(snapshot: Snapshot, run: Run) -> Suite | None:
    """The run's suite in ``snapshot``: by (workspace, name), else by ``suite_id``."""
    suite = snapshot.suites.get((run.workspace, run.suite))
    if isinstance(suite, Suite):
        return suite
    for candidate in snapshot.suites.values():
        if str(candidate.id) == run.suite_id:
            return candidate
    return None


def string_variables(values: Mapping[str, Any]) -> dict[str, str]:
    """Trigger variables as strings (what environment templates see)."""
    return {str(k): str(v) for k, v in values.items() if v is not None}


def apply_result(run: Run, result: SuiteRunResult, *, started: bool) -> Run:
    """The store record of ``run`` with the runner's (final or progress) result in it."""
    return replace(run, status=result.status, flows=tuple(result.flows_json()),
                   total_flows=result.total_flows, passed_flows=result.passed_flows,
                   failed_flows=result.failed_flows, error=result.error,
                   completed_at=result.completed_at, duration_ms=result.duration_ms,
                   started=run.started or started)


def failed_run(run: Run, error: str, now: datetime, *, started: bool = False) -> Run:
    """``run`` finished as ``failed`` with ``error`` (its commit status will be ``error``)."""
    duration = None
    if run.started_at is not None:
        duration = max(0, round((now - run.started_at).total_seconds() * 1000))
    return replace(run, status="failed", error=error, completed_at=now,
                   duration_ms=duration, started=run.started or started)


# -- progress -------------------------------------------------------------------------------
class StoreObserver(NullObserver):
    """Marks the run started before its first step is sent; saves progress, throttled."""

    def __init__(self, store: Store, run: Run, clock: Clock) -> None:
        self.store = store
        self.run = run
        self.clock = clock
        self.started = False
        self._last_save = -PROGRESS_EVERY

    async def step_started(self, flow: str, phase: Phase, step: Step) -> None:
        if not self.started:
            await self.store.mark_started(self.run.id, self.clock.now())
            self.started = True

    async def flow_started(self, flow: str, definition: FlowDefinition) -> None:
        return None

    async def run_progress(self, run: SuiteRunResult) -> None:
        now = time.monotonic()
        if now - self._last_save < PROGRESS_EVERY:
            return
        self._last_save = now
        progress = replace(apply_result(self.run, run, started=self.started), status="running",
                           error=None, completed_at=None, duration_ms=None)
        await self.store.save_progress(progress)


# -- the dispatcher -------------------------------------------------------------------------
@dataclass
class _Active:
    run: Run
    task: asyncio.Task[None]
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


class Dispatcher:
    """Claims runs (at most ``max_concurrent_runs`` at once) and executes them."""

    def __init__(self, *, settings: Settings, store: Store, state: StateHolder, clock: Clock,
                 http: httpx.AsyncClient | None = None,
                 environments: EnvironmentAcquirer | None = None,
                 reporting: Reporting | None = None, metrics: Metrics | None = None,
                 replica: str | None = None, poll_interval: float = POLL_INTERVAL,
                 on_outbox: Callable[[], None] | None = None) -> None:
        self.settings = settings
        #: Called after statuses were queued, so the sender posts now, not at its next poll.
        self.on_outbox = on_outbox or (lambda: None)
        self.store = store
        self.state = state
        self.clock = clock
        self.http = http
        self.environments: EnvironmentAcquirer = environments or StaticEnvironments()
        self.reporting: Reporting = reporting or load_reporting()
        self.metrics = metrics
        self.replica = replica or default_replica()
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._active: dict[RunId, _Active] = {}
        self._ready = asyncio.Event()
        self._own_http: httpx.AsyncClient | None = None
        #: Environments recovered runs held that could not be given back yet (run, instance).
        self._unreleased: list[tuple[RunId, str]] = []

    # -- signals from outside -------------------------------------------------------------
    def wake(self) -> None:
        """Something was queued: claim now rather than at the next poll."""
        self._wake.set()

    @property
    def running(self) -> tuple[RunId, ...]:
        return tuple(self._active)

    @property
    def ready(self) -> asyncio.Event:
        """Set once start-up recovery is done and runs are being claimed."""
        return self._ready

    # -- loops ----------------------------------------------------------------------------
    async def claim_loop(self) -> None:
        """Wait for a snapshot, recover, then claim runs until ``shutdown``."""
        await self._wait_for_snapshot()
        if not self._ready.is_set():
            await self.recover(startup=True)
            self._ready.set()
        last_recover = time.monotonic()
        while True:  # claim_available does nothing once shutdown began
            # Clear before claiming, never after: a wake() that arrives while claim_available
            # awaits the store must survive to the wait below, or that run waits a full poll.
            self._wake.clear()
            await self.claim_available()
            if time.monotonic() - last_recover >= self.settings.run_lease:
                await self.recover(startup=False)
                last_recover = time.monotonic()
            with contextlib.suppress(TimeoutError):  # asyncio.timeout never eats a cancel
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def heartbeat_loop(self) -> None:
        """Extend the leases of the runs this replica executes; lost ones are cancelled."""
        every = max(0.05, self.settings.run_lease / 3)
        while True:
            await asyncio.sleep(every)
            ids = list(self._active)
            if not ids:
                continue
            held = set(await self.store.heartbeat(self.replica, ids, self.clock.now(),
                                                  self.settings.run_lease))
            for run_id in ids:
                active = self._active.get(run_id)
                if run_id not in held and active is not None and not active.task.done():
                    log.warning("run_claim_lost", run_id=run_id, replica=self.replica)
                    active.cancel.set()

    async def _wait_for_snapshot(self) -> None:
        while self.state.snapshot is None:
            version = self.state.version
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.state.wait_for_change(version)

    async def recover(self, *, startup: bool) -> None:
        """Finish runs whose claim is gone: started -> failed (interrupted), else requeued."""
        snapshot = self.state.snapshot

        def outbox_for(run: Run) -> Sequence[OutboxEntry]:
            if snapshot is None:
                return ()
            return self.reporting.final_entries(run, snapshot, self.settings, self.clock.now())

        result = await self.store.recover_expired(
            self.clock.now(), replica=self.replica if startup else None, outbox_for=outbox_for)
        for run in result.interrupted:
            log.warning("run_interrupted", run_id=run.id, suite=run.suite, rule=run.rule,
                        startup=startup)
            if self.metrics is not None:
                self.metrics.runs.labels("failed").inc()
        if result.requeued:
            log.info("runs_requeued", count=len(result.requeued), startup=startup)
        # Recovery hands each environment over once: one that cannot be given back now is
        # tried again at the next pass (every --run-lease seconds), not dropped.
        handed, self._unreleased = [*self._unreleased, *result.environments], []
        for run_id, instance in handed:
            try:
                await self.environments.release_recovered(instance, run_id=run_id)
            except Exception as exc:  # one environment's trouble must not stop the others
                log.warning("run_environment_release_failed", run_id=run_id,
                            instance=instance, error=str(exc), startup=startup,
                            retry_in_seconds=self.settings.run_lease)
                self._unreleased.append((run_id, instance))

    async def claim_available(self) -> int:
        """Claim runs while slots are free; how many were started."""
        started = 0
        while not self._stopping and len(self._active) < self.settings.max_concurrent_runs:
            if self.state.snapshot is None:
                break
            run = await self.store.claim_run(self.replica, self.clock.now(),
                                             self.settings.run_lease)
            if run is None:
                break
            self._start(run)
            started += 1
        return started

    def _start(self, run: Run) -> None:
        cancel = asyncio.Event()
        task = asyncio.create_task(self._guarded(run, cancel), name=f"run-{run.id}")
        self._active[run.id] = _Active(run=run, task=task, cancel=cancel)

    async def _guarded(self, run: Run, cancel: asyncio.Event) -> None:
        try:
            await self.execute(run, cancel=cancel)
        finally:
            self._active.pop(run.id, None)
            self._wake.set()

    # -- one run --------------------------------------------------------------------------
    async def execute(self, run: Run, *, cancel: asyncio.Event | None = None) -> Run:
        """Execute one claimed run to its end; the finished record (never raises but for
        cancellation, after which the run is finished as interrupted)."""
        bound = log.bind(run_id=run.id, suite=run.suite, rule=run.rule,
                         repo=run.trigger.get("repo"), sha=run.trigger_ref,
                         delivery_id=run.delivery_id)
        snapshot = self.state.snapshot
        if snapshot is not None and snapshot.revision and snapshot.revision != run.revision:
            run = replace(run, revision=snapshot.revision)  # the revision it runs with
        observer = StoreObserver(self.store, run, self.clock)
        final: Run | None = None
        try:
            if snapshot is None:
                raise TestmeshError("no valid config is loaded")
            bound.info("run_claimed", replica=self.replica)
            await self.store.add_outbox(self.reporting.pending_entries(
                run, snapshot, self.settings, self.clock.now()))
            self.on_outbox()
            final = await self._run(run, snapshot, observer, cancel, bound)
        except asyncio.CancelledError:
            final = failed_run(run, SHUTDOWN_ERROR, self.clock.now(), started=observer.started)
            await self._finish(final, snapshot, bound)
            raise
        except Exception as exc:
            bound.exception("run_crashed")
            final = failed_run(run, f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}",
                               self.clock.now(), started=observer.started)
        await self._finish(final, snapshot, bound)
        return final

    async def _run(self, run: Run, snapshot: Snapshot, observer: StoreObserver,
                   cancel: asyncio.Event | None, bound: Any) -> Run:
        suite = find_suite(snapshot, run)
        if suite is None:
            return failed_run(run, f"suite {run.suite!r} is not declared in config revision "
                                   f"{snapshot.revision[:12]}", self.clock.now())
        trigger_type = run.trigger_type
        routing: Mapping[str, str] = {}
        acquired: Any = None
        instance: str | None = None
        recorded = False  # the run's record names the environment instance it holds
        if run.environment:
            try:
                acquired = await self.environments.acquire(
                    snapshot=snapshot, workspace=run.workspace, name=run.environment,
                    variables=string_variables(run.trigger), run_id=run.id)
            except TestmeshError as exc:
                bound.warning("run_environment_unavailable", environment=run.environment,
                              error=str(exc))
                record = error_run(snapshot, suite, run_id=run.id, error=str(exc),
                                   trigger_type=trigger_type, trigger=run.trigger,
                                   trigger_ref=run.trigger_ref, environment=run.environment,
                                   clock=RunnerClock(self.clock))
                return apply_result(run, record, started=False)
            routing = dict(getattr(acquired, "routing", {}) or {})
            instance = getattr(acquired, "instance_id", None)
            if instance:
                run = replace(run, environment_instance=instance)
                observer.run = run
        failed = True
        try:
            if instance:
                # Stored before any step: should this daemon die now, recovery knows what
                # the run held and gives it back (else the environment kept a user for good).
                recorded = await self.store.save_progress(run)
            result = await run_suite(
                snapshot, suite, run_id=run.id, client=self._client(), trigger_type=trigger_type,
                trigger=run.trigger, trigger_ref=run.trigger_ref, variables=run.variables,
                environment=run.environment, environment_routing=routing,
                clock=RunnerClock(self.clock), observer=observer, cancel=cancel)
            failed = result.status != "completed"
        finally:
            if acquired is not None and not (recorded and await self._claim_lost(run)):
                try:
                    await self.environments.release(acquired, failed=failed)
                except Exception:
                    bound.exception("run_environment_release_failed")
        return apply_result(run, result, started=observer.started)

    async def _claim_lost(self, run: Run) -> bool:
        """Whether another replica recovered ``run`` (its lease ran out): that recovery
        gave back the run's environment, so releasing it here too would count it twice."""
        try:
            held = await self.store.heartbeat(self.replica, [run.id], self.clock.now(),
                                              self.settings.run_lease)
        except Exception:  # the store is unreachable: release, as without recovery
            return False
        if run.id in held:
            return False
        log.warning("run_environment_left_to_recovery", run_id=run.id,
                    instance=run.environment_instance, replica=self.replica)
        return True

    def _client(self) -> httpx.AsyncClient:
        if self.http is not None:
            return self.http
        if self._own_http is None:
            self._own_http = httpx.AsyncClient(timeout=DEFAULT_REQUEST_TIMEOUT)
        return self._own_http

    async def _finish(self, final: Run, snapshot: Snapshot | None, bound: Any) -> None:
        outbox: list[OutboxEntry] = []
        snapshot = snapshot or self.state.snapshot
        if snapshot is not None:
            try:
                outbox = self.reporting.final_entries(final, snapshot, self.settings,
                                                      self.clock.now())
            except Exception:
                bound.exception("run_final_status_failed")
        try:
            ours = await self.store.finish_run(final, outbox)
        except Exception:
            bound.exception("run_finish_failed")
            return
        self.on_outbox()
        if self.metrics is not None:
            self.metrics.runs.labels(final.status).inc()
        if not ours:
            bound.warning("run_finish_lost_claim", status=final.status)
            return
        bound.info("run_finished", status=final.status, error=final.error,
                   passed_flows=final.passed_flows, failed_flows=final.failed_flows,
                   duration_ms=final.duration_ms)

    # -- shutdown -------------------------------------------------------------------------
    async def shutdown(self, grace: float | None = None) -> None:
        """Stop claiming; give runs ``grace`` seconds (``--grace-period``), then cancel the
        rest, which finish as failed ("interrupted by shutdown")."""
        self._stopping = True
        self._wake.set()
        grace = self.settings.grace_period if grace is None else grace
        tasks = [a.task for a in self._active.values()]
        if tasks:
            log.info("dispatcher_draining", runs=len(tasks), grace_period=grace)
            _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else \
                (set(), set(tasks))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None


__all__ = ["DEFAULT_REQUEST_TIMEOUT", "INTERNAL_ERROR", "SHUTDOWN_ERROR", "AcquiredEnvironment",
           "Dispatcher", "EnvironmentAcquirer", "EnvironmentUnavailableError", "Reporting",
           "RunnerClock", "StaticAcquired", "StaticEnvironments", "StoreObserver",
           "apply_result", "default_replica", "failed_run", "find_suite", "load_reporting",
           "string_variables", "target_json"]
