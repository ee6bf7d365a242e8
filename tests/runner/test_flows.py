"""Flow engine tests against the local aiohttp service: step semantics, actions,
interpolation, assertions, redaction. Time is a FakeClock: retries never really sleep."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testmesh_reconciler.config.build import build_flow_definition
from testmesh_reconciler.config.frozen import FrozenDict
from testmesh_reconciler.config.model import FlowDefinition, SecretValue, Step
from testmesh_reconciler.runner.clock import FakeClock
from testmesh_reconciler.runner.flows import NullObserver, extract, run_flow
from testmesh_reconciler.runner.results import FlowResult, Phase, StepResult
from tests.runner.service import Service, serve

FLOWS = Path(__file__).parent / "flows"


def flow(text: str) -> FlowDefinition:
    """A flow definition from YAML (a spec, or a plain file with the ``flow:`` wrapper)."""
    doc = yaml.safe_load(textwrap.dedent(text))
    if "flow" in doc:
        doc = doc["flow"]
    notes: list[Any] = []
    definition = build_flow_definition(doc, (), notes, None)
    assert not notes
    return definition


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with serve() as svc:
        yield svc


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def run(definition: FlowDefinition, service: Service, client: httpx.AsyncClient,
              clock: FakeClock, **kwargs: Any) -> FlowResult:
    variables = {"BASE_URL": service.url, **kwargs.pop("variables", {})}
    return await run_flow(definition, client=client, variables=variables, clock=clock,
                          **kwargs)


def step(result: FlowResult, label: str) -> StepResult:
    return next(s for s in result.steps if s.label == label)


# --------------------------------------------------------------------------------------------
# The TestMesh example flow shapes, from plain flow files


@pytest.mark.parametrize("name", ["smoke-health", "create-and-get-product",
                                  "product-lifecycle"])
async def test_example_flow_files_run_unchanged(name: str, service: Service,
                                                client: httpx.AsyncClient,
                                                clock: FakeClock) -> None:
    result = await run(flow((FLOWS / f"{name}.yaml").read_text()), service, client, clock)
    assert result.status == "passed", result.error
    assert all(s.status == "passed" for s in result.steps)


async def test_lifecycle_retries_with_exponential_backoff_and_cleans_up(
        service: Service, client: httpx.AsyncClient, clock: FakeClock) -> None:
    result = await run(flow((FLOWS / "product-lifecycle.yaml").read_text()), service, client,
                       clock)
    warm_up = step(result, "warm_up")
    assert (warm_up.status, warm_up.attempts) == ("passed", 3)
    assert clock.sleeps == [1.0, 2.0]  # 1s, then doubled
    assert [s.phase for s in result.steps] == ["setup", "steps", "steps", "steps", "steps",
                                               "teardown"]
    assert service.state.deleted == [step(result, "create_product").outputs["product_id"]]
    assert service.state.products == {}


# --------------------------------------------------------------------------------------------
# Chaining, extraction, interpolation


async def test_create_then_read_by_extracted_id(service: Service, client: httpx.AsyncClient,
                                                clock: FakeClock) -> None:
    definition = flow("""
        name: chain
        steps:
          - id: create
            action: http_request
            config:
              method: POST
              url: "${BASE_URL}/products"
              body: {name: widget, price: 3}
            output:
              by_dollar: "$.body.id"
              by_path: body.id
              by_response: response.body.id
              whole: "$"
          - id: read
            action: http_request
            config:
              url: "${BASE_URL}/products/${create.body.id}"
              headers:
                X-Ids: "{{by_dollar}},${by_path},${by_response},${create.response.body.id}"
                X-Status: "${create.status}"
            assert:
              - status == 200
              - body.id == by_path
              - body.name == create.body.name
              - whole.status == 201
    """)
    result = await run(definition, service, client, clock)
    assert result.status == "passed", result.error
    created = step(result, "create")
    assert created.outputs["by_dollar"] == created.outputs["by_path"] == "p1"
    assert created.outputs["by_response"] == "p1"
    read = step(result, "read")
    assert read.request is not None
    assert read.request.url == f"{service.url}/products/p1"
    assert read.request.headers["X-Ids"] == "p1,p1,p1,p1"
    assert read.request.headers["X-Status"] == "201"


def test_extract_paths() -> None:
    result = {"status": 200, "body": {"id": 7, "items": [{"id": "a"}]}, "headers": {}}
    assert extract(result, "$.body.id") == 7
    assert extract(result, "body.items[0].id") == "a"
    assert extract(result, "$") is result
    assert extract(result, "id") == 7  # TestMesh shorthand: under body
    assert extract(result, "$.nope") is not None  # MISSING, which is falsy
    assert not extract(result, "$.nope")


async def test_unknown_variable_fails_the_step_and_sends_nothing(
        service: Service, client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: unknown
        steps:
          - id: send
            action: http_request
            config:
              url: "${BASE_URL}/echo"
              headers: {X-Token: "${NOT_DEFINED}"}
          - id: after
            action: log
            config: {message: never}
    """)
    result = await run(definition, service, client, clock)
    send = step(result, "send")
    assert send.status == "error"
    assert send.request is None and send.attempts == 1
    assert "'NOT_DEFINED'" in (send.error or "")
    assert "nothing was sent" in (send.error or "")
    assert step(result, "after").status == "skipped"
    assert result.status == "failed"
    assert "NOT_DEFINED" in (result.error or "")


