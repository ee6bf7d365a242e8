"""The end-to-end rig: a config repo, a service under test, ``FakeGitea`` and the daemon.

``e2e`` prepares the example config repo (via the demo's ``prepare_config``) plus a few
small ``e2e-*`` rules, suites and flows that hit a local service, starts the real daemon as a
subprocess (ended by its PID in the finalizer) and offers helpers to send signed Gitea
pushes and wait, always with a deadline, for runs, statuses and an idle outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from testmesh_reconciler.demo.command import free_port, prepare_config
from tests.testing.fake_gitea import FakeGitea, GiteaStatus
from tests.testing.webhook_payloads import gitea_push

REPO = "acme/shop"
GITEA_TOKEN = "e2e-gitea-token-4f1c"
GITEA_HOOK = "e2e-gitea-hook-9d3a"
ARGOCD_HOOK = "e2e-argocd-hook-77b2"
ARGOCD_TOKEN = "e2e-argocd-token-1e0c"
API_TOKEN = "e2e-api-token-c0ffee"
FINAL_RUN = ("completed", "failed", "cancelled")
SLOW_CAP = 25.0
"""Most seconds the service's ``/slow`` endpoint holds a request (released at teardown)."""

# Branches of acme/shop and the e2e rule each one triggers.
PASS, FAIL, ERROR, SLOW = "e2e/pass", "e2e/fail", "e2e/error", "e2e/slow"

E2E_CONFIG = """\
apiVersion: testmesh.io/v1alpha1
kind: Integration
metadata: {{name: argocd-closed}}
spec:
  type: git
  provider: argocd
  config: {{url: "http://127.0.0.1:{closed_port}", app_filter: "e2e-*"}}
  secrets:
    token: {{env: ARGOCD_TOKEN}}
    webhook_secret: {{env: ARGOCD_WEBHOOK_SECRET}}
---
apiVersion: testmesh.io/v1alpha1
kind: TestEnvironment
metadata: {{name: e2e-unreachable}}
spec:
  provider: argocd
  integration: argocd-closed
  context: "e2e-${{short_sha}}"
  provider_app_name: "e2e-${{short_sha}}"
  namespace: "e2e-${{short_sha}}"
  ttl_minutes: 1
  routing_policy:
    api: "{service}"
---
apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {{name: e2e-ok}}
spec:
  name: Service answers ok
  steps:
    - id: ok
      action: http_request
      config: {{url: "${{BASE_URL}}/ok", timeout: 5s}}
      assert:
        - status == 200 && body.status == "ok"
---
apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {{name: e2e-answer}}
spec:
  name: The answer is 42
  steps:
    - id: answer
      action: http_request
      config: {{url: "${{BASE_URL}}/answer", timeout: 5s}}
      assert:
        - status == 200
        - body.answer == 42
---
apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {{name: e2e-after}}
spec:
  name: Runs only after stage 0 passed
  steps:
    - id: again
      action: http_request
      config: {{url: "${{BASE_URL}}/ok", timeout: 5s}}
      assert: [status == 200]
---
apiVersion: testmesh.io/v1alpha1
kind: Flow
metadata: {{name: e2e-slow}}
spec:
  name: A slow endpoint
  steps:
    - id: slow
      action: http_request
      config: {{url: "${{BASE_URL}}/slow", timeout: 30s}}
      assert: [status == 200]
---
apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {{name: e2e-pass}}
spec:
  description: One quick passing flow
  variables: {{BASE_URL: "{service}"}}
  flows:
    - {{flow: e2e-ok, order: 0}}
---
apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {{name: e2e-fail}}
spec:
  description: A passing flow, a failing assertion, and a flow that is skipped
  variables: {{BASE_URL: "{service}"}}
  flows:
    - {{flow: e2e-ok, order: 0, parallel: true}}
    - {{flow: e2e-answer, order: 0, parallel: true}}
    - {{flow: e2e-after, order: 1}}
---
apiVersion: testmesh.io/v1alpha1
kind: Suite
metadata: {{name: e2e-slow}}
spec:
  description: One flow that waits on a slow endpoint
  variables: {{BASE_URL: "{service}"}}
  flows:
    - {{flow: e2e-slow, order: 0}}
---
apiVersion: testmesh.io/v1alpha1
kind: TriggerRule
metadata: {{name: e2e-pass}}
spec: {{integration: gitea-internal, repository: acme/shop, branch_filter: "e2e/pass",
        event_types: [push], suite: e2e-pass}}
---
apiVersion: testmesh.io/v1alpha1
kind: TriggerRule
metadata: {{name: e2e-fail}}
spec: {{integration: gitea-internal, repository: acme/shop, branch_filter: "e2e/fail",
        event_types: [push], suite: e2e-fail}}
---
apiVersion: testmesh.io/v1alpha1
kind: TriggerRule
metadata: {{name: e2e-error}}
spec:
  integration: gitea-internal
  repository: acme/shop
  branch_filter: "e2e/error"
  event_types: [push]
  suite: e2e-pass
  environment: e2e-unreachable
  report: {{context: testmesh/e2e-error}}
---
apiVersion: testmesh.io/v1alpha1
kind: TriggerRule
metadata: {{name: e2e-slow}}
spec: {{integration: gitea-internal, repository: acme/shop, branch_filter: "e2e/slow",
        event_types: [push], suite: e2e-slow}}
"""


