"""The ``demo`` command: daemon, shop API and Gitea stand-in on 127.0.0.1, then two events.

It copies the example config repo into a temporary Git repo (a plain directory when
``git`` is missing), points its URLs at the local services, starts the real daemon as a
subprocess, sends a signed Argo CD notification and a signed Gitea push, and narrates
what happens until both commit statuses arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
from aiohttp import web

from testmesh_reconciler.demo.shop import Shop
from testmesh_reconciler.demo.standin import GiteaStandIn, ReceivedStatus

#: The example config is package data in a wheel, ``examples/`` in a checkout.
_EXAMPLE_CANDIDATES = ("_examples/config-repo", "../examples/config-repo")
_SERVICE_URL = re.compile(r"https?://[a-z0-9.-]+\.(?:svc\.cluster\.local|staging\.internal)"
                          r"(?::\d+)?")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="see the whole loop on this machine: webhook -> run -> commit status",
        description="Starts the daemon on a temporary config repo made from the examples, "
                    "a small shop API to test and a stand-in for Gitea's commit status "
                    "API, then sends an Argo CD notification and a Gitea push.")
    parser.add_argument("--once", action="store_true",
                        help="exit after the loop (0 when every run passed and its "
                             "statuses arrived) instead of serving until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds to wait for the runs (default 90)")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(Demo(once=args.once, timeout=args.timeout).run())
    except KeyboardInterrupt:
        return 0


def example_config() -> Path:
    here = Path(__file__).resolve().parent.parent
    for rel in _EXAMPLE_CANDIDATES:
        candidate = (here / rel).resolve()
        if (candidate / "integrations").is_dir():
            return candidate
    raise FileNotFoundError("the example config repo is not installed with the package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def serve_local(app: web.Application, runners: list[web.AppRunner]) -> str:
    """Serve ``app`` on 127.0.0.1 (a port the kernel picks); the runner is appended to
    ``runners`` for the caller to clean up. Returns the base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}"


@dataclass(frozen=True, slots=True)
class Secrets:
    gitea_token: str
    gitea_webhook: str
    argocd_webhook: str
    argocd_token: str
    api_token: str

    @classmethod
    def fresh(cls) -> Secrets:
        return cls(*(secrets.token_hex(16) for _ in range(5)))