async def test_unknown_variable_hints(service: Service, client: httpx.AsyncClient,
                                      clock: FakeClock) -> None:
    definition = flow("""
        name: hints
        env:
          API: "${service.api}/v1"
          BROKEN: "${MISSING_ROOT}/x"
        steps:
          - {id: a, action: log, config: {message: "${API}"}, on_error: continue}
          - {id: b, action: log, config: {message: "${BROKEN}"}, on_error: continue}
          - {id: c, action: log, config: {message: "${later.body.id}"}, on_error: continue}
          - {id: later, action: log, config: {message: x}}
    """)
    result = await run(definition, service, client, clock, services={"api": service.url})
    assert step(result, "a").message == f"{service.url}/v1"
    assert "flow env 'BROKEN' uses unknown 'MISSING_ROOT'" in (step(result, "b").error or "")
    assert "step 'later' has not produced a result" in (step(result, "c").error or "")
    assert result.status == "passed"


async def test_builtins_services_and_variable_precedence(
        service: Service, client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: scope
        env: {WHO: env, ONLY_ENV: from-env}
        steps:
          - id: echo
            action: http_request
            config:
              method: POST
              url: "${service.api}/echo"
              params: {id: "${RANDOM_ID}", n: 3, flag: true}
              body: {who: "${WHO}", only_env: "${ONLY_ENV}", uuid: "${UUID}", n: "${N}"}
            assert:
              - body.body.who == "variable"
              - body.body.only_env == "from-env"
              - len(body.body.uuid) == 36
              - body.body.n == 5
              - len(body.query.id) == 8
              - body.query.flag == "true"
    """)
    result = await run(definition, service, client, clock, services={"api": service.url},
                       variables={"WHO": "variable", "N": 5})
    assert result.status == "passed", result.error


# --------------------------------------------------------------------------------------------
# retry, when, on_error, teardown, timeout


async def test_retry_exhausted_with_fixed_delay(service: Service, client: httpx.AsyncClient,
                                                clock: FakeClock) -> None:
    definition = flow("""
        name: exhausted
        steps:
          - id: flaky
            action: http_request
            config: {url: "${BASE_URL}/flaky/x?fail=10"}
            assert: [status == 200]
            retry: {max_attempts: 3, delay: 250ms}
    """)
    result = await run(definition, service, client, clock)
    flaky = step(result, "flaky")
    assert (flaky.status, flaky.attempts) == ("failed", 3)
    assert clock.sleeps == [0.25, 0.25]
    assert service.state.calls["flaky:x"] == 3
    assert "after 3 attempts" in (flaky.error or "")
    assert flaky.response is not None and flaky.response.status == 503


async def test_exponential_backoff_doubles_each_time(service: Service,
                                                     client: httpx.AsyncClient,
                                                     clock: FakeClock) -> None:
    definition = flow("""
        name: backoff
        steps:
          - id: flaky
            action: http_request
            config: {url: "${BASE_URL}/flaky/y?fail=4"}
            assert: [status == 200]
            retry: {max_attempts: 5, delay: 100ms, backoff: exponential}
    """)
    result = await run(definition, service, client, clock)
    assert step(result, "flaky").attempts == 5
    assert result.status == "passed"
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


async def test_when_skips_or_runs(service: Service, client: httpx.AsyncClient,
                                  clock: FakeClock) -> None:
    definition = flow("""
        name: when
        steps:
          - id: first
            action: http_request
            config: {url: "${BASE_URL}/health"}
          - id: skipped
            action: http_request
            when: first.status != 200
            config: {url: "${BASE_URL}/status/500"}
            assert: [status == 200]
          - id: runs
            action: log
            when: first.body.status == "ok" && ENV == "staging"
            config: {message: ran}
          - id: templated
            action: log
            when: "'${ENV}' == 'prod'"
            config: {message: nope}
          - id: unset
            action: log
            when: never_set != nil
            config: {message: nope}
    """)
    result = await run(definition, service, client, clock, variables={"ENV": "staging"})
    assert result.status == "passed", result.error
    assert step(result, "skipped").status == "skipped"
    assert step(result, "skipped").request is None
    assert (step(result, "runs").status, step(result, "runs").message) == ("passed", "ran")
    assert step(result, "templated").status == "skipped"
    assert step(result, "unset").status == "skipped"


async def test_on_error_continue_keeps_the_flow_going_and_passing(
        service: Service, client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: continue
        steps:
          - id: broken
            action: http_request
            config: {url: "${BASE_URL}/status/500"}
            assert: [status == 200]
            on_error: continue
          - id: next
            action: http_request
            config: {url: "${BASE_URL}/health"}
            assert: [status == 200]
    """)
    result = await run(definition, service, client, clock)
    broken = step(result, "broken")
    assert (broken.status, broken.continued) == ("failed", True)
    assert step(result, "next").status == "passed"
    assert result.status == "passed"
    assert broken.to_json()["continued"] is True


