"""The aiohttp app factory: routes, typed app keys, middleware, and resource lifecycles.

``create_app(settings, services)`` is what the daemon serves and what tests build. One
cleanup-context entry per resource or loop (store, HTTP client, reloader and its trigger
loops); ``add_loop`` / ``add_status_provider`` / ``app.router`` extend it before start-up.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from testmesh_reconciler.errors import WebhookRejected
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.reload import poll_loop
from testmesh_reconciler.services import Services, StatusProvider
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.tasks import CoroFactory, cancel_all, start_guarded
from testmesh_reconciler.web import (
    CONFIG_BROADCASTS,
    SERVICES,
    SETTINGS,
    STATUS_PROVIDERS,
    TASKS,
    config_api,
    config_webhook,
    error_json,
    health,
)

log = get_logger("testmesh.web")

#: Paths of inbound webhooks: these never answer 500 (DESIGN.md section 4).
_WEBHOOK_PATH = re.compile(
    r"^/api/v1/(?:integrations/)?webhooks/(?P<source>[^/]+)"
    r"|^/api/v1/workspaces/[^/]+/webhooks/(?P<ws_source>[^/]+)")
CONFIG_WEBHOOK_PATH = "/api/v1/webhooks/config"

Extension = Callable[[web.Application], None]


def webhook_source(path: str) -> str | None:
    """``gitea`` / ``argocd`` / ``config`` for a webhook path, else ``None``."""
    m = _WEBHOOK_PATH.match(path)
    if m is None:
        return None
    return m.group("source") or m.group("ws_source")


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """JSON errors everywhere; an unexpected exception is a logged 500, except on webhook
    routes, which answer 400 instead (a sender must never see a 5xx but 503)."""
    source = webhook_source(request.path)
    try:
        response = await handler(request)
    except WebhookRejected as exc:
        response = error_json(exc.status, exc.reason, headers=exc.headers or None)
    except web.HTTPException as exc:
        status = exc.status
        if source is not None and status >= 500 and status != 503:
            status = 400
        if status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() in ("allow", "retry-after", "location")}
        response = error_json(status, exc.reason if status == exc.status else "bad request",
                              headers=headers or None)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http_handler_crashed", method=request.method, path=request.path,
                      webhook=source)
        if source is not None:
            response = error_json(400, "the delivery could not be processed; it was logged")
        else:
            response = error_json(500, "internal error; see the daemon's log")
    if source is not None:
        request.app[SERVICES].metrics.webhook(source, response.status)
    return response


def add_loop(app: web.Application, name: str, factory: CoroFactory, *,
             restart: bool = True) -> None:
    """Run ``factory()`` as a guarded task named ``name`` while the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = start_guarded(name, factory, restart=restart)
        app[TASKS][name] = task
        yield
        await cancel_all([task])

    app.cleanup_ctx.append(ctx)


def add_status_provider(app: web.Application, provider: StatusProvider) -> None:
    """Merge ``await provider()`` into every ``GET /api/v1/status`` answer."""
    app[STATUS_PROVIDERS].append(provider)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[SERVICES].store
    if store is not None:
        await store.open()
        log.info("store_opened", store=type(store).__name__)
    yield
    if store is not None:
        await store.close()
        log.info("store_closed")


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    http = app[SERVICES].http
    if http is not None:
        await http.aclose()


async def _reloader_ctx(app: web.Application) -> AsyncIterator[None]:
    services, settings = app[SERVICES], app[SETTINGS]
    reloader = services.reloader
    if reloader is None:
        yield
        return
    tasks = {"config-reload": start_guarded("config-reload", reloader.run)}
    reloader.trigger("startup")
    tasks["config-poll"] = start_guarded(
        "config-poll", lambda: poll_loop(reloader, services.state, settings.poll_interval))
    directory = getattr(reloader.source, "directory", None)
    if reloader.source.kind == "directory" and directory is not None:
        from testmesh_reconciler.sources.watch import watch_directory

        tasks["config-watch"] = start_guarded(
            "config-watch", lambda: watch_directory(directory, lambda: reloader.trigger("watch")))
    app[TASKS].update(tasks)
    yield
    await cancel_all(tasks.values())
    await reloader.aclose()


def create_app(settings: Settings, services: Services, *,
               extensions: Sequence[Extension] = ()) -> web.Application:
    """The daemon's app. ``extensions`` get the app to add routes, loops, providers."""
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[SERVICES] = services
    app[STATUS_PROVIDERS] = []
    app[TASKS] = {}
    app[CONFIG_BROADCASTS] = []
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_reloader_ctx)

    health.add_routes(app)
    config_api.add_routes(app, settings.config_repo)
    reloader = services.reloader

    def trigger(reason: str) -> int:
        return reloader.trigger(reason) if reloader is not None else 0

    app.router.add_post(CONFIG_WEBHOOK_PATH, config_webhook.make_handler(
        secret=settings.config_webhook_secret, branch=settings.branch,
        max_body_bytes=settings.max_body_bytes, trigger=trigger,
        broadcast=lambda: config_webhook.run_hooks(app[CONFIG_BROADCASTS])))
    for extend in extensions:
        extend(app)
    return app


__all__ = ["CONFIG_WEBHOOK_PATH", "SERVICES", "SETTINGS", "STATUS_PROVIDERS", "TASKS",
           "Extension", "add_loop", "add_status_provider", "create_app", "error_middleware",
           "webhook_source"]
