"""The dashboard: server-rendered HTML pages (overview, run, suite, deliveries, environments,
config) from Jinja2 templates with autoescaping and no JavaScript.

``add_page_routes`` registers them with explicit dependencies (store, ``PageState``, clock);
every list is one paged store query (50 rows, ``before`` cursor), so pages stay fast.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from testmesh_reconciler.config.model import (
    Declaration,
    Integration,
    Snapshot,
    Suite,
    TestEnvironment,
    TriggerRule,
)
from testmesh_reconciler.config.problems import Problem
from testmesh_reconciler.runner.actions import secret_name
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.store.clock import Clock, SystemClock
from testmesh_reconciler.store.records import Run

PAGE_SIZE = 50
RECENT = 10
TEMPLATES_DIR = Path(__file__).parent / "templates"
REFRESH_SECONDS = 5
DELIVERY_SOURCES = ("gitea", "argocd", "config")
DELIVERY_OUTCOMES = ("accepted", "duplicate", "ignored", "rejected")
ENV_STATES = ("cold", "provisioning", "warm", "running", "cooling", "destroyed")
RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
KIND_TITLES = (
    ("Integration", "Integrations"),
    ("TriggerRule", "Trigger rules"),
    ("Suite", "Suites"),
    ("Flow", "Flows"),
    ("TestEnvironment", "Test environments"),
)
_REDACTED = "***"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# -- what the pages read of the config state -----------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadInfo:
    """One reload attempt as the overview shows it."""

    at: datetime
    result: str  # ok | failed
    revision: str | None = None
    problems: tuple[Problem, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PageState:
    """The config state the pages show: the active snapshot and the last reload attempt."""

    snapshot: Snapshot | None = None
    revision: str | None = None
    applied_at: datetime | None = None
    last_reload: ReloadInfo | None = None


class ReloadLike(Protocol):
    """What ``page_state_of`` reads of a reload record (``state.ReloadRecord`` fits)."""

    @property
    def at(self) -> datetime: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def result(self) -> str: ...
    @property
    def problems(self) -> tuple[Problem, ...]: ...
    @property
    def error(self) -> str | None: ...


class HolderLike(Protocol):
    """What ``page_state_of`` reads of a state holder (``state.StateHolder`` fits)."""

    @property
    def snapshot(self) -> Snapshot | None: ...
    @property
    def last_attempt(self) -> ReloadLike | None: ...
    @property
    def last_success(self) -> ReloadLike | None: ...


def page_state_of(holder: HolderLike) -> PageState:
    """A ``PageState`` from a state holder's public properties."""
    snapshot = holder.snapshot
    success = holder.last_success
    attempt = holder.last_attempt
    last = None
    if attempt is not None:
        last = ReloadInfo(at=attempt.at, result=attempt.result, revision=attempt.revision,
                          problems=tuple(attempt.problems), error=attempt.error)
    return PageState(
        snapshot=snapshot,
        revision=snapshot.revision if snapshot is not None else None,
        applied_at=success.at if success is not None else None,
        last_reload=last,
    )


# -- pure formatting -------------------------------------------------------------------------


def format_time(value: datetime | None) -> str:
    """``2025-06-01 12:34:56 UTC``, or an em dash."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        hours, rest = divmod(int(seconds), 3600)
        return f"{hours} h {rest // 60} min" if rest >= 60 else f"{hours} h"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def format_ago(value: datetime | None, now: datetime) -> str:
    """``3 min ago`` / ``in 5 min`` / ``just now``, or an em dash."""
    if value is None:
        return "—"
    delta = (now - value).total_seconds()
    if abs(delta) < 5:
        return "just now"
    return f"{_span(delta)} ago" if delta > 0 else f"in {_span(delta)}"


def format_remaining(expires_at: datetime | None, now: datetime) -> str:
    """Time left until ``expires_at``: ``42 min``, ``expired 3 min ago``, or an em dash."""
    if expires_at is None:
        return "—"
    left = (expires_at - now).total_seconds()
    if left <= 0:
        return f"expired {_span(left)} ago"
    return _span(left)


def format_duration(ms: float | None) -> str:
    """``850 ms``, ``1.2 s``, ``2 min 3 s``, or an em dash."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{int(ms)} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def run_label(run: Run) -> str:
    """The status word a person reads: ``passed`` for completed, ``error`` for a failed run
    that could not execute as declared (its commit status is ``error``)."""
    if run.status == "completed":
        return "passed"
    if run.status == "failed" and run.error:
        return "error"
    return run.status