async def test_on_error_action_runs_then_fails_the_flow(
        service: Service, client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: on-error-action
        steps:
          - id: broken
            action: http_request
            config: {url: "${BASE_URL}/status/418"}
            assert: [status == 200]
            on_error:
              action: log
              config: {message: "broken answered ${broken.status}", level: error}
          - id: never
            action: log
            config: {message: never}
    """)
    result = await run(definition, service, client, clock)
    broken = step(result, "broken")
    assert broken.status == "failed"
    assert broken.on_error is not None
    assert (broken.on_error.status, broken.on_error.message) == ("passed",
                                                                 "broken answered 418")
    assert broken.on_error.phase == "on_error"
    assert step(result, "never").status == "skipped"
    assert result.status == "failed"


async def test_teardown_runs_after_setup_failure(service: Service, client: httpx.AsyncClient,
                                                 clock: FakeClock) -> None:
    definition = flow("""
        name: teardown
        setup:
          - id: create
            action: http_request
            config: {method: POST, url: "${BASE_URL}/products", body: {name: t}}
            output: {pid: body.id}
          - id: setup_fails
            action: http_request
            config: {url: "${BASE_URL}/status/503"}
            assert: [status == 200]
        steps:
          - {id: main, action: log, config: {message: never}}
        teardown:
          - id: cleanup
            action: http_request
            config: {method: DELETE, url: "${BASE_URL}/products/${pid}"}
            assert: [status == 204]
          - id: cleanup_unknown
            action: http_request
            config: {method: DELETE, url: "${BASE_URL}/products/${never_set}"}
            on_error: continue
          - {id: last, action: log, config: {message: "teardown goes on"}}
    """)
    result = await run(definition, service, client, clock)
    assert result.status == "failed"
    assert step(result, "main").status == "skipped"
    assert "setup step 'setup_fails' failed" in (step(result, "main").error or "")
    assert step(result, "cleanup").status == "passed"
    assert step(result, "cleanup_unknown").status == "error"
    assert step(result, "last").status == "passed"
    assert service.state.deleted == ["p1"]
    assert result.error is not None and result.error.startswith("setup step 'setup_fails'")


async def test_teardown_runs_after_step_failure(service: Service, client: httpx.AsyncClient,
                                                clock: FakeClock) -> None:
    definition = flow("""
        name: teardown2
        steps:
          - {id: boom, action: assert, assert: ["1 == 2"]}
        teardown:
          - {id: cleanup, action: http_request, config: {url: "${BASE_URL}/health"}}
    """)
    result = await run(definition, service, client, clock)
    assert [s.status for s in result.steps] == ["failed", "passed"]
    assert result.status == "failed"


async def test_failing_teardown_fails_the_flow(service: Service, client: httpx.AsyncClient,
                                               clock: FakeClock) -> None:
    definition = flow("""
        name: teardown3
        steps:
          - {id: ok, action: log, config: {message: ok}}
        teardown:
          - {id: cleanup, action: http_request, config: {url: "${BASE_URL}/status/500"},
             assert: [status == 200]}
          - {id: cleanup2, action: log, config: {message: still runs}}
    """)
    result = await run(definition, service, client, clock)
    assert [s.status for s in result.steps] == ["passed", "failed", "passed"]
    assert result.status == "failed"


async def test_step_timeout_is_enforced(service: Service, client: httpx.AsyncClient) -> None:
    definition = flow("""
        name: timeout
        steps:
          - id: slow
            action: http_request
            config: {url: "${BASE_URL}/slow?seconds=3"}
            timeout: 150ms
          - id: slow_request
            action: http_request
            config: {url: "${BASE_URL}/slow?seconds=3", timeout: 150ms}
            on_error: continue
    """)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run_flow(definition, client=client, variables={"BASE_URL": service.url},
                            clock=FakeClock())
    elapsed = loop.time() - started
    slow = step(result, "slow")
    assert slow.status == "error"
    assert slow.error == "timed out after 0.15s"
    assert result.status == "failed"
    assert elapsed < 2.5
    definition2 = flow("""
        name: timeout2
        steps:
          - id: slow_request
            action: http_request
            config: {url: "${BASE_URL}/slow?seconds=3", timeout: 150ms}
    """)
    result2 = await run_flow(definition2, client=client, variables={"BASE_URL": service.url},
                             clock=FakeClock())
    assert step(result2, "slow_request").status == "error"
    assert "timed out" in (step(result2, "slow_request").error or "")


async def test_timeout_applies_to_each_attempt(service: Service,
                                               client: httpx.AsyncClient) -> None:
    definition = flow("""
        name: timeout-retry
        steps:
          - id: slow
            action: http_request
            config: {url: "${BASE_URL}/slow?seconds=3"}
            timeout: 50ms
            retry: {max_attempts: 2, delay: 1s}
    """)
    clock = FakeClock()
    result = await run_flow(definition, client=client, variables={"BASE_URL": service.url},
                            clock=clock)
    assert (step(result, "slow").status, step(result, "slow").attempts) == ("error", 2)
    assert clock.sleeps == [1.0]


# --------------------------------------------------------------------------------------------
# Actions


async def test_http_request_options(service: Service, client: httpx.AsyncClient,
                                    clock: FakeClock) -> None:
    definition = flow("""
        name: http
        steps:
          - id: json_body
            action: http_request
            config:
              method: post
              url: "${BASE_URL}/echo"
              headers: {X-Custom: abc}
              params: {q: "a b", page: 2}
              body: [1, 2, {three: 3}]
            assert:
              - body.method == "POST"
              - body.content_type == "application/json"
              - body.body[2].three == 3
              - body.query.q == "a b" && body.query.page == "2"
              - body.headers["X-Custom"] == "abc"
              - headers["x-echo"] == "yes" && headers["content-type"] contains "json"
              - response.status == 200 && response.body.method == "POST"
              - duration_ms >= 0
          - id: raw_body
            action: http_request
            config:
              method: PUT
              url: "${BASE_URL}/echo"
              headers: {Content-Type: text/plain}
              body: "raw ${BASE_URL}"
            assert:
              - body.body == "raw " + BASE_URL
              - body.content_type == "text/plain"
          - id: redirect_followed
            action: http_request
            config: {url: "${BASE_URL}/redirect"}
            assert: [status == 200, 'body.query.redirected == "1"']
          - id: redirect_not_followed
            action: http_request
            config: {url: "${BASE_URL}/redirect", follow_redirects: false}
            assert: [status == 302, 'headers.location == "/echo?redirected=1"']
          - id: text
            action: http_request
            config: {url: "${BASE_URL}/text"}
            assert: [body == "plain words"]
    """)
    result = await run(definition, service, client, clock)
    assert result.status == "passed", result.error


async def test_connections_are_reused(service: Service, client: httpx.AsyncClient,
                                      clock: FakeClock) -> None:
    definition = flow("""
        name: reuse
        steps:
          - {id: a, action: http_request, config: {url: "${BASE_URL}/echo"}}
          - {id: b, action: http_request, config: {url: "${BASE_URL}/echo"},
             assert: ["body.peer[1] == a.body.peer[1]"]}
          - {id: c, action: http_request, config: {url: "${BASE_URL}/echo"},
             assert: ["body.peer[1] == a.body.peer[1]"]}
    """)
    result = await run(definition, service, client, clock)
    assert result.status == "passed", result.error


async def test_network_error_is_an_error_not_a_failure(client: httpx.AsyncClient,
                                                       clock: FakeClock) -> None:
    definition = flow("""
        name: refused
        steps:
          - {id: refused, action: http_request, config: {url: "http://127.0.0.1:9/x"}}
          - {id: bad_url, action: http_request, config: {url: "not a url"},
             retry: {max_attempts: 3}}
          - {id: bad_method, action: http_request, config: {url: "http://x", method: BREW},
             on_error: continue}
    """)
    result = await run_flow(definition, client=client, clock=clock)
    refused = step(result, "refused")
    assert refused.status == "error"
    assert "request failed" in (refused.error or "")
    definition2 = flow("""
        name: bad
        steps:
          - {id: bad_url, action: http_request, config: {url: "not-a-url"},
             retry: {max_attempts: 3}, on_error: continue}
          - {id: bad_method, action: http_request, config: {url: "http://x", method: BREW},
             on_error: continue}
          - {id: bad_delay, action: delay, config: {duration: soon}, on_error: continue}
    """)
    result2 = await run_flow(definition2, client=client, clock=clock)
    assert step(result2, "bad_url").status == "error"
    assert step(result2, "bad_url").attempts == 1  # a bad URL is not retried
    assert "method 'BREW'" in (step(result2, "bad_method").error or "")
    assert "not a duration" in (step(result2, "bad_delay").error or "")


async def test_log_delay_assert_actions(client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: misc
        steps:
          - {id: greet, action: log, config: {message: "hello ${NAME}", data: {n: 1}}}
          - {id: wait, action: delay, config: {duration: 1m30s}}
          - id: check
            action: assert
            config:
              assertions:
                - NAME == "you"
                - {expression: 'greet.message == "hello you"', message: greeting}
    """)
    result = await run_flow(definition, client=client, variables={"NAME": "you"},
                            clock=clock)
    assert result.status == "passed", result.error
    assert step(result, "greet").message == 'hello you {"n": 1}'
    assert clock.sleeps == [90.0]
    assert step(result, "wait").duration_ms == 90_000
    assert [a.passed for a in step(result, "check").assertions] == [True, True]


