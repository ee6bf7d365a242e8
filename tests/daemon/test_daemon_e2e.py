"""The daemon as a real process against real Git repos: polling, the config webhook,
a bad commit kept out, force-pushes, an unreachable repo at start-up, SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from .conftest import Daemon
from .repo import BAD_SUITE, ConfigRepo, basic_repo, flow, push_body, sign, suite

StartDaemon = Callable[..., Daemon]
SECRET = "e2e-config-secret"


def test_polling_applies_good_commits_keeps_out_bad_ones_and_follows_force_pushes(
        tmp_path: Path, start_daemon: StartDaemon) -> None:
    repo = basic_repo(tmp_path / "upstream")
    daemon = start_daemon("--config-repo", str(repo.path), "--poll-interval", "1")
    daemon.wait_for_revision(repo.head())
    assert daemon.get("/readyz").status_code == 200

    repo.write("flows/c.yaml", flow("c"))
    good = repo.commit("add c")
    daemon.wait_for_revision(good)
    names = [f["name"] for f in daemon.get("/api/v1/workspaces/default/flows").json()["items"]]
    assert names == ["a", "b", "c"]

    repo.write("suites/smoke.yaml", BAD_SUITE)
    bad = repo.commit("break it")
    daemon.wait_for(lambda: daemon.status()["last_reload"]["revision"] == bad, "bad reload")
    status = daemon.status()
    assert status["revision"] == good and status["last_reload"]["result"] == "failed"
    assert [(p["file"], p["line"]) for p in status["problems"]] == [("suites/smoke.yaml", 5)]
    assert daemon.get("/readyz").status_code == 200

    repo.write("suites/smoke.yaml", suite("smoke", ["a", "c"]))
    fixed = repo.commit("fix it")
    daemon.wait_for_revision(fixed)
    assert daemon.status()["problems"] == []

    rewritten = repo.rewrite_last("suites/smoke.yaml", suite("smoke", ["b"]))
    daemon.wait_for_revision(rewritten)
    smoke = daemon.get("/api/v1/workspaces/default/suites/smoke").json()
    assert smoke["spec"]["flows"] == [{"flow": "b", "order": 0}]

    assert daemon.stop() == 0
    events = [e["event"] for e in daemon.events()]
    assert "config_reload_failed" in events and "config_reload_succeeded" in events
    assert events[-1] == "daemon_stopped"


def test_config_webhook_applies_a_commit_without_polling(
        tmp_path: Path, start_daemon: StartDaemon) -> None:
    repo = basic_repo(tmp_path / "upstream")
    daemon = start_daemon("--config-repo", str(repo.path), "--poll-interval", "0",
                          env={"TESTMESH_CONFIG_WEBHOOK_SECRET": SECRET})
    daemon.wait_for_revision(repo.head())
    repo.write("flows/c.yaml", flow("c"))
    sha = repo.commit("add c")
    body = push_body(sha)

    bad = daemon.http.post("/api/v1/webhooks/config", content=body,
                           headers={"X-Gitea-Signature": sign("wrong", body)})
    assert bad.status_code == 401
    for junk in (b"", b"\xff" * 64, b"{" * 10000):
        assert daemon.http.post("/api/v1/webhooks/config", content=junk).status_code == 401

    ok = daemon.http.post("/api/v1/webhooks/config", content=body,
                          headers={"X-Gitea-Signature": sign(SECRET, body)})
    assert ok.status_code == 202
    took = daemon.wait_for_revision(sha, timeout=10)
    assert took < 10
    assert daemon.stop(signal.SIGINT) == 0


def test_unreachable_repo_at_start_up_is_not_ready_until_it_appears(
        tmp_path: Path, start_daemon: StartDaemon) -> None:
    upstream = tmp_path / "later"
    daemon = start_daemon("--config-repo", f"file://{upstream}", "--poll-interval", "1")
    daemon.wait_for(lambda: daemon.status()["last_reload"] is not None, "first attempt")
    ready = daemon.get("/readyz")
    assert ready.status_code == 503
    reason = ready.json()["reason"]
    assert "no valid config loaded yet" in reason and "git fetch" in reason
    assert daemon.get("/api/v1/workspaces/default/flows").status_code == 503

    staged = basic_repo(tmp_path / "staging")
    shutil.copytree(staged.path, upstream)
    daemon.wait_for(lambda: daemon.get("/readyz").status_code == 200, "ready")
    assert daemon.status()["revision"] == staged.head()
    assert daemon.stop() == 0


def test_plain_directory_is_watched(tmp_path: Path, start_daemon: StartDaemon) -> None:
    root = tmp_path / "dir"
    root.mkdir()
    (root / "flows.yaml").write_text(flow("one"))
    daemon = start_daemon("--config-repo", str(root), "--poll-interval", "0")
    daemon.wait_for(lambda: daemon.get("/readyz").status_code == 200, "ready")
    (root / "more.yaml").write_text(flow("two"))

    def two_flows() -> bool:
        return bool(daemon.status()["counts"]["Flow"] == 2)

    daemon.wait_for(two_flows, "the watched change")
    assert daemon.stop() == 0


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    import sys

    from .conftest import SERVE

    for args in (["--config-repo", str(tmp_path / "missing")],
                 ["--config-repo", str(tmp_path), "--listen", "nope"], []):
        proc = subprocess.run([sys.executable, "-c", SERVE, "--data-dir",
                               str(tmp_path / "d"), *args],
                              capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 2, proc.stderr
        assert "testmesh-reconciler: error:" in proc.stderr


def test_daemon_http_client_smoke(start_daemon: StartDaemon, tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "empty")
    repo.commit("empty")
    daemon = start_daemon("--config-repo", str(repo.path))
    daemon.wait_for(lambda: daemon.get("/readyz").status_code == 200, "ready")
    metrics = daemon.get("/metrics")
    assert metrics.status_code == 200 and "testmesh_config_reloads_total" in metrics.text
    assert isinstance(daemon.http, httpx.Client)
    assert daemon.stop() == 0