def short(value: str | None, size: int = 8) -> str:
    return (value or "")[:size]


def gitea_url(snapshot: Snapshot | None, run: Run) -> str | None:
    """Base URL of the Gitea the run reports to: the integration named by the run's report
    target, else the first Gitea integration (of the run's workspace first)."""
    if snapshot is None:
        return None
    giteas = [i for i in snapshot.integrations.values() if i.provider == "gitea" and i.url]
    wanted = (run.report_target or {}).get("integration")
    ordered = sorted(giteas, key=lambda i: (i.workspace != run.workspace, i.name))
    for integration in ordered:
        if wanted and integration.name == wanted:
            return (integration.url or "").rstrip("/")
    return (ordered[0].url or "").rstrip("/") if ordered else None


def _link_repo(repo: str) -> str:
    return "/".join(quote(part, safe="") for part in repo.split("/"))


def trigger_view(run: Run, base_url: str | None) -> dict[str, Any]:
    """What started the run, with links to the commit and the pull request on Gitea."""
    trigger = run.trigger or {}
    target = run.report_target or {}
    source = str(trigger.get("source") or ("argocd" if run.trigger_type == "argocd" else
                                          "gitea" if run.trigger_type == "webhook" else ""))
    repo = str(trigger.get("repo") or target.get("repository") or "")
    sha = str(trigger.get("sha") or run.trigger_ref or "")
    pr = trigger.get("pr_number")
    commit_url = pr_url = None
    if base_url and repo and sha:
        commit_url = f"{base_url}/{_link_repo(repo)}/commit/{quote(sha, safe='')}"
    if base_url and repo and pr not in (None, ""):
        pr_url = f"{base_url}/{_link_repo(repo)}/pulls/{quote(str(pr), safe='')}"
    return {
        "manual": run.trigger_type == "manual",
        "source": source,
        "source_label": {"gitea": "Gitea", "argocd": "Argo CD"}.get(source, source or "—"),
        "event": str(trigger.get("event") or ""),
        "action": str(trigger.get("action") or ""),
        "repo": repo,
        "branch": str(trigger.get("branch") or ""),
        "base_branch": str(trigger.get("base_branch") or ""),
        "app": str(trigger.get("app") or ""),
        "sha": sha,
        "short_sha": sha[:7],
        "commit_url": commit_url,
        "pr_number": pr,
        "pr_url": pr_url,
        "rule": run.rule,
        "delivery_id": run.delivery_id,
    }


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def _headers(value: Any) -> list[tuple[str, str]]:
    """Header pairs, values under secret-looking names masked (the runner already did;
    this is a second line of defence)."""
    if not isinstance(value, Mapping):
        return []
    return [(str(k), _REDACTED if secret_name(str(k)) else str(v)) for k, v in value.items()]


