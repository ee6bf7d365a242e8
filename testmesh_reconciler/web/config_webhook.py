"""``POST /api/v1/webhooks/config``: a push on the config repo triggers a reload now.

Pure ``verify`` (HMAC-SHA256, ``X-Gitea-Signature`` hex or ``X-Hub-Signature-256:
sha256=<hex>``, constant-time) and ``parse_push_ref`` beside a thin handler: no secret
configured = 403, bad or missing signature = 401, over the cap = 413, junk = 400, else 202.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.errors import WebhookRejected
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.web import error_json, read_capped_body

log = get_logger("testmesh.web.config_webhook")

SOURCE = "config"

Trigger = Callable[[str], int]
#: Tells the other replicas to reload too (``web/replicas_ext.py``); never raises.
Broadcast = Callable[[], Awaitable[None]]
#: Seconds a broadcast may take before the webhook is answered without it.
BROADCAST_TIMEOUT = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def verify(headers: Mapping[str, str], body: bytes, secret: SecretValue) -> bool:
    """True when a Gitea or GitHub-style signature over ``body`` verifies with ``secret``."""
    expected = hmac.new(secret.reveal().encode(), body, hashlib.sha256).hexdigest()
    given = [headers.get("X-Gitea-Signature", "").strip().lower()]
    hub = headers.get("X-Hub-Signature-256", "").strip()
    if hub.lower().startswith("sha256="):
        given.append(hub[7:].strip().lower())
    ok = False
    for candidate in given:
        if candidate:  # compare every candidate: no early exit on the first header
            ok |= hmac.compare_digest(candidate.encode("ascii", "replace"),
                                      expected.encode("ascii"))
    return ok


def parse_push_ref(body: bytes) -> str | None:
    """The pushed ``ref`` of a Gitea push body (``None`` if it names none).

    Raises ``WebhookRejected(400)`` when the body is not a JSON object."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(400, "the body is not JSON (expected a Gitea push event)") \
            from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "the body is not a JSON object (expected a Gitea push event)")
    ref = payload.get("ref")
    return ref if isinstance(ref, str) and ref else None


async def run_hooks(hooks: list[Broadcast]) -> None:
    """Await each broadcast hook (bounded); a failure is logged, never raised: the local
    reload is scheduled already and the poll interval is the others' backstop."""
    for hook in hooks:
        try:
            async with asyncio.timeout(BROADCAST_TIMEOUT):
                await hook()
        except Exception:
            log.exception("config_broadcast_failed")


def make_handler(*, secret: SecretValue | None, branch: str, max_body_bytes: int,
                 trigger: Trigger, broadcast: Broadcast | None = None) -> Handler:
    """The handler, closed over what it needs (tests build it with fakes)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        delivery = request.headers.get("X-Gitea-Delivery") or str(uuid.uuid4())
        bound = log.bind(delivery_id=delivery)
        if secret is None:
            bound.warning("config_webhook_rejected", status=403, reason="no secret configured")
            return error_json(403, "the config webhook is disabled: start the daemon with "
                              "--config-webhook-secret (TESTMESH_CONFIG_WEBHOOK_SECRET)")
        body = await read_capped_body(request, max_body_bytes)
        if not verify(request.headers, body, secret):
            bound.warning("config_webhook_rejected", status=401, reason="bad signature")
            raise WebhookRejected(401, "missing or invalid signature (X-Gitea-Signature or "
                                  "X-Hub-Signature-256, HMAC-SHA256 of the body with the "
                                  "config webhook secret)")
        ref = parse_push_ref(body)
        tracked = f"refs/heads/{branch}"
        if ref is not None and ref != tracked:
            bound.info("config_webhook_ignored", ref=ref, tracked=tracked)
            return web.json_response({"delivery_id": delivery, "outcome": "ignored",
                                      "reason": f"push to {ref}, the daemon tracks {tracked}"})
        ticket = trigger("webhook")
        if broadcast is not None:
            await broadcast()
        bound.info("config_webhook_accepted", ref=ref, ticket=ticket)
        return web.json_response({"delivery_id": delivery, "outcome": "accepted",
                                  "reload": "scheduled"}, status=202)

    return handle


__all__ = ["BROADCAST_TIMEOUT", "SOURCE", "Broadcast", "make_handler", "parse_push_ref",
           "run_hooks", "verify"]
