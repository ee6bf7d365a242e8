"""Gitea commit statuses: the pure run -> status mapping and the HTTP client that posts them.

Pure: ``to_state``, ``describe``, ``context_for``, ``target_url``, ``status_for_run``
(DESIGN.md section 5). IO: ``GiteaStatusClient`` over one shared ``httpx.AsyncClient``;
every failure becomes a ``ProviderError`` (retryable or not), never showing the token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import httpx

from testmesh_reconciler.config.model import Integration, SecretValue
from testmesh_reconciler.errors import ProviderError
from testmesh_reconciler.log import get_logger

log = get_logger("testmesh.providers.gitea")

StatusState = Literal["pending", "success", "failure", "error"]
"""The commit status states TestMesh posts (Gitea also knows ``warning`` and ``skipped``)."""

DESCRIPTION_LIMIT: Final = 140
"""Most characters a description may have (DESIGN.md section 5; Gitea itself allows 255)."""

ELLIPSIS: Final = "…"
PAGE_LIMIT: Final = 50
"""Statuses per page when looking up the latest one (Gitea's default MAX_RESPONSE_ITEMS)."""
MAX_PAGES: Final = 40
"""Stop looking for the latest status after this many pages (2000 statuses on one commit)."""
RETRY_AFTER_MAX: Final = 3600.0
"""A ``Retry-After`` longer than this (seconds) is clamped: the give-up window still rules."""

NEWEST_FIRST_SORT: Final = "leastindex"
"""Gitea's ``sort`` for newest first: despite its name it orders by ```index` DESC``
(models/git/commit_status.go). The per-commit ``index`` grows strictly, whereas the default
(``created_unix DESC``) has one-second resolution and ties for statuses posted together."""

DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=15.0, write=15.0, pool=5.0)
"""Per-request timeouts (seconds); a slow Gitea is a retryable failure, never a hang."""

FINAL_RUN_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
ACTIVE_RUN_STATUSES: Final = frozenset({"pending", "running"})


# --- pure mapping ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusSpec:
    """One commit status as Gitea's ``CreateStatusOption`` wants it."""

    state: str
    description: str
    context: str
    target_url: str

    def to_body(self) -> dict[str, str]:
        """The exact JSON body of ``POST /repos/{owner}/{repo}/statuses/{sha}``."""
        return {
            "state": self.state,
            "target_url": self.target_url,
            "description": self.description,
            "context": self.context,
        }


def to_state(run_status: str, run_error: str | None, *, final: bool) -> StatusState:
    """The Gitea state for a run (DESIGN.md section 5).

    Not final: ``pending`` (the run left the queue). Final: ``error`` whenever the run itself
    has an ``error`` (it could not execute as declared: environment not acquired,
    interrupted, internal error); else ``success`` for ``completed`` (every flow passed) and
    ``failure`` for ``failed`` (a step or assertion failed). A ``cancelled`` run only reaches
    here when its ``pending`` was already posted (shutdown, interruption): it still needs
    exactly one final state, and that is ``error`` ("TestMesh: execution error"). A run
    cancelled while queued posted nothing and must post nothing (see ``needs_final_status``).
    Raises ``ValueError`` for an unknown status or a final state asked of an active run.
    """
    if run_status not in FINAL_RUN_STATUSES and run_status not in ACTIVE_RUN_STATUSES:
        raise ValueError(f"unknown run status {run_status!r}")
    if not final:
        return "pending"
    if run_status in ACTIVE_RUN_STATUSES:
        raise ValueError(f"run status {run_status!r} is not final; it has no final state")
    if run_error or run_status == "cancelled":
        return "error"
    return "success" if run_status == "completed" else "failure"


def needs_final_status(run_status: str, *, pending_posted: bool) -> bool:
    """Whether a finished run must post a final state: exactly when its ``pending`` was
    queued for posting (a run superseded or cancelled while queued posts nothing)."""
    return pending_posted and run_status in FINAL_RUN_STATUSES