def step_view(step: Mapping[str, Any]) -> dict[str, Any]:
    """A step result (runner ``StepResult.to_json()``) as the run page shows it."""
    request = step.get("request") if isinstance(step.get("request"), Mapping) else None
    response = step.get("response") if isinstance(step.get("response"), Mapping) else None
    failed = [
        {
            "expression": str(a.get("expression", "")),
            "message": a.get("message"),
            "values": [(str(k), _pretty(v)) for k, v in (a.get("values") or {}).items()],
        }
        for a in step.get("assertions") or ()
        if isinstance(a, Mapping) and not a.get("passed", True)
    ]
    passed_asserts = sum(
        1 for a in step.get("assertions") or () if isinstance(a, Mapping) and a.get("passed")
    )
    view: dict[str, Any] = {
        "label": step.get("id") or step.get("name") or step.get("action") or "step",
        "name": step.get("name") if step.get("id") and step.get("name") else None,
        "action": step.get("action") or "",
        "phase": step.get("phase") or "steps",
        "status": str(step.get("status") or "pending"),
        "attempts": step.get("attempts"),
        "duration": format_duration(step.get("duration_ms")),
        "error": step.get("error"),
        "message": step.get("message"),
        "continued": bool(step.get("continued")),
        "failed_assertions": failed,
        "assertions_total": passed_asserts + len(failed),
        "assertions_passed": passed_asserts,
        "request": None,
        "response": None,
        "on_error": None,
    }
    if request is not None:
        view["request"] = {
            "method": str(request.get("method") or ""),
            "url": str(request.get("url") or ""),
            "headers": _headers(request.get("headers")),
            "body": None if request.get("body") is None else _pretty(request.get("body")),
        }
    if response is not None:
        view["response"] = {
            "status": response.get("status"),
            "headers": _headers(response.get("headers")),
            "body": None if response.get("body") is None else _pretty(response.get("body")),
            "size": response.get("size"),
            "truncated": bool(response.get("truncated")),
        }
    on_error = step.get("on_error")
    if isinstance(on_error, Mapping):
        view["on_error"] = step_view(on_error)
    return view


def flow_view(flow: Mapping[str, Any]) -> dict[str, Any]:
    steps = [step_view(s) for s in flow.get("steps") or () if isinstance(s, Mapping)]
    counts = Counter(s["status"] for s in steps)
    status = str(flow.get("status") or "pending")
    name = flow.get("name") if flow.get("name") != flow.get("flow") else None
    meta = [format_duration(flow.get("duration_ms"))] if status in ("passed", "failed") else []
    meta += [str(v) for v in (flow.get("path"), name) if v]
    return {
        "flow": str(flow.get("flow") or flow.get("name") or "flow"),
        "name": name,
        "path": flow.get("path"),
        "status": status,
        "meta": meta,
        "duration": format_duration(flow.get("duration_ms")),
        "error": flow.get("error"),
        "steps": steps,
        "counts": dict(counts),
    }


@dataclass(frozen=True, slots=True)
class ChartPoint:
    x: float
    y: float
    status: str
    title: str
    href: str


@dataclass(frozen=True, slots=True)
class Chart:
    """An inline SVG line chart of run durations, oldest on the left."""

    width: int
    height: int
    points: tuple[ChartPoint, ...] = ()
    polyline: str = ""
    y_max_label: str = ""
    summary: str = ""
    left: int = 56
    top: int = 10
    bottom: int = 0
    gridlines: tuple[tuple[float, str], ...] = field(default=())


def duration_chart(runs: Sequence[Run], *, width: int = 900, height: int = 160) -> Chart:
    """The duration trend of finished ``runs`` (given newest first, as the store pages)."""
    finished = [r for r in reversed(runs) if r.duration_ms is not None
                and r.status in ("completed", "failed")]
    left, top, bottom_pad, right = 56, 10, 22, 10
    bottom = height - bottom_pad
    if not finished:
        return Chart(width=width, height=height, summary="No finished runs yet.",
                     left=left, top=top, bottom=bottom)
    durations = [int(r.duration_ms or 0) for r in finished]
    peak = max(max(durations), 1)
    span_x = width - left - right
    step = span_x / (len(finished) - 1) if len(finished) > 1 else 0.0
    points = []
    for i, (run, ms) in enumerate(zip(finished, durations, strict=True)):
        x = left + (i * step if len(finished) > 1 else span_x / 2)
        y = bottom - (ms / peak) * (bottom - top)
        points.append(ChartPoint(
            x=round(x, 1), y=round(y, 1), status=run_label(run),
            title=f"{format_time(run.queued_at)}: {run_label(run)} in {format_duration(ms)}",
            href=f"/suite-runs/{quote(run.id, safe='')}"))
    grid = tuple((round(bottom - f * (bottom - top), 1), format_duration(peak * f))
                 for f in (0.5, 1.0))
    summary = (f"Duration of the last {len(finished)} finished runs, oldest first: "
               f"median {format_duration(statistics.median(durations))}, "
               f"min {format_duration(min(durations))}, max {format_duration(max(durations))}.")
    return Chart(width=width, height=height, points=tuple(points),
                 polyline=" ".join(f"{p.x},{p.y}" for p in points),
                 y_max_label=format_duration(peak), summary=summary, left=left, top=top,
                 bottom=bottom, gridlines=grid)


