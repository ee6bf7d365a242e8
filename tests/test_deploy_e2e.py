"""The deployment artefacts against a real daemon: what the examples promise, run for real.

An argocd-notifications body rendered from ``examples/argocd/argocd-notifications-cm.yaml``
starts the expected run; the Dockerfile's build and install commands, replayed in a
temporary directory, give a venv whose ``serve`` becomes ready; SIGTERM during a run exits
0 within the grace period and never leaves the run unfinished.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from aiohttp import web

from testmesh_reconciler.demo.command import free_port, prepare_config, serve_local, sign
from testmesh_reconciler.demo.shop import Shop
from testmesh_reconciler.demo.standin import GiteaStandIn
from tests import deploy_render as dr

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHA = "4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"
FINAL_STATES = ("completed", "failed", "cancelled")

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on 127.0.0.1 (free ports); all cleaned up after the test."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        return await serve_local(app, runners)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


class Process:
    """One subprocess with its output in a log file; stopped by PID."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path,
                 cwd: Path | None = None) -> None:
        self.log_path = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out,
                                         stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, then wait; (exit code, seconds it took). Raises TimeoutExpired."""
        started = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    async def stop(self, within: float) -> tuple[int, float]:
        """``terminate`` without blocking the event loop: the test's own services (the
        Gitea stand-in receiving the shutdown flush) keep answering meanwhile."""
        return await asyncio.to_thread(self.terminate, within)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Every process a test starts goes here; the finalizer ends the ones still running."""
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without TESTMESH_* and Python path overrides, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TESTMESH_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _daemon_env(secrets: dict[str, str]) -> dict[str, str]:
    return _clean_env(**secrets, TESTMESH_API_TOKEN="api-token-for-tests")


SECRETS = {"GITEA_TOKEN": "gitea-token-e2e", "GITEA_WEBHOOK_SECRET": "gitea-hook-e2e",
           "ARGOCD_WEBHOOK_SECRET": "argocd-hook-e2e"}


def _start_daemon(processes: list[Process], tmp_path: Path, repo: Path, port: int, *,
                  data: Path, grace: float = 5.0, name: str = "daemon") -> Process:
    url = f"http://127.0.0.1:{port}"
    process = Process(
        [sys.executable, "-m", "testmesh_reconciler", "serve", "--config-repo", str(repo),
         "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--public-url", url,
         "--poll-interval", "0", "--grace-period", str(grace)],
        env=_daemon_env(SECRETS), log=tmp_path / f"{name}.log")
    processes.append(process)
    return process


