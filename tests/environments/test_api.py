"""``/api/v1/test-environments`` through the real app (aiohttp ``TestClient``): the list
(newest first, ``?state=``), one instance, ``DELETE`` (token rules, 202, teardown after a
run), and the reaper loop that the extension starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from testmesh_reconciler.config.model import SecretValue, Snapshot
from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.services import make_services
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.store import FakeClock, SqliteStore
from testmesh_reconciler.web import TASKS
from testmesh_reconciler.web.app import create_app
from testmesh_reconciler.web.environments_ext import (
    ENVIRONMENTS,
    REAPER_LOOP,
    build_manager,
    extension,
)

from ..testing.fake_argocd import FakeArgoCD
from .conftest import PR_VARS, Sleeper

Client = TestClient[web.Request, web.Application]
TOKEN = "api-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(tmp_path: Path, *, api_token: str | None = TOKEN,
             reap_interval: float = 3600.0) -> Settings:
    return Settings(config_repo=str(tmp_path), data_dir=tmp_path,
                    api_token=SecretValue(api_token) if api_token else None,
                    reap_interval=reap_interval)


async def serve(tmp_path: Path, http: httpx.AsyncClient, clock: FakeClock, sleeper: Sleeper,
                snapshot: Snapshot, *, api_token: str | None = TOKEN,
                reap_interval: float = 3600.0) -> tuple[Client, EnvironmentManager]:
    store = SqliteStore(tmp_path / "api.sqlite3")
    services = make_services(clock=clock, store=store, http=http)
    manager = EnvironmentManager(store, http=http, clock=clock, sleep=sleeper, replica="t",
                                 provision_timeout=600.0, snapshot=lambda: snapshot)

    def preset(app: web.Application) -> None:
        app[ENVIRONMENTS] = manager

    app = create_app(settings(tmp_path, api_token=api_token, reap_interval=reap_interval),
                     services,
                     extensions=[preset, extension])
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client, manager


@pytest.fixture
async def api(tmp_path: Path, clock: FakeClock, sleeper: Sleeper, snapshot: Snapshot
              ) -> AsyncIterator[tuple[Client,
                                       EnvironmentManager]]:
    # its own HTTP client: the app closes the one in its services on shutdown
    http = httpx.AsyncClient(timeout=5.0)
    client, manager = await serve(tmp_path, http, clock, sleeper, snapshot)
    yield client, manager
    await client.close()


async def acquire(manager: EnvironmentManager, snapshot: Snapshot, name: str = "review",
                  run_id: str = "run-1", **variables: str) -> str:
    acquired = await manager.acquire(snapshot=snapshot, workspace="default", name=name,
                                     variables={**PR_VARS, **variables}, run_id=run_id)
    assert acquired.instance_id is not None
    return acquired.instance_id


async def test_list_newest_first_and_state_filter(
        api: tuple[Client, EnvironmentManager],
        snapshot: Snapshot, clock: FakeClock) -> None:
    client, manager = api
    first = await manager.acquire(snapshot=snapshot, workspace="default", name="review",
                                  variables=PR_VARS, run_id="run-1")
    await manager.release(first, failed=False)
    clock.advance(1)
    second = await acquire(manager, snapshot, pr_number="8")
    response = await client.get("/api/v1/test-environments")
    assert response.status == 200
    items = (await response.json())["items"]
    assert [i["id"] for i in items] == [second, first.instance_id]
    item = items[1]
    assert item["state"] == "warm" and item["context"] == "pr-7"
    assert item["provider_app_name"] == "shop-pr-7" and item["namespace"] == "review-pr-7"
    assert item["routing"] == {
        "user-service": "http://user-service.review-pr-7.svc.cluster.local:8080"}
    assert item["last_used_at"].startswith("2024-01-01T00:00:") and item["error"] is None
    assert item["expires_at"] == item["last_used_at"].replace("T00:", "T01:")
    warm = await (await client.get("/api/v1/test-environments?state=warm")).json()
    assert [i["id"] for i in warm["items"]] == [first.instance_id]
    bad = await client.get("/api/v1/test-environments?state=hot")
    assert bad.status == 400 and "not one of" in (await bad.json())["error"]
    one = await client.get(f"/api/v1/test-environments/{second}")
    assert one.status == 200 and (await one.json())["state"] == "running"
    assert (await client.get("/api/v1/test-environments/nope")).status == 404


async def test_delete_needs_the_api_token(
        api: tuple[Client, EnvironmentManager],
        snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    client, manager = api
    env_id = await acquire(manager, snapshot)
    path = f"/api/v1/test-environments/{env_id}"
    assert (await client.delete(path)).status == 401
    assert (await client.delete(path, headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.delete("/api/v1/test-environments/nope", headers=AUTH)).status == 404
    assert argocd.deletes["shop-pr-7"] == 0


async def test_delete_without_configured_token_is_403(
        tmp_path: Path, clock: FakeClock, sleeper: Sleeper, snapshot: Snapshot) -> None:
    client, _ = await serve(tmp_path, httpx.AsyncClient(), clock, sleeper, snapshot,
                            api_token=None)
    try:
        response = await client.delete("/api/v1/test-environments/x", headers=AUTH)
        assert response.status == 403
    finally:
        await client.close()


async def test_delete_tears_down_idle_env(
        api: tuple[Client, EnvironmentManager],
        snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    client, manager = api
    acquired = await manager.acquire(snapshot=snapshot, workspace="default", name="review",
                                     variables=PR_VARS, run_id="run-1")
    await manager.release(acquired, failed=False)
    response = await client.delete(f"/api/v1/test-environments/{acquired.instance_id}",
                                   headers=AUTH)
    assert response.status == 202
    assert (await response.json())["teardown"] == "started"
    await manager.drain()
    assert argocd.deletes["shop-pr-7"] == 1
    body = await (await client.get(f"/api/v1/test-environments/{acquired.instance_id}")).json()
    assert body["state"] == "destroyed"
    again = await client.delete(f"/api/v1/test-environments/{acquired.instance_id}",
                                headers=AUTH)
    assert again.status == 202 and (await again.json())["teardown"] == "done"


async def test_delete_running_env_after_its_run(
        api: tuple[Client, EnvironmentManager],
        snapshot: Snapshot, argocd: FakeArgoCD) -> None:
    client, manager = api
    acquired = await manager.acquire(snapshot=snapshot, workspace="default", name="review",
                                     variables=PR_VARS, run_id="run-1")
    response = await client.delete(f"/api/v1/test-environments/{acquired.instance_id}",
                                   headers=AUTH)
    assert response.status == 202 and (await response.json())["teardown"] == "after_run"
    await manager.drain()
    assert argocd.deletes["shop-pr-7"] == 0
    await manager.release(acquired, failed=False)
    assert argocd.deletes["shop-pr-7"] == 1


async def test_extension_runs_the_reaper(
        tmp_path: Path, sleeper: Sleeper, snapshot: Snapshot, argocd: FakeArgoCD,
        clock: FakeClock) -> None:
    client, manager = await serve(tmp_path, httpx.AsyncClient(), clock, sleeper, snapshot,
                                  reap_interval=0.01)
    assert REAPER_LOOP in client.app[TASKS]
    acquired = await manager.acquire(snapshot=snapshot, workspace="default", name="review",
                                     variables=PR_VARS, run_id="run-1")
    await manager.release(acquired, failed=False)
    clock.advance(60 * 60)  # the loop passes every 10 ms of real time
    await argocd.wait_for_deletes("shop-pr-7")
    for _ in range(100):
        record = await manager.store.get_environment(acquired.instance_id or "")
        if record is not None and record.state == "destroyed":
            break
        await asyncio.sleep(0.01)
    assert record is not None and record.state == "destroyed"
    await client.close()


def test_build_manager_needs_store_and_http(tmp_path: Path) -> None:
    from testmesh_reconciler.errors import UsageError

    with pytest.raises(UsageError):
        build_manager(settings(tmp_path), make_services())
