"""The aiohttp app factory: routes, typed app keys, middleware, and resource lifecycles.

``create_app(settings, services)`` is what the daemon serves and what tests build. One
cleanup-context entry per resource or loop (store, HTTP client, reloader and its trigger
loops); ``add_loop`` / ``add_status_provider`` / ``app.router`` extend it before start-up.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict

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
    read_capped_body,
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


#: Content codings a request body may use (aiohttp's own decoding is off: it answers an
#: unknown one, e.g. ``br`` without Brotli, outside the app, in plain text).
_DECODERS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                    "deflate": zlib.MAX_WBITS}


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding`` (gzip / deflate, zlib-wrapped or raw), at most
    ``limit`` bytes (413 beyond); ``WebhookRejected(400)`` when it does not decode."""
    wbits = _DECODERS[coding]
    for attempt in (wbits, -zlib.MAX_WBITS) if coding == "deflate" else (wbits,):
        inflater = zlib.decompressobj(attempt)
        try:
            out = inflater.decompress(data, limit + 1)
            if len(out) <= limit:
                out += inflater.flush()
        except zlib.error as exc:
            error = exc
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            raise WebhookRejected(413, f"body larger than {limit} bytes once decoded "
                                  "(--max-body-bytes)")
        if not inflater.eof:
            error = zlib.error("the compressed data ends early")
            continue
        return out
    raise WebhookRejected(400, f"could not decode the request body ({coding}): {error}")


async def decoded_request(request: web.Request, limit: int, *, webhook: bool) -> web.Request:
    """``request`` itself, or (with a ``Content-Encoding``) a copy whose body is decoded.

    gzip and deflate are decoded here, capped at ``limit`` bytes; any other coding is
    refused with a reason: 400 on webhook routes (DESIGN.md section 4), 415 elsewhere."""
    header = request.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return request
    unknown = [c for c in codings if c not in _DECODERS]
    if unknown:
        raise WebhookRejected(400 if webhook else 415, (
            f"unsupported Content-Encoding {unknown[0]!r}: send the body uncompressed, "
            "gzip or deflate"))
    body = await read_capped_body(request, limit)
    for coding in reversed(codings):  # the last coding applied is undone first
        body = _inflate(body, coding, limit)
    headers = CIMultiDict(request.headers)
    del headers["Content-Encoding"]
    headers["Content-Length"] = str(len(body))
    copy = request.clone(headers=headers)
    stream = StreamReader(request.protocol, limit=2 ** 16, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    copy._payload = stream  # aiohttp has no public way to hand a handler another body
    return copy


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """JSON errors everywhere; an unexpected exception is a logged 500, except on webhook
    routes, which answer 400 instead (a sender must never see a 5xx but 503). Compressed
    bodies are decoded here (``decoded_request``)."""
    source = webhook_source(request.path)
    try:
        if "Content-Encoding" in request.headers:
            request = await decoded_request(request, request.app[SETTINGS].max_body_bytes,
                                            webhook=source is not None)
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
                          client_max_size=settings.max_body_bytes,
                          # bodies are decoded by ``error_middleware``, with answers we own
                          handler_args={"auto_decompress": False})
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
           "Extension", "add_loop", "add_status_provider", "create_app", "decoded_request",
           "error_middleware", "webhook_source"]