def clip(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _flows(n: int) -> str:
    return "flow" if n == 1 else "flows"


def describe(
    state: str, *, passed: int = 0, failed: int = 0, total: int = 0, reason: str | None = None
) -> str:
    """The status description, at most ``DESCRIPTION_LIMIT`` characters.

    pending: "TestMesh: tests running..."; success: "TestMesh: all tests passed (3/3 flows)";
    failure: "TestMesh: tests failed (1 of 3 flows failed)"; error: "TestMesh: execution
    error", plus ": <reason>" (one line, cut with "…") when a reason is given. Counts are
    left out when there are none to show.
    """
    if state == "pending":
        text = "TestMesh: tests running..."
    elif state == "success":
        text = "TestMesh: all tests passed"
        if total > 0:
            text += f" ({passed}/{total} {_flows(total)})"
    elif state == "failure":
        text = "TestMesh: tests failed"
        if total > 0:
            text += f" ({failed} of {total} {_flows(total)} failed)"
    elif state == "error":
        text = "TestMesh: execution error"
        detail = _one_line(reason or "")
        if detail:
            text += f": {detail}"
    else:
        raise ValueError(f"TestMesh does not post the state {state!r}")
    return clip(text)


def context_for(suite_name: str, override: str | None = None) -> str:
    """The status context: the rule's override when it sets one, else ``testmesh/<suite>``."""
    return override if override else f"testmesh/{suite_name}"


def target_url(public_url: str, run_id: str) -> str:
    """``<public-url>/suite-runs/<run id>``, the run page on the dashboard (one slash)."""
    return f"{public_url.rstrip('/')}/suite-runs/{quote(run_id, safe='')}"


def status_for_run(
    *,
    suite: str,
    run_id: str,
    public_url: str,
    run_status: str,
    run_error: str | None,
    final: bool,
    passed: int = 0,
    failed: int = 0,
    total: int = 0,
    context: str | None = None,
) -> StatusSpec:
    """The status to post for a run: ``final=False`` for the pending one when it leaves the
    queue, ``final=True`` once it finished. ``context`` is the rule's override, if any."""
    state = to_state(run_status, run_error, final=final)
    reason = run_error if state == "error" else None
    if state == "error" and not reason and run_status == "cancelled":
        reason = "run cancelled"
    return StatusSpec(
        state=state,
        description=describe(state, passed=passed, failed=failed, total=total, reason=reason),
        context=context_for(suite, context),
        target_url=target_url(public_url, run_id),
    )


# --- errors --------------------------------------------------------------------------------


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (the delta-seconds form; an HTTP-date or junk gives None),
    clamped to ``RETRY_AFTER_MAX``."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, RETRY_AFTER_MAX)


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text)[:200]
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return _one_line(body["message"])[:200]
    return ""


def error_for_response(response: httpx.Response, *, repo: str, sha: str) -> ProviderError:
    """The ``ProviderError`` for a non-2xx Gitea answer, saying what to check next."""
    status = response.status_code
    said = _server_message(response)
    suffix = f" (Gitea said: {said})" if said else ""
    if status == 401:
        message = ("401 from Gitea: the integration's token was rejected; "
                   "check secrets.token (write:repository scope)")
        return ProviderError(message + suffix, retryable=False, status=status)
    if status == 403:
        message = (f"403 from Gitea: the token may not write commit statuses on '{repo}'; "
                   "give its user write access to the repository (write:repository scope)")
        return ProviderError(message + suffix, retryable=False, status=status)
    if status == 404:
        message = (f"404: repository '{repo}' or commit '{sha}' not found on Gitea, "
                   "or the token cannot see it")
        return ProviderError(message + suffix, retryable=False, status=status)
    if status == 422:
        message = ("422 from Gitea: it refused the status as invalid; "
                   "check the context, description and target_url")
        return ProviderError(message + suffix, retryable=False, status=status)
    if status == 429 or status >= 500:
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        what = "rate limited" if status == 429 else "server error"
        message = f"{status} from Gitea ({what}); will retry"
        if status == 500:  # v1.26 answers 500 for an unknown commit, too
            message += f"; if it persists, check that commit '{sha}' exists in '{repo}'"
        return ProviderError(message + suffix, retryable=True, delay=delay, status=status)
    message = f"{status} from Gitea for '{repo}' at '{sha}'"
    return ProviderError(message + suffix, retryable=False, status=status)


# --- IO ----------------------------------------------------------------------------------------


