"""Test environments: rendering a declared TestEnvironment for one run, TTL and reuse rules,
and single-flight provisioning. The top section is pure (no IO, time passed in); the
store-backed acquisition, release and reaping build on it below.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

import httpx

from testmesh_reconciler.config.frozen import thaw
from testmesh_reconciler.config.model import (
    ALL_TRIGGER_VARIABLES,
    Integration,
    Snapshot,
    TestEnvironment,
)
from testmesh_reconciler.errors import ProviderError, TestmeshError
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.providers.argocd import ArgoCDClient, Sleep, ensure_ready
from testmesh_reconciler.runner.expressions import MISSING
from testmesh_reconciler.runner.interpolate import Builtins, Scope, interpolate
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.store.clock import Clock
from testmesh_reconciler.store.records import (
    REUSABLE_ENV_STATES,
    EnvironmentId,
    EnvironmentInstance,
    EnvironmentState,
    new_id,
)

# ============================================================================================
# Pure core: rendering, TTL, reuse (no IO, no clock of its own)
# ============================================================================================

#: Runtime states (DESIGN.md section 2) in which an idle environment may be taken by a run.
REUSABLE_STATES: Final = frozenset({"warm", "cooling"})

# Kubernetes names: a namespace is a DNS-1123 label, an Application name a DNS-1123 subdomain.
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class Rendered:
    """A TestEnvironment's templates rendered from one trigger's variables.

    ``context`` None means the run gets an environment of its own (no reuse); ``routing``
    maps service name -> URL (flows read it as ``${service.<name>}``); ``application`` is the
    rendered Argo CD ApplicationSpec template, or None when none is declared.
    """

    context: str | None
    provider_app_name: str | None
    namespace: str | None
    routing: dict[str, str]
    application: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RenderError:
    """Why a TestEnvironment cannot be rendered for this trigger; ``missing`` lists the
    variable names that did not resolve (empty for other problems, such as a bad name)."""

    environment: str
    message: str
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _NoBuiltins(Builtins):
    """Environment templates see trigger variables only: ``${UUID}`` and friends would
    make a reuse key that never matches again."""

    def resolve(self, name: str) -> Any:
        return MISSING


def _no_clock() -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC)


_NO_BUILTINS: Final = _NoBuiltins(clock=_no_clock, rng=random.Random(0))


def _placeholders(names: tuple[str, ...]) -> str:
    shown = [f"${{{n}}}" for n in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _missing_message(env_name: str, missing: tuple[str, ...]) -> str:
    lacking = tuple(n for n in missing if n in ALL_TRIGGER_VARIABLES)
    unknown = tuple(n for n in missing if n not in ALL_TRIGGER_VARIABLES)
    parts: list[str] = []
    if lacking:
        parts.append(f"TestEnvironment {env_name!r} needs {_placeholders(lacking)}, which "
                     f"this trigger does not carry")
    if unknown:
        known = ", ".join(sorted(ALL_TRIGGER_VARIABLES))
        noun = "is not a trigger variable" if len(unknown) == 1 else "are not trigger variables"
        parts.append(f"TestEnvironment {env_name!r} uses {_placeholders(unknown)}, which "
                     f"{noun} (templates may use {known})")
    return "; ".join(parts)


def _name_problem(env_name: str, field: str, value: str) -> str | None:
    if field == "namespace":
        if len(value) <= 63 and _DNS_LABEL.fullmatch(value):
            return None
        rule = "lowercase letters, digits and '-', at most 63 characters"
    else:
        if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value):
            return None
        rule = "lowercase letters, digits, '-' and '.', at most 253 characters"
    return (f"TestEnvironment {env_name!r}: {field} renders to {value!r}, which is not a valid "
            f"Kubernetes name ({rule}); adjust the template in spec.{field}")


def render_environment(env: TestEnvironment, variables: Mapping[str, str]
                       ) -> Rendered | RenderError:
    """Render ``context``, ``provider_app_name``, ``namespace``, ``routing_policy`` and
    ``application`` from the trigger ``variables`` (built-ins are not available).

    Every unresolved name of every template is reported in one ``RenderError``; for an
    ``argocd`` environment, a namespace or application name that renders to something
    Kubernetes rejects (empty, ``feature/x``...) is reported too, before any provisioning.
    """
    scope = Scope.layered(variables)
    missing: dict[str, None] = {}

    def render(value: Any) -> Any:
        result = interpolate(value, scope, _NO_BUILTINS)
        for name in result.missing:
            missing.setdefault(name, None)
        return result.value

    def text(template: str | None) -> str | None:
        return None if template is None else str(render(template))

    context = text(env.context)
    app_name = text(env.provider_app_name)
    namespace = text(env.namespace)
    routing = {service: str(render(url)) for service, url in env.routing_policy.items()}
    application = None
    if env.application is not None:
        application = render(thaw(env.application))
    if missing:
        names = tuple(missing)
        return RenderError(env.name, _missing_message(env.name, names), names)
    if context is not None and not context.strip():
        return RenderError(env.name, f"TestEnvironment {env.name!r}: context renders to an "
                                     f"empty string; adjust the template in spec.context")
    if env.provider == "argocd":
        for field, value in (("provider_app_name", app_name), ("namespace", namespace)):
            problem = _name_problem(env.name, field, value) if value is not None else None
            if problem is not None:
                return RenderError(env.name, problem)
    return Rendered(context=context, provider_app_name=app_name, namespace=namespace,
                    routing=routing, application=application)


def expires_at(last_used_at: datetime, ttl_minutes: float) -> datetime:
    """When an environment last used at ``last_used_at`` expires (``last_used_at`` + TTL)."""
    return last_used_at + timedelta(minutes=ttl_minutes)


def is_expired(last_used_at: datetime, ttl_minutes: float, now: datetime) -> bool:
    """True from the moment the TTL has fully elapsed: at exactly ``expires_at`` it is
    expired (the reaper and the reuse check agree on that instant)."""
    return now >= expires_at(last_used_at, ttl_minutes)


def reusable(state: str, last_used_at: datetime, ttl_minutes: float, now: datetime) -> bool:
    """May a new run take this idle environment? Only ``warm`` / ``cooling`` ones within TTL.

    ``provisioning`` and ``running`` environments are not "reusable" here: concurrent runs
    for one context share a provisioning through ``SingleFlight`` in the manager (and the
    store's lease across replicas), which is a different rule from picking an idle one.
    """
    return state in REUSABLE_STATES and not is_expired(last_used_at, ttl_minutes, now)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Concurrent ``run`` calls with the same key share one in-flight call of the factory.

    Every waiter gets the same result or the same exception; the entry is dropped when the
    call finishes, so the next ``run`` starts afresh. A waiter that is cancelled does not
    cancel the shared call (others may still wait for it). Within one process only:
    locking across replicas is the store's job.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: K, factory: Callable[[], Awaitable[V]]) -> V:
        """Await ``factory()`` for ``key``, or the call already in flight for it."""
        return await asyncio.shield(self.start(key, factory))

    def start(self, key: K, factory: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        """The call in flight for ``key``, started with ``factory()`` if there is none."""
        task = self._tasks.get(key)
        if task is None or task.done():  # done: its callback has not dropped it yet
            async def call() -> V:
                return await factory()

            task = asyncio.get_running_loop().create_task(call(), name=f"single-flight:{key}")
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved, so a call nobody awaits any more logs no warning


# ============================================================================================
# Imperative shell: store-backed acquisition, release, teardown and the TTL reaper
# ============================================================================================
#
# Records: one ``EnvironmentInstance`` per provisioned environment, keyed by (workspace,
# name, context); a TestEnvironment without ``context`` gets the per-run context
# ``run:<run id>``. ``static`` environments are recorded too (no Argo CD calls), so every
# environment a run used shows in ``GET /api/v1/test-environments`` and the dashboard.
#
# Concurrency: acquisitions for one key share one call (``SingleFlight``) in a process, and
# the provisioning's final write counts the runs waiting for it (``_Waiter``) as its users;
# across replicas the store's unique live key lets one insert win, and the others wait for
# its ``provisioning`` record. Every write of a record happens under a per-id ``asyncio.Lock``
# and the store lease (``lock_environment``) with an owner token unique to the operation;
# provisioning holds that lease for ``provision_timeout`` + a margin, so a replica that died
# mid-provisioning is detected (lease expired) and another one takes over.

#: Context recorded for an environment that declares none: it belongs to that one run.
RUN_CONTEXT_PREFIX: Final = "run:"
#: Seconds a short lease (take, release, teardown) lasts; covers one Argo CD delete call.
LOCK_LEASE: Final = 60.0
#: Seconds between attempts to take a lease another operation holds.
LOCK_POLL: Final = 0.05
#: Seconds added to ``provision_timeout`` for the provisioning lease (create + sync calls).
PROVISION_MARGIN: Final = 120.0
#: Seconds between reads of a record another replica is provisioning.
PROVISION_POLL: Final = 1.0
#: How often one acquisition starts over after losing a race (record reaped, key taken).
ACQUIRE_ATTEMPTS: Final = 5
#: Prefix of the ``error`` a failed delete leaves on a record (cleared once it succeeds).
TEARDOWN_FAILED: Final = "teardown failed"
#: Renderings a manager keeps (declaration x trigger variables), oldest dropped first: the
#: runs of one trigger share their variables, so a burst renders each context once.
RENDER_CACHE_SIZE: Final = 1024

_log = get_logger("testmesh.environments")

EnvKey = tuple[str, str, str]  # (workspace, name, context)
ClientFactory = Callable[[Integration], ArgoCDClient]
SnapshotSource = Callable[[], Snapshot | None]


class EnvironmentUnavailable(TestmeshError):
    """A run's environment could not be acquired (not declared, a template that does not
    render, provisioning failed or timed out): the run fails, its status is ``error``."""


@dataclass(frozen=True, slots=True)
class Acquired:
    """An environment held by one run until ``release``.

    ``instance_id`` is the store record; ``routing`` (service -> URL) is what flows read as
    ``${service.<name>}``; ``context`` is the rendered context (None: a per-run environment,
    released to ``cooling`` instead of ``warm``).
    """

    instance_id: str | None
    routing: dict[str, str]
    name: str
    context: str | None = None


class _Retry(Exception):
    """The record changed under us (reaped, claimed by another replica): look again."""


@dataclass(frozen=True, slots=True)
class _Target:
    """What one acquisition asks for: the declaration, its rendering and the provider.
    ``key`` is the record key (workspace, name, context); ``take_key`` also tells apart
    renderings that cannot share a take (another provider or Argo CD app)."""

    declared: TestEnvironment
    rendered: Rendered
    context: str
    client: ArgoCDClient | None  # None: static, nothing to provision
    key: EnvKey = field(init=False)
    take_key: tuple[EnvKey, str, str | None] = field(init=False)

    def __post_init__(self) -> None:
        key = (self.declared.workspace, self.declared.name, self.context)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "take_key", (key, self.declared.provider,
                                              self.rendered.provider_app_name))


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A declaration rendered for one set of trigger variables, with its Argo CD client;
    valid while the snapshot still holds this very ``declared`` and ``integration``.
    ``target``: the acquisition target when the context is declared (the same every time)."""

    declared: TestEnvironment
    integration: Integration | None
    rendered: Rendered
    client: ArgoCDClient | None
    target: _Target | None = None