def prepare_config(target: Path, *, shop_url: str, gitea_url: str, token_file: Path) -> str:
    """Copy the example config, point it at the local services; return how it is tracked."""
    shutil.copytree(example_config(), target)
    for path in target.rglob("*.y*ml"):
        text = path.read_text("utf-8")
        new = text.replace("https://gitea.internal", gitea_url)
        new = _SERVICE_URL.sub(shop_url, new)
        new = re.sub(r"\{file: /var/run/secrets/[^}]+\}", "{file: " + str(token_file) + "}", new)
        if new != text:
            path.write_text(new, "utf-8")
    if shutil.which("git") is None:
        return "a plain directory (git is not installed)"
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["commit", "-q", "-m", "testmesh demo config"]):
        subprocess.run(["git", "-C", str(target), *cmd], check=True, env=env,
                       capture_output=True)
    return "a Git repo (branch main)"


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Demo:
    """One demo session: starts everything, sends the events, narrates, cleans up."""

    def __init__(self, *, once: bool, timeout: float, out: TextIO = sys.stdout) -> None:
        self.once = once
        self.timeout = timeout
        self.out = out
        self.secrets = Secrets.fresh()
        self.shop = Shop()
        self.standin = GiteaStandIn(self.secrets.gitea_token, on_status=self._status_arrived)

    def _status_arrived(self, status: ReceivedStatus) -> None:
        self.say(f"   -> commit status {status.state} posted to the Gitea stand-in for "
                 f"{status.repo}@{status.sha[:7]} ({status.context}): {status.description}")

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="testmesh-demo-") as tmp:
            base = Path(tmp)
            runners: list[web.AppRunner] = []
            try:
                shop_url = await serve_local(self.shop.app(), runners)
                gitea_url = await serve_local(self.standin.app(), runners)
                token_file = base / "argocd-token"
                token_file.write_text(self.secrets.argocd_token)
                how = prepare_config(base / "config-repo", shop_url=shop_url,
                                     gitea_url=gitea_url, token_file=token_file)
                self.say(f"1. Config repo: {base / 'config-repo'} ({how}), "
                         "made from examples/config-repo")
                self.say(f"   Shop API under test:         {shop_url}")
                self.say(f"   Gitea stand-in (statuses):   {gitea_url}  "
                         "(the demo's stand-in, not Gitea)")
                port = free_port()
                daemon_url = f"http://127.0.0.1:{port}"
                with self._daemon(base, port) as proc:
                    ok = await self._loop(daemon_url, proc)
                    if self.once:
                        return 0 if ok else 1
                    self.say(f"\nServing until Ctrl-C. Open {daemon_url}/ for the dashboard.")
                    stop = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.add_signal_handler(sig, stop.set)
                    await stop.wait()
                    return 0
            finally:
                for runner in runners:
                    await runner.cleanup()

    @contextlib.contextmanager
    def _daemon(self, base: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
        env = {**os.environ,
               "GITEA_TOKEN": self.secrets.gitea_token,
               "GITEA_WEBHOOK_SECRET": self.secrets.gitea_webhook,
               "ARGOCD_WEBHOOK_SECRET": self.secrets.argocd_webhook,
               "ARGOCD_TOKEN": self.secrets.argocd_token,
               "TESTMESH_API_TOKEN": self.secrets.api_token}
        log_path = base / "daemon.log"
        cmd = [sys.executable, "-m", "testmesh_reconciler", "serve",
               "--config-repo", str(base / "config-repo"),
               "--listen", f"127.0.0.1:{port}", "--data-dir", str(base / "data"),
               "--public-url", f"http://127.0.0.1:{port}", "--poll-interval", "0",
               "--grace-period", "5"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.say(f"2. Daemon started (pid {proc.pid}), logs in {log_path}")
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    async def _loop(self, url: str, proc: subprocess.Popen[bytes]) -> bool:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            if not await self._wait_ready(client, proc):
                return False
            sha_argo = hashlib.sha1(b"demo-argocd").hexdigest()
            sha_push = hashlib.sha1(b"demo-gitea").hexdigest()
            runs: list[str] = []
            runs += await self._send(client, "3. Argo CD notification: shop-staging synced",
                                     "/api/v1/webhooks/argocd", self._argocd_body(sha_argo),
                                     {"X-TestMesh-Secret": self.secrets.argocd_webhook})
            body = self._push_body(sha_push)
            runs += await self._send(
                client, "4. Gitea push: acme/shop release/1.4", "/api/v1/webhooks/gitea", body,
                {"X-Gitea-Event": "push", "X-Gitea-Delivery": secrets.token_hex(8),
                 "X-Gitea-Signature": sign(body, self.secrets.gitea_webhook)})
            if not runs:
                self.say("   no run was started: see the daemon log")
                return False
            results = await asyncio.gather(*(self._follow(client, run) for run in runs))
            statuses_ok = await self._wait_statuses(len(runs))
            self.say(f"\nDashboard: {url}/   Deliveries: {url}/deliveries   "
                     f"Config: {url}/config")
            passed = all(results) and statuses_ok
            self.say("Demo " + ("passed: every run passed and its statuses arrived."
                                if passed else "did not pass: see above and the daemon log."))
            return passed

    async def _wait_ready(self, client: httpx.AsyncClient, proc: subprocess.Popen[bytes]
                          ) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.say(f"   the daemon exited with code {proc.returncode}")
                return False
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    status = (await client.get("/api/v1/status")).json()
                    counts = status.get("counts", {})
                    self.say(f"   ready: config revision {str(status.get('revision'))[:12]}, "
                             + ", ".join(f"{n} {k}" for k, n in counts.items()))
                    return True
            await asyncio.sleep(0.2)
        self.say("   the daemon did not become ready within 30 s")
        return False

    def _argocd_body(self, sha: str) -> bytes:
        return json.dumps({"app_name": "shop-staging", "revision": sha,
                           "repository": "https://gitea.internal/acme/shop-deploy.git",
                           "status": "Synced", "health": "Healthy",
                           "target_revision": "main"}).encode()

    def _push_body(self, sha: str) -> bytes:
        return json.dumps({
            "ref": "refs/heads/release/1.4", "before": "0" * 39 + "1", "after": sha,
            "repository": {"full_name": "acme/shop", "name": "shop",
                           "owner": {"login": "acme"}},
            "pusher": {"login": "demo"}, "commits": []}).encode()

    async def _send(self, client: httpx.AsyncClient, label: str, path: str, body: bytes,
                    headers: dict[str, str]) -> list[str]:
        self.say(f"\n{label}")
        response = await client.post(path, content=body,
                                     headers={"Content-Type": "application/json", **headers})
        answer: dict[str, Any] = response.json() if response.content else {}
        rules = ", ".join(answer.get("matched_rules", [])) or "none"
        runs: list[str] = [str(r) for r in answer.get("runs", [])]
        self.say(f"   delivery {answer.get('delivery_id', '?')}: HTTP {response.status_code}, "
                 f"matched rules: {rules}, runs: {len(runs)}")
        if response.status_code >= 300:
            self.say(f"   answer: {answer}")
        return runs

    async def _follow(self, client: httpx.AsyncClient, run_id: str) -> bool:
        deadline = time.monotonic() + self.timeout
        seen: str | None = None
        while time.monotonic() < deadline:
            response = await client.get(f"/api/v1/suite-runs/{run_id}")
            run: dict[str, Any] = response.json() if response.status_code == 200 else {}
            status = str(run.get("status", "unknown"))
            if status != seen:
                seen = status
                self.say(f"   run {run_id[:8]} ({run.get('suite')}): {status}")
            if status in ("completed", "failed", "cancelled"):
                for flow in run.get("flows", []):
                    self.say(f"     flow {flow.get('flow')}: {flow.get('status')} "
                             f"({len(flow.get('steps', []))} steps)")
                if run.get("error"):
                    self.say(f"     error: {run['error']}")
                self.say(f"     page: {client.base_url}/suite-runs/{run_id}")
                return status == "completed"
            await asyncio.sleep(0.2)
        self.say(f"   run {run_id[:8]} did not finish within {self.timeout:.0f} s")
        return False

    async def _wait_statuses(self, runs: int) -> bool:
        """Wait for one final state per run at the stand-in, then print them all."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            finals = [s for s in self.standin.statuses if s.state != "pending"]
            if len(finals) >= runs:
                break
            self.standin.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.standin.changed.wait(), 1.0)
        self.say("\n5. Commit statuses the Gitea stand-in holds now:")
        for s in self.standin.statuses:
            self.say(f"   {s.repo}@{s.sha[:7]} {s.context}: {s.state:8s} {s.description}")
            self.say(f"      target_url {s.target_url}")
        finals = [s for s in self.standin.statuses if s.state != "pending"]
        pendings = [s for s in self.standin.statuses if s.state == "pending"]
        return (len(finals) == runs and len(pendings) == runs
                and all(s.state == "success" for s in finals))