async def _wait_ready(client: httpx.AsyncClient, process: Process, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            pytest.fail(f"daemon exited with {process.proc.returncode}:\n{process.log()}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail(f"daemon not ready within {within} s:\n{process.log()}")


async def _run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/suite-runs/{run_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


async def _wait_until(what: str, check: Callable[[], Awaitable[bool]], within: float,
                      log: Callable[[], str]) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what} not within {within} s:\n{log()}")


def _prepare(tmp_path: Path, shop_url: str, gitea_url: str) -> Path:
    repo = tmp_path / "config-repo"
    token_file = tmp_path / "argocd-token"
    token_file.write_text("argocd-api-token-e2e")
    prepare_config(repo, shop_url=shop_url, gitea_url=gitea_url, token_file=token_file)
    return repo


# ------------------------------------------------------------------------------ README


def test_readme_documents_every_serve_flag_and_a_valid_example(tmp_path: Path) -> None:
    from testmesh_reconciler.settings import SERVE_FLAGS

    readme = (REPO / "README.md").read_text()
    rows = {line.split("|")[1].strip().split(" ")[0].strip("`"): line
            for line in readme.splitlines() if line.startswith("| `--")}
    for flag in SERVE_FLAGS:
        assert flag.flag in rows, f"README has no row for {flag.flag}"
        assert f"`{flag.env}`" in rows[flag.flag], f"README row of {flag.flag} lacks {flag.env}"
    assert "bash scripts/test.sh" in readme
    start = readme.index("One example of each kind")
    block = re.search(r"```yaml\n(.*?)```", readme[start:], re.S)
    assert block is not None
    (tmp_path / "all.yaml").write_text(block.group(1))
    checked = subprocess.run([sys.executable, "-m", "testmesh_reconciler", "validate",
                              str(tmp_path)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 declarations" in checked.stdout + checked.stderr


# ------------------------------------------------------------------ argocd-notifications


def _shared_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "contracts").is_dir():
            return parent / "shared"
    pytest.fail("no shared/contracts found in any parent directory of the tests")


def _sample_application(revision: str) -> dict[str, Any]:
    """An Argo CD Application right after a successful sync, as the controller holds it."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": "shop-staging", "namespace": "argocd",
            "annotations": {"notifications.argoproj.io/subscribe.on-deployed-testmesh.testmesh":
                            ""}},
        "spec": {
            "project": "default",
            "source": {"repoURL": "https://gitea.internal/acme/shop-deploy.git",
                       "path": "overlays/staging", "targetRevision": "main"},
            "destination": {"server": "https://kubernetes.default.svc",
                            "namespace": "shop-staging"}},
        "status": {
            "sync": {"status": "Synced", "revision": revision},
            "health": {"status": "Healthy"},
            "operationState": {
                "operation": {"sync": {"revision": revision}},
                "phase": "Succeeded", "message": "successfully synced (all tasks run)",
                "startedAt": "2025-06-02T10:00:00Z", "finishedAt": "2025-06-02T10:00:07Z",
                "syncResult": {"revision": revision,
                               "source": {"repoURL":
                                          "https://gitea.internal/acme/shop-deploy.git",
                                          "path": "overlays/staging",
                                          "targetRevision": "main"}}}},
    }


def _notifications_cm() -> dict[str, str]:
    docs = list(yaml.safe_load_all(
        (EXAMPLES / "argocd" / "argocd-notifications-cm.yaml").read_text()))
    data: dict[str, str] = docs[0]["data"]
    return data


def _secret_header(service: dict[str, Any], secret: str) -> dict[str, str]:
    """The service's headers with ``$key`` references replaced from argocd-notifications-secret."""
    headers: dict[str, str] = {}
    for header in service.get("headers") or []:
        value = str(header["value"])
        if value == "$testmesh-webhook-secret":
            value = secret
        assert "$" not in value, f"header {header['name']} references an unknown secret"
        headers[str(header["name"])] = value
    return headers


@pytest.mark.slow
async def test_rendered_notification_starts_the_expected_run(
        tmp_path: Path, serve: Serve, processes: list[Process]) -> None:
    data = _notifications_cm()
    service = yaml.safe_load(data["service.webhook.testmesh"])
    template = yaml.safe_load(data["template.testmesh-sync"])["webhook"]["testmesh"]
    app = _sample_application(SHA)

    # the sample is a valid Application, and the trigger the example subscribes to fires
    swagger = json.loads((_shared_dir() / "contracts" / "argocd" / "swagger.json").read_text())
    assert dr.application_errors(app, swagger) == []
    (trigger,) = yaml.safe_load(data["trigger.on-deployed-testmesh"])
    assert dr.evaluate_expression(trigger["when"], app) is True
    assert trigger["send"] == ["testmesh-sync"]

    body = dr.render_notification_body(template["body"], app)
    assert json.loads(body)["app_name"] == "shop-staging"
    headers = _secret_header(service, SECRETS["ARGOCD_WEBHOOK_SECRET"])
    assert "X-TestMesh-Secret" in headers
    target = urlsplit(service["url"])
    assert target.path == "/api/v1/webhooks/argocd"
    path = target.path + ("/" + template["path"].lstrip("/") if template.get("path") else "")

    standin = GiteaStandIn(SECRETS["GITEA_TOKEN"])
    shop_url = await serve(Shop().app())
    gitea_url = await serve(standin.app())
    repo = _prepare(tmp_path, shop_url, gitea_url)
    port = free_port()
    daemon = _start_daemon(processes, tmp_path, repo, port, data=tmp_path / "data")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await _wait_ready(client, daemon)
        # as the engine sends it: the template's method, the service URL, only its headers
        answer = await client.request(template.get("method", "GET"), path,
                                      content=body.encode(), headers=headers)
        assert answer.status_code == 202, answer.text
        accepted = answer.json()
        assert accepted["matched_rules"] == ["shop-staging-smoke"]
        (run_id,) = accepted["runs"]

        async def finished() -> bool:
            run = await _run(client, run_id)
            return run["status"] in FINAL_STATES and any(
                s.state != "pending" for s in standin.statuses)

        await _wait_until("run and final status", finished, 60, daemon.log)
        run = await _run(client, run_id)
        assert run["status"] == "completed", run
        assert run["trigger_type"] == "argocd"
        assert run["trigger_ref"] == SHA
        assert run["suite"] == "smoke"
        assert [(s.repo, s.sha, s.context, s.state) for s in standin.statuses] == [
            ("acme/shop", SHA, "testmesh/staging-smoke", "pending"),
            ("acme/shop", SHA, "testmesh/staging-smoke", "success")]
        assert standin.statuses[-1].target_url == f"http://127.0.0.1:{port}/suite-runs/{run_id}"

        # the same body with a wrong secret is refused
        wrong = await client.post(path, content=body.encode(),
                                  headers={**headers, "X-TestMesh-Secret": "wrong"})
        assert wrong.status_code == 401
    code, _ = await daemon.stop(within=20)
    assert code == 0, daemon.log()


# -------------------------------------------------------------- wheel, as the Dockerfile does


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order (the last match wins)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        # a pattern naming a directory excludes everything below it
        patterns.append((negated, re.compile(regex + "(?:/.*)?")))
    return patterns


def _ignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    ignored = False
    for negated, pattern in patterns:
        if pattern.fullmatch(rel):
            ignored = not negated
    return ignored


def _copy_context(sources: list[str], dest: Path,
                  patterns: list[tuple[bool, re.Pattern[str]]]) -> None:
    """``COPY sources dest`` from the build context (the repo minus .dockerignore)."""
    for source in sources:
        origin = REPO / source
        if not origin.exists() or _ignored(source.strip("./"), patterns):
            raise FileNotFoundError(f"COPY {source}: not in the build context")
        if origin.is_file():
            target = dest / origin.name if len(sources) > 1 or str(dest).endswith("/") \
                else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
            continue
        for path in origin.rglob("*"):
            rel = path.relative_to(REPO).as_posix()
            if path.is_file() and not _ignored(rel, patterns):
                target = dest / path.relative_to(origin)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def _stage_env(stage: Any, replace: Callable[[str], str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = replace(value)
    return env


def _sh(command: str, *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(["bash", "-ceu", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{command}` failed ({done.returncode}):\n{output[-4000:]}"
    return output


def _venv(path: Path, cwd: Path) -> dict[str, str]:
    """A fresh venv standing in for the image's Python; the env whose PATH finds it."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, cwd=cwd,
                   capture_output=True, timeout=120)
    env = _clean_env()
    env["PATH"] = f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dockerfile_wheel_installs_and_serves(tmp_path: Path,
                                              processes: list[Process]) -> None:
    _preamble, stages = dr.parse_dockerfile((REPO / "Dockerfile").read_text())
    (builder,) = [s for s in stages if s.name == "builder"]
    final = stages[-1]
    wheels = tmp_path / "wheels"
    src = tmp_path / "src"       # the builder's WORKDIR
    image = tmp_path / "image"   # the final stage's paths (data dir, HOME) land here
    image.mkdir()

    def builder_paths(text: str) -> str:
        return re.sub(r"(?<![\w/.-])/wheels\b", str(wheels), text)

    # -- builder stage: the build context as COPY sees it, then its RUN commands verbatim
    patterns = _dockerignore_patterns()
    for args in builder.args("COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        *sources, dest = parts
        target = src / dest
        _copy_context(sources, Path(str(target) + ("/" if dest.endswith("/") else "")),
                      patterns)
    forced = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"]["wheel"].get("force-include", {})
    missing = [source for source in forced if not (src / source).exists()]
    assert not missing, (
        f"pyproject.toml force-includes {missing} into the wheel, but the Dockerfile's builder "
        "stage does not COPY them (or .dockerignore drops them): `pip wheel` would fail with "
        "'Forced include not found'")
    build_env = {**_venv(tmp_path / "builder-python", tmp_path),
                 **_stage_env(builder, builder_paths)}
    builder_runs = builder.args("RUN")
    assert any("pip wheel" in run for run in builder_runs)
    for command in builder_runs:
        _sh(builder_paths(command), cwd=src, env=build_env, timeout=240)

    # the wheel carries the schemas and the example config repo
    (wheel,) = wheels.glob("testmesh_reconciler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    schemas = [n for n in names if re.fullmatch(r"testmesh_reconciler/_schemas/[^/]+\.json", n)]
    assert len(schemas) == len(list((REPO / "schemas").glob("*.json"))), names
    assert any(n.startswith("testmesh_reconciler/_examples/config-repo/integrations/")
               for n in names), names

    # -- final stage: its pip install RUN (the builder's wheels mounted), offline
    def final_paths(text: str) -> str:
        text = re.sub(r"--mount=\S+\s+", "", text)
        return builder_paths(text).replace("/var/lib/testmesh", str(image))

    image_env = {**_venv(tmp_path / "image-python", tmp_path),
                 **_stage_env(final, final_paths)}
    installs = [run for run in final.args("RUN") if "pip install" in run]
    assert installs, "the final stage installs no wheel"
    for command in installs:
        assert "--no-index" in command, "the final stage must install offline from the wheels"
        _sh(final_paths(command), cwd=tmp_path, env=image_env, timeout=180)
    bin_dir = tmp_path / "image-python" / "bin"
    assert (bin_dir / "testmesh-reconciler").exists()

    # the installed example is valid, validated by the installed CLI
    installed = subprocess.run(
        [str(bin_dir / "python"), "-c", "import pathlib, testmesh_reconciler as t; "
         "print(pathlib.Path(t.__file__).parent)"],
        cwd=tmp_path, env=image_env, capture_output=True, text=True, check=True).stdout.strip()
    assert installed.startswith(str(tmp_path / "image-python")), installed
    example = Path(installed) / "_examples" / "config-repo"
    assert sorted(p.name for p in (Path(installed) / "_schemas").glob("*.json")) == sorted(
        p.name for p in (REPO / "schemas").glob("*.json"))
    checked = subprocess.run([str(bin_dir / "testmesh-reconciler"), "validate", str(example)],
                             cwd=tmp_path, env=image_env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # -- run it: ENTRYPOINT + CMD, the flags of a local run, the secrets in the env
    config = tmp_path / "config"
    shutil.copytree(example, config)
    token_file = tmp_path / "argocd-token"
    token_file.write_text("argocd-api-token-e2e")
    for path in config.rglob("*.yaml"):
        text = path.read_text()
        new = re.sub(r"\{file: /var/run/secrets/[^}]+\}", "{file: " + str(token_file) + "}",
                     text)
        if new != text:
            path.write_text(new)
    entrypoint = dr.exec_form(final.args("ENTRYPOINT")[-1])
    cmd = dr.exec_form(final.args("CMD")[-1])
    assert entrypoint == ["testmesh-reconciler"]
    assert cmd == ["serve"]
    port = free_port()
    argv = [str(bin_dir / entrypoint[0]), *cmd]
    daemon = Process(
        [*argv, "--config-repo", str(config), "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data"), "--poll-interval", "0"],
        env={**image_env, **SECRETS}, log=tmp_path / "venv-daemon.log", cwd=image)
    processes.append(daemon)
    deadline = time.monotonic() + 30
    ready: httpx.Response | None = None
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while time.monotonic() < deadline and daemon.proc.poll() is None:
            try:
                ready = client.get("/readyz")
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ready is not None, daemon.log()
        assert ready.status_code == 200, ready.text + "\n" + daemon.log()
    # the image's HEALTHCHECK command, with TESTMESH_LISTEN pointing at this daemon
    (health,) = final.args("HEALTHCHECK")
    probe = dr.exec_form(health.split(" CMD ", 1)[1])
    assert probe is not None
    assert probe[0] == "python"
    subprocess.run([str(bin_dir / "python"), *probe[1:]], cwd=tmp_path, check=True,
                   env={**image_env, "TESTMESH_LISTEN": f"127.0.0.1:{port}"}, timeout=30)
    code, _ = daemon.terminate(timeout=45)
    assert code == 0, daemon.log()


# ------------------------------------------------------------------ SIGTERM during a run


class SlowShop:
    """The demo shop behind a delay: every request waits ``delay`` seconds first."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0
        self.shop = Shop()

    def app(self) -> web.Application:
        app = self.shop.app()
        app.middlewares.insert(0, self._slow)
        return app

    @web.middleware
    async def _slow(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        await asyncio.sleep(self.delay)
        response: web.StreamResponse = await handler(request)
        return response


@pytest.mark.slow
async def test_sigterm_during_a_run_exits_cleanly_and_finishes_the_run(
        tmp_path: Path, serve: Serve, processes: list[Process]) -> None:
    grace = 3.0
    slow = SlowShop(delay=1.0)
    standin = GiteaStandIn(SECRETS["GITEA_TOKEN"])
    shop_url = await serve(slow.app())
    gitea_url = await serve(standin.app())
    repo = _prepare(tmp_path, shop_url, gitea_url)
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = _start_daemon(processes, tmp_path, repo, port, data=data, grace=grace,
                          name="daemon-1")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await _wait_ready(client, first)
        body = json.dumps({"ref": "refs/heads/release/1.4", "before": "1" * 40, "after": SHA,
                           "repository": {"full_name": "acme/shop", "name": "shop",
                                          "owner": {"login": "acme"}},
                           "commits": []}).encode()
        answer = await client.post("/api/v1/webhooks/gitea", content=body, headers={
            "X-Gitea-Event": "push", "X-Gitea-Delivery": "e2e-sigterm",
            "X-Gitea-Signature": sign(body, SECRETS["GITEA_WEBHOOK_SECRET"]),
            "Content-Type": "application/json"})
        assert answer.status_code == 202, answer.text
        assert answer.json()["matched_rules"] == ["shop-release-regression"]
        (run_id,) = answer.json()["runs"]

        async def in_flight() -> bool:
            return (await _run(client, run_id))["status"] == "running" and slow.requests > 0

        await _wait_until("run running with a step sent", in_flight, 30, first.log)
    code, took = await first.stop(within=grace + 15)
    assert code == 0, first.log()
    assert took <= grace + 5, f"took {took:.1f} s to stop with --grace-period {grace}"

    second = _start_daemon(processes, tmp_path, repo, port, data=data, grace=grace,
                           name="daemon-2")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await _wait_ready(client, second)
        run = await _run(client, run_id)
        assert run["status"] in ("completed", "failed"), run
        if run["status"] == "failed":
            assert re.search(r"interrupt|shutdown", run["error"] or ""), run
        expected = "success" if run["status"] == "completed" else "error"

        async def final_status() -> bool:
            return any(s.state != "pending" for s in standin.statuses)

        await _wait_until("final commit status", final_status, 30,
                          lambda: first.log() + second.log())
        finals = [s for s in standin.statuses if s.state != "pending"]
        assert [(s.repo, s.sha, s.state) for s in finals] == [("acme/shop", SHA, expected)]
        assert all(s.context == "testmesh/regression" for s in standin.statuses)
    code, _ = await second.stop(within=grace + 15)
    assert code == 0, second.log()
