"""``POST /api/v1/webhooks/{gitea,argocd}[/{integration}]``: deliveries become queued runs.

A thin handler over the pure receivers (``webhooks/``) and ``matching``: body capped while
read (413), 503 until a config is loaded, 404/401/400, then the delivery and its runs are
stored in one transaction (dedup, queue cap, supersede) before the 202 (DESIGN.md section 4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from testmesh_reconciler.config.model import Integration, Snapshot
from testmesh_reconciler.dispatcher import Dispatcher, target_json
from testmesh_reconciler.errors import WebhookRejected
from testmesh_reconciler.jsontext import encoder
from testmesh_reconciler.log import get_logger
from testmesh_reconciler.matching import Match, explain_no_match, match
from testmesh_reconciler.store.base import Store
from testmesh_reconciler.store.records import (
    Delivery,
    DeliveryId,
    DeliveryOutcome,
    DeliverySource,
    Run,
    RunId,
    new_id,
    plain,
)
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.web import SERVICES, SETTINGS, error_json, read_capped_body
from testmesh_reconciler.webhooks import RECEIVERS
from testmesh_reconciler.webhooks.common import (
    BadRequest,
    Ignored,
    Rejected,
    lower_headers,
)

log = get_logger("testmesh.web.webhooks")
_dumps = encoder()

#: The dispatcher of this app (set by ``dispatch_ext.extension``); woken on every enqueue.
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")

DEFAULT_WORKSPACE: Final = "default"
#: Seconds a sender is told to wait while no config is loaded yet (503) or the queue is full.
RETRY_AFTER: Final = "5"
#: Workspace-scoped path of both sources.
WORKSPACE_PATH: Final = "/api/v1/workspaces/{ws}/webhooks/{source:gitea|argocd}/{integration}"
PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "argocd": ("/api/v1/webhooks/argocd", "/api/v1/integrations/webhooks/argocd",
               "/api/v1/webhooks/argocd/{integration}"),
    "gitea": ("/api/v1/webhooks/gitea", "/api/v1/webhooks/gitea/{integration}"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serial_key(match_: Match, trigger: Trigger) -> str:
    """Runs with the same key run one at a time; a newer one supersedes a queued older one."""
    return "\x1f".join((match_.rule.workspace, match_.rule.name, trigger.repository,
                        trigger.branch or ""))


def build_runs(snapshot: Snapshot, matches: tuple[Match, ...], trigger: Trigger, *,
               delivery_id: DeliveryId, queued_at: Any, dispatcher: Dispatcher | None
               ) -> list[Run]:
    """One pending run per matched rule, with its report target (or why there is none)."""
    runs: list[Run] = []
    variables = trigger.variables()
    for found in matches:
        rule, suite = found.rule, found.suite
        target: Any = "no dispatcher: commit statuses are off"
        if dispatcher is not None:
            try:
                target = dispatcher.reporting.report_target(snapshot, rule, trigger)
            except Exception as exc:  # a bug there must not lose the delivery
                log.exception("report_target_failed", rule=rule.name)
                target = f"internal error while choosing the status target: {exc}"
        report = target_json(target)
        runs.append(Run(
            id=RunId(new_id()), workspace=rule.workspace, suite=suite.name,
            suite_id=str(suite.id), trigger_type="argocd" if trigger.source == "argocd"
            else "webhook", queued_at=queued_at, rule=rule.name, delivery_id=delivery_id,
            trigger=variables, variables=plain(found.variables), environment=rule.environment,
            serial_key=serial_key(found, trigger), revision=snapshot.revision or None,
            trigger_ref=trigger.sha, report_target=report,
            status_report={} if report is not None else {"reason": str(target)}))
    return runs


async def read_body(request: web.Request, limit: int) -> bytes:
    """``read_capped_body``, with an undecodable ``Content-Encoding`` answered 400."""
    try:
        return await read_capped_body(request, limit)
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        raise WebhookRejected(400, f"could not decode the request body: "
                              f"{' '.join(str(exc).split())}") from None


def _answer(data: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON answer (``json_response`` without its text/charset round trip)."""
    return web.Response(body=_dumps(data).encode(), status=status,
                        content_type="application/json")


