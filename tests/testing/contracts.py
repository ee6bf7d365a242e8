"""The external API contracts (``shared/contracts``) as checks the test doubles run.

Owns locating the contracts folder, loading the swagger 2.0 files once, validating bodies
against their definitions and responses, and the recording/failure-injection plumbing
(``FakeServer``) shared by the fake Gitea and Argo CD servers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

CONTRACTS_ENV = "TESTMESH_CONTRACTS_DIR"
"""Environment variable naming the contracts folder; wins over the upward search."""

SPEC_FILES: Mapping[str, str] = {
    "gitea": "gitea/swagger.v1.json",
    "gitea-1.24": "gitea/swagger.v1.24.json",
    "argocd": "argocd/swagger.json",
}
"""Swagger files by short name, relative to the contracts folder."""

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch"})

#: RFC 3339 date-times, checked here rather than through jsonschema's optional
#: ``rfc3339-validator`` extra, so a fresh install checks them too.
_FORMATS = FormatChecker(())
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@_FORMATS.checks("date-time", raises=ValueError)  # type: ignore[untyped-decorator]
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return True
"""Only ``date-time`` is checked: Gitea sends ``""`` for hidden e-mails, so ``email`` is not."""


class ContractsNotFound(FileNotFoundError):
    """No ``shared/contracts`` folder was found; set TESTMESH_CONTRACTS_DIR."""


def contracts_dir() -> Path:
    """Find ``shared/contracts``: TESTMESH_CONTRACTS_DIR, else a ``shared/contracts`` beside
    this file's folders or any of their ancestors (the repo sits at ``<x>/main`` beside
    ``<x>/shared``; CI clones it elsewhere with a copy of ``shared/`` beside the clone)."""
    env = os.environ.get(CONTRACTS_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "README.md").is_file():
            raise ContractsNotFound(f"{CONTRACTS_ENV}={env} does not hold the contracts README.md")
        return path
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "contracts"
        if (candidate / "README.md").is_file():
            return candidate
    raise ContractsNotFound(
        f"no shared/contracts folder above {here}; put a copy of shared/ beside the repo "
        f"or set {CONTRACTS_ENV} to the contracts folder"
    )


def contract_path(relative: str) -> Path:
    """Absolute path of a file inside the contracts folder, e.g. ``gitea/webhooks/push.json``."""
    path = contracts_dir() / relative
    if not path.is_file():
        raise ContractsNotFound(f"contract file {relative} is missing from {contracts_dir()}")
    return path


@cache
def load_bytes(relative: str) -> bytes:
    """Raw bytes of a contract file (samples are byte-exact, so keep the bytes)."""
    return contract_path(relative).read_bytes()


def load_json(relative: str) -> Any:
    """A fresh parsed copy of a JSON contract file (callers may patch it)."""
    return json.loads(load_bytes(relative))


@cache
def load_spec(name: str) -> dict[str, Any]:
    """The parsed swagger document for ``name`` (a key of SPEC_FILES), loaded once."""
    if name not in SPEC_FILES:
        raise KeyError(f"unknown spec {name!r}; known: {sorted(SPEC_FILES)}")
    spec: dict[str, Any] = json.loads(load_bytes(SPEC_FILES[name]))
    if spec.get("swagger") != "2.0":
        raise ValueError(f"{SPEC_FILES[name]} is not a swagger 2.0 document")
    return spec


def _spec_uri(name: str, nullable: bool, extra_nullable: frozenset[str]) -> str:
    suffix = "+nullable" if nullable else ""
    if extra_nullable:
        suffix += "+" + ",".join(sorted(extra_nullable))
    return f"urn:testmesh:contracts:{name}{suffix}"


def _make_nullable(definitions: dict[str, Any], extra: frozenset[str]) -> None:
    """Let Go pointer fields be ``null``: every ``$ref`` and ``date-time`` property, and the
    property names in ``extra`` (Gitea's swagger never marks pointers as nullable)."""
    for schema in definitions.values():
        properties = schema.get("properties", {})
        for prop_name, prop in list(properties.items()):
            if "$ref" in prop:
                properties[prop_name] = {"anyOf": [prop, {"type": "null"}]}
            elif (prop.get("format") == "date-time" or prop_name in extra) and isinstance(
                prop.get("type"), str
            ):
                prop["type"] = [prop["type"], "null"]


@cache
def _registry(
    name: str, nullable: bool, extra_nullable: frozenset[str]
) -> tuple[str, Registry[Any]]:
    document = load_spec(name)
    if nullable:
        document = copy.deepcopy(document)
        _make_nullable(document["definitions"], extra_nullable)
    uri = _spec_uri(name, nullable, extra_nullable)
    resource = Resource.from_contents(document, default_specification=DRAFT4)
    return uri, Registry().with_resource(uri, resource)


def _check_schema(
    spec: str,
    schema: Mapping[str, Any],
    instance: Any,
    *,
    nullable: bool = False,
    extra_nullable: Iterable[str] = (),
    label: str = "",
) -> list[str]:
    uri, registry = _registry(spec, nullable, frozenset(extra_nullable))
    rooted = _reroot(schema, uri)
    validator = Draft4Validator(rooted, registry=registry, format_checker=_FORMATS)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{label}{_short(e.json_path)}: {_clip(e.message)}" for e in errors]


def _reroot(schema: Any, uri: str) -> Any:
    """Point local ``#/...`` refs of an inline schema at the swagger document ``uri``."""
    if isinstance(schema, dict):
        return {
            k: (
                uri + v
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _reroot(v, uri)
            )
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_reroot(v, uri) for v in schema]
    return schema


def _short(json_path: str) -> str:
    return json_path if json_path != "$" else "$"


def _clip(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def definition(spec: str, name: str) -> dict[str, Any]:
    """The raw swagger definition ``name`` (KeyError naming close matches if absent)."""
    definitions: dict[str, Any] = load_spec(spec)["definitions"]
    if name not in definitions:
        close = [d for d in definitions if name.lower() in d.lower()][:10]
        raise KeyError(f"{spec} swagger has no definition {name!r}; similar: {close}")
    result: dict[str, Any] = definitions[name]
    return result


def validate_definition(
    spec: str,
    name: str,
    instance: Any,
    *,
    strict: bool = False,
    nullable: bool = False,
    extra_nullable: Iterable[str] = (),
    ignore_keys: Iterable[str] = (),
) -> list[str]:
    """Check ``instance`` against ``#/definitions/<name>`` of ``spec``; return every problem
    as ``"<Name>$.path: message"`` (empty list = valid).

    ``strict`` also reports keys the definition does not declare (swagger leaves
    ``additionalProperties`` open; for request bodies an unknown key is a contract
    violation). ``ignore_keys`` are top-level keys tolerated in strict mode (e.g. the
    Kubernetes ``apiVersion``/``kind``). ``nullable`` lets Go pointer fields be null."""
    definition(spec, name)  # precise KeyError for a typo
    problems = _check_schema(
        spec,
        {"$ref": f"#/definitions/{name}"},
        instance,
        nullable=nullable,
        extra_nullable=extra_nullable,
        label=name,
    )
    if strict:
        problems += [f"{name}{p}" for p in unknown_keys(spec, name, instance, ignore_keys)]
    return problems


def unknown_keys(spec: str, name: str, instance: Any, ignore_keys: Iterable[str] = ()) -> list[str]:
    """Keys of ``instance`` (recursively) that definition ``name`` does not declare."""
    out: list[str] = []
    _walk_unknown(load_spec(spec), definition(spec, name), instance, "$", out, set(ignore_keys))
    return out


def _resolve(document: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        ref: str = schema["$ref"]
        if not ref.startswith("#/"):
            return schema
        node: Any = document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
        seen += 1
    return schema


def _walk_unknown(
    document: Mapping[str, Any],
    schema: Mapping[str, Any],
    instance: Any,
    path: str,
    out: list[str],
    ignore: set[str],
) -> None:
    schema = _resolve(document, schema)
    if isinstance(instance, dict) and "properties" in schema:
        properties: Mapping[str, Any] = schema["properties"]
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if key in properties:
                _walk_unknown(document, properties[key], value, f"{path}.{key}", out, set())
            elif key in ignore:
                continue
            elif isinstance(extra, dict):
                _walk_unknown(document, extra, value, f"{path}.{key}", out, set())
            elif extra is not True:
                allowed = ", ".join(sorted(properties))
                out.append(f"{path}: unknown key {key!r} (allowed: {allowed})")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            _walk_unknown(document, schema["items"], item, f"{path}[{index}]", out, set())


@dataclass(frozen=True)
class Operation:
    """One swagger operation: where it is and what it declares."""

    spec: str
    method: str
    template: str
    operation_id: str
    raw: Mapping[str, Any] = field(repr=False)

    def parameter_names(self, location: str) -> frozenset[str]:
        """Names of the parameters declared ``in`` ``location`` (query, path, body, ...)."""
        return frozenset(p["name"] for p in self.raw.get("parameters", []) if p["in"] == location)

    def parameter(self, name: str, location: str = "query") -> Mapping[str, Any] | None:
        for p in self.raw.get("parameters", []):
            if p["name"] == name and p["in"] == location:
                result: Mapping[str, Any] = p
                return result
        return None


def _strip_base(spec: dict[str, Any], path: str) -> str:
    path = path.split("?", 1)[0]
    base = str(spec.get("basePath") or "").rstrip("/")
    if base and (path == base or path.startswith(base + "/")):
        return path[len(base) :] or "/"
    return path


@cache
def _template_patterns(spec: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    patterns = []
    for template in load_spec(spec)["paths"]:
        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        patterns.append((template, re.compile(f"^{regex}$")))
    # Literal segments beat placeholders: prefer templates with fewer placeholders.
    patterns.sort(key=lambda item: (item[0].count("{"), -len(item[0])))
    return tuple(patterns)


def operation(spec: str, method: str, path: str) -> Operation | None:
    """Look up the operation for ``method`` and ``path``: a template as in the swagger
    (``/repos/{owner}/{repo}/statuses/{sha}``) or a concrete request path, with or without
    the spec's basePath (``/api/v1/repos/acme/shop/statuses/<sha>``). None if undeclared."""
    document = load_spec(spec)
    method = method.lower()
    relative = _strip_base(document, path)
    paths: Mapping[str, Any] = document["paths"]
    candidates = [relative] if relative in paths else []
    candidates += [t for t, rx in _template_patterns(spec) if t != relative and rx.match(relative)]
    for template in candidates:
        raw = paths[template].get(method)
        if raw is not None:
            return Operation(spec, method.upper(), template, str(raw.get("operationId", "")), raw)
    return None


def response_schema(op: Operation, status: int) -> tuple[bool, Mapping[str, Any] | None]:
    """``(declared, schema)`` of ``op``'s response for ``status`` (or its ``default``);
    ``#/responses/...`` references are followed."""
    document = load_spec(op.spec)
    responses: Mapping[str, Any] = op.raw.get("responses", {})
    raw = responses.get(str(status))
    declared = raw is not None
    if raw is None:
        raw = responses.get("default")
    if raw is None:
        return False, None
    raw = _resolve(document, raw)
    return declared, raw.get("schema")


def validate_response(
    spec: str, method: str, path: str, status: int, body: Any, *, nullable: bool = False
) -> list[str]:
    """Check what a fake answers: the operation must exist, a 2xx status must be declared,
    and the body must match the declared (or ``default``) response schema."""
    op = operation(spec, method, path)
    if op is None:
        return [f"{method.upper()} {path}: no such operation in the {spec} swagger"]
    declared, schema = response_schema(op, status)
    label = f"{op.operation_id} {status}"
    if 200 <= status < 300 and not declared:
        return [f"{label}: status {status} is not declared for {op.method} {op.template}"]
    if schema is None:
        return []
    return _check_schema(spec, schema, body, nullable=nullable, label=label)


# --- plumbing shared by the fakes ------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received, as sent (headers kept: this is a test double)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Violation:
    """A contract violation a fake saw: in a request (``kind="request"``) or in its own
    answer (``kind="response"``, a bug in the fake)."""

    method: str
    path: str
    message: str
    kind: str = "request"

    def __str__(self) -> str:
        return f"{self.kind} {self.method} {self.path}: {self.message}"


@dataclass
class _Injection:
    status: int
    remaining: int | None  # None = until reset()
    method: str | None


class FakeServer:
    """Base of the fakes: an aiohttp app on 127.0.0.1, request recording, violations,
    failure injection and event-driven waiting. Subclasses add routes in ``_routes``."""

    default_inject_method: str | None = None
    """Which verb ``fail_next``/``respond_with`` hit by default (None = every request)."""

    def __init__(self, *, debug: bool = True) -> None:
        self.debug = debug
        self.requests: list[RecordedRequest] = []
        self.violations: list[Violation] = []
        self.base_url = ""
        self._changed = asyncio.Condition()
        self._injections: list[_Injection] = []
        self._down = False
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._middleware])
        self._routes(self.app)

    # subclasses
    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    # lifecycle
    async def start(self) -> str:
        """Serve on 127.0.0.1 on a free port; return the base URL (``http://127.0.0.1:N``)."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        if not runner.addresses:
            raise RuntimeError("TCPSite did not bind a socket")
        port = runner.addresses[0][1]  # the port the OS picked for port 0
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # failure injection
    def fail_next(self, n: int = 1, status: int = 503, *, method: str | None = "") -> None:
        """The next ``n`` matching requests answer ``status`` (with the system's error
        shape). ``method`` limits it to one verb; the default is the fake's own default."""
        chosen = self.default_inject_method if method == "" else method
        self._injections.append(_Injection(status, n, chosen.upper() if chosen else None))

    def respond_with(self, status: int, *, method: str | None = "") -> None:
        """Answer ``status`` to every matching request until ``reset()``."""
        chosen = self.default_inject_method if method == "" else method
        self._injections.append(_Injection(status, None, chosen.upper() if chosen else None))

    def go_down(self) -> None:
        """Drop every request's connection without an answer (clients see a network error)."""
        self._down = True

    def come_up(self) -> None:
        self._down = False

    def reset(self) -> None:
        """End all failure injection (``fail_next``, ``respond_with``, ``go_down``); recorded
        requests and the fake's data stay (``clear()`` wipes those)."""
        self._injections.clear()
        self._down = False

    def clear(self) -> None:
        """Forget recorded requests and violations (subclasses also drop their data)."""
        self.requests.clear()
        self.violations.clear()

    # recordings
    def assert_no_violations(self) -> None:
        if self.violations:
            raise AssertionError("contract violations:\n" + "\n".join(map(str, self.violations)))

    def requests_to(self, method: str, path_suffix: str = "") -> list[RecordedRequest]:
        return [
            r for r in self.requests if r.method == method.upper() and r.path.endswith(path_suffix)
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait (on a condition, not a sleep loop) until ``predicate()`` holds."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"{type(self).__name__}: condition not met within {timeout}s; "
                    f"{len(self.requests)} requests seen: "
                    + ", ".join(f"{r.method} {r.path}" for r in self.requests[-10:])
                ) from None

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:  # noqa: ASYNC109
        await self.wait_for(lambda: len(self.requests) >= n, timeout)
        return list(self.requests)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _violation(self, request: web.Request, message: str, kind: str = "request") -> None:
        self.violations.append(Violation(request.method, request.path, message, kind))

    # helpers for handlers
    def _json(self, data: Any, status: int = 200, **headers: str) -> web.Response:
        return web.Response(
            text=json.dumps(data), status=status, content_type="application/json", headers=headers
        )

    def _error(self, status: int, message: str) -> web.Response:
        return self._json(self._error_body(status, message), status)

    def _check_answer(
        self, spec: str, request: web.Request, status: int, body: Any, *, nullable: bool = False
    ) -> None:
        """In debug mode, validate the fake's own answer against the swagger."""
        if not self.debug:
            return
        for problem in validate_response(
            spec, request.method, request.path, status, body, nullable=nullable
        ):
            self._violation(request, problem, kind="response")

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            RecordedRequest(
                request.method, request.path, dict(request.query), dict(request.headers), body
            )
        )
        try:
            if self._down:
                if request.transport is not None:
                    request.transport.close()
                raise web.HTTPServiceUnavailable()  # never reaches the client: no transport
            for injection in self._injections:
                if injection.method is None or injection.method == request.method:
                    if injection.remaining is not None:
                        injection.remaining -= 1
                        if injection.remaining <= 0:
                            self._injections.remove(injection)
                    return self._error(injection.status, f"injected failure {injection.status}")
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            await self._notify()