class GiteaStatusClient:
    """Posts and reads commit statuses on one Gitea, with one integration's token.

    ``http`` is the daemon's shared ``httpx.AsyncClient`` (never created per call);
    ``base_url`` is the Gitea root (``https://gitea.example.com``, a sub-path allowed).
    """

    __slots__ = ("_base", "_host", "_http", "_timeout", "_token")

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token: SecretValue,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._host = urlsplit(self._base).netloc or self._base
        self._token = token
        self._timeout = timeout

    @classmethod
    def for_integration(
        cls, http: httpx.AsyncClient, integration: Integration, *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> GiteaStatusClient | None:
        """A client for a Gitea integration, or None when it has no ``url`` or no token."""
        token = integration.secret("token")
        if not integration.url or token is None:
            return None
        return cls(http, integration.url, token, timeout=timeout)

    def __repr__(self) -> str:
        return f"GiteaStatusClient({self._base!r}, token=***)"

    # requests

    def _repo_path(self, repo: str, sha: str) -> str:
        owner, sep, name = repo.partition("/")
        if not sep or not owner or not name or "/" in name:
            raise ProviderError(
                f"repository {repo!r} is not 'owner/name'; check the rule's repository",
                retryable=False,
            )
        if not sha:
            raise ProviderError("no commit sha to post a status on", retryable=False)
        return f"{self._base}/api/v1/repos/{quote(owner, safe='')}/{quote(name, safe='')}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token.reveal()}", "Accept": "application/json"}

    def _scrub(self, text: str) -> str:
        secret = self._token.reveal()
        return text.replace(secret, "***") if secret else text

    async def _send(
        self, method: str, url: str, *, repo: str, sha: str,
        json: Mapping[str, Any] | None = None, params: Mapping[str, str | int] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, url, json=json, params=params, headers=self._headers(),
                timeout=self._timeout,
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ProviderError(
                f"cannot reach Gitea at {self._host!r}: {type(exc).__name__}; "
                "check the integration's url (http:// or https:// and a host)",
                retryable=False,
            ) from None
        except httpx.TimeoutException as exc:
            raise ProviderError(
                f"timed out talking to Gitea at {self._host} ({type(exc).__name__}); will retry",
                retryable=True,
            ) from None
        except httpx.TransportError as exc:
            detail = self._scrub(_one_line(str(exc)))[:200] or type(exc).__name__
            raise ProviderError(
                f"network error talking to Gitea at {self._host}: {detail}; will retry",
                retryable=True,
            ) from None
        if response.is_success:
            return response
        error = error_for_response(response, repo=repo, sha=sha)
        raise ProviderError(self._scrub(str(error)), retryable=error.retryable,
                            delay=error.delay, status=error.status)

    async def post_status(self, repo: str, sha: str, spec: StatusSpec) -> None:
        """Create the status on ``repo`` (``owner/name``) at ``sha``; ``ProviderError`` if not."""
        url = f"{self._repo_path(repo, sha)}/statuses/{quote(sha, safe='')}"
        await self._send("POST", url, repo=repo, sha=sha, json=spec.to_body())
        log.info("gitea_status_posted", repo=repo, sha=sha, context=spec.context,
                 state=spec.state)

    async def latest_status(self, repo: str, sha: str, context: str) -> tuple[str, str] | None:
        """``(state, description)`` of the newest status for ``context`` at ``sha``, or None.

        Reads ``GET .../commits/{sha}/statuses`` newest first (``sort=leastindex``),
        ``PAGE_LIMIT`` a page, until the context shows up or the pages run out
        (``X-Total-Count`` when Gitea sends it, else an empty page; ``MAX_PAGES`` at most).
        """
        url = f"{self._repo_path(repo, sha)}/commits/{quote(sha, safe='')}/statuses"
        seen = 0
        for page in range(1, MAX_PAGES + 1):
            params: dict[str, str | int] = {
                "sort": NEWEST_FIRST_SORT, "page": page, "limit": PAGE_LIMIT,
            }
            response = await self._send("GET", url, repo=repo, sha=sha, params=params)
            items = _status_list(response)
            for item in items:
                if item.get("context") == context:
                    state = item.get("status", item.get("state"))
                    description = item.get("description")
                    return (str(state or ""), str(description or ""))
            seen += len(items)
            total = _total_count(response)
            if not items or (total is not None and seen >= total):
                return None
        log.warning("gitea_status_lookup_truncated", repo=repo, sha=sha, context=context,
                    pages=MAX_PAGES)
        return None

    async def post_if_changed(
        self, repo: str, sha: str, spec: StatusSpec
    ) -> Literal["sent", "skipped"]:
        """Post ``spec`` unless Gitea's latest status for its context has the same state and
        description. The lookup only saves a request: when it fails for any reason but the
        network or the token (401), the status is posted anyway and that answer decides."""
        try:
            latest = await self.latest_status(repo, sha, spec.context)
        except ProviderError as exc:
            if exc.status is None or exc.status == 401:
                raise
            log.info("gitea_status_lookup_failed", repo=repo, sha=sha, context=spec.context,
                     http_status=exc.status, error=str(exc))
            latest = None
        if latest == (spec.state, spec.description):
            log.info("gitea_status_unchanged", repo=repo, sha=sha, context=spec.context,
                     state=spec.state)
            return "skipped"
        await self.post_status(repo, sha, spec)
        return "sent"


def _status_list(response: httpx.Response) -> list[Mapping[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        raise ProviderError(
            f"Gitea answered {response.status_code} with a body that is not JSON "
            "to a status list request; is the integration's url the Gitea root?",
            retryable=True, status=response.status_code,
        ) from None
    if not isinstance(body, list):
        raise ProviderError(
            "Gitea answered a status list request with something that is not a list; "
            "is the integration's url the Gitea root?",
            retryable=False, status=response.status_code,
        )
    return [item for item in body if isinstance(item, Mapping)]


def _total_count(response: httpx.Response) -> int | None:
    raw = response.headers.get("X-Total-Count")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


__all__ = [
    "DEFAULT_TIMEOUT",
    "DESCRIPTION_LIMIT",
    "GiteaStatusClient",
    "StatusSpec",
    "StatusState",
    "clip",
    "context_for",
    "describe",
    "error_for_response",
    "needs_final_status",
    "retry_after_seconds",
    "status_for_run",
    "target_url",
    "to_state",
]
