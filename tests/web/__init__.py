"""Dashboard page tests, and the realistic sample data they (and the page benchmark) use.

``sample_state`` loads ``examples/config-repo``; ``fill_store`` writes runs (passed, failed
with assertion failures, running, cancelled, manual), deliveries of every outcome, outbox
entries and environments in every state; ``page_app`` serves the pages alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from testmesh_reconciler.config.problems import Problem
from testmesh_reconciler.runner.results import (
    AssertionResult,
    FlowResult,
    RequestSummary,
    ResponseSummary,
    StepResult,
)
from testmesh_reconciler.store import (
    Delivery,
    DeliveryId,
    EnvironmentId,
    EnvironmentInstance,
    FakeClock,
    OutboxEntry,
    OutboxId,
    Run,
    RunId,
    Store,
    new_id,
)
from testmesh_reconciler.store.records import EnvironmentState
from testmesh_reconciler.validate import load_directory
from testmesh_reconciler.web.pages import PageState, ReloadInfo, add_page_routes

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples" / "config-repo"
REVISION = "9f2c1a7be04d5c3e8a61f0b2d9c47e15a3b6f802"
SHA = "4b8e2f1c9a7d3e5f6a0b1c2d3e4f5a6b7c8d9e0f"
PR_SHA = "c0ffee00d15ea5e5deadbeef0123456789abcdef"
SECRET = "s3cr3t-gitea-token-value"
WINDOW_START = datetime(2000, 1, 1, tzinfo=UTC)


def sample_state(now: datetime, *, failed_reload: bool = False) -> PageState:
    """The example config as the active snapshot; optionally a later reload that failed."""
    result = load_directory(EXAMPLES)
    assert result.snapshot is not None, result.problems
    snapshot = replace(result.snapshot, revision=REVISION)
    applied = now - timedelta(minutes=42)
    last = ReloadInfo(at=applied, result="ok", revision=REVISION)
    if failed_reload:
        last = ReloadInfo(
            at=now - timedelta(minutes=3), result="failed",
            revision="77aa0c3d1e2f4a5b6c7d8e9f0a1b2c3d4e5f6a7b",
            problems=(
                Problem("rules/shop.yaml", 12, 5, "$.spec.event_types[1]",
                        "'merge' is not one of ['sync', 'push', 'pull_request']"),
                Problem("rules/shop.yaml", 14, 10, "$.spec.suite",
                        "no Suite named 'smok' in workspace 'default' (did you mean 'smoke'?)"),
            ))
    return PageState(snapshot=snapshot, revision=REVISION, applied_at=applied, last_reload=last)


def page_app(store: Store, state: Callable[[], PageState], clock: FakeClock) -> web.Application:
    app = web.Application()
    add_page_routes(app, get_store=lambda: store, get_state=state, clock=clock)
    return app


@dataclass(frozen=True, slots=True)
class Sample:
    """Ids of the interesting records ``fill_store`` wrote."""

    failed_run: RunId
    passed_run: RunId
    running_run: RunId
    cancelled_run: RunId
    manual_run: RunId
    pr_env: EnvironmentId
    ignored_delivery: DeliveryId


def _delivery(at: datetime, **fields: Any) -> Delivery:
    values: dict[str, Any] = {
        "id": DeliveryId(new_id()), "source": "gitea", "integration": "gitea-internal",
        "workspace": "default", "event": "push", "repo": "acme/shop", "branch": "main",
        "sha": SHA, "received_at": at, "processed_at": at, "payload_digest": "0" * 64,
        "http_status": 202,
    }
    values.update(fields)
    return Delivery(**values)


def _run(at: datetime, **fields: Any) -> Run:
    values: dict[str, Any] = {
        "id": RunId(new_id()), "workspace": "default", "suite": "smoke",
        "suite_id": "840e8efb-91fc-5d42-95ee-db60c1745b73", "rule": "shop-staging-smoke",
        "trigger_type": "argocd", "queued_at": at, "revision": REVISION, "trigger_ref": SHA,
        "trigger": {"source": "argocd", "event": "sync", "repo": "acme/shop-deploy",
                    "branch": "main", "sha": SHA, "short_sha": SHA[:7], "app": "shop-staging"},
        "environment": "staging",
        "report_target": {"integration": "gitea-internal", "repository": "acme/shop",
                          "context": "testmesh/staging-smoke"},
    }
    values.update(fields)
    return Run(**values)


def _http_step(step_id: str, url: str, status: int, ms: int, *, failed: bool = False,
               body: Any = None) -> StepResult:
    assertions: tuple[AssertionResult, ...] = (
        AssertionResult("status == 200", passed=status == 200,
                        message=None if status == 200 else "expected 200",
                        values=(("status", str(status)),)),)
    if failed:
        assertions += (AssertionResult(
            "body.items[0].price > 0 && len(body.items) >= 3", passed=False,
            message="the expression is false",
            values=(("body.items[0].price", "0"), ("len(body.items)", "2"))),)
    return StepResult(
        id=step_id, name=step_id.replace("-", " ").capitalize(), action="http_request",
        phase="steps", status="failed" if failed or status != 200 else "passed", attempts=1,
        duration_ms=ms, assertions=assertions,
        error="2 assertions failed" if failed else None,
        request=RequestSummary("GET", url, {"Accept": "application/json",
                                            "Authorization": f"token {SECRET}"}),
        response=ResponseSummary(status, {"Content-Type": "application/json"},
                                 body if body is not None else {"ok": status == 200},
                                 size=64))


def failed_flows(base: str) -> tuple[dict[str, Any], ...]:
    health = FlowResult(flow="shop-health", name="Shop health", status="passed",
                        duration_ms=180, steps=(
                            _http_step("health", f"{base}/healthz", 200, 41),
                            _http_step("ready", f"{base}/readyz", 200, 37)))
    catalog = FlowResult(flow="product-catalog", name="Product catalog", status="failed",
                         duration_ms=2350, steps=(
                             StepResult(id="list-products", name="List products",
                                        action="http_request", phase="steps",
                                        status="failed", attempts=3, duration_ms=2210,
                                        error="2 assertions failed <script>alert(1)</script>",
                                        assertions=_http_step("x", base, 200, 1,
                                                              failed=True).assertions,
                                        request=RequestSummary(
                                            "GET", f"{base}/api/v1/products?limit=50&sort="
                                            "price&category=kitchen-and-household-appliances",
                                            {"Authorization": f"Bearer {SECRET}",
                                             "X-Request-Id": "7d1f0c2e"}),
                                        response=ResponseSummary(
                                            200, {"Content-Type": "application/json"},
                                            {"items": [{"id": "p-1", "price": 0},
                                                       {"id": "p-2", "price": 12.5}]},
                                            size=81)),
                             StepResult(id="log-count", name=None, action="log",
                                        phase="steps", status="skipped", attempts=0,
                                        error="an earlier step failed"),
                         ))
    lifecycle = FlowResult(flow="product-lifecycle", name="Product lifecycle",
                           status="skipped", error="skipped: stage 0 failed")
    return tuple(f.to_json() for f in (health, catalog, lifecycle))


def passed_flows(base: str, ms: int) -> tuple[dict[str, Any], ...]:
    return tuple(FlowResult(flow=name, name=name, status="passed", duration_ms=ms // 3,
                            steps=(_http_step("check", f"{base}/{name}", 200, ms // 3),)
                            ).to_json()
                 for name in ("service-health", "checkout", "flows/legacy/orders.yaml"))


async def _finish(store: Store, run: Run, **fields: Any) -> Run:
    done = replace(run, **fields)
    assert await store.finish_run(done)
    return done


async def fill_store(store: Store, clock: FakeClock, *, history: int = 24) -> Sample:
    """Write a realistic mix of records; ``clock`` ends at the newest one."""
    base = "http://product-service.staging.svc.cluster.local:8080"
    # a history of smoke runs for the suite page's chart and pass rate
    for i in range(history):
        at = clock.advance(600)
        sha = f"{i * 7919:07x}" + SHA[7:]
        run = _run(at, trigger_ref=sha, trigger={
            "source": "argocd", "event": "sync", "repo": "acme/shop-deploy", "branch": "main",
            "sha": sha, "short_sha": sha[:7], "app": "shop-staging"})
        delivery = _delivery(at, source="argocd", integration="argocd-staging", event="sync",
                             repo="acme/shop-deploy", app="shop-staging",
                             matched_rules=("shop-staging-smoke",))
        await store.record_delivery(delivery, [run], dedup_window_start=WINDOW_START,
                                    max_queued=100_000)
        ok = i % 5 != 3
        ms = 4000 + (i * 370) % 2500 + (3000 if not ok else 0)
        await _finish(store, run, status="completed" if ok else "failed", started=True,
                      started_at=at, completed_at=at + timedelta(milliseconds=ms),
                      duration_ms=ms, total_flows=3, passed_flows=3 if ok else 1,
                      failed_flows=0 if ok else 1,
                      flows=passed_flows(base, ms) if ok else failed_flows(base))

    # staging environment (static), running now
    staging = EnvironmentInstance(
        id=EnvironmentId(new_id()), workspace="default", name="staging", context="default",
        state="running", provider="static", created_at=clock.now() - timedelta(days=2),
        ttl_minutes=120, routing={
            "product-service": base,
            "user-service": "http://user-service.staging.svc.cluster.local:8080",
            "order-service": "http://order-service.staging.svc.cluster.local:8080"},
        last_used_at=clock.now(), expires_at=clock.now() + timedelta(minutes=120), users=1)
    assert await store.insert_environment(staging)

    # the failed run: argocd sync, statuses posted
    at = clock.advance(60)
    failed = _run(at, environment_instance=staging.id)
    await store.record_delivery(
        _delivery(at, source="argocd", integration="argocd-staging", event="sync",
                  repo="acme/shop-deploy", app="shop-staging",
                  matched_rules=("shop-staging-smoke",)),
        [failed], dedup_window_start=WINDOW_START, max_queued=100_000)
    failed = await _finish(store, failed, status="failed", started=True, started_at=at,
                           completed_at=at + timedelta(seconds=2.6), duration_ms=2612,
                           total_flows=3, passed_flows=1, failed_flows=1,
                           flows=failed_flows(base))
    target = f"http://testmesh.internal:5016/suite-runs/{failed.id}"
    await store.add_outbox([
        OutboxEntry(id=OutboxId(new_id()), run_id=failed.id, seq=seq,
                    integration_workspace="default", integration="gitea-internal",
                    repo="acme/shop", sha=SHA, context="testmesh/staging-smoke", state=state,
                    description=desc, target_url=target, created_at=at, next_attempt_at=at)
        for seq, state, desc in ((0, "pending", "TestMesh: tests running..."),
                                 (1, "failure", "TestMesh: tests failed (1 of 3 flows)"))])
    for entry in await store.get_outbox(failed.id):
        await store.mark_sent(entry.id, at + timedelta(seconds=3))

    # a PR run that passed on a review environment
    pr_env = EnvironmentInstance(
        id=EnvironmentId(new_id()), workspace="default", name="shop-pr-review",
        context="pr-42", state="warm", provider="argocd", created_at=clock.now(),
        ttl_minutes=60, provider_app_name="shop-pr-42", namespace="review-pr-42",
        routing={"product-service":
                 "http://product-service.review-pr-42.svc.cluster.local:8080"},
        last_used_at=clock.now(), expires_at=clock.now() + timedelta(minutes=60))
    assert await store.insert_environment(pr_env)
    at = clock.advance(120)
    passed = _run(at, suite="regression", rule="shop-pr-review", trigger_type="webhook",
                  environment="shop-pr-review", environment_instance=pr_env.id,
                  trigger_ref=PR_SHA,
                  trigger={"source": "gitea", "event": "pull_request", "repo": "acme/shop",
                           "branch": "feature/checkout-v2-with-a-rather-long-branch-name",
                           "base_branch": "main", "sha": PR_SHA, "short_sha": PR_SHA[:7],
                           "pr_number": 42, "action": "synchronized"},
                  report_target={"integration": "gitea-internal", "repository": "acme/shop",
                                 "context": "testmesh/pr-regression"})
    await store.record_delivery(
        _delivery(at, event="pull_request", action="synchronized", pr_number=42, sha=PR_SHA,
                  branch="feature/checkout-v2-with-a-rather-long-branch-name",
                  matched_rules=("shop-pr-review",)),
        [passed], dedup_window_start=WINDOW_START, max_queued=100_000)
    await _finish(store, passed, status="completed", started=True, started_at=at,
                  completed_at=at + timedelta(seconds=7), duration_ms=7040, total_flows=3,
                  passed_flows=3, flows=passed_flows(base, 7040))

    # deliveries that started nothing
    at = clock.advance(30)
    ignored = _delivery(at, branch="docs/readme", outcome="ignored", http_status=200,
                        reason="no trigger rule matches acme/shop push on branch docs/readme")
    await store.record_delivery(ignored, [], dedup_window_start=WINDOW_START,
                                max_queued=100_000)
    await store.record_delivery(
        _delivery(clock.advance(5), source="argocd", integration=None, event="sync",
                  repo="", app="billing-prod", outcome="ignored", http_status=200,
                  reason="application billing-prod does not match the app filter 'shop-*'"),
        [], dedup_window_start=WINDOW_START, max_queued=100_000)
    await store.record_delivery(
        _delivery(clock.advance(5), integration=None, outcome="rejected", http_status=401,
                  reason="bad signature: X-Gitea-Signature does not match any gitea "
                         "integration's webhook secret"),
        [], dedup_window_start=WINDOW_START, max_queued=100_000)

    # a cancelled (superseded) run, a manual run, and one running now
    at = clock.advance(10)
    cancelled = _run(at, status="cancelled", error="superseded by a newer commit")
    await store.record_delivery(_delivery(at, source="argocd", event="sync", app="shop-staging",
                                          repo="acme/shop-deploy"),
                                [cancelled], dedup_window_start=WINDOW_START,
                                max_queued=100_000)
    await _finish(store, cancelled, status="cancelled", completed_at=at,
                  error="superseded by run 1234abcd (sha 9e8d7c6)")
    at = clock.advance(10)
    manual = _run(at, trigger_type="manual", rule=None, trigger={}, trigger_ref=None,
                  report_target=None, environment=None, variables={"BASE_URL": base})
    assert await store.enqueue_run(manual, max_queued=100_000)
    await _finish(store, manual, status="completed", started=True, started_at=at,
                  completed_at=at + timedelta(seconds=3), duration_ms=3050, total_flows=3,
                  passed_flows=3, flows=passed_flows(base, 3050))

    at = clock.advance(10)
    running = _run(at, environment_instance=staging.id)
    await store.record_delivery(_delivery(at, source="argocd", event="sync", app="shop-staging",
                                          repo="acme/shop-deploy",
                                          matched_rules=("shop-staging-smoke",)),
                                [running], dedup_window_start=WINDOW_START,
                                max_queued=100_000)
    claimed = await store.claim_run("replica-a", clock.now(), 30)
    assert claimed is not None and claimed.id == running.id
    flows = (*failed_flows(base)[:1],
             {"flow": "product-catalog", "name": "Product catalog", "status": "running",
              "steps": []})
    assert await store.save_progress(replace(claimed, total_flows=3, passed_flows=1,
                                             flows=flows))

    # more environments, one per state
    now = clock.now()
    states: tuple[tuple[EnvironmentState, str, int], ...] = (
        ("provisioning", "pr-57", 0), ("cooling", "pr-31", 50), ("destroyed", "pr-12", 200),
        ("cold", "pr-60", 1))
    for state, ctx, used in states:
        assert await store.insert_environment(EnvironmentInstance(
            id=EnvironmentId(new_id()), workspace="default", name="shop-pr-review",
            context=ctx, state=state, provider="argocd", created_at=now, ttl_minutes=60,
            provider_app_name=f"shop-{ctx}", namespace=f"review-{ctx}",
            last_used_at=now - timedelta(minutes=used),
            expires_at=now + timedelta(minutes=60 - used),
            error="Argo CD: application deleted" if state == "destroyed" else None))
    return Sample(failed_run=failed.id, passed_run=passed.id, running_run=running.id,
                  cancelled_run=cancelled.id, manual_run=manual.id, pr_env=pr_env.id,
                  ignored_delivery=ignored.id)
