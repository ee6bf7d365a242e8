"""The five step actions (``http_request``, ``assert``, ``log``, ``delay``, ``wait_until``),
one function each, plus the redaction of what their summaries record.

An action gets its config already interpolated and returns an ``ActionOutcome``: the result
later steps and assertions read, or an error; it never raises for a bad request or config.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from testmesh_reconciler.config.durations import parse_duration
from testmesh_reconciler.runner.clock import Clock, Sleep
from testmesh_reconciler.runner.expressions import ExpressionError, check, evaluate, parse
from testmesh_reconciler.runner.interpolate import Scope
from testmesh_reconciler.runner.results import (
    AssertionResult,
    RequestSummary,
    ResponseSummary,
)

#: Bodies longer than this (bytes) are cut in summaries.
MAX_BODY_SUMMARY: Final = 4096
#: Extracted output values longer than this are cut in summaries.
MAX_OUTPUT_SUMMARY: Final = 200
REDACTED: Final = "***"
METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# Header, query-parameter and JSON-key names whose values are never recorded.
_SECRET_NAME: Final = re.compile(
    r"authorization|cookie|token|secret|passw|pwd|credential|session|signature|private"
    r"|(?:api|access|client|secret|private)[-_]?key|^x-.*-key$|^auth$",
    re.IGNORECASE,
)


# Cheap pre-check over a whole body: no match means no key in it can be secret-named.
_SECRET_HINT: Final = re.compile(
    rb"(?i:auth|cookie|token|secret|passw|pwd|credential|session|signature|private|key)")


@functools.lru_cache(maxsize=1024)
def secret_name(name: str) -> bool:
    """Whether a header / parameter / key named ``name`` holds a secret-looking value."""
    return _SECRET_NAME.search(name) is not None


@dataclass(frozen=True, slots=True)
class Redactor:
    """Masks secrets in summaries: values under secret-looking names, and every occurrence
    of a known secret value (longest first) in any recorded string."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        """A redactor for these secret values (short ones, under 4 characters, are ignored:
        masking "1" everywhere would hide more than it protects)."""
        return cls(tuple(sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)))

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        return {name: REDACTED if secret_name(name) else self.text(value)
                for name, value in headers}

    def url(self, url: str) -> str:
        """``url`` without user info, secret-named query values and known secrets."""
        if "@" in url or "?" in url:
            parts = urlsplit(url)
            netloc = parts.netloc
            if "@" in netloc:
                netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
            query = parts.query
            if query:
                pairs = parse_qsl(query, keep_blank_values=True)
                if any(secret_name(k) for k, _ in pairs):
                    query = urlencode([(k, REDACTED if secret_name(k) else v) for k, v in pairs],
                                      safe="*")
            url = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        return self.text(url)

    def value(self, value: Any) -> Any:
        """A JSON value with secret-named keys masked and known secrets replaced."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: REDACTED if isinstance(k, str) and secret_name(k) else self.value(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionContext:
    """What an action may use: the run's one HTTP client, time, redaction, and the flow's
    variables and step results (for ``assert`` and ``wait_until`` conditions)."""

    client: httpx.AsyncClient
    clock: Clock
    sleep: Sleep
    redactor: Redactor
    scope: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionOutcome:
    """What an action did. ``error``: it could not be carried out (``retryable`` says whether
    another attempt can help); ``failure``: it ran and a condition was false."""

    result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = True
    failure: str | None = None
    request: RequestSummary | None = None
    response: ResponseSummary | None = None
    message: str | None = None
    assertions: tuple[AssertionResult, ...] = ()


Action = Callable[[Mapping[str, Any], ActionContext], Awaitable[ActionOutcome]]


def _invalid(message: str) -> ActionOutcome:
    return ActionOutcome(error=f"invalid config: {message}", retryable=False)


def duration_of(config: Mapping[str, Any], key: str, default: float | None) -> float | None:
    """Seconds of the Go duration ``config[key]``; ``ValueError`` if it is not one."""
    raw = config.get(key)
    if raw is None:
        return default
    seconds = parse_duration(raw)
    if seconds is None:
        raise ValueError(f"{key}: {raw!r} is not a duration (e.g. 500ms, 5s, 1m)")
    return seconds


# --------------------------------------------------------------------------------------------
# http_request


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _auth_headers(auth: Any) -> dict[str, str]:
    """TestMesh's ``auth: {type: basic|bearer|api_key, ...}`` as request headers."""
    if not isinstance(auth, Mapping):
        raise ValueError("auth must be a map like {type: bearer, token: ...}")
    kind = str(auth.get("type", "")).lower()
    if kind == "basic":
        raw = f"{_text_value(auth.get('username'))}:{_text_value(auth.get('password'))}"
        return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode("ascii")}
    if kind == "bearer":
        return {"Authorization": f"Bearer {_text_value(auth.get('token'))}"}
    if kind == "api_key":
        name = str(auth.get("header") or auth.get("key_name") or "X-API-Key")
        return {name: _text_value(auth.get("value", auth.get("key")))}
    raise ValueError(f"auth.type {kind!r} is not one of basic, bearer, api_key")


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, str] | None
    content: bytes | str | None
    timeout: float | None
    follow_redirects: bool
    summary_body: Any


