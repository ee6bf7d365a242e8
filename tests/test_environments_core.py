"""Tests of the pure part of ``environments``: rendering a TestEnvironment from trigger
variables, TTL boundaries and reuse, and the ``SingleFlight`` helper."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from testmesh_reconciler.config.build import build_declaration
from testmesh_reconciler.config.model import Source, TestEnvironment
from testmesh_reconciler.environments import (
    Rendered,
    RenderError,
    SingleFlight,
    expires_at,
    is_expired,
    render_environment,
    reusable,
)

PR_VARS = {"source": "gitea", "event": "pull_request", "repo": "acme/shop", "branch": "feature-x",
           "base_branch": "main", "sha": "0123456789abcdef0123456789abcdef01234567",
           "short_sha": "0123456", "pr_number": "7", "action": "opened"}


def environment(**spec: Any) -> TestEnvironment:
    base: dict[str, Any] = {
        "provider": "argocd",
        "integration": "argocd-staging",
        "context": "pr-${pr_number}",
        "provider_app_name": "shop-pr-${pr_number}",
        "namespace": "review-pr-${pr_number}",
        "ttl_minutes": 60,
        "application": {
            "project": "default",
            "source": {"repoURL": "https://gitea.internal/acme/shop-deploy.git",
                       "path": "overlays/review", "targetRevision": "${branch}"},
            "destination": {"server": "https://kubernetes.default.svc"},
        },
        "routing_policy": {
            "user-service": "http://user-service.review-pr-${pr_number}.svc.cluster.local:8080",
            "product-service": "http://product-service.staging.svc.cluster.local:8080",
        },
    }
    base.update(spec)
    base = {k: v for k, v in base.items() if v is not None}
    doc = {"apiVersion": "testmesh.io/v1alpha1", "kind": "TestEnvironment",
           "metadata": {"name": "review"}, "spec": base}
    env, notes = build_declaration("TestEnvironment", doc, Source("envs.yaml", 1), None)
    assert isinstance(env, TestEnvironment)
    assert not notes
    return env


# --- rendering ----------------------------------------------------------------------------


def test_render_with_all_variables() -> None:
    rendered = render_environment(environment(), PR_VARS)
    assert rendered == Rendered(
        context="pr-7",
        provider_app_name="shop-pr-7",
        namespace="review-pr-7",
        routing={
            "user-service": "http://user-service.review-pr-7.svc.cluster.local:8080",
            "product-service": "http://product-service.staging.svc.cluster.local:8080",
        },
        application={
            "project": "default",
            "source": {"repoURL": "https://gitea.internal/acme/shop-deploy.git",
                       "path": "overlays/review", "targetRevision": "feature-x"},
            "destination": {"server": "https://kubernetes.default.svc"},
        },
    )
    assert isinstance(rendered.application, dict)  # plain JSON, not FrozenDict
    assert type(rendered.application["source"]) is dict


def test_missing_variable_is_named() -> None:
    sync_vars = {"source": "argocd", "event": "sync", "repo": "acme/shop", "sha": "abc",
                 "short_sha": "abc", "app": "shop", "branch": "main"}
    result = render_environment(environment(), sync_vars)
    assert result == RenderError(
        "review",
        "TestEnvironment 'review' needs ${pr_number}, which this trigger does not carry",
        ("pr_number",))


def test_every_missing_variable_is_named_once() -> None:
    env = environment(context="${base_branch}-${pr_number}", namespace="ns-${pr_number}")
    result = render_environment(env, {"branch": "main"})
    assert isinstance(result, RenderError)
    assert result.missing == ("base_branch", "pr_number")
    assert result.message == ("TestEnvironment 'review' needs ${base_branch} and ${pr_number}, "
                              "which this trigger does not carry")


def test_builtins_and_unknown_names_do_not_resolve() -> None:
    env = environment(context="run-${UUID}", routing_policy={"a": "http://${nope}"})
    result = render_environment(env, PR_VARS)
    assert isinstance(result, RenderError)
    assert result.missing == ("UUID", "nope")
    assert "uses ${UUID} and ${nope}, which are not trigger variables" in result.message


def test_without_context_each_run_is_alone() -> None:
    rendered = render_environment(environment(context=None), PR_VARS)
    assert isinstance(rendered, Rendered)
    assert rendered.context is None


def test_static_environment_without_application() -> None:
    env = environment(provider="static", integration=None, application=None,
                      provider_app_name=None, namespace=None, context="staging",
                      routing_policy={"api": "http://api.staging.svc:8080"})
    rendered = render_environment(env, {})
    assert isinstance(rendered, Rendered)
    assert rendered.routing == {"api": "http://api.staging.svc:8080"}
    assert (rendered.context, rendered.provider_app_name, rendered.namespace,
            rendered.application) == ("staging", None, None, None)


def test_a_name_kubernetes_rejects_is_reported_before_provisioning() -> None:
    env = environment(namespace="review-${branch}")
    result = render_environment(env, {**PR_VARS, "branch": "feature/X"})
    assert isinstance(result, RenderError)
    assert result.message.startswith(
        "TestEnvironment 'review': namespace renders to 'review-feature/X', which is not a "
        "valid Kubernetes name")


# --- TTL and reuse ----------------------------------------------------------------------


T0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def test_expires_at_and_is_expired_boundaries() -> None:
    assert expires_at(T0, 60) == T0 + timedelta(hours=1)
    assert expires_at(T0, 0.5) == T0 + timedelta(seconds=30)
    assert not is_expired(T0, 60, T0)
    assert not is_expired(T0, 60, T0 + timedelta(minutes=60) - timedelta(microseconds=1))
    assert is_expired(T0, 60, T0 + timedelta(minutes=60))
    assert is_expired(T0, 60, T0 + timedelta(minutes=61))
    assert is_expired(T0, 1.5, T0 + timedelta(seconds=90))
    assert not is_expired(T0, 1.5, T0 + timedelta(seconds=89))


@pytest.mark.parametrize(("state", "minutes_later", "expected"), [
    ("warm", 59, True),
    ("cooling", 59, True),
    ("warm", 60, False),
    ("cooling", 120, False),
    ("running", 1, False),
    ("provisioning", 1, False),
    ("cold", 1, False),
    ("destroyed", 1, False),
])
def test_reusable(state: str, minutes_later: int, expected: bool) -> None:
    now = T0 + timedelta(minutes=minutes_later)
    assert reusable(state, T0, 60, now) is expected


# --- SingleFlight -------------------------------------------------------------------------


async def test_single_flight_shares_one_call_per_key() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    calls: list[str] = []
    release = asyncio.Event()
    all_started = asyncio.Event()

    def factory_for(key: str) -> Any:
        async def factory() -> str:
            calls.append(key)
            if len(calls) == 3:
                all_started.set()
            await release.wait()
            return f"env-{key}"
        return factory

    keys = [f"ctx-{i % 3}" for i in range(20)]
    tasks = [asyncio.create_task(flight.run(k, factory_for(k))) for k in keys]
    await asyncio.wait_for(all_started.wait(), 5)
    assert len(flight) == 3
    assert "ctx-0" in flight
    release.set()
    results = await asyncio.gather(*tasks)
    assert sorted(calls) == ["ctx-0", "ctx-1", "ctx-2"]
    assert results == [f"env-{k}" for k in keys]
    assert len(flight) == 0
    assert await flight.run("ctx-0", factory_for("ctx-0")) == "env-ctx-0"  # afresh
    assert calls.count("ctx-0") == 2


async def test_single_flight_exception_reaches_every_waiter() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("provisioning failed")

    tasks = [asyncio.create_task(flight.run("k", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "provisioning failed" for r in results)
    assert "k" not in flight


async def test_single_flight_cancelled_waiter_does_not_cancel_the_call() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(flight.run("k", slow))
    second = asyncio.create_task(flight.run("k", slow))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "done"
