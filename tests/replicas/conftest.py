"""Fixtures for the multi-replica tests: a throwaway PostgreSQL database, local services in a
thread of their own (a per-sha counting service and the Gitea stand-in), a tiny config repo
in Git, and several daemon subprocesses on one database (``tests/daemon``'s ``start_daemon``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from testmesh_reconciler.demo.standin import GiteaStandIn
from tests.daemon.conftest import Daemon, start_daemon
from tests.daemon.repo import SECRET_ENV, ConfigRepo
from tests.pg import pg_cluster, pg_dsn

__all__ = ["pg_cluster", "pg_dsn", "start_daemon"]  # fixtures for this directory

TOKEN = SECRET_ENV["TM_TEST_GITEA_TOKEN"]
HOOK = SECRET_ENV["TM_TEST_GITEA_HOOK"]
CONFIG_HOOK = "config-hook-secret"
QUICK_REPO = "acme/quick"
SLOW_REPO = "acme/slow"


# -- local services ---------------------------------------------------------------------
class CountingService:
    """The service under test: counts requests per sha; ``/slow/{sha}`` answers late."""

    def __init__(self, slow_seconds: float = 5.0) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.slow_seconds = slow_seconds
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/hit/{sha}", self.hit)
        app.router.add_get("/slow/{sha}", self.slow)
        return app

    def count(self, sha: str) -> int:
        with self._lock:
            return self.hits[sha]

    def _count(self, request: web.Request) -> None:
        with self._lock:
            self.hits[request.match_info["sha"]] += 1

    async def hit(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"ok": True})

    async def slow(self, request: web.Request) -> web.Response:
        self._count(request)
        await asyncio.sleep(self.slow_seconds)
        return web.json_response({"ok": True})


class ServiceThread:
    """aiohttp apps served from an event loop in a thread, so the test may block freely."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-services",
                                       daemon=True)
        self.thread.start()
        self._runners: list[web.AppRunner] = []

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=10)

    def serve(self, app: web.Application) -> str:
        async def start() -> str:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            port = runner.addresses[0][1]
            return f"http://127.0.0.1:{port}"

        return str(self._call(start()))

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        try:
            self._call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@dataclass
class Services:
    service: CountingService
    sink: GiteaStandIn
    service_url: str
    sink_url: str

    def finals(self) -> dict[str, list[str]]:
        """Final states received per sha (``pending`` left out)."""
        out: dict[str, list[str]] = collections.defaultdict(list)
        for status in list(self.sink.statuses):
            if status.state != "pending":
                out[status.sha].append(status.state)
        return out


@pytest.fixture
def services() -> Iterator[Services]:
    thread = ServiceThread()
    try:
        service, sink = CountingService(), GiteaStandIn(TOKEN)
        yield Services(service, sink, thread.serve(service.app()), thread.serve(sink.app()))
    finally:
        thread.close()


# -- the config repo ------------------------------------------------------------------------
def config_files(service_url: str, sink_url: str) -> dict[str, str]:
    """One Gitea integration; ``quick`` (one fast GET) and ``slow`` (one slow GET) rules."""
    files = {"integration.yaml": f"""\
apiVersion: testmesh.io/v1alpha1
kind: Integration
metadata: {{name: gitea}}
spec:
  type: git
  provider: gitea
  config: {{url: "{sink_url}"}}
  secrets:
    token: {{env: TM_TEST_GITEA_TOKEN}}
    webhook_secret: {{env: TM_TEST_GITEA_HOOK}}
"""}
    for name, repo in (("quick", QUICK_REPO), ("slow", SLOW_REPO)):
        path = "hit" if name == "quick" else "slow"
        files[f"{name}.yaml"] = f"""\
apiVersion: testmesh.io/v1alpha1
kind: TriggerRule
metadata: {{name: {name}}}
spec:
  integration: gitea
  repository: {repo}
  event_types: [push]
  suite: {name}
---
apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {{name: {name}}}
spec:
  flows: [{{flow: {name}, order: 0}}]
---
apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {{name: {name}}}
spec:
  name: {name}
  steps:
    - id: call
      action: http_request
      config: {{url: "{service_url}/{path}/${{sha}}", timeout: 30s}}
      assert: ["status == 200"]
"""
    return files


@pytest.fixture
def config_repo(tmp_path: Path, services: Services) -> ConfigRepo:
    repo = ConfigRepo(tmp_path / "config-repo")
    repo.write_many(config_files(services.service_url, services.sink_url))
    repo.commit("initial")
    return repo


# -- replicas ---------------------------------------------------------------------------
@dataclass
class Cluster:
    daemons: list[Daemon]
    dsn: str
    names: list[str] = field(default_factory=list)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def wait(self, check: Callable[[], bool], what: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


StartReplicas = Callable[..., Cluster]


@pytest.fixture
def start_replicas(start_daemon: Callable[..., Daemon], pg_dsn: str,
                   config_repo: ConfigRepo) -> StartReplicas:
    """``start_replicas(n, *flags)``: ``n`` daemons r1..rn on one database, all ready."""

    def start(n: int = 3, *flags: str) -> Cluster:
        daemons = []
        for i in range(1, n + 1):
            daemons.append(start_daemon(
                "--config-repo", str(config_repo.path), "--database-url", pg_dsn,
                "--poll-interval", "0", "--run-lease", "3", "--grace-period", "2",
                "--config-webhook-secret", CONFIG_HOOK, *flags,
                env={"TESTMESH_REPLICA": f"r{i}"}))
        for daemon in daemons:
            daemon.wait_for(lambda: daemon.get("/readyz").status_code == 200,  # noqa: B023
                            "readyz", 30)  # (called before the loop moves on)
        return Cluster(daemons, pg_dsn, [f"r{i}" for i in range(1, n + 1)])

    return start


# -- deliveries -------------------------------------------------------------------------
def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sha_of(i: int, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}{i}".encode()).hexdigest()


def push(repo: str, branch: str, sha: str, delivery: str) -> tuple[bytes, dict[str, str]]:
    """A signed Gitea push delivery: (body, headers)."""
    owner, name = repo.split("/")
    body = json.dumps({
        "ref": f"refs/heads/{branch}", "before": "0" * 39 + "1", "after": sha,
        "repository": {"full_name": repo, "name": name, "owner": {"login": owner}},
        "pusher": {"login": "t"}, "commits": []}).encode()
    return body, {"Content-Type": "application/json", "X-Gitea-Event": "push",
                  "X-Gitea-Delivery": delivery, "X-Gitea-Signature": sign(body, HOOK)}
