"""The HTTP surface: app factory (``app.py``), handlers, and what they share.

The typed ``AppKey``s live here (handlers read ``request.app[SERVICES]``);
``read_capped_body`` enforces a body cap while reading (413 as ``WebhookRejected``);
``error_json`` is the one shape of an error answer: ``{"error": ..., ...}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from testmesh_reconciler.errors import WebhookRejected

if TYPE_CHECKING:
    from testmesh_reconciler.services import Services, StatusProvider
    from testmesh_reconciler.settings import Settings

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
SERVICES: web.AppKey[Services] = web.AppKey("services")
#: Status providers registered on this app (``add_status_provider``), after ``Services``'.
STATUS_PROVIDERS: web.AppKey[list[StatusProvider]] = web.AppKey("status_providers")
#: The guarded background tasks the app started (``add_loop``), by name.
TASKS: web.AppKey[dict[str, asyncio.Task[None]]] = web.AppKey("tasks")
#: Hooks awaited after an accepted config webhook (tell the other replicas to reload).
CONFIG_BROADCASTS: web.AppKey[list[Callable[[], Awaitable[None]]]] = web.AppKey(
    "config_broadcasts")

CHUNK = 64 * 1024


def error_json(status: int, message: str, *, headers: dict[str, str] | None = None,
               **extra: Any) -> web.Response:
    """A JSON error answer ``{"error": message, **extra}``."""
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


async def read_capped_body(request: web.Request, limit: int) -> bytes:
    """The raw body, read in chunks; over ``limit`` bytes -> ``WebhookRejected(413)``.

    A declared ``Content-Length`` above the cap is refused before reading anything."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    # A plain body of the declared length is whole once that many bytes are in: no read
    # to wait for the end. (A decoded one has another length than the declared one.)
    whole = declared if "Content-Encoding" not in request.headers else None
    chunks: list[bytes] = []
    size = 0
    try:
        while size != whole:
            chunk = await request.content.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except (ConnectionError, OSError) as exc:
        raise WebhookRejected(400, f"could not read the request body: {exc}") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> WebhookRejected:
    return WebhookRejected(413, f"body larger than {limit} bytes (--max-body-bytes)")


__all__ = ["CONFIG_BROADCASTS", "SERVICES", "SETTINGS", "STATUS_PROVIDERS", "TASKS", "error_json",
           "read_capped_body"]
