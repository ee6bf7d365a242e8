"""The daemon as a real process: a 60 MB streamed body, random deliveries (hypothesis)
never answered with a 5xx, and a SIGKILL while runs are queued and running (after the
restart nothing is lost and nothing runs twice: the service counts requests per run)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testmesh_reconciler.store.records import INTERRUPTED_ERROR
from tests.daemon.conftest import Daemon
from tests.testing.webhook_payloads import argocd_flat, argocd_headers, gitea_push

from . import HOOK_ENV, config_files
from .service import ThreadedService

StartDaemon = Callable[..., Daemon]
GITEA_SECRET = HOOK_ENV["TM_GITEA_HOOK"]
ARGO_SECRET = HOOK_ENV["TM_ARGO_HOOK"]


def write_config(root: Path, service_url: str, *, delay: float = 0.0,
                 environment: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in config_files(service_url, delay=delay, environment=environment).items():
        (root / name).write_text(text, "utf-8")
    return root


def wait_loaded(daemon: Daemon) -> None:
    daemon.wait_for(lambda: daemon.status()["revision"] is not None, "config loaded")


def push(daemon: Daemon, sha: str, branch: str = "main") -> httpx.Response:
    headers, body = gitea_push("acme/shop", branch, sha, GITEA_SECRET)
    return daemon.http.post("/api/v1/webhooks/gitea", content=body, headers=headers)


def run_of(daemon: Daemon, run_id: str) -> dict[str, Any]:
    return dict(daemon.get(f"/api/v1/suite-runs/{run_id}").json())


@pytest.fixture
def service() -> Iterator[ThreadedService]:
    with ThreadedService() as svc:
        yield svc


def test_sixty_megabytes_streamed_are_refused_with_413(
        tmp_path: Path, start_daemon: StartDaemon, service: ThreadedService) -> None:
    config = write_config(tmp_path / "config", service.url)
    daemon = start_daemon("--config-repo", str(config), env=HOOK_ENV)
    wait_loaded(daemon)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"x" * (1024 * 1024)
        for _ in range(60):
            sent += len(chunk)
            yield chunk

    headers, _ = gitea_push(secret=GITEA_SECRET)
    headers.pop("Content-Length", None)
    try:
        resp = httpx.post(f"{daemon.url}/api/v1/webhooks/gitea", content=body(),
                          headers=headers, timeout=30)
        assert resp.status_code == 413
    except httpx.TransportError:
        pass  # the daemon answered 413 and closed while we were still sending
    assert daemon.get("/healthz").status_code == 200
    assert push(daemon, "1" * 40).status_code == 202
    assert daemon.stop() == 0


_HEADER_NAMES = st.sampled_from([
    "X-Gitea-Event", "X-Gitea-Signature", "X-Hub-Signature-256", "X-TestMesh-Secret",
    "Authorization", "Content-Type", "X-Gitea-Delivery", "X-Gogs-Event"])
_HEADER_VALUES = st.one_of(st.sampled_from(["push", "pull_request", "delete", "",
                                            f"Bearer {ARGO_SECRET}", ARGO_SECRET,
                                            "sha256=zz", "application/json"]),
                           st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                   max_size=80).map(str.strip))
_PATHS = st.sampled_from([
    "/api/v1/webhooks/gitea", "/api/v1/webhooks/argocd", "/api/v1/webhooks/gitea/gitea-internal",
    "/api/v1/webhooks/argocd/argocd-staging", "/api/v1/integrations/webhooks/argocd",
    "/api/v1/workspaces/default/webhooks/gitea/x", "/api/v1/webhooks/gitea/%00",
    "/api/v1/workspaces/default/suites/smoke/run"])
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["app", "app_name", "revision", "status", "health", "ref",
                                       "after", "repository", "application", "pull_request",
                                       "action", "number", "full_name", "spec", "metadata"]),
                      children, max_size=5), max_leaves=20)
_BODIES = st.one_of(st.binary(max_size=512),
                    _JSONISH.map(lambda v: __import__("json").dumps(v).encode()))


def test_random_deliveries_never_get_a_5xx_and_the_daemon_stays_healthy(
        tmp_path: Path, start_daemon: StartDaemon, service: ThreadedService) -> None:
    config = write_config(tmp_path / "config", service.url)
    daemon = start_daemon("--config-repo", str(config), "--max-body-bytes", "65536", env=HOOK_ENV)
    wait_loaded(daemon)
    seen: set[int] = set()

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(path=_PATHS, body=_BODIES,
           headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=5))
    def check(path: str, body: bytes, headers: dict[str, str]) -> None:
        resp = daemon.http.post(path, content=body, headers=headers)
        seen.add(resp.status_code)
        assert resp.status_code < 500, (path, body, headers, resp.text)

    check()
    assert seen & {400, 401}
    assert daemon.get("/healthz").status_code == 200
    assert daemon.get("/readyz").status_code == 200
    ok = push(daemon, "f" * 40)
    assert ok.status_code == 202
    resp = daemon.http.post("/api/v1/webhooks/argocd", content=argocd_flat(),
                            headers=argocd_headers(ARGO_SECRET))
    assert resp.status_code == 202
    assert daemon.stop() == 0
    assert "http_handler_crashed" not in [e.get("event") for e in daemon.events()]


def test_sigkill_while_runs_are_queued_and_running_loses_nothing_and_runs_nothing_twice(
        tmp_path: Path, start_daemon: StartDaemon, service: ThreadedService) -> None:
    config = write_config(tmp_path / "config", service.url, delay=3.0)
    data_dir = str(tmp_path / "data")
    args = ("--config-repo", str(config), "--data-dir", data_dir, "--max-concurrent-runs", "2",
            "--run-lease", "30")
    daemon = start_daemon(*args, env=HOOK_ENV)
    wait_loaded(daemon)
    shas = [str(i) * 40 for i in range(1, 7)]
    runs: dict[str, str] = {}
    for i, sha in enumerate(shas):
        resp = push(daemon, sha, f"branch-{i}")  # distinct branches: nothing superseded
        assert resp.status_code == 202, resp.text
        runs[sha] = resp.json()["runs"][0]
    daemon.wait_for(lambda: sum(service.state.snapshot().values()) >= 2, "two runs started")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    started = {sha for sha, n in service.state.snapshot().items() if n}
    assert len(started) == 2

    again = start_daemon(*args, env=HOOK_ENV)

    def all_final() -> bool:
        return all(run_of(again, r)["status"] not in ("pending", "running")
                   for r in runs.values())

    again.wait_for(all_final, "every run finished", timeout=60)
    final = {sha: run_of(again, r) for sha, r in runs.items()}
    for sha in started:
        assert final[sha]["status"] == "failed", final[sha]
        assert final[sha]["error"] == INTERRUPTED_ERROR
    for sha in set(shas) - started:
        assert final[sha]["status"] == "completed", final[sha]
    time.sleep(0.5)
    assert service.state.snapshot() == {sha: 1 for sha in shas}
    assert again.stop() == 0


def test_an_environment_held_by_a_run_cut_off_by_sigkill_is_given_back(
        tmp_path: Path, start_daemon: StartDaemon, service: ThreadedService) -> None:
    """The run is finished as interrupted after the restart, and the environment it held
    loses that user: it goes warm and ages out with its TTL (before, it stayed ``running``
    with one user for good, never reaped)."""
    config = write_config(tmp_path / "config", service.url, delay=3.0, environment=True)
    args = ("--config-repo", str(config), "--data-dir", str(tmp_path / "data"))
    daemon = start_daemon(*args, env=HOOK_ENV)
    wait_loaded(daemon)
    resp = push(daemon, "a" * 40, "feature-x")
    assert resp.status_code == 202, resp.text
    (run_id,) = resp.json()["runs"]
    daemon.wait_for(lambda: sum(service.state.snapshot().values()) >= 1, "the run started")

    def environments(d: Daemon) -> list[dict[str, Any]]:
        return list(d.get("/api/v1/test-environments").json()["items"])

    (held,) = environments(daemon)
    assert (held["context"], held["state"], held["users"]) == ("feature-x", "running", 1)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)

    again = start_daemon(*args, env=HOOK_ENV)
    again.wait_for(lambda: run_of(again, run_id)["status"] == "failed", "run interrupted")
    assert run_of(again, run_id)["error"] == INTERRUPTED_ERROR
    again.wait_for(lambda: environments(again)[0]["users"] == 0, "environment given back")
    (released,) = environments(again)
    assert (released["id"], released["state"]) == (held["id"], "warm")
    assert again.stop() == 0
