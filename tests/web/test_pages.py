"""The dashboard pages, in process: each page with real records in a SQLite store and the
example config, checked for its key content, escaping, secrets, paging and 404s."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from testmesh_reconciler.store import FakeClock, SqliteStore, Store
from testmesh_reconciler.web.pages import (
    PageState,
    duration_chart,
    format_duration,
    format_remaining,
    page_state_of,
)
from tests.web import PR_SHA, REVISION, SECRET, SHA, Sample, fill_store, page_app, sample_state

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2025, 6, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sample(store: Store, clock: FakeClock) -> Sample:
    return await fill_store(store, clock)


@pytest.fixture
async def client(store: Store, clock: FakeClock, sample: Sample
                 ) -> AsyncIterator[Client]:
    state = sample_state(clock.now(), failed_reload=True)
    async with TestClient(TestServer(page_app(store, lambda: state, clock))) as c:
        yield c


async def get(client: Client, path: str, status: int = 200) -> str:
    response = await client.get(path)
    text = await response.text()
    assert response.status == status, text[:500]
    assert response.content_type == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    return text


def squash(html: str) -> str:
    """The text without tags, whitespace collapsed (what a reader sees)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_overview(client: Client) -> None:
    html = await get(client, "/")
    text = squash(html)
    assert REVISION in html
    assert "The last config reload failed" in text
    assert "rules/shop.yaml:12:5" in text and "did you mean &#39;smoke&#39;?" in text
    assert '<a href="/" aria-current="page">Overview</a>' in html
    for label in ("Integrations", "Trigger rules", "Suites", "Flows", "Test environments"):
        assert label in text
    assert "Recent runs" in text and "Recent deliveries" in text
    assert "no trigger rule matches acme/shop push on branch docs/readme" in text
    assert "env-provisioning" in html and "env-cooling" in html
    assert SECRET not in html


async def test_run_page_failed(client: Client, sample: Sample) -> None:
    html = await get(client, f"/suite-runs/{sample.failed_run}")
    text = squash(html)
    assert f"<title>smoke run {sample.failed_run[:8]} — failed" in html
    assert 'http-equiv="refresh"' not in html
    assert f'href="https://gitea.internal/acme/shop-deploy/commit/{SHA}"' in html
    assert "Argo CD sync of shop-staging" in text
    assert "1 of 3 flows failed" in text
    # flows in run order, each with its status
    positions = [html.index(f">{name} <") for name in
                 ("shop-health", "product-catalog", "product-lifecycle")]
    assert positions == sorted(positions)
    assert "Assertion failed:" in text
    assert "body.items[0].price &gt; 0 &amp;&amp; len(body.items) &gt;= 3" in html
    assert "len(body.items)" in text and "<code>2</code>" in html
    # escaped, never executed; secrets masked
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert SECRET not in html
    assert "Authorization: ***" in html
    assert "<details>" in html
    # commit statuses as posted, routing of the environment instance
    assert "testmesh/staging-smoke" in text and "TestMesh: tests failed" in text
    assert "user-service.staging.svc.cluster.local" in text


async def test_run_page_pr_links_and_passed(client: Client,
                                            sample: Sample) -> None:
    html = await get(client, f"/suite-runs/{sample.passed_run}")
    text = squash(html)
    assert f"regression run {sample.passed_run[:8]} — passed" in text
    assert 'href="https://gitea.internal/acme/shop/pulls/42"' in html
    assert f'href="https://gitea.internal/acme/shop/commit/{PR_SHA}"' in html
    assert "Gitea pull request #42 (synchronized) on acme/shop" in text
    assert "All 3 flows passed" in text
    assert "review-pr-42" in text


async def test_run_page_running_refreshes(client: Client,
                                          sample: Sample) -> None:
    html = await get(client, f"/suite-runs/{sample.running_run}")
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "— running" in html


async def test_run_page_manual_and_cancelled(client: Client,
                                             sample: Sample) -> None:
    text = squash(await get(client, f"/suite-runs/{sample.manual_run}"))
    assert "Manual run" in text and "Manual runs post no commit status" in text
    text = squash(await get(client, f"/suite-runs/{sample.cancelled_run}"))
    assert "— cancelled" in text and "superseded by run 1234abcd" in text


async def test_unknown_run_is_an_html_404(client: Client) -> None:
    html = await get(client, "/suite-runs/no-such-run", status=404)
    assert "Run not found" in html and "no-such-run" in html