def prepare_request(config: Mapping[str, Any]) -> PreparedRequest:
    """Validate an ``http_request`` config; ``ValueError`` names what is wrong."""
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError("url is required (a string)")
    method = str(config.get("method") or "GET").upper()
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(sorted(METHODS))}")
    raw_headers = config.get("headers") or {}
    if not isinstance(raw_headers, Mapping):
        raise ValueError("headers must be a map of name -> value")
    headers = {str(k): _text_value(v) for k, v in raw_headers.items()}
    if config.get("auth") is not None:
        headers.update(_auth_headers(config["auth"]))
    cookies = config.get("cookies")
    if cookies:
        if not isinstance(cookies, Mapping):
            raise ValueError("cookies must be a map of name -> value")
        headers["Cookie"] = "; ".join(f"{k}={_text_value(v)}" for k, v in cookies.items())
    raw_params = config.get("params")
    params: dict[str, str] | None = None
    if raw_params:
        if not isinstance(raw_params, Mapping):
            raise ValueError("params must be a map of name -> value")
        params = {str(k): _text_value(v) for k, v in raw_params.items()}
    body = config.get("body")
    content: bytes | str | None = None
    if body is not None:
        if isinstance(body, str):
            content = body
        else:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
    follow = config.get("follow_redirects", True)
    return PreparedRequest(
        method=method, url=url, headers=headers, params=params, content=content,
        timeout=duration_of(config, "timeout", None), follow_redirects=bool(follow),
        summary_body=body,
    )


def parse_body(content: bytes, content_type: str) -> Any:
    """JSON when it parses as JSON (declared or looking like it), else the text."""
    if not content:
        return ""
    if "json" in content_type or content.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(content)
        except ValueError:
            pass
    return content.decode("utf-8", errors="replace")


def _body_summary(body: Any, size: int, redactor: Redactor, raw: bytes | None = None
                  ) -> tuple[Any, bool]:
    if size <= MAX_BODY_SUMMARY:
        if (raw is not None and not redactor.secrets
                and _SECRET_HINT.search(raw) is None):
            return body, False  # nothing to mask: no secret-looking name in it at all
        return redactor.value(body), False
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return redactor.text(text[:MAX_BODY_SUMMARY]) + "...", True


def request_summary(prepared: PreparedRequest, redactor: Redactor) -> RequestSummary:
    body: Any = None
    if prepared.summary_body is not None:
        size = len(prepared.content or b"")
        body, _ = _body_summary(prepared.summary_body, size, redactor)
    url = prepared.url
    if prepared.params:
        url += ("&" if "?" in url else "?") + urlencode(prepared.params)
    return RequestSummary(prepared.method, redactor.url(url),
                          redactor.headers(prepared.headers.items()), body)