def pass_rate(runs: Iterable[Run]) -> tuple[int, int, float | None]:
    """(passed, finished, rate) over completed/failed runs; cancelled ones do not count."""
    finished = [r for r in runs if r.status in ("completed", "failed")]
    passed = sum(1 for r in finished if r.status == "completed")
    return passed, len(finished), (passed / len(finished) if finished else None)


def declaration_summary(decl: Declaration) -> list[tuple[str, str]]:
    """A few (label, value) pairs that say what a declaration does; secrets as configured."""
    if isinstance(decl, Integration):
        out = [("provider", decl.provider), ("type", decl.type)]
        if decl.url:
            out.append(("url", decl.url))
        if decl.app_filter:
            out.append(("app filter", decl.app_filter))
        for key in sorted(decl.secrets):
            out.append((f"secret {key}", "configured"))
        if not decl.require_webhook_secret:
            out.append(("webhook secret", "not required (unsigned deliveries accepted)"))
        return out
    if isinstance(decl, TriggerRule):
        return [("integration", decl.integration), ("repository", decl.repository),
                ("events", ", ".join(decl.event_types)), ("branches", decl.branch_filter),
                ("suite", decl.suite), ("environment", decl.environment or "—"),
                ("enabled", "yes" if decl.enabled else "no (paused)")]
    if isinstance(decl, Suite):
        stages = "; then ".join(
            " + ".join(e.label for e in stage) if any(e.parallel for e in stage)
            else ", ".join(e.label for e in stage)
            for stage in decl.stages())
        return [("description", decl.description or "—"), ("flows", stages or "—")]
    if isinstance(decl, TestEnvironment):
        out = [("provider", decl.provider)]
        if decl.context:
            out.append(("context", decl.context))
        if decl.provider_app_name:
            out.append(("app", decl.provider_app_name))
        out.append(("TTL", f"{decl.ttl_minutes:g} min"))
        out.append(("services", ", ".join(sorted(decl.routing_policy)) or "—"))
        return out
    definition = decl.definition
    steps = len(definition.setup) + len(definition.steps) + len(definition.teardown)
    return [("description", definition.description or "—"), ("steps", str(steps))]


