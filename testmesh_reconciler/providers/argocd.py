"""Argo CD as an environment provider: get, create, sync, wait for Healthy, delete.

Pure mapping (``to_state``, ``readiness``, ``application_body``) sits beside the IO
(``ArgoCDClient`` over a shared ``httpx.AsyncClient``, time injected) and the one recipe the
environment manager calls, ``ensure_ready``. Shapes follow Argo CD v3.5's swagger.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import httpx

from testmesh_reconciler.config.frozen import thaw
from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.errors import ProviderError
from testmesh_reconciler.log import get_logger

log = get_logger("testmesh.providers.argocd")

#: An injected monotonic clock: seconds that never go back (``time.monotonic``).
Monotonic = Callable[[], float]
#: An injected ``asyncio.sleep``.
Sleep = Callable[[float], Awaitable[None]]

Readiness = Literal["ready", "progressing", "failed"]

#: Operation phases while Argo CD still works on an operation (Go ``OperationPhase``).
RUNNING_PHASES: Final = frozenset({"Running", "Terminating"})
FAILED_PHASES: Final = frozenset({"Failed", "Error"})

#: ``v1alpha1ApplicationSpec`` properties (swagger v3.5): what an ``application`` template
#: may hold. Anything else is rejected before Argo CD sees it.
SPEC_FIELDS: Final = frozenset({
    "destination", "ignoreDifferences", "info", "project", "revisionHistoryLimit", "source",
    "sourceHydrator", "sources", "syncPolicy",
})
#: Label on every Application this daemon creates, so operators can find (and clean) them.
MANAGED_BY_LABEL: Final = ("app.kubernetes.io/managed-by", "testmesh-reconciler")

_CONFLICT: Final = "another operation is already in progress"
_EXISTS: Final = ("existing application spec is different", "already exists")
_SHA: Final = re.compile(r"[0-9a-f]{40}")


# --------------------------------------------------------------------------------------------
# Pure mapping


@dataclass(frozen=True, slots=True)
class AppState:
    """What matters of an Application for provisioning. ``phase`` is the last operation's
    phase (None: no operation seen); ``operation_pending`` is True while Argo CD still has an
    operation to start or finish (the Application's ``operation`` field is set)."""

    sync: str
    health: str
    phase: str | None
    message: str
    revision: str | None
    operation_pending: bool = False

    def describe(self) -> str:
        """``Synced/Progressing``: sync status and health, as people say it."""
        return f"{self.sync}/{self.health}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def to_state(app: Mapping[str, Any]) -> AppState:
    """An ``AppState`` from a ``v1alpha1Application`` JSON (missing parts read as Unknown).

    ``message`` is the operation's message, else the health message; ``revision`` the synced
    revision (``status.sync.revision``), else the operation result's."""
    status = _mapping(app.get("status"))
    sync = _mapping(status.get("sync"))
    health = _mapping(status.get("health"))
    op_state = _mapping(status.get("operationState"))
    result = _mapping(op_state.get("syncResult"))
    phase = op_state.get("phase") or None
    message = str(op_state.get("message") or health.get("message") or "")
    revision = sync.get("revision") or result.get("revision") or None
    return AppState(
        sync=str(sync.get("status") or "Unknown"),
        health=str(health.get("status") or "Unknown"),
        phase=str(phase) if phase else None,
        message=message,
        revision=str(revision) if revision else None,
        operation_pending=bool(app.get("operation")) or phase in RUNNING_PHASES,
    )


def readiness(state: AppState) -> tuple[Readiness, str]:
    """``ready`` / ``progressing`` / ``failed``, with a reason for logs and errors.

    ready: Synced + Healthy, the last operation Succeeded (or none ran) and none pending.
    failed: the operation phase is Failed/Error, or health is Degraded once no operation is
    running (while one runs, Degraded may be the old state the sync is about to fix).
    """
    if state.phase in FAILED_PHASES:
        detail = f": {state.message}" if state.message else ""
        return "failed", f"sync operation {state.phase}{detail}"
    if state.operation_pending:
        return "progressing", f"operation {state.phase or 'pending'} ({state.describe()})"
    if state.health == "Degraded":
        detail = f": {state.message}" if state.message else ""
        return "failed", f"health Degraded{detail}"
    if state.sync == "Synced" and state.health == "Healthy" \
            and state.phase in (None, "Succeeded"):
        return "ready", "Synced and Healthy"
    return "progressing", state.describe()


def application_body(name: str, namespace: str | None, template: Mapping[str, Any]
                     ) -> dict[str, Any]:
    """A ``v1alpha1Application`` for ``POST /api/v1/applications`` from an environment's
    rendered ``application`` template (an ``ApplicationSpec``): ``project`` defaults to
    ``default``, ``destination.namespace`` to the environment's ``namespace``.

    Raises a non-retryable ``ProviderError`` naming any key that is no ApplicationSpec field.
    """
    spec: dict[str, Any] = thaw(template)
    unknown = sorted(set(spec) - SPEC_FIELDS)
    if unknown:
        raise ProviderError(
            f"the `application` template of {name!r} has keys Argo CD's ApplicationSpec does "
            f"not know: {', '.join(unknown)} (allowed: {', '.join(sorted(SPEC_FIELDS))})",
            retryable=False)
    spec["project"] = spec.get("project") or "default"
    destination = dict(_mapping(spec.get("destination")))
    if namespace and not destination.get("namespace"):
        destination["namespace"] = namespace
    spec["destination"] = destination
    key, value = MANAGED_BY_LABEL
    return {"metadata": {"name": name, "labels": {key: value}}, "spec": spec}


# --------------------------------------------------------------------------------------------
# IO


def _error_message(response: httpx.Response) -> str:
    """The ``runtimeError`` message of an answer, else the start of its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, Mapping):
        return str(body.get("message") or body.get("error") or "").strip() or str(body)[:200]
    return str(body)[:200]


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


class ArgoCDClient:
    """Argo CD's application API for one integration (``base_url`` + Bearer ``token``).

    The ``httpx.AsyncClient`` is the daemon's shared one; ``clock`` (monotonic seconds) and
    ``sleep`` are injected so polling is tested without waiting. Every failure is a
    ``ProviderError``: retryable for network errors, 5xx and 429, not for the rest (401 =
    the token was rejected). The token never appears in a message.
    """

    def __init__(self, http: httpx.AsyncClient, base_url: str, token: SecretValue, *,
                 clock: Monotonic, sleep: Sleep) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._host = urlsplit(self._base).netloc or self._base
        self._token = token
        self._clock = clock
        self._sleep = sleep

    def monotonic(self) -> float:
        """The injected clock's reading (seconds), for callers sharing this client's time."""
        return self._clock()

    def _url(self, name: str | None = None, suffix: str = "") -> str:
        url = f"{self._base}/api/v1/applications"
        if name is not None:
            url += "/" + quote(name, safe="")
        return url + suffix

    async def _send(self, method: str, url: str, what: str, *,
                    json: Any = None, params: Mapping[str, str] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token.reveal()}",
                   "Accept": "application/json"}
        try:
            return await self._http.request(method, url, headers=headers, json=json,
                                            params=params)
        except httpx.TransportError as exc:
            raise ProviderError(
                f"Argo CD at {self._host} unreachable while {what}: "
                f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}",
                retryable=True) from exc

    def _failure(self, response: httpx.Response, what: str) -> ProviderError:
        status = response.status_code
        message = _error_message(response)
        if status == 401:
            return ProviderError(
                f"Argo CD at {self._host} token rejected (401) while {what}: {message}; check "
                f"the integration's secrets.token", retryable=False, status=status)
        if status == 429 or status >= 500:
            return ProviderError(f"Argo CD at {self._host} answered {status} while {what}: "
                                 f"{message}", retryable=True, delay=_retry_after(response),
                                 status=status)
        return ProviderError(f"Argo CD at {self._host} answered {status} while {what}: "
                             f"{message}", retryable=False, status=status)

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(f"Argo CD answered {response.status_code} with a body that is "
                                f"not JSON while {what}", retryable=False,
                                status=response.status_code) from exc
        if not isinstance(body, dict):
            raise ProviderError(f"Argo CD answered a JSON {type(body).__name__}, not an "
                                f"object, while {what}", retryable=False,
                                status=response.status_code)
        return body

    async def get_app(self, name: str) -> dict[str, Any] | None:
        """The Application JSON, or None when it does not exist.

        Argo CD answers 403 ``permission denied`` (code 7) for a missing app unless the
        caller names a project it may read; 403 is therefore ambiguous (missing, or this
        token may not read it) and read as missing here. ``create_app`` resolves the
        ambiguity: a 403 there too means the token lacks rights.
        """
        what = f"getting application {name!r}"
        response = await self._send("GET", self._url(name), what)
        if response.status_code in (403, 404):
            return None
        if response.status_code != 200:
            raise self._failure(response, what)
        return self._json(response, what)

    async def create_app(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Application (``POST /api/v1/applications``, no upsert) and return it.

        When it already exists (created meanwhile, maybe with another spec) the existing one
        is fetched and returned: we never overwrite an Application someone else manages.
        """
        name = str(_mapping(body.get("metadata")).get("name") or "")
        project = str(_mapping(body.get("spec")).get("project") or "default")
        what = f"creating application {name!r}"
        response = await self._send("POST", self._url(), what, json=dict(body))
        if response.status_code == 200:
            created = self._json(response, what)
            log.info("argocd_app_created", app=name, project=project, host=self._host)
            return created
        message = _error_message(response)
        if response.status_code in (400, 409) and any(m in message for m in _EXISTS):
            existing = await self.get_app(name)
            if existing is not None:
                log.info("argocd_app_exists", app=name, reason=message)
                return existing
        if response.status_code == 403:
            raise ProviderError(
                f"Argo CD denied creating application {name!r} in project {project!r} (403 "
                f"{message}). Argo CD also answers 403 to a GET for an application that does "
                f"not exist, so either the application is missing and the token may not "
                f"create it, or it exists and the token may not read it: grant the token's "
                f"account `applications, get` and `create` on project {project!r} "
                f"(argocd-rbac-cm), or create the application yourself.",
                retryable=False, status=403)
        raise self._failure(response, what)

    async def sync(self, name: str, revision: str | None = None) -> bool:
        """Start a sync (``POST /api/v1/applications/{name}/sync``). True when it started;
        False when Argo CD says another operation is already in progress, which is treated
        as already syncing (the caller waits for it as for its own)."""
        what = f"syncing application {name!r}"
        request: dict[str, Any] = {"name": name}
        if revision:
            request["revision"] = revision
        response = await self._send("POST", self._url(name, "/sync"), what, json=request)
        if response.status_code == 200:
            log.info("argocd_sync_started", app=name, revision=revision)
            return True
        message = _error_message(response)
        if _CONFLICT in message:
            log.info("argocd_sync_already_running", app=name)
            return False
        if response.status_code == 403:
            raise ProviderError(
                f"Argo CD denied syncing application {name!r} (403 {message}): the token may "
                f"lack `applications, sync` on its project, or the application was deleted",
                retryable=False, status=403)
        raise self._failure(response, what)

    # The deadline runs on the injected clock, which asyncio.timeout cannot follow.
    async def wait_ready(self, name: str, *, timeout: float,  # noqa: ASYNC109
                         initial_delay: float = 1.0, max_delay: float = 10.0) -> AppState:
        """Poll until the app is ready (see ``readiness``), with exponential backoff from
        ``initial_delay`` to ``max_delay`` seconds through the injected sleep, for at most
        ``timeout`` seconds of the injected clock.

        Degraded / a failed operation and the timeout raise non-retryable errors; retryable
        errors of single polls (network, 5xx) are ridden out until the deadline.
        """
        deadline = self._clock() + timeout
        delay = max(initial_delay, 0.0)
        last: AppState | None = None
        last_error: ProviderError | None = None
        while True:
            try:
                app = await self.get_app(name)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                last_error = exc
                log.warning("argocd_poll_failed", app=name, error=str(exc))
            else:
                if app is None:
                    raise ProviderError(
                        f"application {name!r} disappeared from Argo CD while waiting for it "
                        f"to become Healthy (or the token may no longer read it)",
                        retryable=False)
                last, last_error = to_state(app), None
                verdict, reason = readiness(last)
                if verdict == "ready":
                    return last
                if verdict == "failed":
                    raise ProviderError(f"application {name!r} failed: {reason}",
                                        retryable=False)
            remaining = deadline - self._clock()
            if remaining <= 0:
                seen = last.describe() if last is not None else "never seen"
                if last_error is not None:
                    seen += f"; last error: {last_error}"
                raise ProviderError(f"application {name!r} not Healthy after {timeout:g} s "
                                    f"(last: {seen})", retryable=False)
            await self._sleep(min(delay, remaining))
            delay = min(max(delay * 2, initial_delay, 0.001), max_delay)

    async def delete_app(self, name: str) -> bool:
        """Delete the app and its resources (``?cascade=true``). True when deleted; False
        when Argo CD says it is not there (403/404, which may also mean this token may not
        see it): either way there is nothing left for us to delete."""
        what = f"deleting application {name!r}"
        response = await self._send("DELETE", self._url(name), what,
                                    params={"cascade": "true"})
        if response.status_code == 200:
            log.info("argocd_app_deleted", app=name)
            return True
        if response.status_code in (403, 404):
            log.info("argocd_app_already_gone", app=name, status=response.status_code)
            return False
        raise self._failure(response, what)


# --------------------------------------------------------------------------------------------
# The recipe


async def ensure_ready(client: ArgoCDClient, *, app_name: str, namespace: str | None,
                       template: Mapping[str, Any] | None, revision: str | None,
                       timeout: float) -> AppState:  # noqa: ASYNC109 (injected clock)
    """Get the app, create it from ``template`` when missing, sync it, wait until Healthy.

    ``revision`` (if any) is passed to the sync. When another operation was already running,
    it is waited for; if it then left the app on another commit than a requested sha, the
    app is synced once more (within the same ``timeout``).
    """
    started = client.monotonic()
    app = await client.get_app(app_name)
    if app is None:
        if template is None:
            raise ProviderError(
                f"application {app_name!r} does not exist in Argo CD and the TestEnvironment "
                f"declares no `application` template to create it; create it or add "
                f"spec.application", retryable=False)
        await client.create_app(application_body(app_name, namespace, template))
    started_sync = await client.sync(app_name, revision)
    state = await client.wait_ready(app_name, timeout=timeout)
    if not started_sync and revision and _SHA.fullmatch(revision) \
            and state.revision != revision:
        log.info("argocd_resync_after_foreign_operation", app=app_name,
                 revision=revision, found=state.revision)
        remaining = max(timeout - (client.monotonic() - started), 0.0)
        await client.sync(app_name, revision)
        state = await client.wait_ready(app_name, timeout=remaining)
    return state
