"""Sealed secrets never leak: a daemon, a webhook and a run, then every output searched.

The config holds sealed Gitea token and webhook secrets; the daemon opens them with
its private key, verifies a signed push, runs a suite and posts statuses with the token.
Afterwards every API answer, dashboard page, metric and log line is searched for the
plaintext values.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from testmesh_reconciler import secrets
from testmesh_reconciler.config.model import SecretBinding
from testmesh_reconciler.demo.command import free_port, prepare_config, serve_local
from testmesh_reconciler.demo.shop import Shop
from testmesh_reconciler.demo.standin import GiteaStandIn

TOKEN = "gitea-token-PLAINTEXT-7f3a9c"
HOOK = "gitea-hook-PLAINTEXT-51d2e0"
ARGO_HOOK = "argocd-hook-PLAINTEXT-9b8c7d"


@pytest.mark.slow
async def test_sealed_secrets_never_appear_in_outputs(tmp_path: Path) -> None:
    runners: list[web.AppRunner] = []
    standin = GiteaStandIn(TOKEN)
    shop_url = await serve_local(Shop().app(), runners)
    gitea_url = await serve_local(standin.app(), runners)
    repo = tmp_path / "config"
    token_file = tmp_path / "argo-token"
    token_file.write_text("argo-token-PLAINTEXT-000")
    prepare_config(repo, shop_url=shop_url, gitea_url=gitea_url, token_file=token_file)
    pair = secrets.generate_key_pair()
    (repo / ".testmesh").mkdir(exist_ok=True)
    (repo / ".testmesh" / "public-key").write_text(pair.public_text())
    (tmp_path / "private-key").write_text(pair.private_text())

    def sealed(integration: str, key: str, value: str) -> str:
        return '{sealed: "' + secrets.seal(pair.public, SecretBinding(
            "default", integration, key), value) + '"}'

    gitea = repo / "integrations" / "gitea.yaml"
    gitea.write_text(gitea.read_text()
                     .replace("{env: GITEA_TOKEN}", sealed("gitea-internal", "token", TOKEN))
                     .replace("{env: GITEA_WEBHOOK_SECRET}",
                              sealed("gitea-internal", "webhook_secret", HOOK)))
    argo = repo / "integrations" / "argocd.yaml"
    argo.write_text(argo.read_text().replace(
        "{env: ARGOCD_WEBHOOK_SECRET}", sealed("argocd-staging", "webhook_secret", ARGO_HOOK)))
    for cmd in (["add", "-A"], ["commit", "-q", "-m", "seal the secrets"]):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",  # noqa: ASYNC221
                        "user.email=t@example.invalid", *cmd], check=True, capture_output=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTMESH_")}
    env["TESTMESH_API_TOKEN"] = "api-token-for-tests"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - test set-up
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "testmesh_reconciler", "serve", "--config-repo", str(repo),
             "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
             "--public-url", url, "--poll-interval", "0", "--grace-period", "5",
             "--private-key", str(tmp_path / "private-key")],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    outputs: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            else:
                pytest.fail("daemon not ready: " + log_path.read_text())
            body = json.dumps({"ref": "refs/heads/release/1.4", "after": "c" * 40,
                               "before": "b" * 40,
                               "repository": {"full_name": "acme/shop"}}).encode()
            signature = hmac.new(HOOK.encode(), body, hashlib.sha256).hexdigest()
            answer = await client.post("/api/v1/webhooks/gitea", content=body, headers={
                "X-Gitea-Event": "push", "X-Gitea-Signature": signature,
                "Content-Type": "application/json"})
            assert answer.status_code == 202, answer.text
            outputs.append(answer.text)
            run_id = answer.json()["runs"][0]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run = (await client.get(f"/api/v1/suite-runs/{run_id}")).json()
                if run["status"] in ("completed", "failed", "cancelled") and \
                        any(s.state != "pending" for s in standin.statuses):
                    break
                await asyncio.sleep(0.2)
            assert run["status"] == "completed", run
            assert [s.state for s in standin.statuses] == ["pending", "success"]
            # a wrong signature is rejected without echoing anything secret
            bad = await client.post("/api/v1/webhooks/gitea", content=body, headers={
                "X-Gitea-Event": "push", "X-Gitea-Signature": "0" * 64})
            assert bad.status_code == 401
            outputs.append(bad.text)
            paths = ["/api/v1/status", "/api/v1/deliveries", f"/api/v1/suite-runs/{run_id}",
                     "/api/v1/workspaces/default/suites/regression/runs",
                     "/api/v1/test-environments", "/metrics", "/", "/config", "/deliveries",
                     f"/suite-runs/{run_id}", "/test-environments",
                     "/suites/default/regression"]
            for kind in ("integrations", "trigger-rules", "suites", "flows",
                         "test-environments"):
                paths.append(f"/api/v1/workspaces/default/{kind}")
            paths.append("/api/v1/workspaces/default/integrations/gitea-internal")
            for path in paths:
                response = await client.get(path)
                assert response.status_code == 200, (path, response.status_code)
                outputs.append(response.text)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for runner in runners:
            await runner.cleanup()
    outputs.append(log_path.read_text())
    haystack = "\n".join(outputs)
    for plaintext in (TOKEN, HOOK, ARGO_HOOK):
        assert plaintext not in haystack
    assert '"configured": true' in haystack or "configured" in haystack
