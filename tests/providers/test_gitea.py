"""Tests of ``providers.gitea``: the pure run -> status mapping, and the client against
``FakeGitea`` (real HTTP on 127.0.0.1, every request checked against the Gitea swagger).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from testmesh_reconciler.config.frozen import FrozenDict
from testmesh_reconciler.config.model import (
    Integration,
    Metadata,
    SecretBinding,
    SecretRef,
    SecretValue,
    Source,
)
from testmesh_reconciler.errors import ProviderError
from testmesh_reconciler.providers.gitea import (
    DESCRIPTION_LIMIT,
    NEWEST_FIRST_SORT,
    PAGE_LIMIT,
    GiteaStatusClient,
    StatusSpec,
    context_for,
    describe,
    needs_final_status,
    retry_after_seconds,
    status_for_run,
    target_url,
    to_state,
)
from tests.testing.fake_gitea import FakeGitea

TOKEN = "s3cr3t-gitea-token-0123456789"
REPO = "acme/shop"
SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
PUBLIC = "https://testmesh.example.com/"
RUN_ID = "5f0c8a7e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"


class RetryAfterGitea(FakeGitea):
    """The fake, but its 429 and 503 answers carry ``Retry-After: 7`` as Gitea's proxy may."""

    def _error(self, status: int, message: str) -> web.Response:
        response = super()._error(status, message)
        if status in (429, 503):
            response.headers["Retry-After"] = "7"
        return response


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitea]:
    async with RetryAfterGitea(token=TOKEN) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def client(fake: FakeGitea, http: httpx.AsyncClient) -> GiteaStatusClient:
    return GiteaStatusClient(http, fake.base_url + "/", SecretValue(TOKEN))


def spec(state: str = "pending", description: str = "TestMesh: tests running...",
         context: str = "testmesh/smoke") -> StatusSpec:
    return StatusSpec(state=state, description=description, context=context,
                      target_url=target_url(PUBLIC, RUN_ID))


def assert_secret_free(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), *map(str, exc.args)):
        assert TOKEN not in text


# --- pure mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "final", "expected"),
    [
        ("pending", None, False, "pending"),
        ("running", None, False, "pending"),
        ("running", "boom", False, "pending"),
        ("completed", None, True, "success"),
        ("failed", None, True, "failure"),
        ("failed", "environment not acquired: timeout", True, "error"),
        ("failed", "interrupted: the daemon stopped", True, "error"),
        ("completed", "internal error", True, "error"),
        ("cancelled", None, True, "error"),
        ("cancelled", "interrupted", True, "error"),
        ("completed", "", True, "success"),
    ],
)
def test_to_state_maps_every_run_status(
    status: str, error: str | None, final: bool, expected: str
) -> None:
    assert to_state(status, error, final=final) == expected


@pytest.mark.parametrize("status", ["pending", "running"])
def test_to_state_refuses_a_final_state_for_an_active_run(status: str) -> None:
    with pytest.raises(ValueError, match="not final"):
        to_state(status, None, final=True)


def test_to_state_refuses_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown run status"):
        to_state("exploded", None, final=True)


def test_needs_final_status_only_after_pending() -> None:
    assert needs_final_status("cancelled", pending_posted=True)
    assert not needs_final_status("cancelled", pending_posted=False)  # superseded while queued
    assert needs_final_status("completed", pending_posted=True)
    assert not needs_final_status("running", pending_posted=True)


def test_describe_exact_texts() -> None:
    assert describe("pending", passed=0, failed=0, total=3) == "TestMesh: tests running..."
    assert (describe("success", passed=3, failed=0, total=3)
            == "TestMesh: all tests passed (3/3 flows)")
    assert (describe("success", passed=1, failed=0, total=1)
            == "TestMesh: all tests passed (1/1 flow)")
    assert describe("success", passed=0, failed=0, total=0) == "TestMesh: all tests passed"
    assert (describe("failure", passed=2, failed=1, total=3)
            == "TestMesh: tests failed (1 of 3 flows failed)")
    assert describe("error", passed=0, failed=0, total=3) == "TestMesh: execution error"
    assert (describe("error", passed=0, failed=0, total=3, reason="environment  not\nacquired")
            == "TestMesh: execution error: environment not acquired")


