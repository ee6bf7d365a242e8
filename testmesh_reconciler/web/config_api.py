"""Read-only API over the active snapshot: ``/api/v1/workspaces/{ws}/{collection}[/{name}]``.

Each item carries its stable id, source file and line, and its spec with secrets shown
only as ``{"configured": true|false}``. Writes answer 405 naming the config repo: the
declarations change by committing to Git, never through the API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from testmesh_reconciler.config.frozen import thaw
from testmesh_reconciler.config.model import Declaration, Integration, Snapshot
from testmesh_reconciler.log import redact_url
from testmesh_reconciler.web import SERVICES, error_json

#: URL segment -> declaration kind.
COLLECTIONS: dict[str, str] = {
    "integrations": "Integration",
    "trigger-rules": "TriggerRule",
    "suites": "Suite",
    "flows": "Flow",
    "test-environments": "TestEnvironment",
}
#: Secrets every integration may have; listed as not configured when absent.
KNOWN_SECRETS = ("token", "webhook_secret")
_COLLECTION = "{collection:" + "|".join(COLLECTIONS) + "}"
LIST_PATH = "/api/v1/workspaces/{ws}/" + _COLLECTION
ITEM_PATH = LIST_PATH + "/{name}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def secrets_view(integration: Integration) -> dict[str, dict[str, bool]]:
    keys = sorted(set(integration.secrets) | set(KNOWN_SECRETS))
    return {k: {"configured": k in integration.secrets} for k in keys}


def declaration_json(decl: Declaration, revision: str) -> dict[str, Any]:
    """The API view of one declaration (no secret values, no secret references)."""
    doc = thaw(decl.document)
    spec = doc.get("spec") if isinstance(doc, dict) else None
    spec = dict(spec) if isinstance(spec, dict) else {}
    if isinstance(decl, Integration):
        spec["secrets"] = secrets_view(decl)
    return {
        "id": str(decl.id),
        "kind": decl.kind,
        "apiVersion": doc.get("apiVersion") if isinstance(doc, dict) else None,
        "name": decl.name,
        "workspace": decl.workspace,
        "labels": thaw(decl.metadata.labels),
        "source": {"file": decl.source.file, "line": decl.source.line},
        "revision": revision,
        "spec": spec,
    }


class _Workspaces:
    """Workspaces of the active snapshot, computed once per snapshot."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._names: frozenset[str] = frozenset()

    def of(self, snapshot: Snapshot) -> frozenset[str]:
        if snapshot is not self._snapshot:
            self._names = frozenset(d.workspace for d in snapshot.all())
            self._snapshot = snapshot
        return self._names


def _not_loaded() -> web.Response:
    return error_json(503, "no valid config has been loaded yet; see /api/v1/status",
                      headers={"Retry-After": "5"})


def make_handlers(config_repo: str) -> tuple[Handler, Handler, Handler]:
    """(list, item, write) handlers; ``config_repo`` is named in the 405 answer."""
    workspaces = _Workspaces()
    where = redact_url(config_repo)

    def lookup(request: web.Request) -> tuple[Snapshot, str, str] | web.Response:
        snapshot = request.app[SERVICES].state.snapshot
        if snapshot is None:
            return _not_loaded()
        ws = request.match_info["ws"]
        if ws not in workspaces.of(snapshot):
            return error_json(404, f"no workspace {ws!r} in config revision "
                              f"{snapshot.revision}", workspace=ws)
        return snapshot, ws, COLLECTIONS[request.match_info["collection"]]

    async def list_items(request: web.Request) -> web.StreamResponse:
        found = lookup(request)
        if isinstance(found, web.Response):
            return found
        snapshot, ws, kind = found
        items = sorted((d for (w, _), d in snapshot.of_kind(kind).items() if w == ws),
                       key=lambda d: d.name)
        return web.json_response(
            {"items": [declaration_json(d, snapshot.revision) for d in items]})

    async def get_item(request: web.Request) -> web.StreamResponse:
        found = lookup(request)
        if isinstance(found, web.Response):
            return found
        snapshot, ws, kind = found
        name = request.match_info["name"]
        decl = snapshot.of_kind(kind).get((ws, name))
        if decl is None:
            return error_json(404, f"no {kind} named {name!r} in workspace {ws!r}",
                              kind=kind, workspace=ws, name=name)
        return web.json_response(declaration_json(decl, snapshot.revision))

    async def write(request: web.Request) -> web.StreamResponse:
        return error_json(
            405, f"declarations are read-only here: commit the change to the config repo "
            f"({where}) and the daemon applies it", config_repo=where,
            headers={"Allow": "GET, HEAD"})

    return list_items, get_item, write


def add_routes(app: web.Application, config_repo: str) -> None:
    list_items, get_item, write = make_handlers(config_repo)
    for path, handler in ((LIST_PATH, list_items), (ITEM_PATH, get_item)):
        resource = app.router.add_resource(path)
        resource.add_route("GET", handler)
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            resource.add_route(method, write)


__all__ = ["COLLECTIONS", "ITEM_PATH", "LIST_PATH", "add_routes", "declaration_json",
           "secrets_view"]
