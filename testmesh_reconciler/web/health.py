"""Probes and introspection: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/v1/status``.

Liveness only says the process answers; readiness needs a valid snapshot and a store
that pings. The status document (DESIGN.md section 4) is built by the pure
``status_document`` and merged with the dicts of every registered status provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from testmesh_reconciler.config.model import KINDS, Snapshot
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.services import Services
from testmesh_reconciler.state import StateHolder
from testmesh_reconciler.web import SERVICES, STATUS_PROVIDERS

log = get_logger("testmesh.web.health")

STORE_PING_TIMEOUT = 2.0  # seconds; a store that does not answer by then is not ready


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(services: Services) -> tuple[bool, str]:
    """(ready, reason): a valid snapshot is loaded and the store (if any) answers."""
    state = services.state
    if state.snapshot is None:
        last = state.last_attempt
        if last is None:
            return False, "no config loaded yet: the first reload has not finished"
        if last.error:
            return False, f"no valid config loaded yet: {last.error}"
        return False, (f"no valid config loaded yet: revision {last.revision} has "
                       f"{len(last.problems)} problem(s), see /api/v1/status")
    if services.store is not None:
        try:
            ok = await asyncio.wait_for(services.store.ping(), STORE_PING_TIMEOUT)
        except Exception as exc:  # any failure of the probe means "not ready"
            return False, f"the store is unreachable: {type(exc).__name__}: {exc}"
        if not ok:
            return False, "the store is unreachable (ping failed)"
    return True, "ok"


async def readyz(request: web.Request) -> web.Response:
    ready, reason = await readiness(request.app[SERVICES])
    if not ready:
        return web.json_response({"ready": False, "reason": reason}, status=503)
    snap = request.app[SERVICES].state.snapshot
    return web.json_response({"ready": True, "revision": snap.revision if snap else None})


async def metrics(request: web.Request) -> web.Response:
    m = request.app[SERVICES].metrics
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


def counts(snapshot: Snapshot | None) -> dict[str, int]:
    return snapshot.counts() if snapshot is not None else dict.fromkeys(KINDS, 0)


def status_document(state: StateHolder) -> dict[str, Any]:
    """The core Status resource (active revision, last reload and success, problems)."""
    snap = state.snapshot
    last = state.last_attempt
    good = state.last_success
    return {
        "revision": snap.revision if snap is not None else None,
        "last_reload": last.as_json() if last is not None else None,
        "last_success": ({"at": good.at.isoformat(), "revision": good.revision}
                         if good is not None else None),
        "problems": [p.as_json() for p in state.problems],
        "warnings": [p.as_json() for p in snap.warnings] if snap is not None else [],
        "counts": counts(snap),
    }


async def status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    doc = status_document(services.state)
    providers = [*services.status_providers, *request.app[STATUS_PROVIDERS]]
    for provider in providers:
        try:
            extra: Mapping[str, Any] = await provider()
        except Exception:  # one broken provider must not hide the config status
            log.exception("status_provider_failed", provider=getattr(provider, "__name__", "?"))
            continue
        doc.update(extra)
    return web.json_response(doc)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", status)


__all__ = ["add_routes", "readiness", "status_document"]
