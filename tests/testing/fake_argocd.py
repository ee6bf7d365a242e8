"""A fake Argo CD (v3.5 REST API) for Applications, checked against the real swagger.

Owns ``FakeArgoCD``: get/create/sync/delete Applications with Bearer auth, gRPC-style
``runtimeError`` answers (403 for a missing app), scripted sync/health progression per app,
and ``build_application`` (an Application JSON valid against ``v1alpha1Application``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiohttp import web

from .contracts import FakeServer, validate_definition

SPEC = "argocd"
SYNC_STATUSES = ("Synced", "OutOfSync", "Unknown")
HEALTH_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
PHASES = ("Running", "Terminating", "Failed", "Error", "Succeeded")
RUNNING_PHASES = ("Running", "Terminating")

# gRPC codes used by Argo CD's API server, and the HTTP status grpc-gateway maps them to.
GRPC_HTTP = {3: 400, 5: 404, 6: 409, 7: 403, 9: 400, 13: 500, 14: 503, 16: 401}
_HTTP_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 502: 14, 503: 14, 504: 4}
# Kubernetes TypeMeta is inlined in the Go type but absent from the swagger definition.
TYPE_META_KEYS = ("apiVersion", "kind")


class AppState(NamedTuple):
    """One observable state of an Application: sync status, health, operation phase."""

    sync: str
    health: str
    phase: str | None = None
    message: str = ""


StateLike = (
    AppState | tuple[str, str] | tuple[str, str, str | None] | tuple[str, str, str | None, str]
)

DEFAULT_INITIAL = AppState("OutOfSync", "Missing", None)
DEFAULT_SCRIPT = (
    AppState("Synced", "Progressing", "Running"),
    AppState("Synced", "Healthy", "Succeeded", "successfully synced (all tasks run)"),
)


def _state(value: StateLike) -> AppState:
    state = value if isinstance(value, AppState) else AppState(*value)
    if state.sync not in SYNC_STATUSES:
        raise ValueError(f"sync status {state.sync!r} is not one of {SYNC_STATUSES}")
    if state.health not in HEALTH_STATUSES:
        raise ValueError(f"health {state.health!r} is not one of {HEALTH_STATUSES}")
    if state.phase is not None and state.phase not in PHASES:
        raise ValueError(f"phase {state.phase!r} is not one of {PHASES}")
    return state


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fake_revision(*parts: str) -> str:
    """A stable 40-hex 'commit sha' for a branch or tag name."""
    return hashlib.sha1("/".join(parts).encode()).hexdigest()


def build_application(
    name: str,
    *,
    project: str = "default",
    namespace: str = "argocd",
    repo_url: str = "https://gitea.example.com/acme/demo-services.git",
    path: str = "deploy",
    target_revision: str = "HEAD",
    dest_namespace: str = "default",
    dest_server: str = "https://kubernetes.default.svc",
    sync: str | None = None,
    health: str | None = None,
    revision: str | None = None,
    phase: str | None = None,
    message: str = "",
    operation: dict[str, Any] | None = None,
    created: datetime | None = None,
    annotations: dict[str, str] | None = None,
    type_meta: bool = False,
) -> dict[str, Any]:
    """An Application as Argo CD serialises it (``v1alpha1Application``). ``status`` is
    included when ``sync`` or ``health`` is given; ``type_meta`` adds apiVersion/kind as
    notification templates (``.app``) carry them."""
    stamp = _iso(created or datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC))
    app: dict[str, Any] = {}
    if type_meta:
        app.update({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application"})
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": str(_uuid_for(name)),
        "resourceVersion": "1",
        "generation": 1,
        "creationTimestamp": stamp,
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    app["metadata"] = metadata
    app["spec"] = {
        "source": {"repoURL": repo_url, "path": path, "targetRevision": target_revision},
        "destination": {"server": dest_server, "namespace": dest_namespace},
        "project": project,
    }
    if operation is not None:
        app["operation"] = operation
    if sync is not None or health is not None:
        resolved = revision or (
            target_revision
            if _is_sha(target_revision)
            else fake_revision(repo_url, target_revision)
        )
        status: dict[str, Any] = {
            "sync": {
                "status": sync or "Unknown",
                "comparedTo": {
                    "source": app["spec"]["source"],
                    "destination": app["spec"]["destination"],
                },
                "revision": resolved,
            },
            "health": {"status": health or "Unknown", "lastTransitionTime": stamp},
            "reconciledAt": stamp,
            "sourceType": "Directory",
            "summary": {},
            "controllerNamespace": namespace,
        }
        if phase is not None:
            op_state: dict[str, Any] = {
                "operation": {
                    "sync": {"revision": resolved},
                    "initiatedBy": {"username": "admin"},
                },
                "phase": phase,
                "message": message,
                "startedAt": stamp,
            }
            if phase not in RUNNING_PHASES:
                op_state["finishedAt"] = stamp
                op_state["syncResult"] = {"revision": resolved, "source": app["spec"]["source"]}
            status["operationState"] = op_state
        app["status"] = status
    return app


def _is_sha(value: str) -> bool:
    return len(value) == 40 and all(c in "0123456789abcdef" for c in value)


def _uuid_for(name: str) -> str:
    digest = hashlib.md5(name.encode()).hexdigest()  # an id, not security
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


@dataclass
class FakeApp:
    """What the fake knows about one Application."""

    name: str
    body: dict[str, Any]  # metadata + spec as created (status is computed)
    initial: AppState = DEFAULT_INITIAL
    script: tuple[AppState, ...] = DEFAULT_SCRIPT
    revision: str | None = None
    synced: bool = False  # a sync was requested at least once
    cursor: int = -1  # index into script of the state shown; -1 = sync requested, not seen
    sync_requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def project(self) -> str:
        return str(self.body.get("spec", {}).get("project") or "default")

    @property
    def current(self) -> AppState:
        if not self.synced:
            return self.initial
        if self.cursor < 0:  # sync accepted, controller has not started it yet
            return AppState(self.initial.sync, self.initial.health, None)
        return self.script[min(self.cursor, len(self.script) - 1)]

    @property
    def operation_running(self) -> bool:
        return self.synced and (self.cursor < 0 or self.current.phase in RUNNING_PHASES)

    def advance(self) -> None:
        if self.synced and self.cursor < len(self.script) - 1:
            self.cursor += 1


@dataclass(frozen=True)
class DeleteCall:
    name: str
    cascade: str | None
    propagation_policy: str | None


class FakeArgoCD(FakeServer):
    """Fake Argo CD API server for ``/api/v1/applications``.

    A sync starts an app's script; each later GET shows the next scripted state (the last
    one sticks). ``readable_projects`` are the projects for which a GET with ``?project=``
    of a missing app answers 404 instead of 403.
    """

    def __init__(
        self,
        token: str = "argo-t0k3n",
        *,
        readable_projects: Iterable[str] = ("default",),
        clock: Callable[[], datetime] | None = None,
        debug: bool = True,
    ) -> None:
        self.token = token
        self.readable_projects = set(readable_projects)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.apps: dict[str, FakeApp] = {}
        self.creates: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.deletes: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()
        self.deleted: list[DeleteCall] = []
        self._scripts: dict[str, tuple[AppState, tuple[AppState, ...]]] = {}
        super().__init__(debug=debug)

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/applications/{name}", self._get)
        app.router.add_post("/api/v1/applications", self._create)
        app.router.add_post("/api/v1/applications/{name}/sync", self._sync)
        app.router.add_delete("/api/v1/applications/{name}", self._delete)

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        return {
            "error": message,
            "code": _HTTP_GRPC.get(status, 2),
            "message": message,
            "details": [],
        }

    def _grpc_error(self, code: int, message: str) -> web.Response:
        body = {"error": message, "code": code, "message": message, "details": []}
        return self._json(body, GRPC_HTTP.get(code, 500))

    # --- controller API ------------------------------------------------------------

    def add_app(
        self,
        name: str,
        *,
        initial: StateLike | None = None,
        script: Sequence[StateLike] | None = None,
        revision: str | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """Seed an existing Application (``spec`` keywords as for ``build_application``)."""
        body = build_application(name, **spec)
        app = FakeApp(name, body, revision=revision)
        self.apps[name] = app
        self._apply_script(app, initial, script)
        return body

    def script_app(
        self, name: str, script: Sequence[StateLike], *, initial: StateLike | None = None
    ) -> None:
        """Set the states an app goes through after a sync (for an app now or created later),
        e.g. ``[("Synced", "Progressing", "Running"), ("Synced", "Degraded", "Succeeded")]``."""
        states = tuple(_state(s) for s in script)
        if not states:
            raise ValueError("a script needs at least one state")
        first = _state(initial) if initial is not None else DEFAULT_INITIAL
        self._scripts[name] = (first, states)
        if name in self.apps:
            app = self.apps[name]
            app.script = states
            if initial is not None:
                app.initial = first

    def state_of(self, name: str) -> AppState:
        return self.apps[name].current

    def clear(self) -> None:
        """Forget apps, scripts, counters, recorded requests and violations."""
        super().clear()
        for store in (self.creates, self.syncs, self.deletes, self.gets):
            store.clear()
        self.apps.clear()
        self._scripts.clear()
        self.deleted.clear()

    async def wait_for_syncs(self, name: str, n: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda: self.syncs[name] >= n, timeout)

    async def wait_for_deletes(self, name: str, n: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda: self.deletes[name] >= n, timeout)

    def _apply_script(
        self, app: FakeApp, initial: StateLike | None, script: Sequence[StateLike] | None
    ) -> None:
        scripted_initial, scripted = self._scripts.get(app.name, (DEFAULT_INITIAL, DEFAULT_SCRIPT))
        app.initial = _state(initial) if initial is not None else scripted_initial
        app.script = tuple(_state(s) for s in script) if script is not None else scripted

    # --- auth ----------------------------------------------------------------------

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = token or request.cookies.get("argocd.token", "")
        if not token:
            return self._grpc_error(16, "no session information")
        if token != self.token:
            return self._grpc_error(16, "invalid session: token signature is invalid")
        return None

    def _missing(self, request: web.Request, name: str) -> web.Response:
        """Argo CD hides existence: 403 unless the caller names a project it may read."""
        project = request.query.get("project") or request.query.get("projects")
        if project and project in self.readable_projects:
            return self._grpc_error(5, f'applications.argoproj.io "{name}" not found')
        return self._grpc_error(7, "permission denied")

    # --- handlers --------------------------------------------------------------------

    async def _get(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        self.gets[name] += 1
        app = self.apps.get(name)
        if app is None:
            return self._missing(request, name)
        project = request.query.get("project") or request.query.get("projects")
        if project and project != app.project:
            return self._grpc_error(7, "permission denied")
        app.advance()
        answer = self._render(app)
        self._check_answer(SPEC, request, 200, answer)
        return self._json(answer)

    async def _create(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        body = await self._body(request, "v1alpha1Application", ignore_keys=TYPE_META_KEYS)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("metadata", {}).get("name") or "")
        if not name:
            self._violation(request, "metadata.name is required")
            return self._grpc_error(
                3, 'Application.argoproj.io "" is invalid: metadata.name: Required value'
            )
        spec = body.get("spec") or {}
        invalid = self._spec_problem(spec)
        if invalid:
            self._violation(request, invalid)
            return self._grpc_error(
                3, f"application spec for {name} is invalid: InvalidSpecError: {invalid}"
            )
        stored = {k: v for k, v in body.items() if k in ("metadata", "spec")}
        stored["spec"] = {**spec, "project": spec.get("project") or "default"}
        existing = self.apps.get(name)
        if existing is not None and existing.body.get("spec") != stored["spec"]:
            if request.query.get("upsert") != "true":
                return self._grpc_error(
                    3, "existing application spec is different; use upsert flag to force update"
                )
            existing.body["spec"] = stored["spec"]
        elif existing is None:
            metadata = stored.setdefault("metadata", {})
            metadata.setdefault("namespace", "argocd")
            metadata.setdefault("uid", _uuid_for(name))
            metadata.setdefault("resourceVersion", "1")
            metadata.setdefault("generation", 1)
            metadata.setdefault("creationTimestamp", _iso(self.clock()))
            app = FakeApp(name, stored)
            self.apps[name] = app
            self._apply_script(app, None, None)
        self.creates[name] += 1
        answer = self._render(self.apps[name])
        self._check_answer(SPEC, request, 200, answer)
        return self._json(answer)

    async def _sync(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        body = await self._body(request, "applicationApplicationSyncRequest")
        if isinstance(body, web.Response):
            return body
        app = self.apps.get(name)
        if app is None:
            return self._missing(request, name)
        if app.operation_running:
            return self._grpc_error(9, "another operation is already in progress")
        app.synced = True
        app.cursor = -1
        if body.get("revision"):
            app.revision = str(body["revision"])
        app.sync_requests.append(body)
        self.syncs[name] += 1
        answer = self._render(app)
        self._check_answer(SPEC, request, 200, answer)
        return self._json(answer)

    async def _delete(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        cascade = request.query.get("cascade")
        if cascade not in (None, "true", "false"):
            self._violation(request, f"cascade={cascade!r} is not a boolean")
        if name not in self.apps:
            return self._missing(request, name)
        del self.apps[name]
        self.deletes[name] += 1
        self.deleted.append(DeleteCall(name, cascade, request.query.get("propagationPolicy")))
        answer: dict[str, Any] = {}
        self._check_answer(SPEC, request, 200, answer)
        return self._json(answer)

    # --- helpers ---------------------------------------------------------------------

    async def _body(
        self, request: web.Request, definition: str, *, ignore_keys: Iterable[str] = ()
    ) -> dict[str, Any] | web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            self._violation(request, f"body is not JSON: {exc}")
            return self._grpc_error(3, f"invalid character in request body: {exc}")
        problems = validate_definition(SPEC, definition, body, strict=True, ignore_keys=ignore_keys)
        if problems or not isinstance(body, dict):
            for problem in problems or [f"{definition}$: body is not an object"]:
                self._violation(request, problem)
            return self._grpc_error(3, "; ".join(problems) or "body is not an object")
        return body

    @staticmethod
    def _spec_problem(spec: dict[str, Any]) -> str:
        if not spec.get("source") and not spec.get("sources"):
            return "spec.source or spec.sources is required"
        for source in [spec["source"]] if spec.get("source") else spec["sources"]:
            if not source.get("repoURL"):
                return "spec.source.repoURL is required"
        destination = spec.get("destination") or {}
        if not destination.get("server") and not destination.get("name"):
            return "spec.destination: either server or name is required"
        return ""

    def _render(self, app: FakeApp) -> dict[str, Any]:
        spec = app.body.get("spec", {})
        source = spec.get("source") or (spec.get("sources") or [{}])[0]
        state = app.current
        target = str(source.get("targetRevision") or "HEAD")
        revision = app.revision or (
            target if _is_sha(target) else fake_revision(str(source.get("repoURL", "")), target)
        )
        stamp = _iso(self.clock())
        status: dict[str, Any] = {
            "sync": {
                "status": state.sync,
                "revision": revision,
                "comparedTo": {"source": source, "destination": spec.get("destination", {})},
            },
            "health": {"status": state.health, "lastTransitionTime": stamp},
            "reconciledAt": stamp,
            "sourceType": "Directory",
            "controllerNamespace": "argocd",
        }
        answer: dict[str, Any] = {"metadata": app.body.get("metadata", {}), "spec": spec}
        operation = {
            "sync": {"revision": revision},
            "initiatedBy": {"username": "admin"},
            "retry": {},
        }
        if app.synced and state.phase is not None:
            op_state: dict[str, Any] = {
                "operation": operation,
                "phase": state.phase,
                "message": state.message,
                "startedAt": stamp,
            }
            if state.phase not in RUNNING_PHASES:
                op_state["finishedAt"] = stamp
                op_state["syncResult"] = {"revision": revision, "source": source}
            status["operationState"] = op_state
        if app.operation_running:
            answer["operation"] = operation
        answer["status"] = status
        return answer