def make_handler(source: DeliverySource) -> Handler:
    """The handler of one source (``gitea`` / ``argocd``) for all of its paths."""
    receiver = RECEIVERS[source]
    # ``isinstance(store, Store)`` on a runtime-checkable Protocol walks every member: check
    # each store object once, not once per delivery.
    checked: dict[int, tuple[object, bool]] = {}

    def is_store(store: object) -> bool:
        seen = checked.get(id(store))
        if seen is None or seen[0] is not store:
            seen = (store, isinstance(store, Store))
            checked.clear()
            checked[id(store)] = seen
        return seen[1]

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        settings, services = app[SETTINGS], app[SERVICES]
        clock = services.clock
        received = clock.now()
        delivery_id = DeliveryId(new_id())
        body = await read_body(request, settings.max_body_bytes)
        snapshot = services.state.snapshot
        store = services.store
        if snapshot is None or not is_store(store):
            log.warning("webhook_not_ready", delivery_id=delivery_id, source=source)
            return error_json(503, "no valid config has been loaded yet; retry shortly",
                              headers={"Retry-After": RETRY_AFTER})
        store = cast(Store, store)
        match_info = request.match_info
        workspace = match_info.get("ws", DEFAULT_WORKSPACE)
        name = match_info.get("integration")
        headers = lower_headers(request.headers)
        digest = hashlib.sha256(body).hexdigest()

        def delivery(outcome: DeliveryOutcome, status: int, *, event: str = "unknown",
                     repo: str = "", integration: str | None = None, reason: str | None = None,
                     **fields: Any) -> Delivery:
            return Delivery(id=delivery_id, source=source, workspace=workspace, event=event,
                            repo=repo, received_at=received, payload_digest=digest,
                            integration=integration, outcome=outcome, reason=reason,
                            processed_at=clock.now(), http_status=status, **fields)

        chosen = receiver.select_integration(snapshot, headers, body, workspace=workspace,
                                             name=name)
        if isinstance(chosen, Rejected):
            log.warning("webhook_rejected", delivery_id=delivery_id, source=source,
                        status=chosen.status, reason=chosen.reason, integration=name)
            if name is not None and chosen.status == 401:  # a known integration: audit it
                await store.record_delivery(
                    delivery("rejected", 401, integration=name, reason=chosen.reason),
                    (), dedup_window_start=received, max_queued=settings.max_queued_runs)
            return error_json(chosen.status, chosen.reason, delivery_id=delivery_id)
        integration: Integration = chosen
        verdict = receiver.parse(headers, body, integration, snapshot)
        if isinstance(verdict, BadRequest):
            log.info("webhook_bad_request", delivery_id=delivery_id, source=source,
                     reason=verdict.reason, integration=integration.name)
            await store.record_delivery(
                delivery("rejected", verdict.status, integration=integration.name,
                         reason=verdict.reason),
                (), dedup_window_start=received, max_queued=settings.max_queued_runs)
            return error_json(verdict.status, verdict.reason, delivery_id=delivery_id)
        if isinstance(verdict, Ignored):
            return await _ignored(store, delivery(
                "ignored", 200, event=verdict.event or "unknown", repo=verdict.repo,
                integration=integration.name, reason=verdict.reason, sha=verdict.sha or None,
                app=verdict.app), settings.max_queued_runs, {})
        trigger = verdict
        # What every later log line of this delivery carries (no bound-logger chains).
        bound: dict[str, Any] = {
            "delivery_id": delivery_id, "source": source, "repo": trigger.repo,
            "sha": trigger.sha, "app": trigger.app, "webhook_event": trigger.event,
            "integration": integration.name}
        trigger_fields: dict[str, Any] = dict(
            event=trigger.event, repo=trigger.repo, integration=integration.name,
            action=trigger.action, branch=trigger.branch, sha=trigger.sha, app=trigger.app,
            pr_number=trigger.pr_number)
        matches = match(snapshot, trigger)
        if not matches:
            return await _ignored(store, delivery(
                "ignored", 200, reason=explain_no_match(snapshot, trigger), **trigger_fields),
                settings.max_queued_runs, bound)
        dispatcher = app.get(DISPATCHER)
        runs = build_runs(snapshot, matches, trigger, delivery_id=delivery_id,
                          queued_at=received, dispatcher=dispatcher)
        rules = tuple(m.rule.name for m in matches)
        accepted = delivery("accepted", 202, dedup_key=trigger.dedup_key(),
                            matched_rules=rules, runs=tuple(r.id for r in runs),
                            **trigger_fields)
        result = await store.record_delivery(
            accepted, runs,
            dedup_window_start=received - timedelta(seconds=settings.dedup_window),
            max_queued=settings.max_queued_runs)
        if result.duplicate:
            log.info("webhook_duplicate", **bound, duplicate_of=result.duplicate_of,
                     runs=list(result.run_ids))
            return _answer({"delivery_id": delivery_id, "duplicate": True,
                            "duplicate_of": result.duplicate_of,
                            "matched_rules": list(rules),
                            "runs": list(result.run_ids)}, status=202)
        if result.rejected is not None:
            log.warning("webhook_queue_full", **bound, reason=result.rejected,
                        max_queued_runs=settings.max_queued_runs)
            return error_json(429, f"{result.rejected}: {settings.max_queued_runs} runs are "
                              "queued (--max-queued-runs); retry later",
                              headers={"Retry-After": RETRY_AFTER}, delivery_id=delivery_id)
        if dispatcher is not None:
            dispatcher.wake()
        log.info("webhook_accepted", **bound, rules=list(rules), runs=list(result.run_ids),
                 superseded=list(result.superseded))
        return _answer({"delivery_id": delivery_id, "matched_rules": list(rules),
                        "runs": list(result.run_ids)}, status=202)

    return handle


async def _ignored(store: Store, delivery: Delivery, max_queued: int,
                   bound: dict[str, Any]) -> web.StreamResponse:
    await store.record_delivery(delivery, (), dedup_window_start=delivery.received_at,
                                max_queued=max_queued)
    fields = {**bound, "delivery_id": delivery.id, "source": delivery.source,
              "webhook_event": delivery.event, "repo": delivery.repo, "sha": delivery.sha}
    log.info("webhook_ignored", **fields, reason=delivery.reason)
    return _answer({"delivery_id": delivery.id, "outcome": "ignored",
                    "reason": delivery.reason})


def add_routes(app: web.Application) -> None:
    """Every webhook path of DESIGN.md section 4 (the config webhook is the app's)."""
    handlers: dict[str, Handler] = {source: make_handler(source)  # type: ignore[arg-type]
                                    for source in PATHS}
    for source, paths in PATHS.items():
        for path in paths:
            app.router.add_post(path, handlers[source])

    async def scoped(request: web.Request) -> web.StreamResponse:
        return await handlers[request.match_info["source"]](request)

    app.router.add_post(WORKSPACE_PATH, scoped)


__all__ = ["DISPATCHER", "PATHS", "WORKSPACE_PATH", "add_routes", "build_runs", "make_handler",
           "serial_key"]
