"""Test environments: rendering a declared TestEnvironment for one run, TTL and reuse rules,
and single-flight provisioning. The top section is pure (no IO, time passed in); the
store-backed acquisition, release and reaping build on it below.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from testmesh_reconciler.config.frozen import thaw
from testmesh_reconciler.config.model import ALL_TRIGGER_VARIABLES, TestEnvironment
from testmesh_reconciler.runner.expressions import MISSING
from testmesh_reconciler.runner.interpolate import Builtins, Scope, interpolate

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
        task = self._tasks.get(key)
        if task is None or task.done():  # done: its callback has not dropped it yet
            async def call() -> V:
                return await factory()

            task = asyncio.get_running_loop().create_task(call(), name=f"single-flight:{key}")
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved, so a call nobody awaits any more logs no warning