@dataclass(slots=True, eq=False)
class _Waiter:
    """One acquisition waiting for the provisioning of its key. The provisioning's final
    write counts the waiters present at that moment as users and hands each the record
    (``taken``); one that left meanwhile (``gone``: cancelled) is released again."""

    target: _Target
    run_id: str
    taken: EnvironmentInstance | None = None
    gone: bool = False


#: One acquisition in a shared ``take_or_list``: its target, run id and where its answer goes.
_Taking = tuple[_Target, str, "asyncio.Future[tuple[EnvironmentInstance | None, "
                "list[EnvironmentInstance]]]"]


class _KeyedLocks:
    """One ``asyncio.Lock`` per record id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


class _Lease:
    """A held store lease on one record; ``write`` stores a new version and (unless
    ``keep``) ends the lease in the same update."""

    def __init__(self, manager: EnvironmentManager, env_id: EnvironmentId, token: str,
                 until: datetime) -> None:
        self._manager = manager
        self.env_id = env_id
        self.token = token
        self.until = until
        self.held = True

    async def write(self, env: EnvironmentInstance, *, expect: EnvironmentState,
                    keep: bool = False) -> EnvironmentInstance:
        owner = (self.token, self.until) if keep else (None, None)
        new = replace(env, owner=owner[0], lock_until=owner[1])
        if not await self._manager.store.update_environment(new, expect_state=expect):
            raise _Retry
        self.held = keep
        return new


class EnvironmentManager:
    """Acquires environments for runs, releases them, tears them down, reaps expired ones.

    ``clock`` gives the records' wall time; ``sleep`` is the one way it waits (Argo CD
    polling, lease retries), so tests drive both. ``replica`` names this process in the
    owner of its leases. ``argocd_client_for`` builds the Argo CD client of an integration
    (default: ``ArgoCDClient`` on the shared ``http`` client); ``snapshot`` gives the active
    config, used to find the integration of an environment torn down outside a run.
    """

    def __init__(self, store: Store, *, http: httpx.AsyncClient, clock: Clock, sleep: Sleep,
                 replica: str, provision_timeout: float,
                 argocd_client_for: ClientFactory | None = None,
                 snapshot: SnapshotSource | None = None) -> None:
        self.store = store
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._replica = replica
        self._provision_timeout = provision_timeout
        self._client_for = argocd_client_for or self._default_client
        self._snapshot = snapshot
        self._flight: SingleFlight[EnvKey, EnvironmentInstance] = SingleFlight()
        self._locks = _KeyedLocks()
        self._waiting: dict[EnvKey, list[_Waiter]] = {}
        #: Acquisitions of this turn of the loop, by key, for one ``take_or_list`` each.
        self._takes: dict[tuple[EnvKey, str, str | None], list[_Taking]] = {}
        self._integrations: dict[tuple[str, str], Integration] = {}
        self._prepared: dict[tuple[str, str, frozenset[tuple[str, str]]], _Prepared] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Provisionings started by this manager (Argo CD or static), for tests and metrics.
        self.provisionings = 0

    def _default_client(self, integration: Integration) -> ArgoCDClient:
        token = integration.secret("token")
        if integration.url is None or token is None:
            raise EnvironmentUnavailable(
                f"Integration {integration.name!r} needs config.url and secrets.token to "
                f"provision environments")
        return ArgoCDClient(self._http, integration.url, token,
                            clock=lambda: self._clock.now().timestamp(), sleep=self._sleep)

    # -- acquisition ---------------------------------------------------------------------

    async def acquire(self, *, snapshot: Snapshot, workspace: str, name: str,
                      variables: Mapping[str, str], run_id: str) -> Acquired:
        """Hold the environment ``name`` for run ``run_id``: reuse a live one of the same
        context within its TTL, else provision it (once, however many runs ask at once).

        Raises ``EnvironmentUnavailable`` with a message saying what to fix.
        """
        target = self._target(snapshot, workspace, name, variables, run_id)
        known: list[EnvironmentInstance] | None = None
        if target.key not in self._flight:  # else join the call in flight for this key
            # The common case in one store call: a live record usable as it is; on a miss
            # the same call inserts the provisioning record of a new key (or reads the key's
            # records, which the provisioning starts from).
            taken, known = await self._take_or_list(target, run_id)
            if taken is not None:
                return self._acquired(target, taken, run_id)
        for _ in range(ACQUIRE_ATTEMPTS):
            records, known = known, None  # only the first attempt: a retry reads afresh
            waiter = _Waiter(target, run_id)
            try:
                ready = await self._wait_for(waiter, records)
            except _Retry:
                continue
            if waiter.taken is not None:  # counted by the provisioning's own write
                return self._acquired(target, waiter.taken, run_id)
            taken = await self._take(ready.id, target.rendered.routing)
            if taken is not None:
                return self._acquired(target, taken, run_id)
        raise EnvironmentUnavailable(
            f"TestEnvironment {name!r} (context {target.context!r}) kept changing while it was "
            f"acquired (torn down or claimed elsewhere {ACQUIRE_ATTEMPTS} times); run again")

    async def _take_or_list(self, target: _Target, run_id: str
                            ) -> tuple[EnvironmentInstance | None, list[EnvironmentInstance]]:
        """``store.take_or_list`` for this acquisition, shared with every acquisition of the
        same key that arrives in the same turn of the event loop: a burst of runs for one
        context costs one store call, which counts them all as users at once."""
        key = target.take_key
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[EnvironmentInstance | None,
                                     list[EnvironmentInstance]]] = loop.create_future()
        batch = self._takes.get(key)
        if batch is None:
            batch = self._takes[key] = []
            loop.call_soon(self._start_take, key)
        batch.append((target, run_id, answer))
        try:
            return await answer
        except asyncio.CancelledError:
            # Cancelled after the take counted this run but before it resumed: give it back.
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                taken = answer.result()[0]
                if taken is not None:
                    self._release_later(_Waiter(target, run_id), taken)
            raise

    def _start_take(self, key: tuple[EnvKey, str, str | None]) -> None:
        self._in_background(self._take_batch(self._takes.pop(key)),
                            f"environment-take:{key[0]}", "environment_take_crashed")

    async def _take_batch(self, batch: list[_Taking]) -> None:
        """One store call for ``batch`` (same key); a miss on a key with no record inserts
        its provisioning record, started here before anyone can ask for it again."""
        first = batch[0][0]
        ws, name, context = first.key
        now = self._clock.now()
        provision = self._new_instance(first, now)
        try:
            taken, known = await self.store.take_or_list(
                ws, name, context, batch[-1][0].rendered.routing, now,
                provider=first.declared.provider,
                provider_app_name=first.rendered.provider_app_name, users=len(batch),
                provision=provision)
        except Exception as exc:
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): so are the acquisitions waiting
            for _, _, answer in batch:
                answer.cancel()
            raise
        inserted = bool(known) and known[0].id == provision.id
        # An Argo CD provisioning starts before the answers are handed out: its first request
        # leaves now, and its final write (which counts the waiting runs as users) comes
        # only after Argo CD answered, long after those runs registered. A static one
        # writes at once, so its runs must register first.
        early = inserted and first.client is not None
        if early:
            self._start_provisioning(provision, first)
        for target, run_id, answer in batch:
            if taken is not None:
                mine = taken if taken.routing == target.rendered.routing \
                    else replace(taken, routing=dict(target.rendered.routing))
                if answer.done():  # cancelled meanwhile: it was counted, give it back
                    self._release_later(_Waiter(target, run_id), mine)
                else:
                    answer.set_result((mine, []))
            elif not answer.done():
                answer.set_result((None, known))
        if inserted and not early:
            self._start_provisioning(provision, first)

    def _start_provisioning(self, instance: EnvironmentInstance, target: _Target) -> None:
        """Provision a record this manager just inserted, as the key's call in flight. Should
        another call hold that place (a retry that read the key before the insert), it
        will wait for this record, so this provisioning runs anyway, on its own."""
        if target.key not in self._flight:
            self._flight.start(target.key, lambda: self._provision(instance, target))
            return
        # A failure is stored on the record (or lost to a newer write): the runs see it.
        self._in_background(self._provision(instance, target),
                            f"environment-provision:{instance.id}",
                            "environment_provision_crashed", instance=instance.id,
                            expected=(EnvironmentUnavailable, _Retry))

    def _in_background(self, work: Coroutine[Any, Any, Any], name: str, crashed: str, *,
                       expected: tuple[type[Exception], ...] = (), **fields: Any) -> None:
        """Run ``work`` as a task of this manager (``drain`` waits for it, ``aclose`` cancels
        it); an ``expected`` exception ends it quietly, any other is logged as ``crashed``."""
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except expected:
                pass
            except Exception:
                _log.exception(crashed, **fields)

        task = asyncio.get_running_loop().create_task(guarded(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _new_instance(self, target: _Target, now: datetime) -> EnvironmentInstance:
        """The ``provisioning`` record a new key starts with, leased to a fresh token."""
        until = now + timedelta(seconds=self._provision_timeout + PROVISION_MARGIN)
        declared, rendered = target.declared, target.rendered
        return EnvironmentInstance(
            id=EnvironmentId(new_id()), workspace=declared.workspace, name=declared.name,
            context=target.context, state="provisioning", provider=declared.provider,
            created_at=now, ttl_minutes=declared.ttl_minutes,
            provider_app_name=rendered.provider_app_name, namespace=rendered.namespace,
            routing=dict(rendered.routing), last_used_at=now,
            expires_at=expires_at(now, declared.ttl_minutes), owner=self._token(),
            lock_until=until)

    async def _wait_for(self, waiter: _Waiter,
                        records: list[EnvironmentInstance] | None) -> EnvironmentInstance:
        """Join (or start) the call in flight for the waiter's key, registered as waiting
        so that a provisioning can count it in its final write."""
        key = waiter.target.key
        waiting = self._waiting.setdefault(key, [])
        waiting.append(waiter)
        try:
            return await self._flight.run(key, lambda: self._obtain(waiter.target, records))
        except BaseException:
            waiter.gone = True
            if waiter.taken is not None:  # counted, then cancelled before it could resume
                self._release_later(waiter, waiter.taken)
            raise
        finally:
            waiting.remove(waiter)
            if not waiting and self._waiting.get(key) is waiting:
                del self._waiting[key]

    def _release_later(self, waiter: _Waiter, taken: EnvironmentInstance) -> None:
        """Give back the user a provisioning counted for a waiter that has gone."""
        _log.info("environment_waiter_gone", instance=taken.id, run_id=waiter.run_id)
        acquired = Acquired(taken.id, dict(taken.routing), taken.name,
                            waiter.target.rendered.context)
        self._in_background(self.release(acquired, failed=False),
                            f"environment-release:{taken.id}", "environment_release_crashed",
                            instance=taken.id)

    def _acquired(self, target: _Target, taken: EnvironmentInstance, run_id: str) -> Acquired:
        _log.info("environment_acquired", environment=taken.name, workspace=taken.workspace,
                  context=target.context, instance=taken.id, run_id=run_id, users=taken.users)
        return Acquired(taken.id, dict(taken.routing), taken.name, target.rendered.context)

    def _target(self, snapshot: Snapshot, workspace: str, name: str,
                variables: Mapping[str, str], run_id: str) -> _Target:
        declared = snapshot.environments.get((workspace, name))
        if declared is None:
            raise EnvironmentUnavailable(
                f"no TestEnvironment {name!r} in workspace {workspace!r} at revision "
                f"{snapshot.revision or '(unknown)'}; declare it or fix the `environment` "
                f"that names it")
        integration = snapshot.integrations.get(
            (declared.workspace, declared.integration or "")) \
            if declared.provider == "argocd" else None
        key = (workspace, name, frozenset(variables.items()))
        prepared = self._prepared.get(key)
        if prepared is None or prepared.declared is not declared \
                or prepared.integration is not integration:
            prepared = self._prepare(snapshot, declared, variables)
            self._prepared.pop(key, None)
            if len(self._prepared) >= RENDER_CACHE_SIZE:
                del self._prepared[next(iter(self._prepared))]
            self._prepared[key] = prepared
        elif integration is not None:
            self._integrations[(declared.workspace, declared.name)] = integration
        if prepared.target is not None:
            return prepared.target
        return _Target(declared, prepared.rendered, f"{RUN_CONTEXT_PREFIX}{run_id}",
                       prepared.client)

    def _prepare(self, snapshot: Snapshot, declared: TestEnvironment,
                 variables: Mapping[str, str]) -> _Prepared:
        """Render ``declared`` and build its provider client (what ``_target`` caches)."""
        name = declared.name
        rendered = render_environment(declared, variables)
        if isinstance(rendered, RenderError):
            raise EnvironmentUnavailable(rendered.message)
        client: ArgoCDClient | None = None
        integration: Integration | None = None
        if declared.provider == "argocd":
            integration = self._integration(snapshot, declared)
            client = self._client_for(integration)
            if not rendered.provider_app_name:
                raise EnvironmentUnavailable(
                    f"TestEnvironment {name!r} uses provider argocd but declares no "
                    f"provider_app_name; add spec.provider_app_name")
        elif declared.provider != "static":
            raise EnvironmentUnavailable(
                f"TestEnvironment {name!r}: provider {declared.provider!r} is not supported "
                f"(use argocd or static)")
        target = None if rendered.context is None \
            else _Target(declared, rendered, rendered.context, client)
        return _Prepared(declared, integration, rendered, client, target)

    def _integration(self, snapshot: Snapshot, declared: TestEnvironment) -> Integration:
        integration: Integration | None = snapshot.integrations.get(
            (declared.workspace, declared.integration or ""))
        if integration is None:
            raise EnvironmentUnavailable(
                f"TestEnvironment {declared.name!r} names Integration "
                f"{declared.integration!r}, which workspace {declared.workspace!r} does not "
                f"declare; fix spec.integration")
        self._integrations[(declared.workspace, declared.name)] = integration
        return integration

    async def _obtain(self, target: _Target,
                      known: list[EnvironmentInstance] | None = None) -> EnvironmentInstance:
        """A live record for ``target.key`` that a run may take: reused, provisioned by
        another replica, or provisioned here. Shared by concurrent callers of one key.
        ``known``: the key's records as just read (``take_or_list``), saving the first read.
        """
        ws, name, context = target.key
        for _ in range(ACQUIRE_ATTEMPTS):
            try:
                # One read: the live record (if any) and the predecessors still to tear down.
                records = known if known is not None \
                    else await self.store.environments_for_key(ws, name, context)
                known = None
                found = next((r for r in records if not r.teardown_requested
                              and r.state in REUSABLE_ENV_STATES), None)
                if found is not None:
                    return await self._use_existing(found, target)
                await self._clear_pending_teardowns(
                    [r for r in reversed(records) if r.teardown_requested])
                return await self._provision_new(target)
            except _Retry:
                continue
        raise _Retry

    async def _use_existing(self, found: EnvironmentInstance,
                            target: _Target) -> EnvironmentInstance:
        now = self._clock.now()
        if found.state == "provisioning":
            return await self._await_provisioning(found, target)
        if found.state == "running":
            return found  # shared with the runs that hold it now
        same = found.provider == target.declared.provider \
            and found.provider_app_name == target.rendered.provider_app_name
        if not same:  # the declaration changed: drop the old one, provision the new one
            await self.teardown(found.id)
            raise _Retry
        last_used = found.last_used_at or found.created_at
        if found.error is None and reusable(found.state, last_used, found.ttl_minutes, now):
            _log.debug("environment_reused", instance=found.id, context=found.context)
            return found
        return await self._reprovision(found, target)  # expired or failed: sync again

    async def _provision_new(self, target: _Target) -> EnvironmentInstance:
        instance = self._new_instance(target, self._clock.now())
        if not await self.store.insert_environment(instance):
            raise _Retry  # another replica inserted this key first: wait for its record
        return await self._provision(instance, target)

    async def _reprovision(self, found: EnvironmentInstance,
                           target: _Target) -> EnvironmentInstance:
        """Claim an idle (expired or failed) or abandoned record and provision it again."""
        now = self._clock.now()
        token = self._token()
        until = now + timedelta(seconds=self._provision_timeout + PROVISION_MARGIN)
        async with self._locks.hold(found.id):
            lease = self._provision_timeout + PROVISION_MARGIN
            if not await self.store.lock_environment(found.id, token, now, lease):
                raise _Retry
            fresh = await self.store.get_environment(found.id)
            if fresh is None or fresh.teardown_requested or fresh.users \
                    or fresh.state not in ("warm", "cooling", "provisioning"):
                await self.store.lock_environment(found.id, token, now, -1.0)
                raise _Retry
            rendered = target.rendered
            claimed = replace(fresh, state="provisioning", routing=dict(rendered.routing),
                              namespace=rendered.namespace, owner=token, lock_until=until)
            if not await self.store.update_environment(claimed, expect_state=fresh.state):
                raise _Retry
        return await self._provision(claimed, target)

    async def _provision(self, instance: EnvironmentInstance,
                         target: _Target) -> EnvironmentInstance:
        """Bring the Argo CD app to Healthy (nothing for static), then store ``warm`` (or
        ``cooling`` with the error, kept for its TTL so people can look at it)."""
        self.provisionings += 1
        log = _log.bind(environment=instance.name, context=instance.context,
                        instance=instance.id, app=instance.provider_app_name)
        log.info("environment_provisioning", provider=instance.provider)
        error: str | None = None
        if target.client is not None and instance.provider_app_name:
            try:
                await ensure_ready(target.client, app_name=instance.provider_app_name,
                                   namespace=instance.namespace,
                                   template=target.rendered.application, revision=None,
                                   timeout=self._provision_timeout)
            except ProviderError as exc:
                error = str(exc)
            except Exception as exc:  # never leave the record stuck in provisioning
                log.exception("environment_provision_crashed")
                error = f"{type(exc).__name__}: {exc}"
        now = self._clock.now()
        done = replace(instance, users=0, last_used_at=now,
                       expires_at=expires_at(now, instance.ttl_minutes), owner=None,
                       lock_until=None, state="cooling" if error else "warm",
                       error=f"provisioning failed: {error}" if error else None)
        # The runs waiting now take it in this same write (each one a user), not one by one.
        waiters = [] if error else [w for w in self._waiting.get(target.key, ()) if not w.gone]
        if waiters:
            done = replace(done, state="running", users=len(waiters),
                           routing=dict(waiters[-1].target.rendered.routing))
        stored = await self.store.update_environment(done, expect_state="provisioning")
        if error is not None:
            log.warning("environment_provision_failed", error=error)
            raise EnvironmentUnavailable(
                f"TestEnvironment {instance.name!r} (context {instance.context!r}) could not "
                f"be provisioned: {error}")
        if not stored:
            raise _Retry
        log.info("environment_provisioned", users=len(waiters))
        for waiter in waiters:
            if waiter.gone:  # cancelled while the write was under way: not a user after all
                self._release_later(waiter, done)
            else:
                waiter.taken = replace(done, routing=dict(waiter.target.rendered.routing))
        return done

    async def _await_provisioning(self, found: EnvironmentInstance,
                                  target: _Target) -> EnvironmentInstance:
        """Wait for another replica's provisioning; take over when its lease ran out."""
        current: EnvironmentInstance | None = found
        while current is not None:
            if current.state != "provisioning":
                if current.teardown_requested or current.state not in \
                        ("warm", "cooling", "running"):
                    raise _Retry
                if current.error is not None:
                    raise EnvironmentUnavailable(
                        f"TestEnvironment {current.name!r} (context {current.context!r}): "
                        f"{current.error}")
                return current
            if current.lock_until is None or current.lock_until < self._clock.now():
                _log.warning("environment_provisioning_abandoned", instance=current.id,
                             owner=current.owner)
                return await self._reprovision(current, target)
            await self._sleep(PROVISION_POLL)
            current = await self.store.get_environment(found.id)
        raise _Retry

    async def _clear_pending_teardowns(self, pending: list[EnvironmentInstance]) -> None:
        """Before a new record for a key, finish tearing down its predecessors (``pending``,
        oldest first): they name the same Argo CD app, whose late delete would take the new
        environment down."""
        for old in pending:
            if old.state == "running" or old.users:
                raise EnvironmentUnavailable(
                    f"TestEnvironment {old.name!r} (context {old.context!r}) is to be torn "
                    f"down (DELETE requested) once the run holding it ends; run again then")
            result = await self.teardown(old.id)
            if result is not None and result.state != "destroyed":
                raise EnvironmentUnavailable(
                    f"the previous TestEnvironment {old.name!r} (context {old.context!r}) is "
                    f"not torn down yet: {result.error}")

    async def _take(self, env_id: EnvironmentId,
                    routing: Mapping[str, str]) -> EnvironmentInstance | None:
        """Count one more run on a live record (state ``running``); None when it went away.

        One store call (``take_environment``) when nothing holds the record; otherwise the
        leased read-modify-write below, which waits for the lease and says why not."""
        taken = await self.store.take_environment(env_id, routing, self._clock.now())
        if taken is not None:
            return taken
        async with self._leased(env_id) as lease:
            fresh = await self.store.get_environment(env_id)
            if fresh is None or fresh.teardown_requested or fresh.error is not None \
                    or fresh.state not in ("warm", "cooling", "running"):
                return None
            now = self._clock.now()
            taken = replace(fresh, state="running", users=fresh.users + 1, last_used_at=now,
                            expires_at=expires_at(now, fresh.ttl_minutes), routing=dict(routing))
            try:
                return await lease.write(taken, expect=fresh.state)
            except _Retry:
                return None

    # -- release and teardown ------------------------------------------------------------

    async def release(self, acquired: Acquired, *, failed: bool) -> None:
        """The run is over: one user less; the last one leaves it ``warm`` (a context) or
        ``cooling`` (a per-run environment), its TTL counted from now. ``failed`` is only
        logged: a failing test says nothing about the environment. A teardown requested
        while the run held it happens now."""
        if acquired.instance_id is None:
            return
        env_id = EnvironmentId(acquired.instance_id)
        async with self._leased(env_id) as lease:
            fresh = await self.store.get_environment(env_id)
            if fresh is None or fresh.state == "destroyed":
                return
            now = self._clock.now()
            users = max(0, fresh.users - 1)
            state: EnvironmentState = fresh.state
            if users == 0 and state == "running":
                state = "warm" if acquired.context is not None else "cooling"
            released = await lease.write(
                replace(fresh, users=users, state=state, last_used_at=now,
                        expires_at=expires_at(now, fresh.ttl_minutes)), expect=fresh.state)
        _log.info("environment_released", instance=env_id, context=released.context,
                  state=released.state, users=users, run_failed=failed)
        if users == 0 and released.teardown_requested:
            await self.teardown(env_id)

    async def release_recovered(self, instance_id: str, *, run_id: str) -> None:
        """``release`` for a run that recovery finished or requeued: its executor died (or
        lost its claim) while it held ``instance_id``. Recovery reports each such run once,
        in the transaction that recovers it, so the user is given back once."""
        record = await self.store.get_environment(EnvironmentId(instance_id))
        if record is None or record.state == "destroyed":
            return
        # The run's own context (``_target``) marks a per-run environment, released to
        # ``cooling`` as ``release`` does; a declared context may start with "run:" too.
        own = record.context == f"{RUN_CONTEXT_PREFIX}{run_id}"
        context = None if own else record.context
        _log.info("environment_released_for_recovered_run", instance=instance_id,
                  run_id=run_id, users=record.users)
        await self.release(Acquired(record.id, dict(record.routing), record.name, context),
                           failed=True)

    async def teardown(self, instance_id: str, *, wait: float | None = None,
                       if_expired_at: datetime | None = None) -> EnvironmentInstance | None:
        """Delete the environment's Argo CD app (cascade) and mark the record ``destroyed``.

        A held (``running``) environment is only marked; its last ``release`` tears it
        down. A failed delete leaves ``teardown_requested`` and the error on the record, so
        the reaper tries again. Returns the record as stored (None when unknown).
        ``if_expired_at`` (the reaper's) skips a record a run took since it was listed.
        """
        env_id = EnvironmentId(instance_id)
        async with self._leased(env_id, wait=wait) as lease:
            fresh = await self.store.get_environment(env_id)
            if fresh is None or fresh.state == "destroyed":
                return fresh
            if if_expired_at is not None and not fresh.teardown_requested and (
                    fresh.users or fresh.state not in REUSABLE_STATES
                    or fresh.expires_at is None or fresh.expires_at > if_expired_at):
                return fresh
            if fresh.state == "running" or fresh.users:
                if fresh.teardown_requested:
                    return fresh
                _log.info("environment_teardown_deferred", instance=env_id, users=fresh.users)
                return await lease.write(replace(fresh, teardown_requested=True),
                                         expect=fresh.state)
            marked = await lease.write(replace(fresh, teardown_requested=True),
                                       expect=fresh.state, keep=True)
            error = await self._delete(marked)
            if error is not None:
                _log.warning("environment_teardown_failed", instance=env_id,
                             app=marked.provider_app_name, error=error)
                return await lease.write(replace(marked, error=f"{TEARDOWN_FAILED}: {error}"),
                                         expect=marked.state)
            kept = None if (marked.error or "").startswith(TEARDOWN_FAILED) else marked.error
            destroyed = await lease.write(
                replace(marked, state="destroyed", users=0, error=kept), expect=marked.state)
        _log.info("environment_destroyed", instance=env_id, environment=destroyed.name,
                  context=destroyed.context, app=destroyed.provider_app_name)
        return destroyed

    async def _delete(self, env: EnvironmentInstance) -> str | None:
        """Delete the provider's side; the error text, or None when nothing is left."""
        if env.provider != "argocd" or not env.provider_app_name:
            return None
        integration = self._integrations.get((env.workspace, env.name))
        snapshot = self._snapshot() if self._snapshot is not None else None
        declared = snapshot.environments.get((env.workspace, env.name)) if snapshot else None
        if snapshot is not None and declared is not None and declared.provider == "argocd":
            integration = snapshot.integrations.get(
                (env.workspace, declared.integration or "")) or integration
        if integration is None:
            return (f"no Integration known for TestEnvironment {env.name!r} (no longer "
                    f"declared?); delete Argo CD application {env.provider_app_name!r} "
                    f"yourself")
        try:
            await self._client_for(integration).delete_app(env.provider_app_name)
        except (ProviderError, EnvironmentUnavailable) as exc:
            return str(exc)
        return None

    async def request_teardown(self, instance_id: str) -> EnvironmentInstance | None:
        """Start ``teardown`` in the background (``DELETE`` answers at once); the record as
        it is now, or None when unknown."""
        found = await self.store.get_environment(instance_id)
        if found is None or found.state == "destroyed":
            return found
        self._in_background(self.teardown(instance_id), f"environment-teardown:{instance_id}",
                            "environment_teardown_crashed", instance=instance_id)
        return found

    async def drain(self) -> None:
        """Wait for the teardowns ``request_teardown`` started."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel background teardowns (records keep ``teardown_requested``: the reaper of
        the next start finishes them)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the reaper ----------------------------------------------------------------------

    async def reap_once(self, now: datetime) -> int:
        """One reaper pass: tear down expired idle environments, retry failed teardowns,
        recover records whose provisioning replica went away. Returns how many it destroyed.
        """
        candidates: dict[str, datetime | None] = {}
        for env in await self.store.expired_environments(now):
            candidates[env.id] = now
        for env in await self.store.environments_to_teardown():
            if env.state != "running" and not env.users:
                candidates[env.id] = None
        for env in await self.store.list_environments(state="provisioning", limit=500):
            if env.lock_until is None or env.lock_until < now:
                candidates[env.id] = None
        destroyed = 0
        for env_id, expired in candidates.items():
            try:
                result = await self.teardown(env_id, wait=LOCK_LEASE, if_expired_at=expired)
            except EnvironmentUnavailable as exc:  # busy elsewhere: next pass
                _log.info("environment_reap_skipped", instance=env_id, reason=str(exc))
                continue
            if result is not None and result.state == "destroyed":
                destroyed += 1
        if destroyed:
            _log.info("environments_reaped", destroyed=destroyed, candidates=len(candidates))
        return destroyed

    async def run_reaper(self, interval: float, *, sleep: Sleep | None = None) -> None:
        """``reap_once`` every ``interval`` seconds, forever (run it under a guard).
        ``sleep`` paces the passes (default: the manager's own sleep)."""
        pause = sleep or self._sleep
        while True:
            try:
                await self.reap_once(self._clock.now())
            except TestmeshError as exc:  # store trouble: try again next pass
                _log.warning("environment_reaper_failed", error=str(exc))
            await pause(interval)

    # -- leases --------------------------------------------------------------------------

    def _token(self) -> str:
        return f"{self._replica}/{new_id()[:8]}"

    @contextlib.asynccontextmanager
    async def _leased(self, env_id: EnvironmentId, *, wait: float | None = None
                      ) -> AsyncIterator[_Lease]:
        """Hold record ``env_id``: the in-process lock, then the store lease (retried until
        ``wait`` seconds, by default as long as a provisioning lease may last)."""
        limit = wait if wait is not None else self._provision_timeout + PROVISION_MARGIN
        async with self._locks.hold(env_id):
            token = self._token()
            start = self._clock.now()
            delay = LOCK_POLL
            while True:
                now = self._clock.now()
                if await self.store.lock_environment(env_id, token, now, LOCK_LEASE):
                    break
                if (now - start).total_seconds() >= limit:
                    raise EnvironmentUnavailable(
                        f"environment {env_id} is busy (another operation holds its lease); "
                        f"try again later")
                await self._sleep(delay)
                delay = min(delay * 2, 1.0)
            lease = _Lease(self, env_id, token, now + timedelta(seconds=LOCK_LEASE))
            try:
                yield lease
            finally:
                if lease.held:
                    await self.store.lock_environment(env_id, token, self._clock.now(), -1.0)