async def test_assert_action_custom_message(client: httpx.AsyncClient,
                                            clock: FakeClock) -> None:
    definition = flow("""
        name: custom
        steps:
          - id: check
            action: assert
            config:
              assertions:
                - {expression: "count > 3", message: "too few"}
    """)
    result = await run_flow(definition, client=client, variables={"count": 2}, clock=clock)
    check = step(result, "check")
    assert check.status == "failed"
    assert (check.error or "").startswith("too few (count > 3 failed: count = 2)")


async def test_wait_until_polls_with_injected_sleep(service: Service,
                                                    client: httpx.AsyncClient,
                                                    clock: FakeClock) -> None:
    definition = flow("""
        name: wait
        steps:
          - id: ready
            action: wait_until
            config:
              request: {url: "${BASE_URL}/eventually/k?after=2"}
              condition: status == 200 && body.status == "ready"
              interval: 2s
              max_duration: 1m
          - {id: after, action: assert, assert: ['ready.body.status == "ready"']}
    """)
    result = await run(definition, service, client, clock)
    assert result.status == "passed", result.error
    assert clock.sleeps == [2.0, 2.0]
    assert step(result, "ready").message == "condition met after 3 check(s)"


async def test_wait_until_gives_up_after_max_duration(service: Service,
                                                      client: httpx.AsyncClient,
                                                      clock: FakeClock) -> None:
    definition = flow("""
        name: wait-fail
        steps:
          - id: never
            action: wait_until
            config:
              request: {url: "${BASE_URL}/eventually/n?after=1000"}
              condition: body.status == "ready"
              interval: 1s
              max_duration: 5s
    """)
    result = await run(definition, service, client, clock)
    never = step(result, "never")
    assert never.status == "failed"
    assert "not met within 5s (6 check(s)); last status 200" in (never.error or "")
    assert clock.monotonic() == 5.0


