"""The long-lived services of one daemon, bundled and passed explicitly (no globals).

``Services`` is built once (``daemon.build_services`` or a test) and handed to
``web.app.create_app``, whose cleanup contexts open and close what needs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.reload import Reloader
from testmesh_reconciler.state import StateHolder
from testmesh_reconciler.store.clock import Clock, SystemClock

#: Adds fields to ``GET /api/v1/status`` (e.g. ``outbox``, ``replica``); merged in order.
StatusProvider = Callable[[], Awaitable[Mapping[str, Any]]]


#: Outbound calls of the daemon (Gitea statuses, Argo CD): 10 s to connect, 30 s in all.
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def new_http_client() -> httpx.AsyncClient:
    """The daemon's outbound HTTP client (``Services.http``): redirects are not followed, so a
    token never goes to a host the integration did not name."""
    return httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False)


@runtime_checkable
class Pingable(Protocol):
    """What the web layer needs of the runtime store: open, close, and a readiness ping."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the handlers and loops use; fields are shared, never replaced."""

    state: StateHolder
    metrics: Metrics
    clock: Clock = field(default_factory=SystemClock)
    #: The config reloader; ``None`` in handler tests that set the state directly.
    reloader: Reloader | None = None
    #: The runtime store (``store.base.Store``); opened/closed by the app. ``None`` = none.
    store: Pingable | None = None
    #: The one shared outbound HTTP client; closed by the app's cleanup context.
    http: httpx.AsyncClient | None = None
    #: Extra ``/api/v1/status`` fields (outbox, replicas...), merged in this order.
    status_providers: tuple[StatusProvider, ...] = ()
    #: The environment manager (``dispatcher.EnvironmentAcquirer``: ``acquire``/``release``);
    #: ``None`` = static environments only (routing rendered, nothing provisioned).
    environments: Any = None


def make_services(*, clock: Clock | None = None, reloader: Reloader | None = None,
                  state: StateHolder | None = None, metrics: Metrics | None = None,
                  store: Pingable | None = None, http: httpx.AsyncClient | None = None,
                  status_providers: tuple[StatusProvider, ...] = ()) -> Services:
    """Services with fresh defaults for whatever is not given."""
    return Services(state=state or StateHolder(), metrics=metrics or Metrics(),
                    clock=clock or SystemClock(), reloader=reloader, store=store, http=http,
                    status_providers=status_providers)


__all__ = ["Pingable", "Services", "StatusProvider", "make_services"]
