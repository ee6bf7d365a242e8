"""``testmesh-reconciler run`` end to end: a real process against a config tree in tmp_path
and the local aiohttp service; exit codes, the text table, and the JSON SuiteRun."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from testmesh_reconciler import run_command
from tests.runner.service import Service, serve

FLOWS = Path(__file__).parent / "runner" / "flows"

def command() -> list[str]:
    """The console script when ``run`` is wired into it, else an equivalent shim."""
    from testmesh_reconciler import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "run" in sub.choices:
        script = shutil.which("testmesh-reconciler")
        return [script] if script else [sys.executable, "-m", "testmesh_reconciler"]
    return [sys.executable, "-c", textwrap.dedent("""
        import argparse, sys
        from testmesh_reconciler import run_command
        parser = argparse.ArgumentParser(prog="testmesh-reconciler")
        run_command.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(sys.argv[1:])
        sys.exit(args.func(args))
    """)]


def write_config(root: Path, base_url: str) -> None:
    (root / "flows").mkdir(parents=True)
    for name in ("smoke-health", "create-and-get-product", "product-lifecycle"):
        shutil.copy(FLOWS / f"{name}.yaml", root / "flows" / f"{name}.yaml")
    (root / "suites.yaml").write_text(textwrap.dedent(f"""
        apiVersion: testmesh.io/v1alpha1
        kind: Suite
        metadata: {{name: smoke}}
        spec:
          variables: {{BASE_URL: "http://127.0.0.1:1"}}
          flows:
            - {{path: flows/smoke-health.yaml, order: 0, parallel: true}}
            - {{path: flows/create-and-get-product.yaml, order: 0, parallel: true}}
            - {{path: flows/product-lifecycle.yaml, order: 1}}
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: Suite
        metadata: {{name: broken}}
        spec:
          flows:
            - {{flow: fails, order: 0}}
            - {{flow: routed, order: 1}}
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: Suite
        metadata: {{name: routed}}
        spec:
          flows: [{{flow: routed}}]
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: Flow
        metadata: {{name: fails}}
        spec:
          name: fails
          steps:
            - id: teapot
              action: http_request
              config: {{url: "${{BASE_URL}}/status/418"}}
              assert: [status == 200]
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: Flow
        metadata: {{name: routed}}
        spec:
          name: routed
          steps:
            - id: health
              action: http_request
              config: {{url: "${{service.shop}}/health"}}
              assert: [status == 200]
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: TestEnvironment
        metadata: {{name: local}}
        spec:
          provider: static
          routing_policy: {{shop: "{base_url}"}}
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: TestEnvironment
        metadata: {{name: per-pr}}
        spec:
          provider: static
          routing_policy: {{shop: "http://shop-${{pr_number}}.internal"}}
    """))


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with serve() as svc:
        yield svc


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command(), "run", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_passing_suite_text(tmp_path: Path, service: Service) -> None:
    write_config(tmp_path, service.url)
    code, out, err = await cli("smoke", "--config", str(tmp_path), "--var", "FLAKY_FAILS=0",
                               "--var", f"BASE_URL={service.url}")
    assert code == 0, out + err
    assert "==> flows/smoke-health.yaml (Smoke: health check)" in out
    assert "flows/product-lifecycle.yaml PASS steps/warm_up  GET " in out
    assert "attempts" not in out  # FLAKY_FAILS=0: no retry, so no real sleeping
    assert "FLOW" in out and "STATUS" in out
    assert "suite smoke: completed: 3 passed, 0 failed, 0 skipped of 3 flows" in out


async def test_passing_suite_json(tmp_path: Path, service: Service) -> None:
    write_config(tmp_path, service.url)
    code, out, _ = await cli("smoke", "--config", str(tmp_path), "--format", "json",
                             "--var", "FLAKY_FAILS=0", "--var", f"BASE_URL={service.url}")
    assert code == 0
    run = json.loads(out)
    assert (run["status"], run["trigger_type"], run["suite"]) == ("completed", "manual",
                                                                  "smoke")
    assert (run["total_flows"], run["passed_flows"], run["failed_flows"]) == (3, 3, 0)
    assert run["error"] is None
    steps = run["flows"][2]["steps"]
    assert [s["id"] for s in steps][:2] == ["wait_for_api", "create_product"]


async def test_failing_suite_exits_1(tmp_path: Path, service: Service) -> None:
    write_config(tmp_path, service.url)
    code, out, _ = await cli("broken", "--config", str(tmp_path), "--environment", "local",
                             "--var", f"BASE_URL={service.url}")
    assert code == 1, out
    assert "FAIL steps/teapot" in out
    assert "status == 200 failed: status = 418" in out
    assert "suite broken: failed: 0 passed, 1 failed, 1 skipped of 2 flows" in out
    code, out, _ = await cli("broken", "--config", str(tmp_path), "--format", "json",
                             "--var", f"BASE_URL={service.url}")
    assert code == 1
    assert [f["status"] for f in json.loads(out)["flows"]] == ["failed", "skipped"]


async def test_static_environment_gives_services(tmp_path: Path, service: Service) -> None:
    write_config(tmp_path, service.url)
    code, out, _ = await cli("routed", "--config", str(tmp_path), "--environment", "local",
                             "--format", "json")
    assert code == 0, out
    assert json.loads(out)["environment"] == "local"


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "no Suite named 'nope' in workspace 'default'"),
    (["smok"], "did you mean 'smoke'?"),
    (["smoke", "--var", "NOEQUALS"], "--var 'NOEQUALS': expected NAME=VALUE"),
    (["routed", "--environment", "per-pr"], "uses ${pr_number}, a trigger variable"),
    (["routed", "--environment", "nowhere"], "no TestEnvironment named 'nowhere'"),
])
async def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    write_config(tmp_path, "http://127.0.0.1:1")
    code, out, err = await cli(*args, "--config", str(tmp_path))
    assert code == 2, out + err
    assert message in err


async def test_config_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: testmesh.io/v1alpha1\nkind: Suite\nmetadata: {name: s}\nspec: {}\n")
    code, _, err = await cli("s", "--config", str(tmp_path))
    assert code == 2
    assert "bad.yaml:" in err
    code, _, err = await cli("s", "--config", str(tmp_path / "missing"))
    assert code == 2
    assert "no such directory" in err


def test_argocd_environment_needs_the_daemon(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        apiVersion: testmesh.io/v1alpha1
        kind: Integration
        metadata: {name: argo}
        spec:
          type: git
          provider: argocd
          config: {url: "https://argocd.example"}
          secrets: {webhook_secret: {env: ARGO_SECRET}}
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: TestEnvironment
        metadata: {name: review}
        spec:
          provider: argocd
          integration: argo
          context: review
          provider_app_name: shop-review
          namespace: review
          routing_policy: {shop: "http://shop.review.svc"}
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: Suite
        metadata: {name: s}
        spec:
          flows: [{flow: f}]
        ---
        apiVersion: testmesh.io/v1alpha1
        kind: Flow
        metadata: {name: f}
        spec:
          name: f
          steps: [{id: x, action: log, config: {message: x}}]
    """))
    parser = argparse.ArgumentParser()
    run_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", "s", "--config", str(tmp_path), "--environment",
                              "review"])
    out, err = io.StringIO(), io.StringIO()
    assert args.func(args, out=out, err=err) == 2
    assert "provisioning it needs the daemon" in err.getvalue()
    ok = parser.parse_args(["run", "s", "--config", str(tmp_path), "--format", "json"])
    assert ok.func(ok, out=out, err=err) == 0
