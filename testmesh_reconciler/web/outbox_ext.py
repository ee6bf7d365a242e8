"""Wires the commit-status outbox into the app: the sender loop, its shutdown flush, the
``outbox`` block of ``/api/v1/status`` and the status metrics, in one ``extension(app)``.

Pass it first in ``create_app(..., extensions=[outbox_ext.extension, ...])`` so that, on
shutdown, the extensions registered after it (the dispatcher) finish before the flush.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from aiohttp import web

from testmesh_reconciler.log import get_logger
from testmesh_reconciler.outbox import (
    FLUSH_DEADLINE,
    LOOP_NAME,
    FlushResult,
    OutboxMetrics,
    Sleep,
    client_factory,
    flush,
    outbox_loop,
    status_provider,
)
from testmesh_reconciler.services import Services, new_http_client
from testmesh_reconciler.statuses import ClientFor
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.web import SERVICES, SETTINGS
from testmesh_reconciler.web.app import add_loop, add_status_provider

log = get_logger("testmesh.web.outbox")


@dataclass(slots=True)
class OutboxSender:
    """The app's outbox sender: ``run`` is the loop, ``wake_up`` tells it an entry was
    queued (the dispatcher calls it after ``add_outbox`` / ``finish_run``), ``flush_now``
    is the shutdown flush. The HTTP client is the shared one, or its own when none is."""

    store: Store
    services: Services
    give_up_after: float
    metrics: OutboxMetrics
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sleep: Sleep = asyncio.sleep
    flush_deadline: float = FLUSH_DEADLINE
    rng: random.Random = field(default_factory=random.Random)
    own_http: httpx.AsyncClient | None = None

    def wake_up(self) -> None:
        """Look at the outbox now instead of at the next poll."""
        self.wake.set()

    def _http(self) -> httpx.AsyncClient:
        if self.services.http is not None:
            return self.services.http
        if self.own_http is None:
            self.own_http = new_http_client()
        return self.own_http

    def client_for(self) -> ClientFor:
        state = self.services.state
        return client_factory(lambda: state.snapshot, self._http())

    async def run(self) -> None:
        state = self.services.state
        await outbox_loop(
            self.store, client_for=self.client_for(), clock=self.services.clock,
            sleep=self.sleep, give_up_after=self.give_up_after, rng=self.rng,
            wake=self.wake, metrics=self.metrics, ready=lambda: state.snapshot is not None)

    async def flush_now(self) -> FlushResult | None:
        """The shutdown flush; skipped (None) while no config snapshot was ever loaded."""
        if self.services.state.snapshot is None:
            return None
        return await flush(self.store, client_for=self.client_for(), clock=self.services.clock,
                           deadline=self.flush_deadline, give_up_after=self.give_up_after,
                           rng=self.rng, metrics=self.metrics)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Nothing at start-up; at shutdown (after the loop was cancelled) flush, then close
        the HTTP client this sender made, if any."""
        yield
        try:
            await self.flush_now()
        except Exception:
            log.exception("outbox_flush_failed")
        finally:
            if self.own_http is not None:
                await self.own_http.aclose()
                self.own_http = None


OUTBOX: web.AppKey[OutboxSender] = web.AppKey("outbox", OutboxSender)


def extension(app: web.Application) -> None:
    """Register the outbox loop (guarded, named ``status-outbox``), its shutdown flush, the
    ``outbox`` status block and the metrics; ``app[OUTBOX]`` is the sender. Without a
    runtime store there is no outbox: a warning, nothing registered."""
    services, settings = app[SERVICES], app[SETTINGS]
    store = services.store
    if not isinstance(store, Store):
        log.warning("outbox_disabled", reason="no runtime store")
        return
    sender = OutboxSender(store=store, services=services,
                          give_up_after=settings.status_give_up_after,
                          metrics=OutboxMetrics(services.metrics.registry))
    app[OUTBOX] = sender
    app.cleanup_ctx.append(sender.cleanup_ctx)  # unwound after the loop's: flush after it
    add_loop(app, LOOP_NAME, sender.run)
    add_status_provider(app, status_provider(store))


__all__ = ["OUTBOX", "OutboxSender", "extension"]
