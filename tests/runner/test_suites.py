"""Suite runner tests: stages, parallel flows, skipping after a failed stage, the SuiteRun
record, environments and variables, on a config tree loaded like ``validate`` loads it."""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testmesh_reconciler.config.model import FlowDefinition, Snapshot, Suite, TestEnvironment
from testmesh_reconciler.runner.clock import FakeClock
from testmesh_reconciler.runner.flows import NullObserver
from testmesh_reconciler.runner.results import FlowResult, SuiteRunResult
from testmesh_reconciler.runner.suites import error_run, plan_stage, render_routing, run_suite
from testmesh_reconciler.validate import load_directory
from tests.runner.service import Service, serve

FLOWS = Path(__file__).parent / "flows"


def suite_doc(name: str, flows: list[dict[str, Any]], variables: dict[str, Any] | None = None
              ) -> str:
    import yaml

    return yaml.safe_dump({"apiVersion": "testmesh.io/v1alpha1", "kind": "Suite",
                           "metadata": {"name": name},
                           "spec": {"variables": variables or {}, "flows": flows}})


def flow_doc(name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (f"apiVersion: testmesh.io/v1alpha1\nkind: Flow\nmetadata:\n  name: {name}\n"
            f"spec:\n{body}\n")


def load(root: Path, files: dict[str, str]) -> Snapshot:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = load_directory(root)
    assert result.snapshot is not None, [p.render() for p in result.errors]
    return result.snapshot


def ok_flow(name: str, url: str = "${BASE_URL}/health") -> str:
    return flow_doc(name, f"""
        name: {name}
        steps:
          - id: call
            action: http_request
            config: {{url: "{url}"}}
            assert: [status == 200]
    """)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with serve() as svc:
        yield svc


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def start(snapshot: Snapshot, suite: str, service: Service, client: httpx.AsyncClient,
                **kwargs: Any) -> SuiteRunResult:
    kwargs.setdefault("clock", FakeClock())
    variables = {"BASE_URL": service.url, **kwargs.pop("variables", {})}
    return await run_suite(snapshot, snapshot.suites[("default", suite)], run_id="run-1",
                           client=client, variables=variables, **kwargs)


# --------------------------------------------------------------------------------------------


async def test_plain_testmesh_flow_files_run_unchanged(tmp_path: Path, service: Service,
                                                       client: httpx.AsyncClient) -> None:
    for name in ("smoke-health", "create-and-get-product", "product-lifecycle"):
        target = tmp_path / "flows" / "legacy" / f"{name}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FLOWS / f"{name}.yaml", target)
    snapshot = load(tmp_path, {"suites/examples.yaml": suite_doc("examples", [
        {"path": "flows/legacy/smoke-health.yaml", "order": 0, "parallel": True},
        {"path": "flows/legacy/create-and-get-product.yaml", "order": 0, "parallel": True},
        {"path": "flows/legacy/product-lifecycle.yaml", "order": 1},
    ])})
    clock = FakeClock()
    run = await start(snapshot, "examples", service, client, clock=clock)
    assert run.status == "completed", [f.error for f in run.flows]
    assert (run.total_flows, run.passed_flows, run.failed_flows) == (3, 3, 0)
    assert [f.flow for f in run.flows] == ["flows/legacy/smoke-health.yaml",
                                           "flows/legacy/create-and-get-product.yaml",
                                           "flows/legacy/product-lifecycle.yaml"]
    assert run.flows[0].name == "Smoke: health check"
    assert clock.sleeps == [1.0, 2.0]
    assert run.error is None


async def test_parallel_flows_really_run_concurrently(tmp_path: Path, service: Service,
                                                      client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {
        "flows/a.yaml": ok_flow("a", "${BASE_URL}/barrier/stage0?n=3"),
        "flows/b.yaml": ok_flow("b", "${BASE_URL}/barrier/stage0?n=3"),
        "flows/c.yaml": ok_flow("c", "${BASE_URL}/barrier/stage0?n=3"),
        "suites/s.yaml": suite_doc("par", [
            {"flow": "a", "order": 0, "parallel": True},
            {"flow": "b", "order": 0, "parallel": True},
            {"flow": "c", "order": 0, "parallel": True},
        ]),
    })
    run = await start(snapshot, "par", service, client)
    assert run.status == "completed", [f.error for f in run.flows]
    assert service.state.peak == 3


async def test_non_parallel_flows_run_one_at_a_time(tmp_path: Path, service: Service,
                                                    client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {
        "flows/a.yaml": ok_flow("a", "${BASE_URL}/slow?seconds=0.05"),
        "flows/b.yaml": ok_flow("b", "${BASE_URL}/slow?seconds=0.05"),
        "suites/s.yaml": suite_doc("seq", [{"flow": "a", "order": 0},
                                           {"flow": "b", "order": 0}]),
    })

    class Order(NullObserver):
        def __init__(self) -> None:
            self.events: list[str] = []

        async def flow_started(self, flow: str, definition: FlowDefinition) -> None:
            self.events.append(f"start {flow}")

        async def flow_finished(self, result: FlowResult) -> None:
            self.events.append(f"end {result.flow}")

    order = Order()
    run = await start(snapshot, "seq", service, client, observer=order)
    assert run.status == "completed"
    assert order.events == ["start a", "end a", "start b", "end b"]


def test_plan_stage_groups_parallel_flows_where_the_first_is_declared() -> None:
    from testmesh_reconciler.config.model import SuiteFlow

    c, a, d, b = (SuiteFlow(0, False, "c"), SuiteFlow(0, True, "a"), SuiteFlow(0, False, "d"),
                  SuiteFlow(0, True, "b"))
    assert plan_stage([c, a, d, b]) == [(c,), (a, b), (d,)]


async def test_a_failed_stage_ends_the_run(tmp_path: Path, service: Service,
                                           client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {
        "flows/ok.yaml": ok_flow("ok"),
        "flows/bad.yaml": ok_flow("bad", "${BASE_URL}/status/500"),
        "flows/later.yaml": ok_flow("later"),
        "suites/s.yaml": suite_doc("stages", [
            {"flow": "bad", "order": 0},
            {"flow": "ok", "order": 0},
            {"flow": "later", "order": 1},
        ]),
    })
    run = await start(snapshot, "stages", service, client)
    assert run.status == "failed"
    assert [(f.flow, f.status) for f in run.flows] == [("bad", "failed"), ("ok", "passed"),
                                                        ("later", "skipped")]
    assert (run.total_flows, run.passed_flows, run.failed_flows) == (3, 1, 1)
    assert run.flows[2].error == "not run: flow 'bad' of an earlier stage failed"
    assert run.error is None  # a failing flow is a failure, not a run error


async def test_suite_run_record_shape(tmp_path: Path, service: Service,
                                      client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {"flows/ok.yaml": ok_flow("ok"),
                               "suites/s.yaml": suite_doc("shape", [{"flow": "ok"}])})
    run = await start(snapshot, "shape", service, client, trigger_type="argocd",
                      trigger={"sha": "abc123", "app": "shop"}, trigger_ref="abc123",
                      environment="staging")
    doc = run.to_json()
    assert set(doc) >= {"id", "suite", "suite_id", "workspace", "status", "trigger_type",
                        "trigger", "environment", "started_at", "completed_at", "duration_ms",
                        "total_flows", "passed_flows", "failed_flows", "trigger_ref",
                        "revision", "error", "status_report", "flows"}
    assert doc["suite_id"] == str(snapshot.suites[("default", "shape")].id)
    assert (doc["status"], doc["trigger_type"], doc["trigger_ref"]) == ("completed", "argocd",
                                                                        "abc123")
    assert doc["trigger"] == {"sha": "abc123", "app": "shop"}
    assert doc["started_at"] == "2024-01-01T00:00:00Z"
    flow = doc["flows"][0]
    assert set(flow) >= {"flow", "status", "started_at", "duration_ms", "error", "steps"}
    step = flow["steps"][0]
    assert set(step) >= {"id", "name", "action", "phase", "status", "attempts", "duration_ms",
                         "error", "assertions", "request", "response"}
    assert step["request"]["method"] == "GET"
    assert step["response"]["status"] == 200
    assert step["assertions"] == [{"expression": "status == 200", "passed": True,
                                   "message": None}]


async def test_static_environment_routing(tmp_path: Path, service: Service,
                                          client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {
        "flows/svc.yaml": ok_flow("svc", "${service.product-service}/health"),
        "suites/s.yaml": suite_doc("env", [{"flow": "svc"}]),
        "environments/e.yaml": textwrap.dedent(f"""
            apiVersion: testmesh.io/v1alpha1
            kind: TestEnvironment
            metadata: {{name: local}}
            spec:
              provider: static
              routing_policy:
                product-service: "{service.url}"
                pr-service: "http://pr-${{pr_number}}.example"
        """),
    })
    environment: TestEnvironment = snapshot.environments[("default", "local")]
    routing, missing = render_routing(environment, {})
    assert routing == {"product-service": service.url}
    assert missing == {"pr-service": ("pr_number",)}
    assert render_routing(environment, {"pr_number": 7})[0]["pr-service"] == (
        "http://pr-7.example")
    run = await start(snapshot, "env", service, client, environment="local",
                      environment_routing=routing)
    assert run.status == "completed", run.flows[0].error
    assert run.environment == "local"
    without = await start(snapshot, "env", service, client)
    assert without.status == "failed"
    assert "no environment" in (without.flows[0].error or "")


async def test_variable_precedence(tmp_path: Path, service: Service,
                                   client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {
        "flows/v.yaml": flow_doc("v", """
            name: v
            env: {A: flow, B: flow, C: flow, D: flow}
            steps:
              - id: check
                action: assert
                assert:
                  - A == "trigger" && B == "manual" && C == "suite" && D == "flow"
        """),
        "suites/s.yaml": suite_doc("vars", [{"flow": "v"}],
                                   variables={"A": "suite", "B": "suite", "C": "suite"}),
    })
    run = await start(snapshot, "vars", service, client, trigger={"A": "trigger"},
                      variables={"A": "manual", "B": "manual"})
    assert run.status == "completed", run.flows[0].error


async def test_progress_and_cancellation(tmp_path: Path, service: Service,
                                         client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {
        "flows/one.yaml": ok_flow("one"),
        "flows/two.yaml": ok_flow("two"),
        "suites/s.yaml": suite_doc("cancel", [{"flow": "one", "order": 0},
                                              {"flow": "two", "order": 1}]),
    })
    cancel = asyncio.Event()

    class Progress(NullObserver):
        def __init__(self) -> None:
            self.snapshots: list[tuple[str, int]] = []
            self.final: SuiteRunResult | None = None

        async def run_started(self, run: SuiteRunResult) -> None:
            self.snapshots.append((run.status, len(run.flows)))

        async def run_progress(self, run: SuiteRunResult) -> None:
            self.snapshots.append((run.status, len(run.flows)))
            cancel.set()

        async def run_finished(self, run: SuiteRunResult) -> None:
            self.final = run

    progress = Progress()
    run = await start(snapshot, "cancel", service, client, observer=progress, cancel=cancel)
    assert progress.snapshots == [("running", 0), ("running", 1)]
    assert progress.final is run
    assert run.status == "cancelled"
    assert [f.status for f in run.flows] == ["passed", "skipped"]
    assert run.flows[1].error == "not run: the run was cancelled"


async def test_internal_error_sets_the_run_error(tmp_path: Path, service: Service,
                                                 client: httpx.AsyncClient) -> None:
    snapshot = load(tmp_path, {"flows/ok.yaml": ok_flow("ok"),
                               "suites/s.yaml": suite_doc("bug", [{"flow": "ok"}])})

    class Broken(NullObserver):
        async def flow_started(self, flow: str, definition: FlowDefinition) -> None:
            raise ValueError("boom")

    run = await start(snapshot, "bug", service, client, observer=Broken())
    assert run.status == "failed"
    assert run.error is not None and "ValueError: boom" in run.error


def test_error_run_for_a_run_that_could_not_start(tmp_path: Path) -> None:
    snapshot = load(tmp_path, {"flows/ok.yaml": ok_flow("ok"),
                               "suites/s.yaml": suite_doc("err", [{"flow": "ok"}])})
    suite: Suite = snapshot.suites[("default", "err")]
    run = error_run(snapshot, suite, run_id="r", error="environment not acquired: timeout",
                    clock=FakeClock())
    assert (run.status, run.error, run.total_flows) == ("failed", "environment not acquired: "
                                                        "timeout", 1)
    assert run.flows[0].status == "skipped"
