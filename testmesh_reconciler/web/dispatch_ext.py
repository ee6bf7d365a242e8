"""Wires webhooks-to-runs into the app: webhook and run routes, the dispatcher and its loops.

``extension(app)`` is what the daemon passes to ``create_app(..., extensions=[...])``;
``install`` takes the seams (environments, reporting, replica) for tests. The dispatcher
starts after the store opens and drains (grace period) before the store closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import cast

from aiohttp import web

from testmesh_reconciler.dispatcher import (
    POLL_INTERVAL,
    Dispatcher,
    EnvironmentAcquirer,
    Reporting,
)
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.tasks import cancel_all, start_guarded
from testmesh_reconciler.web import SERVICES, SETTINGS, TASKS, runs_api, webhooks
from testmesh_reconciler.web.webhooks import DISPATCHER

log = get_logger("testmesh.web.dispatch")

CLAIM_LOOP = "dispatcher-claim"
HEARTBEAT_LOOP = "dispatcher-heartbeat"


def install(app: web.Application, *, environments: EnvironmentAcquirer | None = None,
            reporting: Reporting | None = None, replica: str | None = None,
            poll_interval: float = POLL_INTERVAL,
            on_outbox: Callable[[], None] | None = None) -> None:
    """Register the routes now; create and run the dispatcher while the app runs."""
    webhooks.add_routes(app)
    runs_api.add_routes(app)
    settings, services = app[SETTINGS], app[SERVICES]
    store = services.store
    if not isinstance(store, Store):
        log.warning("dispatcher_disabled", reason="no runtime store")
        return
    envs = environments or cast(EnvironmentAcquirer | None, services.environments)
    dispatcher = Dispatcher(settings=settings, store=store, state=services.state,
                            clock=services.clock, http=services.http, environments=envs,
                            reporting=reporting, metrics=services.metrics,
                            replica=replica, poll_interval=poll_interval,
                            on_outbox=on_outbox)
    app[DISPATCHER] = dispatcher

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = {CLAIM_LOOP: start_guarded(CLAIM_LOOP, dispatcher.claim_loop),
                 HEARTBEAT_LOOP: start_guarded(HEARTBEAT_LOOP, dispatcher.heartbeat_loop)}
        app[TASKS].update(tasks)
        log.info("dispatcher_started", replica=dispatcher.replica,
                 max_concurrent_runs=settings.max_concurrent_runs)
        yield
        await dispatcher.shutdown()
        await cancel_all(tasks.values())
        log.info("dispatcher_stopped")

    app.cleanup_ctx.append(ctx)


def extension(app: web.Application) -> None:
    """The daemon's wiring: environments from ``app[ENVIRONMENTS]`` when the environments
    extension ran first, and the status sender woken whenever statuses are queued."""
    from testmesh_reconciler.web.environments_api import ENVIRONMENTS
    from testmesh_reconciler.web.outbox_ext import OUTBOX

    sender = app.get(OUTBOX)
    install(app, environments=app.get(ENVIRONMENTS),
            on_outbox=sender.wake_up if sender is not None else None)


__all__ = ["CLAIM_LOOP", "HEARTBEAT_LOOP", "extension", "install"]