def rules_by_repository(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Trigger rules grouped by (workspace, integration, repository), sorted."""
    groups: dict[tuple[str, str, str], list[TriggerRule]] = {}
    for rule in snapshot.trigger_rules.values():
        groups.setdefault((rule.workspace, rule.integration, rule.repository), []).append(rule)
    return [
        {"workspace": ws, "integration": integ, "repository": repo,
         "rules": sorted(rules, key=lambda r: r.name)}
        for (ws, integ, repo), rules in sorted(groups.items())
    ]


def page_url(path: str, **params: str | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v})
    return f"{path}?{query}" if query else path


# -- rendering and handlers -------------------------------------------------------------------


def make_environment(templates: Path = TEMPLATES_DIR) -> jinja2.Environment:
    """The Jinja2 environment: autoescaping on for every template, undefined names fail."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["duration"] = format_duration
    env.filters["time"] = format_time
    env.filters["iso"] = iso_time
    env.filters["short"] = short
    env.globals["page_url"] = page_url
    env.globals["quote"] = lambda value: quote(str(value), safe="")
    return env


StoreGetter = Callable[[], Store | None]
StateGetter = Callable[[], PageState]


class Pages:
    """The page handlers and what they share (templates, store, state, clock)."""

    def __init__(self, *, get_store: StoreGetter, get_state: StateGetter,
                 clock: Clock | None = None, templates: jinja2.Environment | None = None
                 ) -> None:
        self._get_store = get_store
        self._get_state = get_state
        self._clock: Clock = clock or SystemClock()
        self._env = templates or make_environment()

    # -- helpers --------------------------------------------------------------------------

    def render(self, template: str, *, status: int = 200, nav: str = "",
               **context: Any) -> web.Response:
        now = self._clock.now()
        state = self._get_state()
        html = self._env.get_template(template).render(
            nav=nav, now=now, state=state,
            ago=lambda value: format_ago(value, now), **context)
        response = web.Response(text=html, status=status, content_type="text/html",
                                charset="utf-8")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    def not_found(self, what: str, detail: str = "") -> web.Response:
        return self.render("not_found.html", status=404, what=what, detail=detail)

    def store(self) -> Store:
        store = self._get_store()
        if store is None:
            raise _NoStore()
        return store

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        store = self.store()
        state = self._get_state()
        counts = await store.count_runs_by_status()
        runs = await store.list_runs(limit=RECENT)
        deliveries = await store.list_deliveries(limit=RECENT)
        envs = await store.list_environments(limit=200)
        outbox = await store.outbox_stats()
        by_state: Counter[str] = Counter(str(e.state) for e in envs)
        return self.render(
            "overview.html", nav="overview",
            kind_counts=[(title, state.snapshot.counts()[kind]) for kind, title in KIND_TITLES]
            if state.snapshot is not None else [],
            run_counts=[(s, counts.get(s, 0)) for s in RUN_STATUSES],
            runs=runs, run_label=run_label, deliveries=deliveries,
            env_counts=[(s, by_state.get(s, 0)) for s in ENV_STATES],
            envs_sampled=len(envs) >= 200,
            live_envs=[e for e in envs if e.state != "destroyed"][:RECENT],
            outbox=outbox)

    async def run(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        store = self.store()
        run = await store.get_run(run_id)
        if run is None:
            return self.not_found("run", f"No suite run has the id {run_id}.")
        state = self._get_state()
        snapshot = state.snapshot
        instance = None
        if run.environment_instance:
            instance = await store.get_environment(run.environment_instance)
        declared_env = None
        if snapshot is not None and run.environment:
            declared_env = snapshot.environments.get((run.workspace, run.environment))
        report = dict(run.status_report or {})
        statuses = [s for s in report.pop("statuses", None) or () if isinstance(s, Mapping)]
        given_up = report.pop("given_up", None)
        label = run_label(run)
        return self.render(
            "run.html", nav="",
            run=run, label=label, expand=request.query.get("details") == "open",
            refresh=REFRESH_SECONDS if run.status in ("pending", "running") else None,
            trigger=trigger_view(run, gitea_url(snapshot, run)),
            instance=instance, declared_env=declared_env,
            flows=[flow_view(f) for f in run.flows],
            statuses=statuses, given_up=given_up if isinstance(given_up, Mapping) else None,
            report_notes=[(str(k), _pretty(v)) for k, v in report.items()],
            suite_known=snapshot is not None and (run.workspace, run.suite) in snapshot.suites)

    async def suite(self, request: web.Request) -> web.Response:
        workspace = request.match_info["workspace"]
        name = request.match_info["name"]
        before = request.query.get("before") or None
        snapshot = self._get_state().snapshot
        declared = snapshot.suites.get((workspace, name)) if snapshot is not None else None
        runs = await self.store().list_runs(workspace=workspace, suite=name, limit=PAGE_SIZE,
                                            before=before)
        if declared is None and not runs and before is None:
            return self.not_found("suite", f"No suite {name!r} in workspace {workspace!r}, "
                                           "and no runs of one.")
        rules = sorted((r for r in snapshot.trigger_rules.values()
                        if r.workspace == workspace and r.suite == name),
                       key=lambda r: r.name) if snapshot is not None else []
        passed, finished, rate = pass_rate(runs)
        durations = [r.duration_ms for r in runs if r.duration_ms is not None
                     and r.status in ("completed", "failed")]
        return self.render(
            "suite.html", nav="", workspace=workspace, name=name, suite=declared,
            rules=rules, runs=runs, run_label=run_label, chart=duration_chart(runs),
            passed=passed, finished=finished, rate=rate,
            median=statistics.median(durations) if durations else None,
            before=before, newest=request.path,
            older=page_url(request.path, before=runs[-1].id) if len(runs) == PAGE_SIZE
            else None)

    async def deliveries(self, request: web.Request) -> web.Response:
        query = request.query
        source = query.get("source") if query.get("source") in DELIVERY_SOURCES else None
        outcome = query.get("outcome") if query.get("outcome") in DELIVERY_OUTCOMES else None
        repo = (query.get("repo") or "").strip()[:300] or None
        before = query.get("before") or None
        items = await self.store().list_deliveries(source=source, repo=repo, outcome=outcome,
                                                   limit=PAGE_SIZE, before=before)
        older = None
        if len(items) == PAGE_SIZE:
            older = page_url(request.path, source=source, repo=repo, outcome=outcome,
                             before=items[-1].id)
        return self.render(
            "deliveries.html", nav="deliveries", items=items, source=source, repo=repo,
            outcome=outcome, before=before, sources=DELIVERY_SOURCES,
            outcomes=DELIVERY_OUTCOMES, older=older,
            newest=page_url(request.path, source=source, repo=repo, outcome=outcome))

    async def environments(self, request: web.Request) -> web.Response:
        state_filter = request.query.get("state")
        chosen = state_filter if state_filter in ENV_STATES else None
        before = request.query.get("before") or None
        items = await self.store().list_environments(state=chosen, limit=PAGE_SIZE,
                                                     before=before)
        now = self._clock.now()
        return self.render(
            "environments.html", nav="environments", items=items, state_filter=chosen,
            states=ENV_STATES, before=before,
            remaining=lambda e: "—" if e.state == "destroyed"
            else format_remaining(e.expires_at, now),
            older=page_url(request.path, state=chosen, before=items[-1].id)
            if len(items) == PAGE_SIZE else None,
            newest=page_url(request.path, state=chosen))

    async def config(self, request: web.Request) -> web.Response:
        snapshot = self._get_state().snapshot
        sections: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        if snapshot is not None:
            for kind, title in KIND_TITLES:
                decls = sorted(snapshot.of_kind(kind).values(),
                               key=lambda d: (d.workspace, d.name))
                sections.append({
                    "kind": kind, "title": title, "anchor": kind.lower(),
                    "items": [{"decl": d, "summary": declaration_summary(d)} for d in decls],
                })
            groups = rules_by_repository(snapshot)
        return self.render("config.html", nav="config", snapshot=snapshot,
                           sections=sections, groups=groups)


class _NoStore(Exception):
    """The app runs without a runtime store (a config-only test set-up)."""


def _guard(pages: Pages, handler: Callable[[web.Request], Any]
           ) -> Callable[[web.Request], Any]:
    async def guarded(request: web.Request) -> web.Response:
        try:
            response: web.Response = await handler(request)
        except _NoStore:
            return pages.render("not_found.html", status=503, what="store",
                                detail="No runtime store is configured on this daemon.")
        return response

    return guarded


def add_page_routes(app: web.Application, *, get_store: StoreGetter, get_state: StateGetter,
                    clock: Clock | None = None) -> Pages:
    """Register the dashboard's GET routes on ``app``.

    ``get_store`` gives the runtime store (None: the pages answer 503), ``get_state`` the
    config state (see ``page_state_of``), ``clock`` the time for ages and TTLs.
    """
    pages = Pages(get_store=get_store, get_state=get_state, clock=clock)
    app.router.add_get("/", _guard(pages, pages.overview), name="page_overview")
    app.router.add_get("/suite-runs/{run_id}", _guard(pages, pages.run), name="page_run")
    app.router.add_get("/suites/{workspace}/{name}", _guard(pages, pages.suite),
                       name="page_suite")
    app.router.add_get("/deliveries", _guard(pages, pages.deliveries), name="page_deliveries")
    app.router.add_get("/test-environments", _guard(pages, pages.environments),
                       name="page_environments")
    app.router.add_get("/config", _guard(pages, pages.config), name="page_config")
    return pages


__all__ = [
    "PageState",
    "Pages",
    "ReloadInfo",
    "add_page_routes",
    "duration_chart",
    "format_duration",
    "page_state_of",
    "trigger_view",
]
