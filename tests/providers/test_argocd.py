"""Tests of the Argo CD provider: pure mapping, and the client against ``FakeArgoCD`` over
real HTTP on 127.0.0.1, with a fake clock so polling never sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.errors import ProviderError
from testmesh_reconciler.providers.argocd import (
    AppState,
    ArgoCDClient,
    application_body,
    ensure_ready,
    readiness,
    to_state,
)
from testmesh_reconciler.runner.clock import FakeClock

from ..testing.contracts import validate_definition
from ..testing.fake_argocd import DeleteCall, FakeArgoCD, build_application, fake_revision

TOKEN = "argo-t0k3n"
TEMPLATE: dict[str, Any] = {
    "project": "default",
    "source": {"repoURL": "https://gitea.example.com/acme/shop-deploy.git",
               "path": "overlays/review", "targetRevision": "feature-x"},
    "destination": {"server": "https://kubernetes.default.svc"},
    "syncPolicy": {"syncOptions": ["CreateNamespace=true"]},
}
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
async def argocd() -> AsyncIterator[FakeArgoCD]:
    async with FakeArgoCD(token=TOKEN) as fake:
        yield fake
    fake.assert_no_violations()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


def make_client(http: httpx.AsyncClient, fake: FakeArgoCD, clock: FakeClock,
                token: str = TOKEN) -> ArgoCDClient:
    return ArgoCDClient(http, fake.base_url + "/", SecretValue(token),
                        clock=clock.monotonic, sleep=clock.sleep)


@pytest.fixture
def client(http: httpx.AsyncClient, argocd: FakeArgoCD, clock: FakeClock) -> ArgoCDClient:
    return make_client(http, argocd, clock)


# --- pure mapping ------------------------------------------------------------------------


def test_to_state_reads_status_and_operation() -> None:
    app = build_application("shop", sync="Synced", health="Healthy", phase="Succeeded",
                            message="successfully synced", revision=SHA)
    assert to_state(app) == AppState("Synced", "Healthy", "Succeeded", "successfully synced",
                                     SHA, operation_pending=False)
    bare = to_state({"metadata": {"name": "x"}})
    assert bare == AppState("Unknown", "Unknown", None, "", None)
    pending = to_state({**app, "operation": {"sync": {"revision": SHA}}})
    assert pending.operation_pending


@pytest.mark.parametrize(("state", "verdict"), [
    (AppState("Synced", "Healthy", "Succeeded", "", None), "ready"),
    (AppState("Synced", "Healthy", None, "", None), "ready"),
    (AppState("Synced", "Healthy", "Succeeded", "", None, operation_pending=True), "progressing"),
    (AppState("Synced", "Progressing", "Running", "", None, operation_pending=True),
     "progressing"),
    (AppState("OutOfSync", "Healthy", "Succeeded", "", None), "progressing"),
    (AppState("Synced", "Suspended", "Succeeded", "", None), "progressing"),
    (AppState("Synced", "Degraded", "Succeeded", "crash loop", None), "failed"),
    (AppState("Synced", "Degraded", None, "", None), "failed"),
    # Degraded while our sync still runs: the old state the sync may fix.
    (AppState("Synced", "Degraded", "Running", "", None, operation_pending=True), "progressing"),
    (AppState("OutOfSync", "Missing", "Failed", "boom", None), "failed"),
    (AppState("OutOfSync", "Missing", "Error", "", None), "failed"),
])
def test_readiness(state: AppState, verdict: str) -> None:
    assert readiness(state)[0] == verdict


def test_readiness_reasons_carry_the_message() -> None:
    assert readiness(AppState("Synced", "Degraded", "Succeeded", "crash loop", None)) == (
        "failed", "health Degraded: crash loop")
    assert readiness(AppState("OutOfSync", "Missing", "Failed", "boom", None)) == (
        "failed", "sync operation Failed: boom")


def test_application_body_matches_the_swagger() -> None:
    body = application_body("shop-pr-7", "review-pr-7", TEMPLATE)
    assert body["metadata"]["name"] == "shop-pr-7"
    assert body["spec"]["destination"] == {"server": "https://kubernetes.default.svc",
                                           "namespace": "review-pr-7"}
    assert body["spec"]["project"] == "default"
    assert body["spec"]["syncPolicy"] == TEMPLATE["syncPolicy"]
    assert validate_definition("argocd", "v1alpha1Application", body, strict=True) == []
    assert TEMPLATE["destination"] == {"server": "https://kubernetes.default.svc"}  # untouched


def test_application_body_defaults_and_explicit_namespace() -> None:
    template = {"source": TEMPLATE["source"],
                "destination": {"name": "in-cluster", "namespace": "fixed"}}
    body = application_body("shop", "review", template)
    assert body["spec"]["project"] == "default"
    assert body["spec"]["destination"] == {"name": "in-cluster", "namespace": "fixed"}


def test_application_body_rejects_unknown_keys() -> None:
    with pytest.raises(ProviderError, match="not know: repoURL") as info:
        application_body("shop", "ns", {**TEMPLATE, "repoURL": "x"})
    assert not info.value.retryable


# --- ensure_ready against the fake ------------------------------------------------------


async def test_missing_app_is_created_synced_and_waited_for(
        argocd: FakeArgoCD, client: ArgoCDClient, clock: FakeClock) -> None:
    state = await ensure_ready(client, app_name="shop-pr-7", namespace="review-pr-7",
                               template=TEMPLATE, revision=None, timeout=600)
    assert (state.sync, state.health, state.phase) == ("Synced", "Healthy", "Succeeded")
    assert state.revision == fake_revision(TEMPLATE["source"]["repoURL"], "feature-x")
    assert (argocd.creates["shop-pr-7"], argocd.syncs["shop-pr-7"]) == (1, 1)
    assert argocd.gets["shop-pr-7"] == 3  # 403 (missing), Progressing, Healthy
    assert clock.sleeps == [1.0]
    created = argocd.requests_to("POST", "/api/v1/applications")[0].json()
    assert created["spec"]["destination"]["namespace"] == "review-pr-7"
    sync = argocd.requests_to("POST", "/sync")[0]
    assert sync.json() == {"name": "shop-pr-7"}
    assert sync.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_existing_healthy_app_is_synced_not_created(
        argocd: FakeArgoCD, client: ArgoCDClient, clock: FakeClock) -> None:
    argocd.add_app("shop", initial=("Synced", "Healthy", None),
                   script=[("Synced", "Healthy", "Succeeded", "ok")])
    state = await ensure_ready(client, app_name="shop", namespace="staging", template=TEMPLATE,
                               revision=SHA, timeout=600)
    assert (state.health, state.phase, state.revision) == ("Healthy", "Succeeded", SHA)
    assert argocd.creates["shop"] == 0
    assert argocd.syncs["shop"] == 1
    assert argocd.apps["shop"].sync_requests == [{"name": "shop", "revision": SHA}]
    assert clock.sleeps == []


async def test_missing_app_without_template_gives_the_hint(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    with pytest.raises(ProviderError) as info:
        await ensure_ready(client, app_name="shop-pr-7", namespace="review-pr-7",
                           template=None, revision=None, timeout=600)
    assert str(info.value) == (
        "application 'shop-pr-7' does not exist in Argo CD and the TestEnvironment declares "
        "no `application` template to create it; create it or add spec.application")
    assert not info.value.retryable
    assert not argocd.creates
    assert not argocd.syncs


async def test_degraded_app_fails_with_its_message(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.script_app("shop", [("Synced", "Progressing", "Running"),
                               ("Synced", "Degraded", "Succeeded", "Deployment exceeded its "
                                                                   "progress deadline")])
    with pytest.raises(ProviderError) as info:
        await ensure_ready(client, app_name="shop", namespace="ns", template=TEMPLATE,
                           revision=None, timeout=600)
    assert str(info.value) == ("application 'shop' failed: health Degraded: Deployment "
                               "exceeded its progress deadline")
    assert not info.value.retryable


async def test_failed_operation_fails(argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.add_app("shop", script=[("OutOfSync", "Missing", "Failed", "one or more objects "
                                                                      "failed to apply")])
    with pytest.raises(ProviderError, match="sync operation Failed: one or more objects") as info:
        await ensure_ready(client, app_name="shop", namespace="ns", template=None,
                           revision=None, timeout=600)
    assert not info.value.retryable


async def test_sync_conflict_is_waited_for_not_an_error(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.add_app("shop")
    assert await client.sync("shop") is True  # someone else's sync, still running
    assert await client.sync("shop") is False  # "another operation is already in progress"
    state = await ensure_ready(client, app_name="shop", namespace="ns", template=None,
                               revision=None, timeout=600)
    assert (state.health, state.phase) == ("Healthy", "Succeeded")
    assert argocd.syncs["shop"] == 1


async def test_foreign_operation_on_another_commit_is_followed_by_our_sync(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.add_app("shop")
    assert await client.sync("shop") is True  # someone else's sync of the branch head
    state = await ensure_ready(client, app_name="shop", namespace="ns", template=None,
                               revision=SHA, timeout=600)
    assert state.revision == SHA
    assert argocd.syncs["shop"] == 2
    assert argocd.apps["shop"].sync_requests[-1] == {"name": "shop", "revision": SHA}


async def test_timeout_on_the_fake_clock(
        argocd: FakeArgoCD, client: ArgoCDClient, clock: FakeClock) -> None:
    argocd.script_app("shop", [("Synced", "Progressing", "Running")])
    with pytest.raises(ProviderError) as info:
        await ensure_ready(client, app_name="shop", namespace="ns", template=TEMPLATE,
                           revision=None, timeout=30)
    assert str(info.value) == "application 'shop' not Healthy after 30 s (last: Synced/Progressing)"
    assert not info.value.retryable
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 10.0, 5.0]
    assert clock.monotonic() == 30


async def test_wait_ready_rides_out_a_transient_5xx(
        argocd: FakeArgoCD, client: ArgoCDClient, clock: FakeClock) -> None:
    argocd.add_app("shop")
    await client.sync("shop")
    argocd.fail_next(1, 503, method="GET")
    state = await client.wait_ready("shop", timeout=60, initial_delay=0.5, max_delay=2)
    assert state.health == "Healthy"
    assert clock.sleeps == [0.5, 1.0]


async def test_existing_app_with_another_spec_is_used_as_is(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.add_app("shop", target_revision="main")
    app = await client.create_app(application_body("shop", "ns", TEMPLATE))
    assert app["spec"]["source"]["targetRevision"] == "main"
    assert argocd.creates["shop"] == 0


async def test_create_denied_explains_both_meanings_of_403(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.fail_next(1, 403, method="POST")
    with pytest.raises(ProviderError) as info:
        await ensure_ready(client, app_name="shop", namespace="ns", template=TEMPLATE,
                           revision=None, timeout=600)
    message = str(info.value)
    assert "denied creating application 'shop' in project 'default'" in message
    assert "missing" in message
    assert "may not read it" in message
    assert not info.value.retryable
    assert info.value.status == 403


async def test_delete_is_cascading_and_idempotent(
        argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.add_app("shop")
    assert await client.delete_app("shop") is True
    assert argocd.deleted == [DeleteCall("shop", "true", None)]
    assert await client.delete_app("shop") is False  # 403: already gone
    assert argocd.deletes["shop"] == 1


async def test_rejected_token_is_not_retryable_and_never_shown(
        http: httpx.AsyncClient, argocd: FakeArgoCD, clock: FakeClock) -> None:
    client = make_client(http, argocd, clock, token="wrong-secret-token")
    with pytest.raises(ProviderError, match="token rejected") as info:
        await client.get_app("shop")
    assert not info.value.retryable
    assert info.value.status == 401
    assert "wrong-secret-token" not in str(info.value)


async def test_server_errors_are_retryable(argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.fail_next(1, 500, method="POST")
    with pytest.raises(ProviderError, match="answered 500") as info:
        await client.sync("shop")
    assert info.value.retryable
    assert info.value.status == 500


async def test_network_errors_are_retryable(argocd: FakeArgoCD, client: ArgoCDClient) -> None:
    argocd.go_down()
    with pytest.raises(ProviderError, match="unreachable while getting application") as info:
        await client.get_app("shop")
    assert info.value.retryable
    assert TOKEN not in str(info.value)