# --------------------------------------------------------------------------------------------
# Assertions: every operator, and what a failure reports

OPERATORS = [
    "status == 200",
    "status != 404",
    "status < 300 && status <= 200 && status > 199 && status >= 200",
    "status == 500 || body.method == \"GET\"",
    "!(status == 500)",
    "not (status == 500)",
    "body.path contains \"ech\"",
    "body.query.tags contains \"b\"",
    "status in [200, 201]",
    "\"x\" in body.query",
    "body.path matches \"^/e.h+o$\"",
    "body.path startsWith \"/ec\"",
    "body.path endsWith \"ho\"",
    "len(body.path) == 5",
    "len(body.query) == 2",
    "body.missing == nil",
    "body.method != nil",
    "body.query.x exists",
    "body.nothing not exists",
    "status + 1 == 201 && status * 2 == 400 && status / 2 == 100 && status % 7 == 4",
    "lower(body.method) == \"get\" && upper(\"a\") == \"A\"",
    "int(body.query.x) == 5 && float(\"1.5\") == 1.5 && string(status) == \"200\"",
    "body.method == \"GET\" and status == 200 or false",
    "$.status == 200",
    "headers[\"content-type\"] startsWith \"application/json\"",
]


@pytest.mark.parametrize("expression", OPERATORS)
async def test_every_assertion_operator(expression: str, service: Service,
                                        client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = FlowDefinition(name="ops", steps=(Step(
        action="http_request", id="echo", asserts=(expression,),
        config=FrozenDict({"url": "${BASE_URL}/echo", "params": {"x": "5", "tags": "b"}})),))
    result = await run(definition, service, client, clock)
    echo = step(result, "echo")
    assert echo.status == "passed", echo.error
    assert echo.assertions[0].passed


async def test_failed_assertion_reports_expression_and_actual_values(
        service: Service, client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: report
        steps:
          - id: get
            action: http_request
            config: {url: "${BASE_URL}/status/404"}
            assert:
              - status == 200
              - body contains "404"
              - len(body) > 100
    """)
    result = await run(definition, service, client, clock)
    get = step(result, "get")
    assert get.status == "failed"
    first, second, third = get.assertions
    assert (first.expression, first.passed) == ("status == 200", False)
    assert first.message == "status == 200 failed: status = 404"
    assert second.passed
    assert not third.passed and "len(body) = 10" in (third.message or "")
    assert get.error == "status == 200 failed: status = 404 (and 1 more failure)"
    as_json = get.to_json()["assertions"][0]
    assert as_json == {"expression": "status == 200", "passed": False,
                       "message": "status == 200 failed: status = 404",
                       "values": {"status": "404"}}


# --------------------------------------------------------------------------------------------
# Redaction and summaries


async def test_secrets_and_auth_headers_are_redacted(service: Service,
                                                     client: httpx.AsyncClient,
                                                     clock: FakeClock) -> None:
    definition = flow("""
        name: secrets
        steps:
          - id: call
            action: http_request
            config:
              method: POST
              url: "${BASE_URL}/echo?api_token=${API_TOKEN}&q=1"
              headers:
                Authorization: "Bearer ${API_TOKEN}"
                X-Service-Token: abc
                X-Plain: "has ${PASSWORD_VAR} inside"
              body: {password: hunter22, note: "key ${PASSWORD_VAR}"}
            assert:
              - body.headers["Authorization"] == "Bearer wrong"
            output:
              session_token: body.headers.Authorization
    """)
    result = await run(definition, service, client, clock,
                       variables={"API_TOKEN": "s3cr3t-token-value",
                                  "PASSWORD_VAR": SecretValue("opensesame")})
    call = step(result, "call")
    assert call.request is not None and call.response is not None
    dumped = repr(call.to_json())
    assert "s3cr3t-token-value" not in dumped
    assert "opensesame" not in dumped
    assert "hunter22" not in dumped
    assert call.request.headers["Authorization"] == "***"
    assert call.request.headers["X-Service-Token"] == "***"
    assert call.request.headers["X-Plain"] == "has *** inside"
    assert "api_token=***" in call.request.url and "q=1" in call.request.url
    assert call.request.body == {"password": "***", "note": "key ***"}
    assert call.response.headers["set-cookie"] == "***"
    assert call.outputs["session_token"] == "***"
    assert call.assertions[0].message is not None
    assert "***" in call.assertions[0].message


async def test_large_bodies_are_truncated_in_summaries(service: Service,
                                                       client: httpx.AsyncClient,
                                                       clock: FakeClock) -> None:
    definition = flow("""
        name: big
        steps:
          - {id: big, action: http_request, config: {url: "${BASE_URL}/big"},
             assert: ["len(body.data) == 10000"]}
    """)
    result = await run(definition, service, client, clock)
    big = step(result, "big")
    assert big.status == "passed"
    assert big.response is not None and big.response.truncated
    assert isinstance(big.response.body, str) and len(big.response.body) <= 4100
    assert big.response.size > 10_000


# --------------------------------------------------------------------------------------------
# Observer and cancellation


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.cancel: asyncio.Event | None = None

    async def flow_started(self, flow: str, definition: FlowDefinition) -> None:
        self.events.append(("flow_started", flow))

    async def step_started(self, flow: str, phase: Phase, step: Step) -> None:
        self.events.append(("step_started", phase, step.label))
        if step.label == "b" and self.cancel is not None:
            self.cancel.set()

    async def step_finished(self, flow: str, result: StepResult) -> None:
        self.events.append(("step_finished", result.label, result.status))

    async def flow_finished(self, result: FlowResult) -> None:
        self.events.append(("flow_finished", result.flow, result.status))


async def test_observer_sees_every_step_and_cancel_stops_before_the_next(
        client: httpx.AsyncClient, clock: FakeClock) -> None:
    definition = flow("""
        name: observed
        steps:
          - {id: a, action: log, config: {message: a}}
          - {id: b, action: log, config: {message: b}}
          - {id: c, action: log, config: {message: c}}
        teardown:
          - {id: t, action: log, config: {message: t}}
    """)
    recorder = Recorder()
    recorder.cancel = asyncio.Event()
    result = await run_flow(definition, client=client, clock=clock, observer=recorder,
                            cancel=recorder.cancel, label="obs")
    assert recorder.events == [
        ("flow_started", "obs"),
        ("step_started", "steps", "a"), ("step_finished", "a", "passed"),
        ("step_started", "steps", "b"), ("step_finished", "b", "passed"),
        ("step_finished", "c", "skipped"),
        ("step_started", "teardown", "t"), ("step_finished", "t", "passed"),
        ("flow_finished", "obs", "cancelled"),
    ]
    assert result.status == "cancelled"


async def test_an_internal_error_is_marked_internal(client: httpx.AsyncClient,
                                                    clock: FakeClock) -> None:
    class Broken(NullObserver):
        async def step_started(self, flow: str, phase: Phase, step: Step) -> None:
            if phase == "steps":
                raise RuntimeError("observer bug")

    definition = flow("""
        name: internal
        steps: [{id: a, action: log, config: {message: a}}]
        teardown: [{id: t, action: log, config: {message: t}}]
    """)
    result = await run_flow(definition, client=client, clock=clock, observer=Broken())
    assert result.internal and result.status == "failed"
    assert "RuntimeError: observer bug" in (result.error or "")
    assert [s.label for s in result.steps] == ["t"]
