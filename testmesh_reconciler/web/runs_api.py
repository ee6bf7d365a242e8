"""Runs and deliveries over HTTP: the delivery audit log, SuiteRuns, and manual runs.

``GET /api/v1/deliveries``, ``GET /api/v1/suite-runs/{id}``, ``GET /api/v1/workspaces/{ws}/
suites/{suite}/runs`` read the store (newest first, ``?before=<id>&limit=``); ``POST .../run``
queues a manual run behind the API token (401 wrong/missing, 403 none configured).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Final

from aiohttp import web

from testmesh_reconciler.config.model import SecretValue, Suite
from testmesh_reconciler.errors import WebhookRejected
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.store.records import Run, RunId, new_id
from testmesh_reconciler.web import SERVICES, SETTINGS, error_json
from testmesh_reconciler.web.webhooks import DISPATCHER, RETRY_AFTER, read_body

log = get_logger("testmesh.web.runs_api")

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: Largest manual-run body (``{environment, variables}``).
MAX_RUN_BODY: Final = 256 * 1024
DELIVERY_FILTERS: Final = ("source", "repo", "outcome")
RUN_STATUSES: Final = frozenset({"pending", "running", "completed", "failed", "cancelled"})


def _store(request: web.Request) -> Store:
    store = request.app[SERVICES].store
    if not isinstance(store, Store):
        raise WebhookRejected(503, "the runtime store is not available",
                              headers={"Retry-After": RETRY_AFTER})
    return store


def paging(request: web.Request) -> tuple[int, str | None]:
    """``?limit=`` (1..500, default 50) and ``?before=<id>``; 400 for a bad limit."""
    raw = request.query.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise web.HTTPBadRequest(reason=f"limit {raw!r}: expected a number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise web.HTTPBadRequest(reason=f"limit {raw!r}: expected 1 to {MAX_LIMIT}")
    before = request.query.get("before") or None
    return limit, before


def page(items: list[Any], limit: int) -> dict[str, Any]:
    """``{"items": [...], "next_before": <last id> | null}`` (null on the last page)."""
    return {"items": [i.to_json() for i in items],
            "next_before": items[-1].id if len(items) == limit and items else None}


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    limit, before = paging(request)
    filters = {k: request.query.get(k) or None for k in DELIVERY_FILTERS}
    items = await _store(request).list_deliveries(limit=limit, before=before, **filters)
    return web.json_response(page(items, limit))


async def get_delivery(request: web.Request) -> web.StreamResponse:
    found = await _store(request).get_delivery(request.match_info["id"])
    if found is None:
        return error_json(404, f"no delivery {request.match_info['id']!r}")
    return web.json_response(found.to_json())


async def get_run(request: web.Request) -> web.StreamResponse:
    run_id = request.match_info["id"]
    run = await _store(request).get_run(run_id)
    if run is None:
        return error_json(404, f"no suite run {run_id!r}")
    return web.json_response(run.to_json())


async def suite_runs(request: web.Request) -> web.StreamResponse:
    limit, before = paging(request)
    status = request.query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        return error_json(400, f"status {status!r}: expected one of {sorted(RUN_STATUSES)}")
    items = await _store(request).list_runs(
        workspace=request.match_info["ws"], suite=request.match_info["suite"], status=status,
        limit=limit, before=before)
    return web.json_response(page(items, limit))


def authorized(header: str | None, token: SecretValue) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                               token.reveal().encode("utf-8", "replace"))


def parse_run_body(body: bytes) -> tuple[str | None, dict[str, Any]]:
    """``{environment, variables}`` (both optional); ``WebhookRejected(400)`` otherwise."""
    if not body.strip():
        return None, {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookRejected(400, "the body is not JSON: expected {\"environment\": ..., "
                              "\"variables\": {...}}") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "the body must be a JSON object {environment, variables}")
    unknown = sorted(set(data) - {"environment", "variables"})
    if unknown:
        raise WebhookRejected(400, f"unknown field(s) {unknown}: expected environment, "
                              "variables")
    environment = data.get("environment")
    if environment is not None and (not isinstance(environment, str) or not environment):
        raise WebhookRejected(400, "environment must be a TestEnvironment name (a string)")
    variables = data.get("variables")
    variables = {} if variables is None else variables
    if not isinstance(variables, dict):
        raise WebhookRejected(400, "variables must be an object of name -> value")
    for name, value in variables.items():
        if not name or isinstance(value, dict | list):
            raise WebhookRejected(400, f"variable {name!r}: expected a non-empty name and a "
                                  "string, number, boolean or null value")
    return environment, variables


async def manual_run(request: web.Request) -> web.StreamResponse:
    settings, services = request.app[SETTINGS], request.app[SERVICES]
    token = settings.api_token
    if token is None:
        return error_json(403, "manual runs are disabled: start the daemon with --api-token "
                          "(TESTMESH_API_TOKEN) and send it as Authorization: Bearer <token>")
    if not authorized(request.headers.get("Authorization"), token):
        return error_json(401, "missing or wrong API token (Authorization: Bearer <token>)",
                          headers={"WWW-Authenticate": "Bearer"})
    body = await read_body(request, min(MAX_RUN_BODY, settings.max_body_bytes))
    environment, variables = parse_run_body(body)
    snapshot = services.state.snapshot
    if snapshot is None:
        return error_json(503, "no valid config has been loaded yet; retry shortly",
                          headers={"Retry-After": RETRY_AFTER})
    ws, name = request.match_info["ws"], request.match_info["suite"]
    suite = snapshot.suites.get((ws, name))
    if not isinstance(suite, Suite):
        return error_json(404, f"no Suite named {name!r} in workspace {ws!r}")
    if environment is not None and (ws, environment) not in snapshot.environments:
        return error_json(400, f"no TestEnvironment named {environment!r} in workspace "
                          f"{ws!r}")
    store = _store(request)
    now = services.clock.now()
    run = Run(id=RunId(new_id()), workspace=ws, suite=suite.name, suite_id=str(suite.id),
              trigger_type="manual", queued_at=now, variables=variables,
              environment=environment, revision=snapshot.revision or None,
              status_report={"reason": "manual runs post no commit status"})
    if not await store.enqueue_run(run, max_queued=settings.max_queued_runs):
        return error_json(429, f"the run queue is full ({settings.max_queued_runs} runs, "
                          "--max-queued-runs); retry later", headers={"Retry-After": RETRY_AFTER})
    dispatcher = request.app.get(DISPATCHER)
    if dispatcher is not None:
        dispatcher.wake()
    log.info("manual_run_queued", run_id=run.id, suite=suite.name, workspace=ws,
             environment=environment)
    return web.json_response(run.to_json(), status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/deliveries", list_deliveries)
    app.router.add_get("/api/v1/deliveries/{id}", get_delivery)
    app.router.add_get("/api/v1/suite-runs/{id}", get_run)
    app.router.add_get("/api/v1/workspaces/{ws}/suites/{suite}/runs", suite_runs)
    app.router.add_post("/api/v1/workspaces/{ws}/suites/{suite}/run", manual_run)


__all__ = ["add_routes", "authorized", "paging", "parse_run_body"]
