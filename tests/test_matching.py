"""Matching a trigger against the snapshot: index lookup, event types, pull request actions,
branch globs, rule independence, order, and the no-match explanation."""

from __future__ import annotations

import pytest

from testmesh_reconciler.config.model import Integration, Snapshot
from testmesh_reconciler.matching import Match, explain_no_match, match, rule_accepts
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.webhooks import argocd, gitea
from tests.testing.webhook_payloads import argocd_application, gitea_pull_request, gitea_push
from tests.webhooks import integration, load_snapshot, rule

SHA = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"


def push(branch: str | None, repo: str = "org/glob", integration: str = "gitea-internal",
         workspace: str = "default") -> Trigger:
    return Trigger(source="gitea", event="push", integration=integration, workspace=workspace,
                   repo=repo, sha=SHA, branch=branch)


def pr(action: str, repo: str = "org/pr", branch: str = "feature/x") -> Trigger:
    return Trigger(source="gitea", event="pull_request", integration="gitea-internal",
                   workspace="default", repo=repo, sha=SHA, branch=branch, base_branch="main",
                   pr_number=3, action=action)


GLOBS = {"all": "*", "main": "main", "release": "release/*", "feature": "feature/**",
         "versions": "v[0-9]*", "single": "?", "neg": "[!a-m]*", "nested": "a/**/b"}


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    rules = [rule(f"glob-{k}", "org/glob", branch_filter=v) for k, v in GLOBS.items()]
    rules += [
        rule("pr-default", "org/pr", events="[pull_request]"),
        rule("pr-closed", "org/pr", events="[pull_request]", actions="[closed]"),
        rule("pr-and-push", "org/pr", events="[push, pull_request]", actions="[opened]",
             branch_filter="feature/*"),
        rule("paused", "org/pr", events="[push, pull_request]", enabled=False),
        rule("other-integration", "org/glob", integration="gitea-two"),
        rule("ws-b", "org/glob", integration="gitea-b", workspace="team-b"),
        rule("z-last", "org/order"), rule("a-first", "org/order"), rule("m-mid", "org/order"),
    ]
    return load_snapshot({
        "rules/test.yaml": "---\n".join(rules),
        "integrations/more.yaml": _gitea("gitea-two") + "---\n" + _gitea("gitea-b", "team-b"),
        "suites/b.yaml": "apiVersion: testmesh.io/v1alpha1\nkind: Suite\nmetadata: {name: smoke,"
        " workspace: team-b}\nspec:\n  flows: [{path: flows/legacy/orders.yaml, order: 0}]\n",
    })


def _gitea(name: str, workspace: str = "default") -> str:
    return integration(name, "gitea", f"https://{name}.example", workspace=workspace)


def names(matches: tuple[Match, ...]) -> list[str]:
    return [m.rule.name for m in matches]


@pytest.mark.parametrize(("branch", "expected"), [
    ("main", ["all", "main"]),
    ("release/1.4", ["all", "release"]),
    ("release/1.4/hotfix", ["all"]),
    ("release/", ["all", "release"]),
    ("feature/x", ["all", "feature"]),
    ("feature/x/y/z", ["all", "feature"]),
    ("feature", ["all"]),
    ("v1.2", ["all", "neg", "versions"]),
    ("v", ["all", "neg", "single"]),
    ("vx", ["all", "neg"]),
    ("x", ["all", "neg", "single"]),
    ("ab", ["all"]),
    ("xy/z", ["all"]),  # "[!a-m]*" stays in one segment
    ("Main", ["all", "neg"]),
    ("a/b", ["all", "nested"]),
    ("a/x/y/b", ["all", "nested"]),
    ("mainline", ["all"]),
    (None, ["all"]),  # an unknown branch: only a lone "*" matches
])
def test_branch_globs(snapshot: Snapshot, branch: str | None, expected: list[str]) -> None:
    assert names(match(snapshot, push(branch))) == sorted(f"glob-{e}" for e in expected)


@pytest.mark.parametrize(("action", "expected"), [
    ("opened", ["pr-and-push", "pr-default"]),
    ("synchronized", ["pr-default"]),
    ("reopened", ["pr-default"]),
    ("closed", ["pr-closed"]),
    ("edited", []),
    ("assigned", []),
])
def test_pull_request_actions(snapshot: Snapshot, action: str, expected: list[str]) -> None:
    assert names(match(snapshot, pr(action))) == expected


def test_event_types_and_disabled_rules(snapshot: Snapshot) -> None:
    assert names(match(snapshot, push("feature/x", repo="org/pr"))) == ["pr-and-push"]
    assert names(match(snapshot, push("main", repo="org/pr"))) == []  # "paused" is disabled