def sha_of(label: str) -> str:
    """A distinct, valid 40-hex commit sha for ``label``."""
    return hashlib.sha1(label.encode()).hexdigest()


class Service:
    """The service under test: ``/ok``, ``/answer`` (a wrong one: 41) and ``/slow``."""

    def __init__(self) -> None:
        self.slow_hit = asyncio.Event()
        self.release = asyncio.Event()
        self.hits: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ok", self._ok)
        app.router.add_get("/answer", self._answer)
        app.router.add_get("/slow", self._slow)
        return app

    def _count(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def _ok(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"status": "ok"})

    async def _answer(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"answer": 41})

    async def _slow(self, request: web.Request) -> web.Response:
        self._count(request)
        self.slow_hit.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), SLOW_CAP)
        return web.json_response({"status": "late"})

    async def start(self) -> str:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class Daemon:
    """The ``serve`` subprocess; started, killed and stopped by its PID only."""

    config_repo: Path
    data_dir: Path
    log_path: Path
    port: int
    env: dict[str, str]
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "testmesh_reconciler", "serve",
                "--config-repo", str(self.config_repo), "--listen", f"127.0.0.1:{self.port}",
                "--data-dir", str(self.data_dir), "--public-url", self.url,
                "--poll-interval", "0", "--grace-period", "2", "--run-lease", "2",
                "--provision-timeout", "5", *self.extra_args]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)

    def kill(self) -> None:
        """SIGKILL by PID: no shutdown, no flush (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 20 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float,  # noqa: ASYNC109
               interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@dataclass
class E2E:
    """One rig: FakeGitea, the service, the daemon and an HTTP client to it."""

    gitea: FakeGitea
    service: Service
    daemon: Daemon
    client: httpx.AsyncClient
    deliveries: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.daemon.url

    async def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Until ``/readyz`` answers 200 and the config loaded without problems."""
        proc = self.daemon.proc

        async def ready() -> dict[str, Any] | None:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}:\n{self.daemon.log()}")
            try:
                if (await self.client.get("/readyz")).status_code != 200:
                    return None
                status: dict[str, Any] = (await self.client.get("/api/v1/status")).json()
            except httpx.HTTPError:
                return None
            return status

        status: dict[str, Any] = await poll(ready, "daemon ready", timeout, 0.1)
        assert status["problems"] == [], status["problems"]
        return status

    async def restart(self) -> None:
        self.daemon.start()
        await self.wait_ready()

    async def push(self, branch: str, sha: str, *, delivery: str | None = None
                   ) -> httpx.Response:
        """A signed Gitea push of ``acme/shop`` ``branch`` at ``sha``, as Gitea sends it."""
        headers, body = gitea_push(REPO, branch, sha, GITEA_HOOK,
                                   gitea_url=self.gitea.base_url, delivery=delivery)
        response = await self.client.post("/api/v1/webhooks/gitea", content=body,
                                          headers=headers)
        self.deliveries.append(headers.get("X-Gitea-Delivery", ""))
        return response

    async def push_run(self, branch: str, sha: str) -> str:
        """Push and return the one run id the daemon answered with."""
        response = await self.push(branch, sha)
        assert response.status_code == 202, response.text
        runs = response.json()["runs"]
        assert len(runs) == 1, response.json()
        return str(runs[0])

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/suite-runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    async def wait_run(self, run_id: str, timeout: float = 20.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The run once it finished (completed, failed or cancelled)."""
        async def done() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if run["status"] in FINAL_RUN else None

        result: dict[str, Any] = await poll(done, f"run {run_id} finished", timeout)
        return result

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.client.get("/api/v1/status")).json()
        return result

    async def wait_outbox_idle(self, timeout: float = 20.0) -> dict[str, Any]:  # noqa: ASYNC109
        """``/api/v1/status`` once the outbox holds nothing queued: nothing more will be
        posted, so counting what FakeGitea holds is final."""
        async def idle() -> dict[str, Any] | None:
            status = await self.status()
            return status if status["outbox"]["queued"] == 0 else None

        result: dict[str, Any] = await poll(idle, "outbox idle", timeout)
        return result

    async def wait_statuses(self, sha: str, n: int, timeout: float = 20.0  # noqa: ASYNC109
                            ) -> list[GiteaStatus]:
        """At least ``n`` statuses at ``sha``; all of them, oldest first."""
        await self.gitea.wait_for(lambda: len(self.gitea.statuses_for(REPO, sha)) >= n,
                                  timeout)
        return self.gitea.statuses_for(REPO, sha)

    def target_url(self, run_id: str) -> str:
        return f"{self.url}/suite-runs/{run_id}"


def git_commit(repo: Path, message: str) -> None:
    """Commit everything in ``repo`` (nothing to do for a plain directory: it is watched)."""
    if not (repo / ".git").exists():
        return
    for cmd in (["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=e2e", "-c",
                        "user.email=e2e@example.invalid", *cmd], check=True,
                       capture_output=True)


def prepare(base: Path, *, service_url: str, gitea_url: str) -> Path:
    """The example config repo pointed at the local services, plus ``e2e/e2e.yaml``."""
    token_file = base / "argocd-token"
    token_file.write_text(ARGOCD_TOKEN)
    repo = base / "config-repo"
    prepare_config(repo, shop_url=service_url, gitea_url=gitea_url, token_file=token_file)
    (repo / "e2e").mkdir()
    (repo / "e2e" / "e2e.yaml").write_text(
        E2E_CONFIG.format(service=service_url, closed_port=free_port()), "utf-8")
    git_commit(repo, "e2e rules")
    return repo


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTMESH_")}
    env.update(GITEA_TOKEN=GITEA_TOKEN, GITEA_WEBHOOK_SECRET=GITEA_HOOK,
               ARGOCD_WEBHOOK_SECRET=ARGOCD_HOOK, ARGOCD_TOKEN=ARGOCD_TOKEN,
               TESTMESH_API_TOKEN=API_TOKEN)
    return env


@contextlib.asynccontextmanager
async def rig(base: Path, *, extra_args: tuple[str, ...] = ()) -> AsyncIterator[E2E]:
    """Everything started; everything ended (the daemon by its PID) on the way out."""
    gitea = FakeGitea(token=GITEA_TOKEN)
    service = Service()
    await gitea.start()
    try:
        await service.start()
        repo = prepare(base, service_url=service.url, gitea_url=gitea.base_url)
        daemon = Daemon(repo, base / "data", base / "daemon.log", free_port(), daemon_env(),
                        extra_args)
        try:
            async with httpx.AsyncClient(base_url=daemon.url, timeout=10.0) as client:
                e2e = E2E(gitea, service, daemon, client)
                daemon.start()
                await e2e.wait_ready()
                yield e2e
        finally:
            daemon.stop()
    finally:
        await service.stop()
        await gitea.stop()


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    """A fresh rig per test. The daemon log is printed at teardown: pytest shows it (as
    captured output) only when the test failed."""
    async with rig(tmp_path) as started:
        yield started
        print(started.daemon.log()[-20000:])
