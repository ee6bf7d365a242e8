"""Wires environments into the daemon: ``build_manager(settings, services)`` and the app
``extension`` that stores the manager as ``app[ENVIRONMENTS]`` (for the dispatcher), adds
the ``/api/v1/test-environments`` routes and runs the TTL reaper as a guarded loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.errors import UsageError
from testmesh_reconciler.providers.argocd import Sleep
from testmesh_reconciler.replica import replica_name
from testmesh_reconciler.services import Services
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.web import SERVICES, SETTINGS, environments_api
from testmesh_reconciler.web.app import add_loop
from testmesh_reconciler.web.environments_api import ENVIRONMENTS

REAPER_LOOP = "environment-reaper"


def build_manager(settings: Settings, services: Services, *, sleep: Sleep = asyncio.sleep,
                  replica: str | None = None) -> EnvironmentManager:
    """The daemon's ``EnvironmentManager`` on its store, HTTP client, clock and snapshot."""
    store, http = services.store, services.http
    if not isinstance(store, Store) or http is None:
        raise UsageError("environments need the runtime store and the shared HTTP client")
    state = services.state
    return EnvironmentManager(store, http=http, clock=services.clock, sleep=sleep,
                              replica=replica or replica_name(),
                              provision_timeout=settings.provision_timeout,
                              snapshot=lambda: state.snapshot)


def extension(app: web.Application) -> None:
    """Routes, the reaper loop (every ``settings.reap_interval`` s), ``app[ENVIRONMENTS]``
    (built with ``build_manager`` unless a test put one there first)."""
    manager = app.get(ENVIRONMENTS)
    if manager is None:
        manager = build_manager(app[SETTINGS], app[SERVICES])
        app[ENVIRONMENTS] = manager
    environments_api.add_routes(app)
    interval = app[SETTINGS].reap_interval
    # Passes are paced in real time; expiry is judged on the manager's (injected) clock.
    add_loop(app, REAPER_LOOP, lambda: manager.run_reaper(interval, sleep=asyncio.sleep))

    async def close(app: web.Application) -> AsyncIterator[None]:
        yield
        await manager.aclose()

    app.cleanup_ctx.append(close)


__all__ = ["ENVIRONMENTS", "REAPER_LOOP", "build_manager", "extension", "replica_name"]
