"""The demo's stand-in for Gitea: accepts commit statuses and shows what it received.

Clearly not Gitea: it answers only the commit status endpoints the daemon uses, checks
the token, and keeps the statuses in memory so the demo can print them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class ReceivedStatus:
    repo: str
    sha: str
    state: str
    context: str
    description: str
    target_url: str


class GiteaStandIn:
    """Commit statuses in memory, behind Gitea's URL layout and token check."""

    def __init__(self, token: str, *,
                 on_status: Callable[[ReceivedStatus], None] | None = None) -> None:
        self._token = token
        self.statuses: list[ReceivedStatus] = []
        self.changed = asyncio.Event()
        self._on_status = on_status

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_post("/api/v1/repos/{owner}/{repo}/statuses/{sha}", self.create)
        app.router.add_get("/api/v1/repos/{owner}/{repo}/commits/{sha}/statuses", self.list)
        app.router.add_get("/api/v1/repos/{owner}/{repo}/statuses/{sha}", self.list)
        return app

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header in (f"token {self._token}", f"Bearer {self._token}")

    async def index(self, _request: web.Request) -> web.Response:
        lines = ["testmesh demo: a stand-in for Gitea's commit status API (not Gitea)", ""]
        lines += [f"{s.repo}@{s.sha[:7]} {s.context}: {s.state} - {s.description}"
                  for s in self.statuses]
        return web.Response(text="\n".join(lines) + "\n")

    async def create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "token is required"}, status=401)
        try:
            body: dict[str, Any] = await request.json()
        except ValueError:
            return web.json_response({"message": "invalid JSON"}, status=422)
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        status = ReceivedStatus(repo, request.match_info["sha"], str(body.get("state")),
                                str(body.get("context", "")), str(body.get("description", "")),
                                str(body.get("target_url", "")))
        self.statuses.append(status)
        self.changed.set()
        if self._on_status is not None:
            self._on_status(status)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({
            "id": len(self.statuses), "status": status.state, "context": status.context,
            "description": status.description, "target_url": status.target_url,
            "url": str(request.url), "created_at": now, "updated_at": now}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        sha = request.match_info["sha"]
        found = [s for s in reversed(self.statuses) if s.repo == repo and s.sha == sha]
        body = [{"id": i, "status": s.state, "context": s.context,
                 "description": s.description, "target_url": s.target_url}
                for i, s in enumerate(found, 1)]
        page = int(request.query.get("page", "1"))
        limit = int(request.query.get("limit", "30"))
        return web.json_response(body[(page - 1) * limit: page * limit],
                                 headers={"X-Total-Count": str(len(body))})
