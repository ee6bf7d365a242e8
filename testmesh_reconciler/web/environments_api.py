"""Runtime environments over HTTP: ``GET /api/v1/test-environments`` (newest first,
``?state=``, ``?limit=``, ``?before=``), one instance by id, and ``DELETE`` (202, starts the
teardown; needs the API token as manual runs do: missing or wrong 401, none configured 403).
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import web

from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.web import SETTINGS, error_json

#: The app's environment manager (the dispatcher acquires and releases through it).
ENVIRONMENTS: web.AppKey[EnvironmentManager] = web.AppKey("environments", EnvironmentManager)

LIST_PATH: Final = "/api/v1/test-environments"
ITEM_PATH: Final = "/api/v1/test-environments/{id}"
STATES: Final = ("cold", "provisioning", "warm", "running", "cooling", "destroyed")
MAX_LIMIT: Final = 500


def check_api_token(request: web.Request, token: SecretValue | None) -> web.Response | None:
    """None when the request carries the API token as ``Authorization: Bearer``; else the
    answer: 403 when no token is configured, 401 when it is missing or wrong."""
    if token is None:
        return error_json(403, "disabled: no API token is configured; start the daemon with "
                               "--api-token (TESTMESH_API_TOKEN) to allow this")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not given.strip():
        return error_json(401, "missing API token: send Authorization: Bearer <token>",
                          headers=challenge)
    if not hmac.compare_digest(given.strip().encode(), token.reveal().encode()):
        return error_json(401, "wrong API token", headers=challenge)
    return None


async def list_environments(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        return error_json(400, f"state {state!r} is not one of {', '.join(STATES)}")
    raw = request.query.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return error_json(400, f"limit {raw!r}: expected a whole number from 1 to {MAX_LIMIT}")
    items = await request.app[ENVIRONMENTS].store.list_environments(
        state=state, limit=limit, before=request.query.get("before") or None)
    following = items[-1].id if len(items) == limit else None
    return web.json_response({"items": [i.to_json() for i in items], "next": following})


async def get_environment(request: web.Request) -> web.Response:
    found = await request.app[ENVIRONMENTS].store.get_environment(request.match_info["id"])
    if found is None:
        return error_json(404, f"no test environment {request.match_info['id']!r}")
    return web.json_response(found.to_json())


async def delete_environment(request: web.Request) -> web.Response:
    denied = check_api_token(request, request.app[SETTINGS].api_token)
    if denied is not None:
        return denied
    env_id = request.match_info["id"]
    found = await request.app[ENVIRONMENTS].request_teardown(env_id)
    if found is None:
        return error_json(404, f"no test environment {env_id!r}")
    if found.state == "destroyed":
        teardown = "done"
    elif found.state == "running" or found.users:
        teardown = "after_run"
    else:
        teardown = "started"
    return web.json_response({**found.to_json(), "teardown": teardown}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get(LIST_PATH, list_environments)
    item = app.router.add_resource(ITEM_PATH)
    item.add_route("GET", get_environment)
    item.add_route("DELETE", delete_environment)


__all__ = ["ENVIRONMENTS", "ITEM_PATH", "LIST_PATH", "add_routes", "check_api_token"]
