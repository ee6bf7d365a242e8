"""Argo CD receiver: shared secret, integration choice, the three body shapes, app_filter,
Synced/Healthy filtering, repo derivation from repoURL, and that no input makes it raise."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testmesh_reconciler.config.model import Integration, SecretValue, Snapshot
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.webhooks import argocd
from testmesh_reconciler.webhooks.common import BadRequest, Ignored, Rejected
from tests.testing.contracts import load_bytes
from tests.testing.webhook_payloads import (
    ARGOCD_SAMPLE,
    SAMPLE_SECRET,
    SAMPLE_SHA,
    argocd_application,
    argocd_application_json,
    argocd_flat,
    argocd_flat_app,
    argocd_headers,
)
from tests.webhooks import integration, load_snapshot

SECRET = SecretValue(SAMPLE_SECRET)


@cache
def _snapshot() -> Snapshot:
    """Examples plus a Gitea at gitea.example.com (the contract samples' host) and an
    unfiltered Argo CD integration."""
    return load_snapshot({
        "integrations/more.yaml": integration("gitea-example", "gitea",
                                              "https://gitea.example.com:3000")
        + "---\n" + integration("argocd-all", "argocd", "https://argocd-b.internal"),
    }, secrets={"gitea-example": "g", "argocd-all": "all-secret"})


@pytest.fixture
def snapshot() -> Snapshot:
    return _snapshot()


@pytest.fixture
def staging(snapshot: Snapshot) -> Integration:
    return snapshot.integrations[("default", "argocd-staging")]


@pytest.fixture
def unfiltered(snapshot: Snapshot) -> Integration:
    return snapshot.integrations[("default", "argocd-all")]


# -- verify / select -------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["x-testmesh", "bearer"])
def test_verify_both_header_styles(style: Any) -> None:
    assert argocd.verify(argocd_headers(SAMPLE_SECRET, style), SECRET)
    assert not argocd.verify(argocd_headers("wrong", style), SECRET)
    lower = {k.lower(): v for k, v in argocd_headers(SAMPLE_SECRET, style).items()}
    assert argocd.verify(lower, SECRET)


@pytest.mark.parametrize("headers", [
    {}, {"X-TestMesh-Secret": ""}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"},
    {"Authorization": f"Basic {SAMPLE_SECRET}"}, {"Authorization": SAMPLE_SECRET},
    {"X-TestMesh-Secret": SAMPLE_SECRET + "x"}, {"X-TestMesh-Secret": "\u00e9\ud800"},
])
def test_verify_rejects_missing_empty_and_wrong(headers: dict[str, str]) -> None:
    assert not argocd.verify(headers, SECRET)


def test_empty_secret_never_verifies() -> None:
    assert not argocd.verify({"X-TestMesh-Secret": ""}, SecretValue(""))
    assert not argocd.verify({"Authorization": "Bearer "}, SecretValue(""))


def test_bearer_scheme_is_case_insensitive() -> None:
    assert argocd.verify({"authorization": f"bearer {SAMPLE_SECRET}"}, SECRET)


def test_select_unnamed_by_secret(snapshot: Snapshot) -> None:
    for secret, name in [(SAMPLE_SECRET, "argocd-staging"), ("all-secret", "argocd-all")]:
        chosen = argocd.select_integration(snapshot, argocd_headers(secret, "bearer"),
                                           workspace="default")
        assert isinstance(chosen, Integration) and chosen.name == name


def test_select_failures(snapshot: Snapshot) -> None:
    assert argocd.select_integration(snapshot, argocd_headers("nope"),
                                     workspace="default") == Rejected(
        401, "secret does not match any argocd integration's webhook_secret")
    missing = argocd.select_integration(snapshot, {}, workspace="default")
    assert isinstance(missing, Rejected) and missing.status == 401
    assert missing.reason.startswith("missing X-TestMesh-Secret or Authorization: Bearer")
    assert argocd.select_integration(snapshot, argocd_headers(SAMPLE_SECRET),
                                     workspace="default", name="gitea-internal") == Rejected(
        404, "no argocd integration named 'gitea-internal' in workspace 'default'")
    # the right secret, but of another integration than the one named
    assert argocd.select_integration(snapshot, argocd_headers("all-secret"),
                                     workspace="default", name="argocd-staging") == Rejected(
        401, "secret does not match the webhook_secret of argocd integration 'argocd-staging'")
    nothing = argocd.select_integration(snapshot, argocd_headers(SAMPLE_SECRET),
                                        workspace="elsewhere")
    assert isinstance(nothing, Rejected) and nothing.status == 401


def test_select_unsigned_when_not_required() -> None:
    snap = load_snapshot({"integrations/open.yaml": integration(
        "argocd-open", "argocd", "https://argocd.open", secret=False, require=False)})
    chosen = argocd.select_integration(snap, {}, workspace="default")
    assert isinstance(chosen, Integration) and chosen.name == "argocd-open"
    chosen = argocd.select_integration(snap, argocd_headers(SAMPLE_SECRET),
                                       workspace="default")
    assert isinstance(chosen, Integration) and chosen.name == "argocd-staging"


# -- the three shapes ---------------------------------------------------------------------------
def test_contract_flat_sample(snapshot: Snapshot, unfiltered: Integration) -> None:
    trigger = argocd.parse({}, load_bytes(ARGOCD_SAMPLE), unfiltered, snapshot)
    assert trigger == Trigger(
        source="argocd", event="sync", integration="argocd-all", workspace="default",
        repo="acme/demo-services", sha=SAMPLE_SHA, app="testmesh-demo", branch=None,
        repo_url="https://gitea.example.com/acme/demo-services.git")


def test_flat_with_target_revision(snapshot: Snapshot, staging: Integration) -> None:
    data = json.loads(argocd_flat("shop-staging",
                                  repository="https://gitea.internal/acme/shop.git"))
    data["target_revision"] = "release/1.4"
    trigger = argocd.parse({}, json.dumps(data).encode(), staging, snapshot)
    assert isinstance(trigger, Trigger)
    assert (trigger.app, trigger.repo, trigger.branch, trigger.repository) == (
        "shop-staging", "acme/shop", "release/1.4", "shop-staging")


def test_flat_app_shape(snapshot: Snapshot, staging: Integration) -> None:
    trigger = argocd.parse({}, argocd_flat_app("shop-staging", revision="1.2.3"), staging,
                           snapshot)
    assert trigger == Trigger(source="argocd", event="sync", integration="argocd-staging",
                              workspace="default", repo="", sha="1.2.3", app="shop-staging")


def test_application_shape(snapshot: Snapshot, staging: Integration) -> None:
    body = argocd_application("shop-staging", revision="ab" * 20,
                              repo_url="https://gitea.internal/acme/shop-deploy.git",
                              target_revision="main")
    trigger = argocd.parse({}, body, staging, snapshot)
    assert trigger == Trigger(
        source="argocd", event="sync", integration="argocd-staging", workspace="default",
        repo="acme/shop-deploy", sha="ab" * 20, app="shop-staging", branch="main",
        repo_url="https://gitea.internal/acme/shop-deploy.git")


def test_application_revision_fallbacks_and_multi_source(snapshot: Snapshot,
                                                         staging: Integration) -> None:
    app = argocd_application_json("shop-a", revision="cd" * 20)
    app["status"]["operationState"] = {"syncResult": {"revision": "ef" * 20}}
    del app["status"]["sync"]["revision"]
    trigger = argocd.parse({}, json.dumps({"application": app}).encode(), staging, snapshot)
    assert isinstance(trigger, Trigger) and trigger.sha == "ef" * 20
    source = app["spec"].pop("source")
    app["spec"]["sources"] = [dict(source, repoURL="git@gitea.internal:acme/multi.git",
                                   targetRevision="develop")]
    app["status"]["operationState"] = {"syncResult": {"revisions": ["12" * 20]}}
    trigger = argocd.parse({}, json.dumps({"application": app}).encode(), staging, snapshot)
    assert isinstance(trigger, Trigger)
    assert (trigger.sha, trigger.repo, trigger.branch) == ("12" * 20, "acme/multi", "develop")


def test_bodies_are_json_whatever_the_content_type(snapshot: Snapshot,
                                                   staging: Integration) -> None:
    body = argocd_flat_app("shop-x")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = argocd_headers(SAMPLE_SECRET, content_type=content_type)
        assert isinstance(argocd.parse(headers, body, staging, snapshot), Trigger)


@pytest.mark.parametrize(("target", "branch"), [
    ("main", "main"), ("release/1.4", "release/1.4"), ("refs/heads/dev", "dev"),
    ("HEAD", None), ("", None), ("v1.2.0", "v1.2.0"), ("ab" * 20, "ab" * 20),
])
def test_branch_from_target_revision(snapshot: Snapshot, staging: Integration, target: str,
                                     branch: str | None) -> None:
    body = argocd_application("shop-a", target_revision=target, revision=SAMPLE_SHA)
    trigger = argocd.parse({}, body, staging, snapshot)
    assert isinstance(trigger, Trigger) and trigger.branch == branch


# -- filters ----------------------------------------------------------------------------------
def test_app_filter(snapshot: Snapshot, staging: Integration, unfiltered: Integration) -> None:
    body = argocd_flat_app("billing")
    assert argocd.parse({}, body, staging, snapshot) == Ignored(
        "application 'billing' does not match app_filter 'shop-*'", event="sync",
        sha=SAMPLE_SHA, app="billing")
    assert isinstance(argocd.parse({}, body, unfiltered, snapshot), Trigger)
    assert isinstance(argocd.parse({}, argocd_flat_app("shop-staging"), staging, snapshot),
                      Trigger)
    # "*" stays within one segment for app names too (they have none; just exercise it)
    assert isinstance(argocd.parse({}, argocd_flat_app("shop-"), staging, snapshot), Trigger)


@pytest.mark.parametrize(("status", "health", "reason"), [
    ("OutOfSync", "Healthy", "not Synced/Healthy: status=OutOfSync health=Healthy"),
    ("Synced", "Progressing", "not Synced/Healthy: status=Synced health=Progressing"),
    ("Synced", "Degraded", "not Synced/Healthy: status=Synced health=Degraded"),
    ("Unknown", "Missing", "not Synced/Healthy: status=Unknown health=Missing"),
    ("synced", "Healthy", "not Synced/Healthy: status=synced health=Healthy"),
])
def test_only_synced_healthy_starts_runs(snapshot: Snapshot, staging: Integration, status: str,
                                         health: str, reason: str) -> None:
    for body in (argocd_flat("shop-a", status=status, health=health),
                 argocd_flat_app("shop-a", status=status, health=health),
                 argocd_application("shop-a", sync=status, health=health)):
        result = argocd.parse({}, body, staging, snapshot)
        assert isinstance(result, Ignored) and result.reason == reason


def test_health_is_optional_status_is_not(snapshot: Snapshot, staging: Integration) -> None:
    ok = json.dumps({"app": "shop-a", "revision": "r1", "status": "Synced"}).encode()
    assert isinstance(argocd.parse({}, ok, staging, snapshot), Trigger)
    unrendered = json.dumps({"app": "shop-a", "revision": "r1", "status": "Synced",
                             "health": "<no value>"}).encode()
    assert isinstance(argocd.parse({}, unrendered, staging, snapshot), Trigger)
    no_status = json.dumps({"app": "shop-a", "revision": "r1"}).encode()
    result = argocd.parse({}, no_status, staging, snapshot)
    assert isinstance(result, Ignored) and result.reason == "not Synced/Healthy: status=(none)"


# -- repo derivation ----------------------------------------------------------------------------
@pytest.mark.parametrize(("repo_url", "repo"), [
    ("https://gitea.internal/acme/shop.git", "acme/shop"),
    ("https://gitea.internal/acme/shop", "acme/shop"),
    ("https://gitea.internal/acme/shop/", "acme/shop"),
    ("https://GITEA.internal/acme/shop.git", "acme/shop"),
    ("https://bot:token@gitea.internal/acme/shop.git", "acme/shop"),
    ("ssh://git@gitea.internal/acme/shop.git", "acme/shop"),
    ("ssh://git@gitea.internal:2222/acme/shop.git", "acme/shop"),
    ("git@gitea.internal:acme/shop.git", "acme/shop"),
    ("https://gitea.example.com:3000/acme/demo.git", "acme/demo"),
    ("http://gitea.example.com/acme/demo.git", "acme/demo"),
    ("https://github.com/acme/shop.git", ""),
    ("https://gitea.internal.evil.com/acme/shop.git", ""),
    ("https://gitea.internal/shop.git", ""),
    ("not a url", ""),
    ("", ""),
])
def test_repo_from_repo_url(snapshot: Snapshot, staging: Integration, repo_url: str,
                            repo: str) -> None:
    body = argocd_flat("shop-a", repository=repo_url)
    trigger = argocd.parse({}, body, staging, snapshot)
    assert isinstance(trigger, Trigger) and trigger.repo == repo


def test_repo_needs_a_gitea_integration_of_the_same_workspace() -> None:
    snap = load_snapshot({"integrations/b.yaml": integration(
        "argocd-b", "argocd", "https://argocd.b", workspace="team-b")},
        secrets={"argocd-b": "b"})
    argo_b = snap.integrations[("team-b", "argocd-b")]
    body = argocd_flat("app", repository="https://gitea.internal/acme/shop.git")
    trigger = argocd.parse({}, body, argo_b, snap)
    assert isinstance(trigger, Trigger) and trigger.repo == "" and trigger.workspace == "team-b"
    trigger = argocd.parse({}, body, argo_b, None)  # no snapshot: nothing to derive from
    assert isinstance(trigger, Trigger) and trigger.repo == ""


# -- malformed ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "fragment"), [
    (b"", "empty body"),
    (b"app_name=x", "not valid JSON"),
    (b'"x"', "expected an object"),
    (b"{}", "expected {app_name"),
    (b'{"app_name": "shop-a", "status": "Synced"}', "missing field 'revision'"),
    (b'{"app_name": "shop-a", "revision": "<no value>"}', "missing field 'revision'"),
    (b'{"app_name": 3, "revision": "r"}', "'app_name' must be a string"),
    (b'{"app": "shop-a", "revision": ["r"]}', "'revision' must be a string"),
    (b'{"app": "shop-a", "revision": "r", "health": 1}', "'health' must be a string"),
    (b'{"application": "shop-a"}', "Application object"),
    (b'{"application": {}}', "application: missing field 'metadata.name'"),
    (b'{"application": {"metadata": {"name": "shop-a"}}}', "status.sync.revision"),
    (b'{"application": {"metadata": {"name": "shop-a"}, "status": {"sync": '
     b'{"revision": "r", "status": 1}}}}', "'status.sync.status' must be a string"),
])
def test_malformed_is_bad_request(snapshot: Snapshot, staging: Integration, body: bytes,
                                  fragment: str) -> None:
    result = argocd.parse({}, body, staging, snapshot)
    assert isinstance(result, BadRequest), result
    assert fragment in result.reason


# -- never raises ---------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
KEYS = ["app_name", "app", "revision", "repository", "status", "health", "target_revision",
        "application", "metadata", "name", "spec", "source", "sources", "repoURL",
        "targetRevision", "sync", "operationState", "syncResult", "revisions"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "json", "shaped", "real"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "real":
        base = draw(st.sampled_from([argocd_flat(), argocd_flat_app(), argocd_application()]))
        data = json.loads(base)
        key = draw(st.sampled_from(sorted(data)))
        data[key] = draw(json_values)
        return json.dumps(data).encode()
    keys = st.sampled_from(KEYS)
    shaped = st.recursive(json_values, lambda c: st.dictionaries(keys, c, max_size=5)
                          | st.lists(c, max_size=3), max_leaves=15)
    return json.dumps(draw(st.dictionaries(keys, shaped, max_size=6))).encode()


headers_st = st.dictionaries(
    st.sampled_from(["X-TestMesh-Secret", "authorization", "Content-Type"]) | st.text(max_size=8),
    st.sampled_from([SAMPLE_SECRET, f"Bearer {SAMPLE_SECRET}", "Bearer", ""])
    | st.text(max_size=30),
    max_size=4,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=headers_st, body=bodies(), name=st.none() | st.text(max_size=15),
       secret=st.text(max_size=20))
def test_never_raises(headers: dict[str, str], body: bytes, name: str | None,
                      secret: str) -> None:
    snap = _snapshot()
    assert isinstance(argocd.verify(headers, SecretValue(secret)), bool)
    chosen = argocd.select_integration(snap, headers, body, workspace="default", name=name)
    assert isinstance(chosen, Integration | Rejected)
    for integ in (snap.integrations[("default", "argocd-staging")],
                  snap.integrations[("default", "argocd-all")]):
        result = argocd.parse(headers, body, integ, snap)
        assert isinstance(result, Trigger | Ignored | BadRequest)
        if isinstance(result, Trigger):
            assert result.app and result.sha