def test_describe_truncates_with_ellipsis() -> None:
    text = describe("error", passed=0, failed=0, total=0, reason="x" * 500)
    assert len(text) == DESCRIPTION_LIMIT
    assert text.endswith("…")
    assert text.startswith("TestMesh: execution error: xxx")


def test_describe_refuses_states_testmesh_never_posts() -> None:
    with pytest.raises(ValueError, match="warning"):
        describe("warning", passed=0, failed=0, total=0)


@given(
    state=st.sampled_from(["pending", "success", "failure", "error"]),
    passed=st.integers(min_value=0, max_value=10**30),
    failed=st.integers(min_value=0, max_value=10**30),
    total=st.integers(min_value=-5, max_value=10**30),
    reason=st.none() | st.text(max_size=400),
)
def test_describe_never_exceeds_140(
    state: str, passed: int, failed: int, total: int, reason: str | None
) -> None:
    text = describe(state, passed=passed, failed=failed, total=total, reason=reason)
    assert len(text) <= DESCRIPTION_LIMIT
    assert text.startswith("TestMesh: ")


def test_context_for() -> None:
    assert context_for("smoke") == "testmesh/smoke"
    assert context_for("smoke", "ci/e2e") == "ci/e2e"
    assert context_for("smoke", "") == "testmesh/smoke"


@pytest.mark.parametrize(
    "public", ["https://tm.example.com", "https://tm.example.com/", "https://tm.example.com//"]
)
def test_target_url_has_one_slash(public: str) -> None:
    assert target_url(public, "r1") == "https://tm.example.com/suite-runs/r1"


def test_target_url_keeps_a_sub_path() -> None:
    assert target_url("https://x.example/testmesh/", "r1") == "https://x.example/testmesh/suite-runs/r1"


def test_status_for_run_composes() -> None:
    pending = status_for_run(suite="smoke", run_id=RUN_ID, public_url=PUBLIC,
                             run_status="running", run_error=None, final=False, total=3)
    assert pending == StatusSpec("pending", "TestMesh: tests running...", "testmesh/smoke",
                                 f"https://testmesh.example.com/suite-runs/{RUN_ID}")
    failed = status_for_run(suite="smoke", run_id=RUN_ID, public_url=PUBLIC,
                            run_status="failed", run_error=None, final=True,
                            passed=2, failed=1, total=3, context="ci/smoke")
    assert failed.state == "failure"
    assert failed.description == "TestMesh: tests failed (1 of 3 flows failed)"
    assert failed.context == "ci/smoke"
    errored = status_for_run(suite="smoke", run_id=RUN_ID, public_url=PUBLIC,
                             run_status="failed", run_error="environment not acquired",
                             final=True, total=3)
    assert errored.state == "error"
    assert errored.description == "TestMesh: execution error: environment not acquired"
    cancelled = status_for_run(suite="smoke", run_id=RUN_ID, public_url=PUBLIC,
                               run_status="cancelled", run_error=None, final=True)
    assert (cancelled.state, cancelled.description) == (
        "error", "TestMesh: execution error: run cancelled")


def test_spec_body_is_exactly_create_status_option() -> None:
    assert spec().to_body() == {
        "state": "pending",
        "target_url": f"https://testmesh.example.com/suite-runs/{RUN_ID}",
        "description": "TestMesh: tests running...",
        "context": "testmesh/smoke",
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("7", 7.0), (" 2.5 ", 2.5), ("-1", None), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("nan", None), ("999999", 3600.0)],
)
def test_retry_after_seconds(raw: str | None, expected: float | None) -> None:
    assert retry_after_seconds(raw) == expected


# --- IO against FakeGitea -------------------------------------------------------------------


