"""The pure reporting rules: where a run's statuses go (Gitea push / pull request, Argo CD
with a derived repo or ``spec.report``, no derivable repo), and the entries a run queues."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from testmesh_reconciler.config.model import Snapshot, TriggerRule
from testmesh_reconciler.reporting import (
    FINAL_SEQ,
    PENDING_QUEUED,
    PENDING_SEQ,
    ReportTarget,
    final_entries,
    mark_pending_queued,
    no_report_reason,
    pending_entries,
    pending_was_queued,
    recovery_outbox,
    report_target,
    report_target_json,
)
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.store.records import INTERRUPTED_ERROR, Run, RunId
from testmesh_reconciler.triggers import Trigger
from tests.webhooks import HEAD, integration, load_snapshot

SHA = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(config_repo="/tmp/config", public_url="https://testmesh.example.com")
RUN_ID = RunId("5f0c8a7e-1d2b-4c3d-9e8f-0a1b2c3d4e5f")


def rule_yaml(name: str, integration: str, repository: str, events: str, *,
              suite: str = "smoke", report: str = "") -> str:
    return (HEAD + f"kind: TriggerRule\nmetadata: {{name: {name}}}\nspec:\n"
            f"  integration: {integration}\n  repository: {repository}\n"
            f"  event_types: {events}\n  suite: {suite}\n" + report)


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    rules = [
        rule_yaml("push-plain", "gitea-internal", "acme/shop", "[push, pull_request]"),
        rule_yaml("push-report", "gitea-internal", "acme/shop", "[push]",
                  report="  report: {repository: acme/mirror, context: ci/tests,"
                         " integration: gitea-second}\n"),
        rule_yaml("sync-derived", "argocd-staging", "shop-derived", "[sync]"),
        rule_yaml("sync-regression", "argocd-staging", "shop-derived", "[sync]",
                  suite="regression"),
    ]
    return load_snapshot({
        "rules/reporting.yaml": "---\n".join(rules),
        "integrations/second.yaml": integration("gitea-second", "gitea",
                                                "https://git.second.example:3000"),
    })


def rule_named(snapshot: Snapshot, name: str) -> TriggerRule:
    return snapshot.trigger_rules[("default", name)]


def gitea_push(**kw: Any) -> Trigger:
    values: dict[str, Any] = dict(source="gitea", event="push", integration="gitea-internal",
                                  workspace="default", repo="acme/shop", sha=SHA, branch="main")
    values.update(kw)
    return Trigger(**values)


def argocd_sync(repo_url: str | None, repo: str = "", **kw: Any) -> Trigger:
    values: dict[str, Any] = dict(source="argocd", event="sync", integration="argocd-staging",
                                  workspace="default", repo=repo, sha=SHA, app="shop-staging",
                                  branch="main", repo_url=repo_url)
    values.update(kw)
    return Trigger(**values)


# --- report_target ---------------------------------------------------------------------------


def test_gitea_push_reports_on_the_event_repo(snapshot: Snapshot) -> None:
    target = report_target(snapshot, rule_named(snapshot, "push-plain"), gitea_push())
    assert target == ReportTarget("default", "gitea-internal", "acme/shop", SHA, "testmesh/smoke")


def test_gitea_pull_request_reports_on_the_head_sha(snapshot: Snapshot) -> None:
    trigger = gitea_push(event="pull_request", action="opened", pr_number=7,
                         branch="feature/x", base_branch="main", sha="f" * 40)
    target = report_target(snapshot, rule_named(snapshot, "push-plain"), trigger)
    assert isinstance(target, ReportTarget)
    assert (target.repository, target.sha) == ("acme/shop", "f" * 40)


def test_gitea_rule_report_overrides_integration_repo_and_context(snapshot: Snapshot) -> None:
    target = report_target(snapshot, rule_named(snapshot, "push-report"), gitea_push())
    assert target == ReportTarget("default", "gitea-second", "acme/mirror", SHA, "ci/tests")


def test_argocd_uses_the_repo_derived_from_repo_url(snapshot: Snapshot) -> None:
    trigger = argocd_sync("https://gitea.internal/acme/shop-deploy.git", repo="acme/shop-deploy")
    target = report_target(snapshot, rule_named(snapshot, "sync-derived"), trigger)
    assert target == ReportTarget("default", "gitea-internal", "acme/shop-deploy", SHA,
                                  "testmesh/smoke")


def test_argocd_matches_the_integration_by_host_even_over_ssh(snapshot: Snapshot) -> None:
    trigger = argocd_sync("ssh://git@git.second.example:2222/ops/deploy.git")
    target = report_target(snapshot, rule_named(snapshot, "sync-regression"), trigger)
    assert target == ReportTarget("default", "gitea-second", "ops/deploy", SHA,
                                  "testmesh/regression")


def test_argocd_with_rule_report(snapshot: Snapshot) -> None:
    # examples/config-repo/rules/shop-staging.yaml: report to acme/shop on gitea-internal
    trigger = argocd_sync("https://github.com/acme/shop-deploy.git")
    target = report_target(snapshot, rule_named(snapshot, "shop-staging-smoke"), trigger)
    assert target == ReportTarget("default", "gitea-internal", "acme/shop", SHA,
                                  "testmesh/staging-smoke")


def test_argocd_without_derivable_repo_says_why(snapshot: Snapshot) -> None:
    trigger = argocd_sync("https://github.com/acme/shop-deploy.git")
    reason = report_target(snapshot, rule_named(snapshot, "sync-derived"), trigger)
    assert reason == (
        "no Gitea repository for Argo CD application 'shop-staging': its repoURL host "
        "'github.com' matches no gitea integration; set spec.report.repository and "
        "spec.report.integration on rule 'sync-derived'")
    assert report_target_json(reason) is None
    assert no_report_reason(reason) == {"reason": reason}


def test_argocd_without_repo_url_says_why(snapshot: Snapshot) -> None:
    reason = report_target(snapshot, rule_named(snapshot, "sync-derived"), argocd_sync(None))
    assert isinstance(reason, str)
    assert "carries no repoURL" in reason and "rule 'sync-derived'" in reason


def test_missing_sha_means_no_status(snapshot: Snapshot) -> None:
    reason = report_target(snapshot, rule_named(snapshot, "push-plain"), gitea_push(sha=""))
    assert isinstance(reason, str) and "no commit sha" in reason


def test_target_json_round_trip(snapshot: Snapshot) -> None:
    target = report_target(snapshot, rule_named(snapshot, "push-plain"), gitea_push())
    assert isinstance(target, ReportTarget)
    stored = report_target_json(target)
    assert ReportTarget.from_json(stored) == target
    assert no_report_reason(target) == {}
    assert ReportTarget.from_json({"integration": "x"}) is None


# --- entries ----------------------------------------------------------------------------------


def make_run(**kw: Any) -> Run:
    values: dict[str, Any] = dict(
        id=RUN_ID, workspace="default", suite="smoke", suite_id="s", trigger_type="webhook",
        queued_at=NOW, status="running", total_flows=3,
        report_target=ReportTarget("default", "gitea-internal", "acme/shop", SHA,
                                   "testmesh/smoke").to_json())
    values.update(kw)
    return Run(**values)


def test_pending_entry() -> None:
    (entry,) = pending_entries(make_run(), None, SETTINGS, NOW)
    assert (entry.seq, entry.state, entry.description) == (
        PENDING_SEQ, "pending", "TestMesh: tests running...")
    assert (entry.repo, entry.sha, entry.context, entry.integration) == (
        "acme/shop", SHA, "testmesh/smoke", "gitea-internal")
    assert entry.target_url == f"https://testmesh.example.com/suite-runs/{RUN_ID}"
    assert entry.created_at == entry.next_attempt_at == NOW
    assert entry.outcome == "queued" and entry.attempts == 0


def test_manual_runs_and_runs_without_target_post_nothing() -> None:
    manual = make_run(trigger_type="manual")
    assert pending_entries(manual, None, SETTINGS, NOW) == []
    done = mark_pending_queued(replace(manual, status="completed"))
    assert final_entries(done, None, SETTINGS, NOW) == []
    untargeted = make_run(report_target=None)
    assert pending_entries(untargeted, None, SETTINGS, NOW) == []
    assert final_entries(mark_pending_queued(replace(untargeted, status="failed")),
                         None, SETTINGS, NOW) == []


def test_context_override_is_kept_on_both_entries() -> None:
    target = ReportTarget("default", "gitea-internal", "acme/shop", SHA, "ci/custom")
    run = make_run(report_target=target.to_json())
    (pending,) = pending_entries(run, None, SETTINGS, NOW)
    (final,) = final_entries(mark_pending_queued(replace(run, status="completed",
                                                         passed_flows=3)), None, SETTINGS, NOW)
    assert pending.context == final.context == "ci/custom"


@pytest.mark.parametrize(("fields", "state", "description"), [
    ({"status": "completed", "passed_flows": 3}, "success",
     "TestMesh: all tests passed (3/3 flows)"),
    ({"status": "failed", "passed_flows": 2, "failed_flows": 1}, "failure",
     "TestMesh: tests failed (1 of 3 flows failed)"),
    ({"status": "failed", "error": "environment 'staging' not acquired: timeout"}, "error",
     "TestMesh: execution error: environment 'staging' not acquired: timeout"),
    ({"status": "cancelled"}, "error", "TestMesh: execution error: run cancelled"),
])
def test_final_state(fields: dict[str, Any], state: str, description: str) -> None:
    run = mark_pending_queued(make_run(**fields))
    assert run.status_report[PENDING_QUEUED] is True
    (entry,) = final_entries(run, None, SETTINGS, NOW)
    assert (entry.seq, entry.state, entry.description) == (FINAL_SEQ, state, description)


def test_no_final_without_a_pending() -> None:
    superseded = make_run(status="cancelled")  # cancelled while queued: never left the queue
    assert not pending_was_queued(superseded)
    assert final_entries(superseded, None, SETTINGS, NOW) == []


def test_no_final_for_an_active_run() -> None:
    assert final_entries(mark_pending_queued(make_run(status="running")),
                         None, SETTINGS, NOW) == []


def test_pending_known_from_the_store_report_or_a_started_run() -> None:
    stored = make_run(status="completed", status_report={"statuses": [{"state": "pending"}]})
    assert pending_was_queued(stored)
    assert len(final_entries(stored, None, SETTINGS, NOW)) == 1
    assert pending_was_queued(make_run(started=True))
    claimed = make_run(status="failed", claimed_by="replica-a", error="environment not acquired")
    assert [e.state for e in final_entries(claimed, None, SETTINGS, NOW)] == ["error"]


def test_recovery_posts_error_for_an_interrupted_run() -> None:
    interrupted = make_run(status="failed", started=True, error=INTERRUPTED_ERROR)
    (entry,) = recovery_outbox(SETTINGS, NOW)(interrupted)
    assert entry.state == "error"
    assert entry.description.startswith("TestMesh: execution error: interrupted")
    assert len(entry.description) <= 140