async def send(prepared: PreparedRequest, ctx: ActionContext) -> ActionOutcome:
    """Send one request on the shared client; the result has ``status``, ``body``,
    ``headers`` (lower-case names), ``duration_ms`` and the same under ``response``."""
    summary = request_summary(prepared, ctx.redactor)
    started = ctx.clock.monotonic()
    try:
        response = await ctx.client.request(
            prepared.method, prepared.url, headers=prepared.headers, params=prepared.params,
            content=prepared.content, follow_redirects=prepared.follow_redirects,
            timeout=prepared.timeout if prepared.timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
    except httpx.TimeoutException as exc:
        return ActionOutcome(request=summary, error=ctx.redactor.text(
            f"request timed out ({type(exc).__name__}): {prepared.method} {summary.url}"))
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return ActionOutcome(request=summary, retryable=False,
                             error=ctx.redactor.text(f"invalid request URL: {exc}"))
    except httpx.HTTPError as exc:
        return ActionOutcome(request=summary, error=ctx.redactor.text(
            f"request failed ({type(exc).__name__}): {exc or 'no detail'}"))
    duration_ms = round((ctx.clock.monotonic() - started) * 1000)
    content = response.content
    headers: dict[str, str] = {}
    for raw_name, raw_value in response.headers.raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = parse_body(content, headers.get("content-type", ""))
    fields = {"status": response.status_code, "body": body, "headers": headers,
              "duration_ms": duration_ms}
    result = dict(fields)
    result["response"] = fields
    summary_body, truncated = _body_summary(body, len(content), ctx.redactor, content)
    return ActionOutcome(
        result=result, request=summary,
        response=ResponseSummary(response.status_code, ctx.redactor.headers(headers.items()),
                                 summary_body, len(content), truncated),
    )


async def http_request(config: Mapping[str, Any], ctx: ActionContext) -> ActionOutcome:
    try:
        prepared = prepare_request(config)
    except ValueError as exc:
        return _invalid(str(exc))
    return await send(prepared, ctx)


# --------------------------------------------------------------------------------------------
# assert, log, delay


def assertion_results(items: Iterable[Any], scope: Mapping[str, Any]
                      ) -> tuple[AssertionResult, ...]:
    """Evaluate assertions: strings, or ``{expression, message}`` maps (TestMesh form)."""
    out: list[AssertionResult] = []
    for item in items:
        custom: str | None = None
        if isinstance(item, Mapping):
            custom = str(item["message"]) if item.get("message") is not None else None
            item = item.get("expression", "")
        text = str(item)
        try:  # fast path: a passing assertion needs no operand values
            if evaluate(parse(text), scope) is True:
                out.append(AssertionResult(text, True))
                continue
        except ExpressionError:
            pass
        outcome = check(text, scope)
        message = outcome.message
        if custom is not None and not outcome.passed:
            message = f"{custom} ({message})" if message else custom
        out.append(AssertionResult(outcome.expression, outcome.passed, message, outcome.values))
    return tuple(out)


async def assert_action(config: Mapping[str, Any], ctx: ActionContext) -> ActionOutcome:
    items = config.get("assertions") or ()
    if not isinstance(items, list | tuple):
        return _invalid("assertions must be a list of expressions")
    results = assertion_results(items, ctx.scope)
    return ActionOutcome(result={"passed": all(a.passed for a in results)}, assertions=results)


async def log_action(config: Mapping[str, Any], ctx: ActionContext) -> ActionOutcome:
    message = config.get("message", "")
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    level = str(config.get("level") or "info")
    data = config.get("data")
    shown = ctx.redactor.text(text)
    if data:
        shown += " " + json.dumps(ctx.redactor.value(data), default=str, ensure_ascii=False)
    return ActionOutcome(result={"message": text, "level": level}, message=shown)


async def delay_action(config: Mapping[str, Any], ctx: ActionContext) -> ActionOutcome:
    try:
        seconds = duration_of(config, "duration", None)
    except ValueError as exc:
        return _invalid(str(exc))
    if seconds is None:
        return _invalid("duration is required (e.g. 500ms)")
    await ctx.sleep(seconds)
    return ActionOutcome(result={"duration_ms": round(seconds * 1000)})


# --------------------------------------------------------------------------------------------
# wait_until


async def wait_until(config: Mapping[str, Any], ctx: ActionContext) -> ActionOutcome:
    """Check ``condition`` (after sending ``request``, when given) every ``interval`` until
    it is true, or fail once ``max_duration`` has passed. Request errors count as "not yet"."""
    condition = config.get("condition")
    if not isinstance(condition, str) or not condition.strip():
        return _invalid("condition is required (an expression)")
    try:
        expression = parse(condition)
        interval = duration_of(config, "interval", 1.0) or 0.0
        max_duration = duration_of(config, "max_duration", 30.0) or 0.0
        request_config = config.get("request")
        prepared = prepare_request(request_config) if request_config is not None else None
    except ExpressionError as exc:
        return _invalid(f"condition {condition!r}: {exc}")
    except ValueError as exc:
        return _invalid(str(exc))
    deadline = ctx.clock.monotonic() + max_duration
    checks = 0
    last = ActionOutcome()
    while True:
        checks += 1
        if prepared is not None:
            last = await send(prepared, ctx)
        if last.error is None or prepared is None:
            try:
                met = evaluate(expression, Scope.layered(last.result, ctx.scope))
            except ExpressionError as exc:
                return ActionOutcome(result=last.result, request=last.request,
                                     response=last.response, retryable=False,
                                     error=f"condition {condition!r}: {exc.message}")
            if met is True:
                return ActionOutcome(result={**last.result, "checks": checks},
                                     request=last.request, response=last.response,
                                     message=f"condition met after {checks} check(s)")
        if ctx.clock.monotonic() + interval > deadline:
            break
        await ctx.sleep(interval)
    detail = f"; last request: {last.error}" if last.error else ""
    if last.error is None and last.result:
        detail = f"; last status {last.result.get('status')}"
    return ActionOutcome(
        result={**last.result, "checks": checks}, request=last.request, response=last.response,
        failure=f"condition {condition!r} not met within {max_duration:g}s "
                f"({checks} check(s)){detail}")


#: Every action by name (the schema's enum); the flow runner looks actions up here.
ACTIONS: Final[Mapping[str, Action]] = MappingProxyType({
    "http_request": http_request,
    "assert": assert_action,
    "log": log_action,
    "delay": delay_action,
    "wait_until": wait_until,
})


def output_summary(name: str, value: Any, redactor: Redactor) -> str:
    """An extracted output as recorded: secret-named ones masked, long ones cut."""
    if secret_name(name):
        return REDACTED
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                          ensure_ascii=False)
    text = redactor.text(text)
    return text if len(text) <= MAX_OUTPUT_SUMMARY else text[:MAX_OUTPUT_SUMMARY - 3] + "..."