async def test_pending_then_success_posted_as_the_swagger_wants(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    pending = status_for_run(suite="smoke", run_id=RUN_ID, public_url=PUBLIC,
                             run_status="running", run_error=None, final=False)
    done = status_for_run(suite="smoke", run_id=RUN_ID, public_url=PUBLIC,
                          run_status="completed", run_error=None, final=True,
                          passed=3, failed=0, total=3)
    await client.post_status(REPO, SHA, pending)
    await client.post_status(REPO, SHA, done)
    statuses = await fake.wait_for_statuses(2)
    fake.assert_no_violations()
    assert [(s.repo, s.sha, s.state, s.context, s.description, s.target_url) for s in statuses] == [
        (REPO, SHA, "pending", "testmesh/smoke", "TestMesh: tests running...",
         f"https://testmesh.example.com/suite-runs/{RUN_ID}"),
        (REPO, SHA, "success", "testmesh/smoke", "TestMesh: all tests passed (3/3 flows)",
         f"https://testmesh.example.com/suite-runs/{RUN_ID}"),
    ]
    posts = fake.requests_to("POST", f"/statuses/{SHA}")
    assert [p.path for p in posts] == [f"/api/v1/repos/{REPO}/statuses/{SHA}"] * 2
    assert posts[0].json() == pending.to_body()
    assert posts[0].headers["Authorization"] == f"token {TOKEN}"


async def test_a_wrong_token_is_401_not_retryable(
    fake: FakeGitea, http: httpx.AsyncClient
) -> None:
    wrong = GiteaStatusClient(http, fake.base_url, SecretValue("nope"))
    with pytest.raises(ProviderError) as caught:
        await wrong.post_status(REPO, SHA, spec())
    assert caught.value.status == 401
    assert not caught.value.retryable
    assert "check secrets.token (write:repository scope)" in str(caught.value)


async def test_latest_status_reads_newest_first(fake: FakeGitea, client: GiteaStatusClient) -> None:
    assert await client.latest_status(REPO, SHA, "testmesh/smoke") is None
    fake.seed_status(REPO, SHA, "pending", "testmesh/smoke", "TestMesh: tests running...")
    fake.seed_status(REPO, SHA, "success", "testmesh/smoke", "TestMesh: all tests passed")
    fake.seed_status(REPO, SHA, "failure", "other/ci", "nope")
    fake.seed_status(REPO, OTHER_SHA, "error", "testmesh/smoke", "elsewhere")
    assert await client.latest_status(REPO, SHA, "testmesh/smoke") == (
        "success", "TestMesh: all tests passed")
    gets = fake.requests_to("GET", f"/commits/{SHA}/statuses")
    assert gets[-1].query == {"sort": NEWEST_FIRST_SORT, "page": "1", "limit": str(PAGE_LIMIT)}
    fake.assert_no_violations()


async def test_post_if_changed_skips_an_identical_latest(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    fake.seed_status(REPO, SHA, "pending", "testmesh/smoke", "TestMesh: tests running...")
    assert await client.post_if_changed(REPO, SHA, spec()) == "skipped"
    assert fake.requests_to("POST") == []
    changed = spec("success", "TestMesh: all tests passed (3/3 flows)")
    assert await client.post_if_changed(REPO, SHA, changed) == "sent"
    assert await client.post_if_changed(REPO, SHA, changed) == "skipped"
    assert await client.post_if_changed(REPO, SHA, spec()) == "sent"  # latest is success now
    assert [s.state for s in fake.statuses_for(REPO, SHA)] == ["pending", "success", "pending"]
    fake.assert_no_violations()


async def test_same_state_other_description_is_sent(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    fake.seed_status(REPO, SHA, "pending", "testmesh/smoke", "something else")
    assert await client.post_if_changed(REPO, SHA, spec()) == "sent"


async def test_lookup_follows_pages(fake: FakeGitea, client: GiteaStatusClient) -> None:
    fake.seed_status(REPO, SHA, "pending", "testmesh/smoke", "TestMesh: tests running...")
    for i in range(60):
        fake.seed_status(REPO, SHA, "success", f"other/{i}", "fine")
    assert await client.post_if_changed(REPO, SHA, spec()) == "skipped"
    gets = fake.requests_to("GET", f"/commits/{SHA}/statuses")
    assert [g.query["page"] for g in gets] == ["1", "2"]
    assert fake.requests_to("POST") == []
    fake.assert_no_violations()


async def test_lookup_stops_when_pages_run_out(fake: FakeGitea, client: GiteaStatusClient) -> None:
    for i in range(100):
        fake.seed_status(REPO, SHA, "success", f"other/{i}", "fine")
    assert await client.latest_status(REPO, SHA, "testmesh/smoke") is None
    assert len(fake.requests_to("GET")) == 2  # X-Total-Count: 100 = two full pages


@pytest.mark.parametrize("status", [404, 500, 403])
async def test_failed_lookup_still_posts(
    fake: FakeGitea, client: GiteaStatusClient, status: int
) -> None:
    fake.respond_with(status, method="GET")
    assert await client.post_if_changed(REPO, SHA, spec()) == "sent"
    assert len(fake.statuses) == 1


async def test_lookup_with_a_rejected_token_raises(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    fake.respond_with(401, method="GET")
    with pytest.raises(ProviderError) as caught:
        await client.post_if_changed(REPO, SHA, spec())
    assert caught.value.status == 401
    assert fake.requests_to("POST") == []


async def test_503_twice_is_retryable_then_succeeds(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    fake.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            await client.post_status(REPO, SHA, spec())
        assert caught.value.retryable
        assert caught.value.status == 503
        assert caught.value.delay == 7.0
    await client.post_status(REPO, SHA, spec())
    assert len(fake.statuses) == 1


async def test_429_honours_retry_after(fake: FakeGitea, client: GiteaStatusClient) -> None:
    fake.fail_next(1, 429)
    with pytest.raises(ProviderError) as caught:
        await client.post_status(REPO, SHA, spec())
    assert caught.value.retryable
    assert caught.value.status == 429
    assert caught.value.delay == 7.0
    assert "rate limited" in str(caught.value)


async def test_502_without_retry_after_has_no_delay(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    fake.fail_next(1, 502)
    with pytest.raises(ProviderError) as caught:
        await client.post_status(REPO, SHA, spec())
    assert caught.value.retryable
    assert caught.value.delay is None


async def test_unknown_commit_500_is_retryable(http: httpx.AsyncClient) -> None:
    server = FakeGitea(token=TOKEN, known_shas={OTHER_SHA})
    await server.start()
    try:
        client = GiteaStatusClient(http, server.base_url, SecretValue(TOKEN))
        with pytest.raises(ProviderError) as caught:
            await client.post_status(REPO, SHA, spec())
        assert caught.value.retryable
        assert caught.value.status == 500
        assert SHA in str(caught.value)
        server.assert_no_violations()
    finally:
        await server.stop()


async def test_gitea_down_is_a_retryable_network_error(
    fake: FakeGitea, client: GiteaStatusClient
) -> None:
    fake.go_down()
    with pytest.raises(ProviderError) as caught:
        await client.post_if_changed(REPO, SHA, spec())
    assert caught.value.retryable
    assert caught.value.status is None
    assert "network error talking to Gitea at 127.0.0.1:" in str(caught.value)
    fake.come_up()
    assert await client.post_if_changed(REPO, SHA, spec()) == "sent"


async def test_nothing_listening_is_retryable(http: httpx.AsyncClient) -> None:
    server = FakeGitea(token=TOKEN)
    base = await server.start()
    await server.stop()  # the port is closed now
    client = GiteaStatusClient(http, base, SecretValue(TOKEN))
    with pytest.raises(ProviderError) as caught:
        await client.post_status(REPO, SHA, spec())
    assert caught.value.retryable
    assert_secret_free(caught.value)


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_read_timeout_is_explicit_and_retryable(
    silent_server: str, http: httpx.AsyncClient
) -> None:
    client = GiteaStatusClient(http, silent_server, SecretValue(TOKEN),
                               timeout=httpx.Timeout(0.2))
    with pytest.raises(ProviderError) as caught:
        await client.post_status(REPO, SHA, spec())
    assert caught.value.retryable
    assert "timed out talking to Gitea" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        (401, "401 from Gitea: the integration's token was rejected; "
              "check secrets.token (write:repository scope)"),
        (403, "403 from Gitea: the token may not write commit statuses on 'acme/shop'"),
        (404, f"404: repository 'acme/shop' or commit '{SHA}' not found on Gitea, "
              "or the token cannot see it"),
        (422, "422 from Gitea: it refused the status as invalid"),
        (409, f"409 from Gitea for 'acme/shop' at '{SHA}'"),
    ],
)
async def test_client_errors_are_not_retryable(
    fake: FakeGitea, client: GiteaStatusClient, status: int, needle: str
) -> None:
    fake.respond_with(status)
    with pytest.raises(ProviderError) as caught:
        await client.post_status(REPO, SHA, spec())
    assert not caught.value.retryable
    assert caught.value.status == status
    assert caught.value.delay is None
    assert needle in str(caught.value)
    assert_secret_free(caught.value)


@pytest.mark.parametrize("repo", ["shop", "acme/", "/shop", "a/b/c", ""])
async def test_a_bad_repository_name_is_not_retryable(
    client: GiteaStatusClient, repo: str
) -> None:
    with pytest.raises(ProviderError, match="is not 'owner/name'") as caught:
        await client.post_status(repo, SHA, spec())
    assert not caught.value.retryable


async def test_a_bad_url_is_not_retryable(http: httpx.AsyncClient) -> None:
    client = GiteaStatusClient(http, "gitea.example.com", SecretValue(TOKEN))
    with pytest.raises(ProviderError, match="check the integration's url") as caught:
        await client.post_status(REPO, SHA, spec())
    assert not caught.value.retryable


class EchoTokenGitea(FakeGitea):
    """A misbehaving server that echoes the Authorization header in its error message."""

    def _error(self, status: int, message: str) -> web.Response:
        return self._json({"message": f"bad header: {self._last_auth}", "url": ""}, status)

    async def _create_status(self, request: web.Request) -> web.Response:
        self._last_auth = request.headers.get("Authorization", "")
        return self._error(400, "")


async def test_token_never_appears_in_errors(
    fake: FakeGitea, client: GiteaStatusClient, http: httpx.AsyncClient
) -> None:
    seen: list[ProviderError] = []
    for status in (400, 401, 403, 404, 422, 429, 500, 503):
        fake.reset()
        fake.respond_with(status, method=None)
        try:
            await client.post_if_changed(REPO, SHA, spec())
        except ProviderError as exc:
            seen.append(exc)
    fake.reset()
    fake.go_down()
    try:
        await client.post_if_changed(REPO, SHA, spec())
    except ProviderError as exc:
        seen.append(exc)
    echo = EchoTokenGitea(token=TOKEN)
    await echo.start()
    try:
        with pytest.raises(ProviderError) as caught:
            await GiteaStatusClient(http, echo.base_url, SecretValue(TOKEN)).post_status(
                REPO, SHA, spec())
        seen.append(caught.value)
    finally:
        await echo.stop()
    assert len(seen) == 10
    for error in seen:
        assert_secret_free(error)
        assert error.__cause__ is None
    assert "bad header: token ***" in str(seen[-1])
    assert TOKEN not in repr(client)


def integration(url: str | None, token: str | None) -> Integration:
    secrets: dict[str, SecretRef] = {}
    if token is not None:
        binding = SecretBinding("default", "gitea", "token")
        secrets["token"] = SecretRef("env", "GITEA_TOKEN", binding, SecretValue(token))
    return Integration(
        id=uuid.uuid4(), metadata=Metadata("gitea"), source=Source("integrations.yaml", 1),
        type="git", provider="gitea", url=url, app_filter="*", require_webhook_secret=True,
        config=FrozenDict({"url": url}), secrets=FrozenDict(secrets), document={},
    )


async def test_for_integration(fake: FakeGitea, http: httpx.AsyncClient) -> None:
    assert GiteaStatusClient.for_integration(http, integration(None, TOKEN)) is None
    assert GiteaStatusClient.for_integration(http, integration(fake.base_url, None)) is None
    client = GiteaStatusClient.for_integration(http, integration(fake.base_url, TOKEN))
    assert client is not None
    await client.post_status(REPO, SHA, spec())
    assert len(fake.statuses) == 1
