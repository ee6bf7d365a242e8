"""Fixtures for the environment lifecycle tests: a fake Argo CD on 127.0.0.1, a SQLite
store in ``tmp_path``, a fake clock whose sleep advances it, and a config snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from testmesh_reconciler.config.loader import Loader, files_from_bytes
from testmesh_reconciler.config.model import Snapshot
from testmesh_reconciler.environments import EnvironmentManager
from testmesh_reconciler.secrets import make_secret_opener
from testmesh_reconciler.store import FakeClock, SqliteStore

from ..testing.fake_argocd import FakeArgoCD

TOKEN = "argo-t0k3n"
PR_VARS = {"source": "gitea", "event": "pull_request", "repo": "acme/shop",
           "branch": "feature-x", "base_branch": "main",
           "sha": "0123456789abcdef0123456789abcdef01234567", "short_sha": "0123456",
           "pr_number": "7", "action": "opened"}

CONFIG = """\
apiVersion: testmesh.io/v1alpha1
kind: Integration
metadata: {name: argocd-staging}
spec:
  type: git
  provider: argocd
  config: {url: "%(url)s"}
  secrets:
    token: {env: ARGO_TOKEN}
    webhook_secret: {env: ARGO_HOOK}
---
apiVersion: testmesh.io/v1alpha1
kind: TestEnvironment
metadata: {name: review}
spec:
  provider: argocd
  integration: argocd-staging
  context: "pr-${pr_number}"
  provider_app_name: "shop-pr-${pr_number}"
  namespace: "review-pr-${pr_number}"
  ttl_minutes: 60
  application:
    project: default
    source: {repoURL: "https://gitea.internal/acme/shop-deploy.git", path: overlays/review,
             targetRevision: "${branch}"}
    destination: {server: "https://kubernetes.default.svc"}
  routing_policy:
    user-service: "http://user-service.review-pr-${pr_number}.svc.cluster.local:8080"
---
apiVersion: testmesh.io/v1alpha1
kind: TestEnvironment
metadata: {name: existing}
spec:
  provider: argocd
  integration: argocd-staging
  context: "pr-${pr_number}"
  provider_app_name: "legacy-pr-${pr_number}"
  namespace: "legacy-pr-${pr_number}"
---
apiVersion: testmesh.io/v1alpha1
kind: TestEnvironment
metadata: {name: adhoc}
spec:
  provider: argocd
  integration: argocd-staging
  provider_app_name: "adhoc-${short_sha}"
  namespace: "adhoc-${short_sha}"
  ttl_minutes: 10
  application:
    source: {repoURL: "https://gitea.internal/acme/shop-deploy.git", path: overlays/review}
    destination: {server: "https://kubernetes.default.svc"}
---
apiVersion: testmesh.io/v1alpha1
kind: TestEnvironment
metadata: {name: staging}
spec:
  provider: static
  context: staging
  routing_policy:
    api: "http://api.staging.svc:8080/${branch}"
"""


def load_snapshot(url: str) -> Snapshot:
    opener = make_secret_opener(environ={"ARGO_TOKEN": TOKEN, "ARGO_HOOK": "hook"})
    result = Loader().load(files_from_bytes({"envs.yaml": (CONFIG % {"url": url}).encode()}),
                           revision="r1", open_secret=opener)
    assert result.snapshot is not None, [p.render() for p in result.problems]
    return result.snapshot


class Sleeper:
    """A sleep that advances the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.total = 0.0

    async def __call__(self, seconds: float) -> None:
        self.total += seconds
        self.clock.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def argocd() -> AsyncIterator[FakeArgoCD]:
    async with FakeArgoCD(token=TOKEN) as fake:
        yield fake
    fake.assert_no_violations()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeper(clock: FakeClock) -> Sleeper:
    return Sleeper(clock)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def snapshot(argocd: FakeArgoCD) -> Snapshot:
    return load_snapshot(argocd.base_url)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


MakeManager = Callable[..., Awaitable[EnvironmentManager]]


@pytest.fixture
async def open_stores() -> AsyncIterator[list[SqliteStore]]:
    stores: list[SqliteStore] = []
    yield stores
    for store in stores:
        await store.close()


@pytest.fixture
def make_manager(db_path: Path, http: httpx.AsyncClient, clock: FakeClock, sleeper: Sleeper,
                 snapshot: Snapshot, open_stores: list[SqliteStore]) -> MakeManager:
    async def factory(*, replica: str = "r1",
                      provision_timeout: float = 600.0) -> EnvironmentManager:
        store = SqliteStore(db_path)
        await store.open()
        open_stores.append(store)
        return EnvironmentManager(store, http=http, clock=clock, sleep=sleeper,
                                  replica=replica, provision_timeout=provision_timeout,
                                  snapshot=lambda: snapshot)

    return factory


@pytest.fixture
async def manager(make_manager: MakeManager) -> EnvironmentManager:
    return await make_manager()