def test_index_keys_on_workspace_integration_and_repository(snapshot: Snapshot) -> None:
    assert names(match(snapshot, push("x", integration="gitea-two"))) == ["other-integration"]
    assert names(match(snapshot, push("x", integration="gitea-b", workspace="team-b"))) == [
        "ws-b"]
    assert match(snapshot, push("x", integration="gitea-b")) == ()
    assert match(snapshot, push("x", repo="org/Glob")) == ()  # exact, case-sensitive
    assert match(snapshot, push("x", repo="org/none")) == ()


def test_order_is_by_rule_name(snapshot: Snapshot) -> None:
    assert names(match(snapshot, push("main", repo="org/order"))) == ["a-first", "m-mid",
                                                                      "z-last"]


def test_match_carries_suite_and_rule_variables() -> None:
    snap = load_snapshot()
    (found,) = match(snap, push("main", repo="acme/shop"))
    assert found.rule.name == "shop-main-smoke" and found.suite.name == "smoke"
    assert dict(found.variables) == {"BASE_URL": "https://shop.staging.internal"}
    assert found.environment is None


def test_rules_are_independent(snapshot: Snapshot) -> None:
    """Each rule's verdict is the same whether judged alone or among the others."""
    trigger = pr("opened")
    rules = snapshot.rules_for("default", "gitea-internal", "org/pr")
    together = names(match(snapshot, trigger))
    alone = sorted(r.name for r in rules if rule_accepts(r, trigger))
    assert together == alone


def test_end_to_end_from_deliveries() -> None:
    snap = load_snapshot()
    headers, body = gitea_push("acme/shop", "release/2.0")
    integ = gitea.select_integration(snap, headers, body, workspace="default")
    assert isinstance(integ, Integration)
    trigger = gitea.parse(headers, body, integ)
    assert isinstance(trigger, Trigger)
    assert names(match(snap, trigger)) == ["shop-release-regression"]
    headers, body = gitea_pull_request("acme/shop", action="synchronized")
    trigger = gitea.parse(headers, body, integ)
    assert isinstance(trigger, Trigger)
    assert names(match(snap, trigger)) == ["shop-pr-review"]
    staging = snap.integrations[("default", "argocd-staging")]
    trigger = argocd.parse({}, argocd_application("shop-staging", target_revision="HEAD"),
                           staging, snap)
    assert isinstance(trigger, Trigger) and trigger.branch is None
    assert names(match(snap, trigger)) == ["shop-staging-smoke"]  # its filter is "*"


# -- explain_no_match -------------------------------------------------------------------------
def test_explain_no_rule_for_repository(snapshot: Snapshot) -> None:
    assert explain_no_match(snapshot, push("main", repo="acme/other")) == (
        "no rule for repository 'acme/other' on integration 'gitea-internal'")
    argo = Trigger(source="argocd", event="sync", integration="argocd-staging",
                   workspace="default", repo="", sha=SHA, app="shop-x")
    assert explain_no_match(snapshot, argo) == (
        "no rule for application 'shop-x' on integration 'argocd-staging'")
    assert explain_no_match(snapshot, push("x", repo="r/x", integration="gitea-b",
                                           workspace="team-b")) == (
        "no rule for repository 'r/x' on integration 'gitea-b' in workspace 'team-b'")


def test_explain_rules_but_none_for_the_event(snapshot: Snapshot) -> None:
    reason = explain_no_match(snapshot, pr("edited"))
    assert reason.startswith("3 rules for org/pr, none for event 'pull_request' action "
                             "'edited' on branch 'feature/x' (")
    assert "pr-closed: pull_request_actions ['closed']" in reason
    reason = explain_no_match(snapshot, push("main", repo="org/pr"))
    assert reason.startswith("3 rules for org/pr, none for event 'push' on branch 'main'")
    assert "pr-and-push: branch_filter 'feature/*'" in reason
    assert "pr-default: event_types ['pull_request']" in reason


def test_explain_unknown_branch_and_many_rules() -> None:
    snap = load_snapshot({"rules/x.yaml": "---\n".join(
        rule(f"r{i}", "org/many", branch_filter="main") for i in range(5))})
    reason = explain_no_match(snap, push(None, repo="org/many"))
    assert reason.startswith("5 rules for org/many, none for event 'push' on an unknown "
                             "branch (only branch_filter \"*\" matches it) (r0: branch_filter")
    assert reason.endswith("; 2 more)")


def test_explain_when_something_matches(snapshot: Snapshot) -> None:
    assert explain_no_match(snapshot, push("main", repo="org/order")) == (
        "3 rules match: a-first, m-mid, z-last")
