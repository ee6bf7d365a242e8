"""A fake Gitea (v1.26 REST API) for commit statuses, checked against the real swagger.

Owns ``FakeGitea``: create/list/combined commit statuses, token auth, request contract checks
(``CreateStatusOption``, unknown keys, state enum), answers validated against ``CommitStatus``,
failure injection (``fail_next``, ``respond_with``, ``go_down``) and ``wait_for_statuses``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .contracts import FakeServer, validate_definition

SPEC = "gitea"
STATES = ("pending", "success", "error", "failure", "warning", "skipped")
"""CommitStatusState values in v1.25+ (the swagger enum)."""

# Worst first: how Gitea combines the latest status of each context into one state.
_COMBINE_ORDER = ("error", "failure", "warning", "pending", "success", "skipped")
_SORTS = ("oldest", "recentupdate", "leastupdate", "leastindex", "highestindex")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
DEFAULT_LIMIT = 30
MAX_LIMIT = 50
DESCRIPTION_LIMIT = 255
SWAGGER_URL = "https://gitea.example.com/api/swagger"


@dataclass(frozen=True)
class GiteaStatus:
    """One commit status Gitea accepted."""

    id: int
    index: int  # per (repo, sha), as Gitea numbers them
    repo: str  # "owner/name"
    sha: str
    state: str
    context: str
    description: str
    target_url: str
    created_at: datetime


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitea(FakeServer):
    """Fake Gitea serving ``/api/v1/repos/{owner}/{repo}/...`` commit-status endpoints.

    ``known_shas``: when set, a status for any other sha answers 500 like Gitea v1.26 does
    for an unknown commit. ``refs`` maps branch/tag names to shas for the ``{ref}`` routes.
    """

    default_inject_method = "POST"

    def __init__(
        self,
        token: str = "t0k3n",
        *,
        known_shas: set[str] | None = None,
        refs: dict[str, str] | None = None,
        user: str = "testmesh-bot",
        clock: Callable[[], datetime] | None = None,
        debug: bool = True,
    ) -> None:
        self.token = token
        self.known_shas = known_shas
        self.refs: dict[str, str] = dict(refs or {})
        self.user = user
        self.clock = clock or (lambda: datetime.now(UTC))
        self.statuses: list[GiteaStatus] = []
        super().__init__(debug=debug)

    def _routes(self, app: web.Application) -> None:
        base = "/api/v1/repos/{owner}/{repo}"
        app.router.add_post(base + "/statuses/{sha}", self._create_status)
        app.router.add_get(base + "/statuses/{sha}", self._list_statuses)
        app.router.add_get(base + "/commits/{ref}/statuses", self._list_statuses)
        app.router.add_get(base + "/commits/{ref}/status", self._combined_status)

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        if status == 404:
            return {"errors": [], "message": "The target couldn't be found.", "url": SWAGGER_URL}
        return {"message": message, "url": SWAGGER_URL}

    # --- controller API ------------------------------------------------------------

    def clear(self) -> None:
        """Forget statuses, recorded requests and violations."""
        super().clear()
        self.statuses.clear()

    def seed_status(
        self,
        repo: str,
        sha: str,
        state: str,
        context: str,
        description: str = "",
        target_url: str = "",
    ) -> GiteaStatus:
        """Store a status as if someone had posted it earlier (no request is recorded)."""
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        status = GiteaStatus(
            id=len(self.statuses) + 1,
            index=len(self.statuses_for(repo, sha)) + 1,
            repo=repo,
            sha=sha,
            state=state,
            context=context,
            description=description,
            target_url=target_url,
            created_at=self.clock(),
        )
        self.statuses.append(status)
        return status

    def statuses_for(self, repo: str, sha: str | None = None) -> list[GiteaStatus]:
        return [s for s in self.statuses if s.repo == repo and (sha is None or s.sha == sha)]

    def latest(self, repo: str, sha: str, context: str) -> GiteaStatus | None:
        """The newest status for ``context``, which is what Gitea shows."""
        matching = [s for s in self.statuses_for(repo, sha) if s.context == context]
        return matching[-1] if matching else None

    async def wait_for_statuses(self, n: int, timeout: float = 5.0) -> list[GiteaStatus]:  # noqa: ASYNC109
        """Wait until at least ``n`` statuses were accepted; return all of them."""
        await self.wait_for(lambda: len(self.statuses) >= n, timeout)
        return list(self.statuses)

    # --- auth ----------------------------------------------------------------------

    def _auth(self, request: web.Request, *, required: bool) -> web.Response | None:
        header = request.headers.get("Authorization")
        if header is None:
            if required:
                return self._error(401, "token is required")
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or value.strip() != self.token:
            return self._error(401, "user does not exist [uid: 0, name: ]")
        return None

    # --- handlers --------------------------------------------------------------------

    async def _create_status(self, request: web.Request) -> web.Response:
        denied = self._auth(request, required=True)
        if denied is not None:
            return denied
        owner, name, sha = (request.match_info[k] for k in ("owner", "repo", "sha"))
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            self._violation(request, f"body is not JSON: {exc}")
            return self._error(422, f"invalid JSON body: {exc}")
        problems = validate_definition(SPEC, "CreateStatusOption", body, strict=True)
        if isinstance(body, dict) and "state" not in body:
            problems.append("CreateStatusOption$: 'state' is missing")
        if problems:
            for problem in problems:
                self._violation(request, problem)
            return self._error(422, "; ".join(problems))
        description = str(body.get("description", ""))
        if len(description) > DESCRIPTION_LIMIT:
            self._violation(
                request, f"description is {len(description)} characters (> {DESCRIPTION_LIMIT})"
            )
        if not _SHA.match(sha):
            self._violation(request, f"sha {sha!r} is not a full commit sha (40 or 64 hex)")
            return self._error(500, f"GetCommit[{sha}]: object does not exist [id: {sha}]")
        if self.known_shas is not None and sha not in self.known_shas:
            return self._error(500, f"GetCommit[{sha}]: object does not exist [id: {sha}]")
        status = self.seed_status(
            f"{owner}/{name}",
            sha,
            body["state"],
            str(body.get("context", "")),
            description,
            str(body.get("target_url", "")),
        )
        answer = self._status_json(request, status)
        self._check_answer(SPEC, request, 201, answer)
        return self._json(answer, 201)

    async def _list_statuses(self, request: web.Request) -> web.Response:
        denied = self._auth(request, required=False)
        if denied is not None:
            return denied
        repo, sha = self._repo_sha(request)
        query = request.query
        sort = query.get("sort", "")
        if sort and sort not in _SORTS:
            self._violation(request, f"sort {sort!r} is not one of {_SORTS}")
        state = query.get("state", "")
        if state and state not in STATES:
            self._violation(request, f"state {state!r} is not one of {STATES}")
        page, limit = self._paging(request)
        items = self._sorted(self.statuses_for(repo, sha), sort)
        if state:
            items = [s for s in items if s.state == state]
        window = items[(page - 1) * limit : page * limit]
        answer = [self._status_json(request, s) for s in window]
        self._check_answer(SPEC, request, 200, answer)
        return self._json(answer, 200, **{"X-Total-Count": str(len(items))})

    async def _combined_status(self, request: web.Request) -> web.Response:
        denied = self._auth(request, required=False)
        if denied is not None:
            return denied
        repo, sha = self._repo_sha(request)
        page, limit = self._paging(request)
        latest: dict[str, GiteaStatus] = {}
        for status in self.statuses_for(repo, sha):
            latest[status.context] = status
        newest_first = sorted(latest.values(), key=lambda s: s.id, reverse=True)
        origin = str(request.url.origin())
        answer: dict[str, Any] = {
            "state": self._combine([s.state for s in newest_first]),
            "sha": sha,
            "total_count": len(newest_first),
            "statuses": [
                self._status_json(request, s)
                for s in newest_first[(page - 1) * limit : page * limit]
            ],
            "repository": self._repository_json(origin, repo),
            "commit_url": f"{origin}/api/v1/repos/{repo}/commits/{sha}",
            "url": f"{origin}/api/v1/repos/{repo}/commits/{sha}/status",
        }
        self._check_answer(SPEC, request, 200, answer)
        return self._json(answer, 200, **{"X-Total-Count": str(len(newest_first))})

    # --- helpers ---------------------------------------------------------------------

    def _repo_sha(self, request: web.Request) -> tuple[str, str]:
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        ref = request.match_info.get("ref") or request.match_info["sha"]
        return repo, self.refs.get(ref, ref)

    def _paging(self, request: web.Request) -> tuple[int, int]:
        def number(key: str) -> int:
            raw = request.query.get(key, "")
            try:
                return int(raw) if raw else 0
            except ValueError:
                self._violation(request, f"{key}={raw!r} is not an integer")
                return 0

        page, limit = number("page"), number("limit")
        limit = DEFAULT_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)
        return max(page, 1), limit

    @staticmethod
    def _sorted(items: list[GiteaStatus], sort: str) -> list[GiteaStatus]:
        if sort in ("oldest", "leastupdate"):
            return sorted(items, key=lambda s: s.id)
        if sort == "leastindex":  # Gitea's naming: "`index` DESC"
            return sorted(items, key=lambda s: s.index, reverse=True)
        if sort == "highestindex":  # "`index` ASC"
            return sorted(items, key=lambda s: s.index)
        return sorted(items, key=lambda s: s.id, reverse=True)  # default: newest first

    @staticmethod
    def _combine(states: list[str]) -> str:
        if not states:
            return "pending"
        return min(states, key=_COMBINE_ORDER.index)

    def _status_json(self, request: web.Request, status: GiteaStatus) -> dict[str, Any]:
        origin = str(request.url.origin())
        stamp = _iso(status.created_at)
        return {
            "id": status.id,
            "status": status.state,
            "target_url": status.target_url,
            "description": status.description,
            "url": f"{origin}/api/v1/repos/{status.repo}/statuses/{status.sha}",
            "context": status.context,
            "creator": self._user_json(origin),
            "created_at": stamp,
            "updated_at": stamp,
        }

    def _user_json(self, origin: str) -> dict[str, Any]:
        return {
            "id": 9,
            "login": self.user,
            "login_name": "",
            "source_id": 0,
            "full_name": "TestMesh",
            "email": f"9+{self.user}@noreply.gitea.example.com",
            "avatar_url": f"{origin}/avatars/9",
            "html_url": f"{origin}/{self.user}",
            "language": "",
            "is_admin": False,
            "last_login": "0001-01-01T00:00:00Z",
            "created": "2026-01-10T09:00:00Z",
            "restricted": False,
            "active": False,
            "prohibit_login": False,
            "location": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
            "username": self.user,
        }

    def _repository_json(self, origin: str, repo: str) -> dict[str, Any]:
        owner, _, name = repo.partition("/")
        return {
            "id": 1,
            "owner": {**self._user_json(origin), "login": owner, "username": owner, "id": 2},
            "name": name,
            "full_name": repo,
            "private": False,
            "html_url": f"{origin}/{repo}",
            "url": f"{origin}/api/v1/repos/{repo}",
            "clone_url": f"{origin}/{repo}.git",
            "default_branch": "main",
            "created_at": "2026-01-10T09:10:00Z",
            "updated_at": "2026-07-01T12:00:05Z",
            "archived_at": "1970-01-01T00:00:00Z",
            "object_format_name": "sha1",
        }