async def test_suite_page(client: Client) -> None:
    html = await get(client, "/suites/default/smoke")
    text = squash(html)
    assert "Post-deploy smoke tests of the shop API" in text
    assert "suites/smoke.yaml:" in text
    assert "pass rate" in text
    assert "<svg" in html and "<polyline" in html and 'role="img"' in html
    assert "shop-staging-smoke" in text
    older = re.search(r'href="(/suites/default/smoke\?before=[^"]+)"', html)
    assert older is None  # 24 + 3 runs: one page
    await get(client, "/suites/default/nope", status=404)


async def test_suite_paging(store: Store, clock: FakeClock) -> None:
    await fill_store(store, clock, history=70)
    state = sample_state(clock.now())
    async with TestClient(TestServer(page_app(store, lambda: state, clock))) as c:
        html = await get(c, "/suites/default/smoke")
        older = re.search(r'href="(/suites/default/smoke\?before=[^"]+)"', html)
        assert older is not None
        html2 = await get(c, older.group(1).replace("&amp;", "&"))
        assert "Older runs" in html2 and "← Newest" in html2


async def test_deliveries_filters_and_reasons(client: Client) -> None:
    html = await get(client, "/deliveries")
    text = squash(html)
    assert "application billing-prod does not match the app filter" in text
    assert "bad signature" in text
    html = await get(client, "/deliveries?outcome=rejected")
    text = squash(html)
    assert "bad signature" in text and "billing-prod" not in text
    assert '<option value="rejected" selected>' in html
    text = squash(await get(client, "/deliveries?source=argocd&outcome=ignored"))
    assert "billing-prod" in text and "docs/readme" not in text
    text = squash(await get(client, "/deliveries?repo=acme/nothing"))
    assert "No deliveries match these filters" in text
    # unknown filter values are ignored, not errors
    await get(client, "/deliveries?source=%3Cx%3E&outcome=bogus")


async def test_deliveries_paging(client: Client) -> None:
    html = await get(client, "/deliveries")
    older = re.search(r'href="(/deliveries\?before=[^"]+)"', html)
    assert older is None  # fewer than 50
    html = await get(client, "/deliveries?source=argocd")
    assert html.count("<tr>") <= 51


async def test_environments(client: Client, sample: Sample) -> None:
    html = await get(client, "/test-environments")
    text = squash(html)
    for state in ("provisioning", "warm", "running", "cooling", "destroyed", "cold"):
        assert f'class="badge env-{state}">{state}<' in html
    assert "pr-42" in text and "shop-pr-42" in text
    assert "60 min" in text  # TTL left of the warm one
    text = squash(await get(client, "/test-environments?state=cooling"))
    assert "pr-31" in text and "pr-42" not in text


async def test_config_never_shows_secrets(client: Client) -> None:
    html = await get(client, "/config")
    text = squash(html)
    assert "integrations/gitea.yaml:" in text and "rules/shop-staging.yaml:" in text
    assert "secret token configured" in text
    assert "GITEA_TOKEN" not in html and "ARGOCD_WEBHOOK_SECRET" not in html
    assert "/var/run/secrets" not in html
    assert "Rules per repository" in text
    assert "acme/shop" in text and "shop-staging" in text
    assert "release/*" in text


async def test_pages_without_config(store: Store, clock: FakeClock) -> None:
    async with TestClient(TestServer(page_app(store, PageState, clock))) as c:
        assert "none loaded" in await get(c, "/")
        assert "No valid config has been loaded yet" in await get(c, "/config")


async def test_page_state_of_reads_the_holder_properties() -> None:
    from testmesh_reconciler.state import ReloadRecord, StateHolder

    holder = StateHolder()
    assert page_state_of(holder) == PageState()
    now = datetime(2025, 6, 2, tzinfo=UTC)
    snapshot = sample_state(now).snapshot
    assert snapshot is not None
    await holder.swap(snapshot, ReloadRecord(at=now, revision=REVISION, result="ok"))
    state = page_state_of(holder)
    assert state.revision == REVISION and state.applied_at == now
    assert state.last_reload is not None and state.last_reload.result == "ok"


def test_formatting() -> None:
    now = datetime(2025, 6, 2, tzinfo=UTC)
    assert format_duration(850) == "850 ms"
    assert format_duration(1234) == "1.2 s"
    assert format_duration(125_000) == "2 min 5 s"
    assert format_duration(None) == "—"
    assert format_remaining(now + timedelta(minutes=42, seconds=10), now) == "42 min"
    assert format_remaining(now - timedelta(minutes=3), now) == "expired 3 min ago"
    assert duration_chart([]).points == ()
