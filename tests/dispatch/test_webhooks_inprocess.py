"""Webhooks to runs in-process (aiohttp ``TestClient``, SQLite in ``tmp_path``, the service
under test on a free port): every path and body shape, each refusal, dedup, supersede, the
queue cap, manual runs and the read APIs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.services import Services
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.state import ReloadRecord, StateHolder
from testmesh_reconciler.store import SqliteStore
from testmesh_reconciler.store.clock import SystemClock
from testmesh_reconciler.web.app import create_app
from testmesh_reconciler.web.dispatch_ext import install
from tests.testing.webhook_payloads import (
    argocd_application,
    argocd_flat,
    argocd_flat_app,
    argocd_headers,
    gitea_pull_request,
    gitea_push,
)
from tests.webhooks import load_snapshot

from . import ARGOCD, GITEA, config_files
from .service import Service

GITEA_SECRET = "gitea-hook-secret"
ARGO_SECRET = "argo-hook-secret"
TOKEN = "api-token-value"
SHA = "1" * 40

Client = TestClient[web.Request, web.Application]


@dataclass
class Env:
    client: Client
    service: Service
    store: SqliteStore
    state: StateHolder

    async def push(self, sha: str = SHA, branch: str = "main", *, secret: str = GITEA_SECRET,
                   path: str = "/api/v1/webhooks/gitea", repo: str = "acme/shop"
                   ) -> tuple[int, dict[str, Any]]:
        headers, body = gitea_push(repo, branch, sha, secret)
        resp = await self.client.post(path, data=body, headers=headers)
        return resp.status, await resp.json()

    async def wait_run(self, run_id: str, seconds: float = 10) -> dict[str, Any]:
        for _ in range(int(seconds / 0.02)):
            resp = await self.client.get(f"/api/v1/suite-runs/{run_id}")
            run: dict[str, Any] = await resp.json()
            if run["status"] not in ("pending", "running"):
                return run
            await asyncio.sleep(0.02)
        raise AssertionError(f"run {run_id} did not finish: {run}")


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(config_repo=str(tmp_path), data_dir=tmp_path,
                                api_token=SecretValue(TOKEN), max_body_bytes=64 * 1024,
                                poll_interval=0, grace_period=2)
    base.update(kw)
    return Settings(**base)


async def start(tmp_path: Path, service: Service, *, loaded: bool = True,
                **settings_kw: Any) -> tuple[Env, Callable[[], Any]]:
    state = StateHolder()
    if loaded:
        snapshot = load_snapshot(config_files(service.url), examples=False,
                                 secrets={GITEA: GITEA_SECRET, ARGOCD: ARGO_SECRET})
        await state.swap(snapshot, ReloadRecord(at=SystemClock().now(), revision="r1",
                                                result="ok"))
    store = SqliteStore(tmp_path / "store.sqlite3")
    services = Services(state=state, metrics=Metrics(), clock=SystemClock(), store=store,
                        http=httpx.AsyncClient(timeout=10))
    app = create_app(settings_for(tmp_path, **settings_kw), services, extensions=[
        lambda a: install(a, replica="test-replica", poll_interval=0.05)])
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return Env(client, service, store, state), client.close


@pytest.fixture
async def env(tmp_path: Path, service: Service) -> AsyncIterator[Env]:
    e, close = await start(tmp_path, service)
    yield e
    await close()


# -- accepted deliveries -------------------------------------------------------------------
async def test_gitea_push_becomes_a_run_that_calls_the_service_once(env: Env) -> None:
    status, answer = await env.push()
    assert status == 202, answer
    assert answer["matched_rules"] == ["shop-push"] and len(answer["runs"]) == 1
    run = await env.wait_run(answer["runs"][0])
    assert run["status"] == "completed", run
    assert run["trigger_type"] == "webhook" and run["trigger_ref"] == SHA
    assert run["trigger"]["repo"] == "acme/shop" and run["trigger"]["branch"] == "main"
    assert run["flows"][0]["status"] == "passed" and run["revision"] == "r1"
    assert env.service.state.count(SHA) == 1
    deliveries = await (await env.client.get("/api/v1/deliveries")).json()
    assert [d["outcome"] for d in deliveries["items"]] == ["accepted"]
    assert deliveries["items"][0]["runs"] == answer["runs"]


async def test_redelivery_is_a_duplicate_and_starts_nothing(env: Env) -> None:
    first = await env.push()
    await env.wait_run(first[1]["runs"][0])
    status, answer = await env.push()  # Gitea "redeliver": a new delivery id, same event
    assert status == 202 and answer["duplicate"] is True
    assert answer["runs"] == first[1]["runs"] and answer["delivery_id"] != first[1]["delivery_id"]
    await asyncio.sleep(0.2)
    assert env.service.state.count(SHA) == 1
    outcomes = await (await env.client.get("/api/v1/deliveries?outcome=duplicate")).json()
    assert len(outcomes["items"]) == 1


@pytest.mark.parametrize("path", ["/api/v1/webhooks/gitea/gitea-internal",
                                  "/api/v1/workspaces/default/webhooks/gitea/gitea-internal"])
async def test_gitea_named_paths(env: Env, path: str) -> None:
    status, answer = await env.push(path=path)
    assert status == 202, answer
    assert (await env.wait_run(answer["runs"][0]))["status"] == "completed"


@pytest.mark.parametrize("path", ["/api/v1/webhooks/argocd", "/api/v1/integrations/webhooks/argocd",
                                  "/api/v1/webhooks/argocd/argocd-staging",
                                  "/api/v1/workspaces/default/webhooks/argocd/argocd-staging"])
@pytest.mark.parametrize("shape", ["flat", "flat_app", "application"])
async def test_argocd_body_shapes_and_paths(env: Env, path: str, shape: str) -> None:
    sha = {"flat": "a", "flat_app": "b", "application": "c"}[shape] * 40
    body = {"flat": argocd_flat(revision=sha), "flat_app": argocd_flat_app(revision=sha),
            "application": argocd_application(revision=sha)}[shape]
    style: Literal["x-testmesh", "bearer"] = "bearer" if shape == "flat_app" else "x-testmesh"
    resp = await env.client.post(path, data=body,
                                 headers=argocd_headers(ARGO_SECRET, style, content_type=None))
    answer = await resp.json()
    assert resp.status == 202, answer
    assert answer["matched_rules"] == ["demo-sync"]
    run = await env.wait_run(answer["runs"][0])
    assert run["status"] == "completed" and run["trigger_type"] == "argocd"
    assert run["trigger"]["app"] == "testmesh-demo"


async def test_argocd_app_filter_and_unhealthy_are_ignored(env: Env) -> None:
    headers = argocd_headers(ARGO_SECRET)
    for body, why in ((argocd_flat(app_name="other-app"), "app_filter"),
                      (argocd_flat(health="Degraded"), "not Synced/Healthy")):
        resp = await env.client.post("/api/v1/webhooks/argocd", data=body, headers=headers)
        answer = await resp.json()
        assert resp.status == 200 and answer["outcome"] == "ignored", answer
        assert why in answer["reason"]
    ignored = await (await env.client.get("/api/v1/deliveries?source=argocd")).json()
    assert [d["outcome"] for d in ignored["items"]] == ["ignored", "ignored"]


async def test_pull_request_actions(env: Env) -> None:
    for action, expected in (("opened", 202), ("synchronized", 202), ("reopened", 202),
                             ("closed", 200), ("edited", 200)):
        headers, body = gitea_pull_request(action=action, head_sha=action[0] * 40,
                                           secret=GITEA_SECRET)
        resp = await env.client.post("/api/v1/webhooks/gitea", data=body, headers=headers)
        answer = await resp.json()
        assert resp.status == expected, (action, answer)
        if expected == 202:
            run = await env.wait_run(answer["runs"][0])
            assert run["trigger"]["action"] == action and run["trigger"]["pr_number"] == "7"
        else:
            assert answer["outcome"] == "ignored"


async def test_tags_branch_deletions_and_unknown_repos_are_ignored(env: Env) -> None:
    for headers, body in (gitea_push(tag="v1.0", secret=GITEA_SECRET),
                          gitea_push(deleted=True, secret=GITEA_SECRET),
                          gitea_push("acme/other", secret=GITEA_SECRET)):
        resp = await env.client.post("/api/v1/webhooks/gitea", data=body, headers=headers)
        answer = await resp.json()
        assert resp.status == 200 and answer["outcome"] == "ignored", answer
    assert (await env.store.count_runs_by_status()).get("pending", 0) == 0


# -- refusals ------------------------------------------------------------------------------
async def test_auth_failures_and_unknown_names(env: Env) -> None:
    headers, body = gitea_push(secret=GITEA_SECRET)
    for bad in ({**headers, "X-Gitea-Signature": "0" * 64,
                 "X-Hub-Signature-256": "sha256=" + "0" * 64},
                {k: v for k, v in headers.items() if "Signature" not in k}):
        resp = await env.client.post("/api/v1/webhooks/gitea", data=body, headers=bad)
        assert resp.status == 401
    resp = await env.client.post("/api/v1/webhooks/gitea/gitea-internal", data=body,
                                 headers=gitea_push(secret="wrong")[0])
    assert resp.status == 401
    for path in ("/api/v1/webhooks/gitea/nope", "/api/v1/workspaces/other/webhooks/gitea/x",
                 "/api/v1/webhooks/argocd/gitea-internal"):
        resp = await env.client.post(path, data=body, headers=headers)
        assert resp.status == 404, path
    for argo in ({"X-TestMesh-Secret": "wrong"}, {"Authorization": "Bearer wrong"}, {}):
        resp = await env.client.post("/api/v1/webhooks/argocd", data=argocd_flat(), headers=argo)
        assert resp.status == 401
    rejected = await (await env.client.get("/api/v1/deliveries?outcome=rejected")).json()
    assert [d["integration"] for d in rejected["items"]] == ["gitea-internal"]


async def test_malformed_bodies_are_400(env: Env) -> None:
    for body in (b"{", b"[]", b"\xff\xfe", b'{"ref": 5}'):
        headers, _ = gitea_push(secret=GITEA_SECRET)
        from tests.testing.webhook_payloads import gitea_signature

        headers = {**headers, "X-Gitea-Signature": gitea_signature(body, GITEA_SECRET),
                   "X-Hub-Signature-256": "sha256=" + gitea_signature(body, GITEA_SECRET)}
        resp = await env.client.post("/api/v1/webhooks/gitea", data=body, headers=headers)
        assert resp.status == 400, body
    resp = await env.client.post("/api/v1/webhooks/argocd", data=b'{"app": 1}',
                                 headers=argocd_headers(ARGO_SECRET))
    assert resp.status == 400


async def test_undecodable_content_encoding_is_400(env: Env) -> None:
    resp = await env.client.post("/api/v1/webhooks/gitea", data=b"not compressed",
                                 headers={"Content-Encoding": "gzip"})
    assert resp.status == 400
    assert "could not decode" in (await resp.json())["error"]


async def test_body_over_the_cap_is_413_while_streaming(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 4096  # 256 KiB in total, no Content-Length, cap is 64 KiB

    headers, _ = gitea_push(secret=GITEA_SECRET)
    resp = await env.client.post("/api/v1/webhooks/gitea", data=chunks(), headers=headers)
    assert resp.status == 413
    resp = await env.client.post("/api/v1/webhooks/argocd", data=b"x" * (65 * 1024),
                                 headers=argocd_headers(ARGO_SECRET))
    assert resp.status == 413


async def test_503_with_retry_after_until_a_config_is_loaded(tmp_path: Path,
                                                             service: Service) -> None:
    env, close = await start(tmp_path, service, loaded=False)
    try:
        headers, body = gitea_push(secret=GITEA_SECRET)
        resp = await env.client.post("/api/v1/webhooks/gitea", data=body, headers=headers)
        assert resp.status == 503 and resp.headers["Retry-After"]
        resp = await env.client.post("/api/v1/webhooks/argocd", data=argocd_flat(),
                                     headers=argocd_headers(ARGO_SECRET))
        assert resp.status == 503
    finally:
        await close()


async def test_full_queue_is_429_and_newer_sha_supersedes(tmp_path: Path,
                                                         service: Service) -> None:
    env, close = await start(tmp_path, service, max_concurrent_runs=1, max_queued_runs=2)
    gate = service.state.gate
    assert gate is not None
    gate.clear()
    try:
        status, first = await env.push("1" * 40, "b1")
        assert status == 202
        for _ in range(200):  # the first run is executing (blocked in the service)
            if service.state.count("1" * 40):
                break
            await asyncio.sleep(0.02)
        s2, second = await env.push("2" * 40, "b2")
        s3, third = await env.push("3" * 40, "b2")  # same rule+repo+branch: supersedes
        s4, fourth = await env.push("4" * 40, "b3")
        s5, fifth = await env.push("5" * 40, "b4")
        assert (s2, s3, s4) == (202, 202, 202)
        assert s5 == 429 and "queue" in fifth["error"]
        gate.set()
        done = [await env.wait_run(r[1]["runs"][0] if isinstance(r, tuple) else r["runs"][0])
                for r in (first, second, third, fourth)]
        assert [r["status"] for r in done] == ["completed", "cancelled", "completed",
                                               "completed"]
        assert service.state.count("2" * 40) == 0 and service.state.count("3" * 40) == 1
    finally:
        gate.set()
        await close()


# -- manual runs ---------------------------------------------------------------------------
async def test_manual_run_auth_and_run(env: Env) -> None:
    path = "/api/v1/workspaces/default/suites/smoke/run"
    assert (await env.client.post(path)).status == 401
    assert (await env.client.post(path, headers={"Authorization": "Bearer nope"})).status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await env.client.post(path, json={"variables": {"sha": "by-hand"}}, headers=auth)
    run = await resp.json()
    assert resp.status == 202 and run["trigger_type"] == "manual", run
    done = await env.wait_run(run["id"])
    assert done["status"] == "completed" and env.service.state.count("by-hand") == 1
    assert "no commit status" in done["status_report"]["reason"]
    assert (await env.client.post("/api/v1/workspaces/default/suites/none/run",
                                  headers=auth)).status == 404
    for bad in (b"[1]", b"{", b'{"variables": []}', b'{"environment": 3}', b'{"x": 1}'):
        assert (await env.client.post(path, data=bad, headers=auth)).status == 400, bad
    listed = await (await env.client.get("/api/v1/workspaces/default/suites/smoke/runs")).json()
    assert [r["id"] for r in listed["items"]] == [run["id"]]


async def test_manual_run_without_a_token_configured_is_403(tmp_path: Path,
                                                           service: Service) -> None:
    env, close = await start(tmp_path, service, api_token=None)
    try:
        resp = await env.client.post("/api/v1/workspaces/default/suites/smoke/run",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 403 and "--api-token" in (await resp.json())["error"]
    finally:
        await close()


async def test_deliveries_paging_and_filters(env: Env) -> None:
    ids = []
    for i in range(5):
        status, answer = await env.push(str(i + 1) * 40, f"b{i}")
        assert status == 202
        ids.append(answer["delivery_id"])
    page1 = await (await env.client.get("/api/v1/deliveries?limit=2")).json()
    assert [d["id"] for d in page1["items"]] == ids[::-1][:2]
    page2 = await (await env.client.get(
        f"/api/v1/deliveries?limit=2&before={page1['next_before']}")).json()
    assert [d["id"] for d in page2["items"]] == ids[::-1][2:4]
    assert (await (await env.client.get("/api/v1/deliveries?repo=acme/none")).json())[
        "items"] == []
    assert (await env.client.get("/api/v1/deliveries?limit=0")).status == 400
    assert (await env.client.get("/api/v1/suite-runs/nope")).status == 404


async def test_commit_statuses_pending_then_one_final_and_none_for_manual_runs(env: Env) -> None:
    status, answer = await env.push()
    assert status == 202
    run = await env.wait_run(answer["runs"][0])
    entries = await env.store.get_outbox(run["id"])
    assert [(e.seq, e.state) for e in entries] == [(0, "pending"), (1, "success")]
    assert entries[0].repo == "acme/shop" and entries[0].sha == SHA
    assert entries[0].context == "testmesh/smoke"
    resp = await env.client.post("/api/v1/workspaces/default/suites/smoke/run",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    manual = await env.wait_run((await resp.json())["id"])
    assert await env.store.get_outbox(manual["id"]) == []
