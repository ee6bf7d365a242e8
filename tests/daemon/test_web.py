"""The app in-process (aiohttp ``TestClient``): probes, status, the read-only config
API, the config webhook's answers, metrics, the error middleware and guarded loops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from testmesh_reconciler import secrets
from testmesh_reconciler.config.model import SecretValue
from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.reload import Reloader
from testmesh_reconciler.services import Services
from testmesh_reconciler.settings import Settings
from testmesh_reconciler.sources.git import GitSource
from testmesh_reconciler.state import StateHolder
from testmesh_reconciler.store.clock import FakeClock
from testmesh_reconciler.tasks import guard
from testmesh_reconciler.web.app import add_loop, add_status_provider, create_app

from .repo import BAD_SUITE, SECRET_ENV, ConfigRepo, basic_repo, push_body, sign

HOOK_SECRET = "config-hook-secret"
HOOK = "/api/v1/webhooks/config"


class FakeStore:
    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def ping(self) -> bool:
        return self.up


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(config_repo=str(tmp_path / "upstream"), data_dir=tmp_path / "d",
                                config_webhook_secret=SecretValue(HOOK_SECRET),
                                max_body_bytes=4096, poll_interval=0)
    base.update(kw)
    return Settings(**base)


@contextlib.asynccontextmanager
async def running(settings: Settings, services: Services, **kw: Any
                  ) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(create_app(settings, services, **kw)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def git_services(repo: ConfigRepo, tmp_path: Path, store: FakeStore | None = None) -> Services:
    state = StateHolder()
    metrics = Metrics()
    source = GitSource(str(repo.path), branch="main", path="",
                       clone_dir=tmp_path / "d" / "config-repo")
    opener = secrets.make_secret_opener(private_keys=[], environ=SECRET_ENV,
                                        read_file=secrets.read_secret_file)
    reloader = Reloader(source=source, state=state, clock=FakeClock(), metrics=metrics,
                        open_secret=opener)
    return Services(state=state, metrics=metrics, clock=FakeClock(), reloader=reloader,
                    store=store)


async def until_version(state: StateHolder, version: int) -> None:
    async with asyncio.timeout(10):
        await state.wait_for_change(version - 1)


@pytest.fixture
def repo(tmp_path: Path) -> ConfigRepo:
    return basic_repo(tmp_path / "upstream")


async def test_probes_before_and_after_the_first_load(tmp_path: Path, repo: ConfigRepo) -> None:
    store = FakeStore()
    services = git_services(repo, tmp_path, store)
    async with running(make_settings(tmp_path), services) as client:
        assert store.opened
        assert (await client.get("/healthz")).status == 200
        await until_version(services.state, 1)
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["revision"] == repo.head()
        store.up = False
        down = await client.get("/readyz")
        assert down.status == 503 and "store" in (await down.json())["reason"]
    assert store.closed


async def test_readyz_explains_why_not_ready(tmp_path: Path) -> None:
    services = Services(state=StateHolder(), metrics=Metrics())
    async with running(make_settings(tmp_path), services) as client:
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["ready"] is False
        assert "no config loaded yet" in body["reason"]


async def test_status_after_a_bad_commit_lists_problems_and_keeps_the_revision(
        tmp_path: Path, repo: ConfigRepo) -> None:
    services = git_services(repo, tmp_path)
    good = repo.head()

    async def outbox() -> Mapping[str, Any]:
        return {"outbox": {"queued": 0, "given_up": 0}}

    async def broken() -> Mapping[str, Any]:
        raise RuntimeError("provider bug")

    def extend(app: web.Application) -> None:
        add_status_provider(app, broken)
        add_status_provider(app, outbox)

    async with running(make_settings(tmp_path), services, extensions=[extend]) as client:
        await until_version(services.state, 1)
        repo.write("suites/smoke.yaml", BAD_SUITE)
        bad = repo.commit("bad")
        assert services.reloader is not None
        async with asyncio.timeout(10):
            await services.reloader.reload_now("test")
        status = await (await client.get("/api/v1/status")).json()
        assert status["revision"] == good
        assert status["last_reload"]["revision"] == bad
        assert status["last_reload"]["result"] == "failed"
        assert status["last_success"]["revision"] == good
        assert [(p["file"], p["line"]) for p in status["problems"]] == [("suites/smoke.yaml", 5)]
        assert set(status["problems"][0]) == {"file", "line", "column", "path", "message"}
        assert status["counts"] == {"Integration": 1, "TriggerRule": 1, "Suite": 1, "Flow": 2,
                                    "TestEnvironment": 0}
        assert status["outbox"] == {"queued": 0, "given_up": 0}
        assert (await client.get("/readyz")).status == 200  # last-known-good still serves
        metrics = await (await client.get("/metrics")).text()
        assert 'testmesh_config_reloads_total{result="failed"} 1.0' in metrics
        assert 'testmesh_config_declarations{kind="Flow"} 2.0' in metrics


async def test_config_api_lists_and_gets_with_ids_sources_and_no_secrets(
        tmp_path: Path, repo: ConfigRepo) -> None:
    services = git_services(repo, tmp_path)
    async with running(make_settings(tmp_path), services) as client:
        not_yet = await client.get("/api/v1/workspaces/default/flows")
        assert not_yet.status in (200, 503)
        await until_version(services.state, 1)
        flows = await (await client.get("/api/v1/workspaces/default/flows")).json()
        assert [f["name"] for f in flows["items"]] == ["a", "b"]
        first = flows["items"][0]
        assert first["source"] == {"file": "flows/a.yaml", "line": 1}
        assert first["kind"] == "Flow" and len(first["id"]) == 36
        b = await (await client.get("/api/v1/workspaces/default/flows/b")).json()
        assert b["source"] == {"file": "flows/a.yaml", "line": 9}

        integ = await (await client.get("/api/v1/workspaces/default/integrations/gitea")).json()
        assert integ["spec"]["secrets"] == {"token": {"configured": True},
                                            "webhook_secret": {"configured": True}}
        text = await (await client.get("/api/v1/workspaces/default/integrations")).text()
        for leak in [*SECRET_ENV, *SECRET_ENV.values()]:
            assert leak not in text
        rules = await (await client.get("/api/v1/workspaces/default/trigger-rules")).json()
        assert rules["items"][0]["spec"]["suite"] == "smoke"
        for path in ("/api/v1/workspaces/default/suites",
                     "/api/v1/workspaces/default/test-environments"):
            assert (await client.get(path)).status == 200

        missing = await client.get("/api/v1/workspaces/nope/flows")
        assert missing.status == 404 and "nope" in (await missing.json())["error"]
        missing = await client.get("/api/v1/workspaces/default/suites/nope")
        assert missing.status == 404 and (await missing.json())["name"] == "nope"
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            resp = await client.request(method, "/api/v1/workspaces/default/suites/smoke")
            body = await resp.json()
            assert resp.status == 405 and str(repo.path) in body["error"]
        resp = await client.post("/api/v1/workspaces/default/flows", json={})
        assert resp.status == 405
        unknown = await client.get("/api/v1/nothing-here")
        assert unknown.status == 404 and "error" in await unknown.json()


async def test_config_webhook_answers(tmp_path: Path, repo: ConfigRepo) -> None:
    services = git_services(repo, tmp_path)
    async with running(make_settings(tmp_path), services) as client:
        await until_version(services.state, 1)
        repo.write("flows/c.yaml", (repo.path / "flows/a.yaml").read_text()
                   .replace("name: a", "name: c").split("---")[0])
        sha = repo.commit("add c")
        body = push_body(sha)
        version = services.state.version

        bad = await client.post(HOOK, data=body, headers={"X-Gitea-Signature": "0" * 64})
        assert bad.status == 401
        missing = await client.post(HOOK, data=body)
        assert missing.status == 401
        assert services.state.version == version  # nothing was reloaded

        ok = await client.post(HOOK, data=body, headers={
            "X-Gitea-Signature": sign(HOOK_SECRET, body), "X-Gitea-Delivery": "d-1"})
        assert ok.status == 202
        assert (await ok.json()) == {"delivery_id": "d-1", "outcome": "accepted",
                                     "reload": "scheduled"}
        await until_version(services.state, version + 1)
        assert services.state.snapshot is not None
        assert services.state.snapshot.revision == sha

        hub = await client.post(HOOK, data=body, headers={
            "X-Hub-Signature-256": "sha256=" + sign(HOOK_SECRET, body)})
        assert hub.status == 202

        other = push_body(sha, ref="refs/heads/feature")
        ignored = await client.post(HOOK, data=other,
                                    headers={"X-Gitea-Signature": sign(HOOK_SECRET, other)})
        assert ignored.status == 200 and (await ignored.json())["outcome"] == "ignored"

        junk = b"\xff\x00not json"
        signed_junk = await client.post(HOOK, data=junk,
                                        headers={"X-Gitea-Signature": sign(HOOK_SECRET, junk)})
        assert signed_junk.status == 400
        array = b"[1, 2]"
        signed_array = await client.post(
            HOOK, data=array, headers={"X-Gitea-Signature": sign(HOOK_SECRET, array)})
        assert signed_array.status == 400

        big = b"x" * 5000
        too_big = await client.post(HOOK, data=big,
                                    headers={"X-Gitea-Signature": sign(HOOK_SECRET, big)})
        assert too_big.status == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 1000

        streamed = await client.post(HOOK, data=chunks())  # no Content-Length
        assert streamed.status == 413

        metrics = await (await client.get("/metrics")).text()
        assert 'testmesh_webhook_requests_total{source="config",status="401"} 2.0' in metrics
        assert 'testmesh_webhook_requests_total{source="config",status="202"} 2.0' in metrics


@pytest.mark.parametrize("body", [b"", b"{}", b"null", b"\x00" * 100, b'{"ref": 5}',
                                  "💥".encode() * 10])
@pytest.mark.parametrize("headers", [
    {}, {"X-Gitea-Signature": "zz"}, {"X-Hub-Signature-256": "sha256="},
    {"X-Hub-Signature-256": "md5=abc"}, {"X-Gitea-Signature": "é" * 64},
    {"Content-Type": "text/plain", "X-Gitea-Signature": "sha256=" + "a" * 64}])
async def test_config_webhook_never_500s_on_junk(tmp_path: Path, body: bytes,
                                                  headers: dict[str, str]) -> None:
    services = Services(state=StateHolder(), metrics=Metrics())
    async with running(make_settings(tmp_path), services) as client:
        resp = await client.post(HOOK, data=body, headers=headers)
        assert resp.status == 401


async def test_config_webhook_without_secret_is_forbidden(tmp_path: Path) -> None:
    services = Services(state=StateHolder(), metrics=Metrics())
    settings = make_settings(tmp_path, config_webhook_secret=None)
    async with running(settings, services) as client:
        resp = await client.post(HOOK, data=b"{}", headers={"X-Gitea-Signature": "00"})
        assert resp.status == 403 and "--config-webhook-secret" in (await resp.json())["error"]


async def test_error_middleware_500_for_api_but_never_for_webhooks(tmp_path: Path) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("handler bug")

    def extend(app: web.Application) -> None:
        app.router.add_get("/api/v1/boom", boom)
        app.router.add_post("/api/v1/webhooks/gitea", boom)

    services = Services(state=StateHolder(), metrics=Metrics())
    async with running(make_settings(tmp_path), services, extensions=[extend]) as client:
        with capture_logs() as logs:
            api = await client.get("/api/v1/boom")
            hook = await client.post("/api/v1/webhooks/gitea", data=b"{}")
        assert api.status == 500 and "error" in await api.json()
        assert hook.status == 400
        assert [e["event"] for e in logs] == ["http_handler_crashed"] * 2
        wrong_method = await client.get("/api/v1/webhooks/config")
        assert wrong_method.status == 405 and "error" in await wrong_method.json()


async def test_add_loop_runs_a_guarded_named_task(tmp_path: Path) -> None:
    ran = asyncio.Event()

    async def loop() -> None:
        ran.set()
        await asyncio.Event().wait()

    services = Services(state=StateHolder(), metrics=Metrics())
    async with running(make_settings(tmp_path), services,
                       extensions=[lambda app: add_loop(app, "test-loop", loop)]) as client:
        async with asyncio.timeout(5):
            await ran.wait()
        from testmesh_reconciler.web import TASKS

        task = client.app[TASKS]["test-loop"]
        assert task.get_name() == "test-loop" and not task.done()
    assert task.done()


async def test_guard_restarts_a_crashed_loop_and_warns_when_an_eternal_loop_returns() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("boom")

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    with capture_logs() as logs:
        await guard("flaky", flaky, sleep=no_sleep)
    assert len(calls) == 3 and sleeps == [1.0, 2.0]
    assert [e["event"] for e in logs] == ["background_task_crashed"] * 2 + [
        "background_task_returned"]
    assert all(e["task"] == "flaky" for e in logs)
